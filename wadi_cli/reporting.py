"""Progress of the training commands: a tqdm bar in the terminal, and the web UI's hooks
(``args.on_step`` / ``args.on_message``, set by ``wadi_webui.jobs.CommandJob``)."""

from __future__ import annotations

from contextlib import contextmanager

from tqdm.auto import tqdm


def note(args, text: str) -> None:
    """A phase of the run, for the web UI's status line (the terminal has the progress bars)."""
    if getattr(args, "on_message", None):
        args.on_message(text)


@contextmanager
def step_progress(args, total: int, desc: str, shown: tuple[str, ...]):
    """Yields ``progress(step, record)`` for a training loop; shows the record's ``shown`` values."""
    bar = tqdm(total=total, desc=desc, disable=args.quiet)

    def progress(step: int, record: dict) -> None:
        bar.update(1)
        bar.set_postfix({key: f"{record[key]:.4f}" for key in shown})
        if getattr(args, "on_step", None):
            args.on_step(record, total)
    try:
        yield progress
    finally:
        bar.close()
