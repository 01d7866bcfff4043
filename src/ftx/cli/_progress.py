"""The progress bars of ``ftx get`` and ``ftx put``, drawn on stderr with tqdm.

One layout for both (:func:`layout`): a label, the percentage, a bar, the bytes done of the
total, the rate and the time left, in IEC units (``MiB``, ``MiB/s``) as in every other line ftx
prints. On a narrow terminal the label is shortened first (keeping its end: the file's name),
then the bar goes, then the time left; the rate always stays. A resumed transfer starts its bar
where it resumes, and its rate counts only the bytes that cross the network.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Final, Protocol

from ftx.cli._output import human_size, printable

if TYPE_CHECKING:
    from ftx.client import ProgressCallback

__all__ = ["ProgressBar", "TreeBar", "TreeTotals", "layout"]

_REFRESH_SECONDS: Final = 0.2


class TreeTotals(Protocol):
    """What a :class:`TreeBar` draws: :class:`ftx.client.TreeProgress` for a download,
    :class:`ftx.client.TreePutReport` for an upload."""

    @property
    def files_found(self) -> int: ...
    @property
    def bytes_found(self) -> int: ...
    @property
    def files_done(self) -> int: ...
    @property
    def bytes_done(self) -> int: ...
    @property
    def listing_done(self) -> bool: ...
    @property
    def in_flight(self) -> Collection[str]: ...


_MIN_BAR: Final = 10
_MIN_LABEL: Final = 8
_DEFAULT_COLUMNS: Final = 80


def _width(text: str) -> int:
    from tqdm.utils import disp_len

    return int(disp_len(text))


def shorten(label: str, room: int) -> str:
    """``label`` in at most ``room`` columns, keeping its end (``…`` marks what was cut)."""
    if _width(label) <= room:
        return label
    if room <= 1:
        return "…"[:room]
    kept = label
    while kept and _width(kept) > room - 1:
        kept = kept[1:]
    return "…" + kept


def _sizes(done: float, total: float | None) -> str:
    if not total:
        return human_size(done)
    done_text, total_text = human_size(done), human_size(total)
    number, _, unit = done_text.partition(" ")
    if total_text.endswith(" " + unit):
        return f"{number}/{total_text}"
    return f"{done_text}/{total_text}"


def _clock(seconds: float) -> str:
    hours, rest = divmod(int(seconds + 0.5), 3600)
    minutes = f"{rest // 60:02d}:{rest % 60:02d}"
    return f"{hours}:{minutes}" if hours else minutes


def _braces(text: str) -> str:
    """``text`` made safe inside a ``str.format`` template."""
    return text.replace("{", "{{").replace("}", "}}")


def layout(label: str, format_dict: dict[str, Any], extra: str = "") -> tuple[str, int]:
    """The tqdm ``bar_format`` and the width to draw one line of progress in, from tqdm's
    ``format_dict`` (``n``, ``total``, ``elapsed``, ``rate``, ``initial``, ``ncols``).

    ``extra`` (the files in flight, say) is shown after the rest only where there is room.
    """
    columns = (format_dict.get("ncols") or _DEFAULT_COLUMNS) - 1  # the last column wraps
    done, total = format_dict["n"], format_dict["total"]
    rate = format_dict.get("rate")  # recent (smoothed), while in progress
    elapsed = format_dict.get("elapsed") or 0
    moved = done - (format_dict.get("initial") or 0)  # a resumed transfer's own bytes
    if (not rate or (total and done >= total)) and elapsed > 0 and moved > 0:
        rate = moved / elapsed  # the average, at the end
    percent = f"{100 * done / total:3.0f}%" if total else "100%" if total == 0 else ""
    speed = f"{human_size(rate)}/s" if rate else "? B/s"
    left = _clock(max(total - done, 0) / rate) if rate and total else "--:--" if total else ""
    sizes = _sizes(done, total)
    stats = " ".join(part for part in (sizes, speed, left) if part)
    label_width = _width(label)
    # With a bar: "label pct|bar| stats".
    room = columns - (label_width + 1 + len(percent) + 2 + 1 + _width(stats))
    if room >= _MIN_BAR:
        tail = f"  {extra}" if extra and room - _width(extra) - 2 >= _MIN_BAR else ""
        template = f"{_braces(label)} {percent}|{{bar}}| {_braces(stats + tail)}"
        return template, columns
    # Without a bar: "label pct stats", the label cut to fit; then without the time left,
    # then without the sizes. The rate stays.
    for shown in (stats, f"{sizes} {speed}", speed):
        room = columns - (len(percent) + 2 + _width(shown))
        if room >= min(_MIN_LABEL, label_width):
            text = " ".join(part for part in (shorten(label, room), percent, shown) if part)
            return _braces(text), columns
    return _braces(f"{percent} {speed}".strip()[:columns]), columns


def _tqdm(**kwargs: Any) -> Any:
    """A tqdm bar on stderr whose every frame is laid out by :func:`layout`."""
    from tqdm import tqdm  # only when a bar is drawn: keeps start-up fast

    class _Bar(tqdm):  # type: ignore[type-arg]
        label = ""
        extra = ""

        @property
        def format_dict(self) -> dict[str, Any]:
            values: dict[str, Any] = dict(super().format_dict)
            values["bar_format"], values["ncols"] = layout(self.label, values, self.extra)
            return values

    return _Bar(file=sys.stderr, dynamic_ncols=True, unit="B", leave=True, **kwargs)


class ProgressBar:
    """The bar of one file, made when its size is known (the first report of progress)."""

    def __init__(self, *, enabled: bool, label: str) -> None:
        self._enabled = enabled
        self._label = printable(label)
        self._bar: Any = None
        self._shown = 0

    @property
    def callback(self) -> ProgressCallback | None:
        """What to pass a download as its ``progress``: :meth:`update` when the bar is shown,
        else ``None``, so that a download without a bar (``-q``, ``--json``, stderr not a
        terminal) reports no progress at all. On the bulk path each report wakes the event
        loop from the receiving thread: about 1,000 wake-ups per GiB, which cost the client
        more CPU than the rest of its event loop (docs/performance.md, issue 13)."""
        return self.update if self._enabled else None

    def update(self, done: int, total: int) -> None:
        """Show ``done`` bytes of ``total`` (:data:`ftx.ProgressCallback`)."""
        if not self._enabled:
            return
        if self._bar is None:
            # A resumed transfer starts where it resumes: its rate counts what moves now.
            self._bar = _tqdm(total=total, initial=done)
            self._bar.label = self._label
            self._shown = done
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
        """Draw the last frame and leave it on the screen."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class TreeBar:
    """One bar for a batch of files: their bytes, the files done of those found (``+`` while
    the listing goes on), and the names of files in flight where there is room."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Any = None

    async def keep_drawn(self, totals: TreeTotals) -> None:
        """Draw ``totals`` five times a second until cancelled."""
        import trio  # (loaded already wherever a tree moves: not at start-up for --help)

        while True:
            self.refresh(totals)
            await trio.sleep(_REFRESH_SECONDS)

    def refresh(self, totals: TreeTotals) -> None:
        """Draw the totals as they are now."""
        if not self._enabled:
            return
        if self._bar is None:
            self._bar = _tqdm(total=totals.bytes_found)
        bar = self._bar
        bar.total = totals.bytes_found
        bar.n = min(totals.bytes_done, totals.bytes_found)
        more = "" if totals.listing_done else "+"
        bar.label = f"{totals.files_done}/{totals.files_found}{more} files"
        bar.extra = ", ".join(printable(name) for name in sorted(totals.in_flight)[:3])
        bar.refresh()

    def close(self, totals: TreeTotals) -> None:
        """Draw the final totals and leave them on the screen."""
        if self._bar is not None or (self._enabled and totals.files_found):
            self.refresh(totals)
            self._bar.close()
            self._bar = None
