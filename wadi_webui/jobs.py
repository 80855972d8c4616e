"""Training in a background thread, for the web UI: distillation with the same ``Distiller`` as
``wadi distill``, and ReVersion and DreamBooth with the same library calls as their commands.

One run per output folder at a time (a second Start on the same folder is refused); Stop asks a
distillation to end after the current step, which writes a resumable checkpoint.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


_RUNNING: dict[Path, "DistillJob"] = {}
_LOCK = threading.Lock()


class JobRefused(ValueError):
    """A second run on an output folder that is already training."""


@dataclass
class JobState:
    status: str = "starting"  # starting | running | stopping | stopped | finished | failed
    step: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    first_step_at: float | None = None
    first_step: int = 0
    last: dict = field(default_factory=dict)
    message: str = ""
    adapter: Path | None = None

    @property
    def done(self) -> bool:
        return self.status in ("stopped", "finished", "failed")

    def eta_seconds(self) -> float | None:
        """Remaining time from the pace since the first step of this session (setup excluded)."""
        if self.first_step_at is None or self.step <= self.first_step:
            return None
        pace = (time.monotonic() - self.first_step_at) / (self.step - self.first_step)
        return pace * (self.total - self.step)


class BackgroundJob:
    """A run writing to ``out`` in a daemon thread; subclasses do the work in ``_work``."""

    def __init__(self, out: str):
        self.out = Path(out).expanduser().resolve()
        self.state = JobState()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name=f"wadi {self.out.name}", daemon=True)

    @classmethod
    def start(cls, *args):
        job = cls(*args)
        with _LOCK:
            running = _RUNNING.get(job.out)
            if running is not None and not running.state.done:
                raise JobRefused(f"{job.out} is already training (step {running.state.step} of "
                                 f"{running.state.total}); stop it first or choose another output folder")
            _RUNNING[job.out] = job
        job._thread.start()
        return job

    @staticmethod
    def find(out: str) -> "BackgroundJob | None":
        with _LOCK:
            return _RUNNING.get(Path(out).expanduser().resolve())

    def stop(self) -> None:
        if not self.state.done:
            self.state.status = "stopping"
            self._stop.set()

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _on_step(self, record: dict) -> None:
        state = self.state
        state.step, state.last = record["step"], record
        if state.first_step_at is None:
            state.first_step_at, state.first_step = time.monotonic(), record["step"] - 1
        if state.status == "starting":
            state.status = "running"

    def _work(self) -> None:
        raise NotImplementedError


class DistillJob(BackgroundJob):
    def __init__(self, config):  # a wadi_core.distill.DistillConfig
        super().__init__(config.out)
        self.config = config

    def _work(self) -> None:
        from wadi_core.distill import Distiller  # torch, diffusers: only once a run starts

        state = self.state
        try:
            distiller = Distiller(self.config, progress=False, log=lambda text: setattr(state, "message", text))
            state.total, state.step = distiller.config.steps, distiller.step
            state.status = "running" if not self._stop.is_set() else "stopping"
            adapter = distiller.run(should_stop=self._stop.is_set, on_step=self._on_step)
            if adapter is None:
                state.status = "stopped"
                state.message = f"stopped at step {state.step}; press Resume to continue"
            else:
                state.adapter, state.status = adapter, "finished"
                state.message = f"finished: {adapter}"
        except Exception as err:  # shown in the page; the server stays up
            state.status, state.message = "failed", f"{type(err).__name__}: {err}"


class TaskJob(BackgroundJob):
    """A library call that trains (``wadi_core.tasks``' ReVersion or DreamBooth), given its output folder and a
    function of one :class:`~wadi_core.progress.Progress` that reports into this job's state."""

    def __init__(self, out: str, work):
        super().__init__(out)
        self.work = work

    def _on_task_step(self, record: dict, total: int) -> None:
        self.state.total = total
        self._on_step(record)

    def _work(self) -> None:
        from wadi_core.progress import Progress

        state = self.state
        try:
            self.work(Progress(quiet=True, on_note=lambda text: setattr(state, "message", text),
                               on_step=self._on_task_step))
            state.status, state.message = "finished", f"finished: {self.out}"
        except Exception as err:  # shown in the page; the server stays up
            state.status, state.message = "failed", f"{type(err).__name__}: {err}"
