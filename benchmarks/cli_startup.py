"""How long ``wadi --help`` (and a few ``wadi CMD --help``) take, this tree against an earlier commit, side by side in
one run: each command runs ``--repeat`` times alternately in both trees, and the medians and their ratio are
printed. The earlier tree is checked out with ``git worktree`` into a temporary folder and run with this
environment's Python (its packages are importable from its own folder).

    python benchmarks/cli_startup.py                 # against the last commit before the redesign
    python benchmarks/cli_startup.py --before HEAD~3
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE_REDESIGN = "9bb4282"  # the last commit whose CLI imported every command (and torch) for --help
COMMANDS = (["--help"], ["distill", "--help"], ["generate", "--help"], ["merge", "--help"])


def entry(tree: Path) -> list[str]:
    """How to start the command line of a tree: ``wadi_cli`` now, ``training.cli`` before the package was renamed."""
    package = "wadi_cli" if (tree / "wadi_cli").is_dir() else "training.cli"
    return [sys.executable, "-m", package]


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


@contextlib.contextmanager
def earlier_tree(commit: str, folder: Path):
    """``commit``'s tree, checked out with ``git worktree`` into ``folder`` for the ``with`` block."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(folder), commit], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default=BEFORE_REDESIGN, help="the commit to compare with")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder, earlier_tree(args.before, Path(folder) / "before") as old:
        print(f"{'command':24s} {'before (s)':>11s} {'now (s)':>9s} {'now / before':>13s}")
        for words in COMMANDS:
            before, now = [], []
            for _ in range(args.repeat):
                before.append(timed(entry(old) + words, old))
                now.append(timed(entry(ROOT) + words, ROOT))
            b, n = statistics.median(before), statistics.median(now)
            print(f"{'wadi ' + ' '.join(words):24s} {b:11.2f} {n:9.2f} {n / b:13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
