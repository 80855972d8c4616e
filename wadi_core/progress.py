"""Progress of the library's long calls, for whichever host shows it: a bar in the terminal, the web UI's status
line, or nothing. A call takes one :class:`Progress` and reports its phases with :meth:`Progress.note` and its
training steps through :meth:`Progress.steps`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm.auto import tqdm


class Progress:
    """``quiet`` hides the terminal bars; ``on_note(text)`` and ``on_step(record, total)`` feed a UI."""

    def __init__(self, quiet: bool = False, on_note: Callable[[str], None] | None = None,
                 on_step: Callable[[dict, int], None] | None = None):
        self.quiet, self.on_note, self.on_step = quiet, on_note, on_step

    @property
    def bars(self) -> bool:
        """Whether a sampler inside the call may draw its own bar."""
        return not self.quiet

    def note(self, text: str) -> None:
        """A phase of the call (the terminal has the bars; a UI shows the text)."""
        if self.on_note:
            self.on_note(text)

    @contextmanager
    def steps(self, total: int, desc: str, shown: tuple[str, ...] = ()) -> Iterator[Callable[[int, dict], None]]:
        """Yields ``step(done, record)`` for a training loop; the bar shows the record's ``shown`` values."""
        bar = tqdm(total=total, desc=desc, disable=self.quiet)

        def step(done: int, record: dict) -> None:
            bar.update(1)
            bar.set_postfix({key: f"{record[key]:.4f}" for key in shown})
            if self.on_step:
                self.on_step(record, total)
        try:
            yield step
        finally:
            bar.close()


QUIET = Progress(quiet=True)
