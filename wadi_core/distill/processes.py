"""A distillation in several processes of one thread each on this machine (``accelerate launch``, gloo on CPU).

Two single-thread processes use two cores without the two threads of one process waiting on each other (faster
on some VMs, equal on others: docs/multi_gpu.md). Each process takes its share of the whole batch and the draws are
made for the whole batch, so the student is the one a single process trains but for the order of float sums
(tests/test_processes.py).

    python -m wadi_core.distill.processes CONFIG.json    # one process's part (what accelerate launch starts)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .config import DistillConfig


def distill_in_processes(config: DistillConfig, processes: int, progress: bool = True) -> Path:
    """Run ``config`` as ``processes`` processes of one thread each; returns the student's path. The main
    process's progress and messages pass through."""
    with tempfile.TemporaryDirectory(prefix="wadi-processes-") as tmp:
        options = Path(tmp) / "config.json"
        options.write_text(json.dumps({"options": config.options(), "progress": progress}))
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(29500 + os.getpid() % 2000), "-m", "wadi_core.distill.processes",
                   str(options)]
        result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if result.returncode:
            raise RuntimeError(f"the distillation in {processes} processes failed (exit status "
                               f"{result.returncode}); its messages are above")
    return Path(config.out).expanduser() / "student.safetensors"


def main(path: str) -> None:
    from .trainer import Distiller

    saved = json.loads(Path(path).read_text())
    Distiller(DistillConfig.from_options(**saved["options"]), progress=saved["progress"]).run()


if __name__ == "__main__":
    main(sys.argv[1])
