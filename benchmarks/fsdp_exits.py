"""How often a two-process FSDP distillation fails at exit, this tree against an earlier commit, in one run.

    python benchmarks/fsdp_exits.py                 # 20 runs in each tree, against 1fd08d3
    python benchmarks/fsdp_exits.py --runs 40 --before HEAD~1

Each run is ``accelerate launch --use_fsdp --num_processes 2 -m wadi_cli distill`` on the CPU (gloo, one thread a
process) of a tiny random SD teacher, 3 steps of batch 2 with a checkpoint at step 2, as ``tests/test_processes.py``
launches it. The two trees take turns (the earlier one checked out with ``git worktree``), so both see the same
machine. A failed run is counted with the signal that ended its process: under FSDP torch keeps the gloo group's
threads alive until the process exits, and in 1fd08d3 a process could start the interpreter's teardown while one of
them still let go of a collective's tensors, which aborted it (SIGABRT) in about one run out of ten on the 2-core
VM. Now the processes wait for each other at the end and a launched process ends without that teardown
(``wadi_cli/__main__.py``; numbers in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "1fd08d3"  # the last commit whose launched processes went through the interpreter's teardown
SIGNAL = re.compile(r"exitcode\s*:\s*-\d+ \(pid: \d+\)\s*\((SIG[A-Z]+)\)")


def outcome(result: subprocess.CompletedProcess) -> str:
    """``ok``, or the signals that ended the failed processes (``SIGABRT``), or ``exit N``."""
    if result.returncode == 0:
        return "ok"
    return "+".join(sorted(set(SIGNAL.findall(result.stderr)) - {"SIGTERM"})) or f"exit {result.returncode}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default=BEFORE, help="the commit to compare with")
    p.add_argument("--runs", type=int, default=20, help="runs in each tree")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cli_startup import earlier_tree
    from conftest import write_sd_folder
    from test_processes import PROMPTS, launch

    with tempfile.TemporaryDirectory() as folder, earlier_tree(args.before, Path(folder) / "before") as old:
        work = Path(folder)
        model = write_sd_folder(work / "sd")
        prompts = work / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS) + "\n")
        trees = {f"before ({args.before})": old, "now": ROOT}
        seen: dict[str, list[str]] = {name: [] for name in trees}
        for run in range(args.runs):
            for index, (name, tree) in enumerate(trees.items()):
                start = time.perf_counter()
                result = launch(2, (model, prompts), work / f"run{run}-{index}", use_fsdp=True, tree=tree, steps=3,
                                batch_size=2, checkpoint_every=2)
                seen[name].append(outcome(result))
                print(f"run {run + 1:3d} {name:20s} {seen[name][-1]:10s} {time.perf_counter() - start:5.1f} s",
                      flush=True)
        print(f"\n{'tree':20s} {'runs':>5s} {'failed':>7s}  how")
        for name, outcomes in seen.items():
            failed = [o for o in outcomes if o != "ok"]
            how = ", ".join(f"{o} x{failed.count(o)}" for o in sorted(set(failed))) or "-"
            print(f"{name:20s} {len(outcomes):5d} {len(failed):7d}  {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
