"""Stopping a distillation between two steps when the process is told to: Ctrl-C (SIGINT), a scheduler's SIGTERM
(a job's time is up, or it is pre-empted) or SIGUSR1 (which SLURM sends ahead of the end with ``--signal``).

Inside :class:`StopOnSignals` the first such signal asks the run to stop after the step it is in: it writes a
checkpoint there and returns, and ``--resume`` continues as if it had not stopped. Under a launcher
(``accelerate launch``, ``torchrun``) the launcher passes a signal on to every process and kills them when they
have not ended within its shutdown timeout (torch's default 30 s, ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``); the
processes agree to stop at the end of the same step even when only one of them was told
(:meth:`wadi_core.distill.Distiller.run`). In one process alone, a second Ctrl-C stops at once, without a
checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


class StopOnSignals:
    """A context in which :data:`SIGNALS` ask for a stop instead of ending the process; call the object to ask
    whether one came. ``signal`` is the first that came (None: none), ``status`` the exit status that says so
    (128 + its number, as a shell reports a process ended by it)."""

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log
        self.signal: int | None = None
        self.alone = int(os.environ.get("WORLD_SIZE", "1")) == 1  # (a launcher passes Ctrl-C on a second time)
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.signal is not None

    @property
    def status(self) -> int:
        return 128 + self.signal if self.signal is not None else 0

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # (only the main thread receives signals; a run driven from another asks nothing of them)
        for name in SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                self._previous[number] = signal.signal(number, self._received)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _received(self, number: int, frame) -> None:
        if self.signal is None:
            self.signal = number
            again = " (Ctrl-C again stops at once, without one)" if self.alone and number == signal.SIGINT else ""
            self.log(f"{signal.Signals(number).name}: stopping after this step with a checkpoint{again}")
        elif self.alone and number == signal.SIGINT:
            raise KeyboardInterrupt
