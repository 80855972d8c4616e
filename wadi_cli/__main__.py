"""``python -m wadi_cli COMMAND ...`` is ``wadi COMMAND ...``; ``accelerate launch -m wadi_cli distill ...`` runs a
distillation on many processes."""

import os
import sys

from .cli import main

status = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # one of several processes (accelerate launch), its work written: it ends without the interpreter's teardown.
    # Under FSDP torch keeps the gloo group's threads alive to the end, and one of them that lets go of a collective's
    # tensors while the interpreter tears down aborts the process (SIGABRT; docs/multi_gpu.md)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)
