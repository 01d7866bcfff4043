"""The progress bar of one file, for ``ftx get`` and ``ftx put``."""

from __future__ import annotations

import sys
from typing import Any

from ftx.cli._output import printable


class ProgressBar:
    """A tqdm bar drawn on stderr, created when the size of the download is known."""

    def __init__(self, *, enabled: bool, label: str) -> None:
        self._enabled = enabled
        self._label = printable(label)
        self._bar: Any = None
        self._shown = 0

    def update(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            from tqdm import tqdm  # only when a bar is drawn: keeps start-up fast

            self._bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=self._label,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        if done < self._shown:  # started again from zero: the file changed on the server
            self._bar.reset(total=total)
            self._shown = 0
        self._bar.update(done - self._shown)
        self._shown = done

    def clear(self) -> None:
        """Wipe the bar from the terminal, so that a message can be printed in its place."""
        if self._bar is not None:
            self._bar.clear()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
