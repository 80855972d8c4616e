"""``python -m wadi_cli COMMAND ...`` is ``wadi COMMAND ...``; ``accelerate launch -m wadi_cli distill ...`` runs a
distillation on many processes."""

import sys

from .cli import main

sys.exit(main())
