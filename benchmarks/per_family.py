"""The driver the single-file benchmarks share: one process per model family, each in its own temporary folder.

A script defines ``compare(family, folder) -> dict`` (run in a fresh process, so that the peak memory it reports is
that family's alone) and how to print a header and a row; ``main`` does the rest:

    python benchmarks/SCRIPT.py --families sd15 sd21 sdxl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

FAMILIES = ["sd15", "sd21", "sdxl"]


def main(script: str, description: str, compare: Callable[[str, Path], dict], header: str,
         row: Callable[[dict], str]) -> None:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: compare one family in this process
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(compare(args.one, Path(args.folder))), flush=True)
        return
    print(header)
    for family in args.families:
        with tempfile.TemporaryDirectory() as folder:
            run = subprocess.run([sys.executable, script, "--one", family, "--folder", folder],
                                 capture_output=True, text=True, cwd=Path(script).resolve().parents[1], check=False)
        line = next((l for l in run.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{family}: the comparison failed:\n{run.stderr[-3000:]}")
        print(row(json.loads(line[len("RESULT "):])), flush=True)
