"""The demo's distillation step in one process (all cores' threads) against two processes of one thread each.

    python benchmarks/demo_processes.py [--steps 12]

Both layouts run the embedded world's recipe (a whole batch of 16 prompts a step: 16 in one process, 8 in each of
two) one after the other, never side by side, as `wadi demo` would: one ``wadi distill`` process, and
``accelerate launch --multi_gpu --num_processes 2`` with OMP_NUM_THREADS=1. The step time is the mean of the
recorded steps after the first two (history.json); the wall time includes start-up and the final sample grid.
Prints both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], out: Path, env: dict) -> dict:
    started = time.perf_counter()
    subprocess.run(command + ["--out", str(out), "--report-to", "none", "--checkpoint-every", "0",
                              "--sample-every", "0", "--quiet"], check=True, cwd=ROOT, env={**os.environ, **env})
    wall = time.perf_counter() - started
    steps = [h["seconds"] for h in json.loads((out / "history.json").read_text())]
    return {"step_s": sum(steps[2:]) / len(steps[2:]), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    distill = ["-m", "wadi_cli", "distill", "--steps", str(args.steps)]
    with tempfile.TemporaryDirectory() as tmp:
        one = run([sys.executable, *distill], Path(tmp) / "one", {})
        two = run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *distill],
                  Path(tmp) / "two", {"OMP_NUM_THREADS": "1"})
    print(f"cores: {os.cpu_count()}, steps: {args.steps} (whole batch 16)")
    print(f"one process, {os.cpu_count()} threads: {one['step_s']:.2f} s/step, {one['wall_s']:.0f} s in all")
    print(f"two processes, 1 thread each:  {two['step_s']:.2f} s/step, {two['wall_s']:.0f} s in all")
    print(f"two processes / one: {two['step_s'] / one['step_s']:.2f}x the step time")


if __name__ == "__main__":
    main()
