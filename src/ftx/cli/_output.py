"""What the commands print: names made safe for the terminal, messages on stderr (above any
progress bar, never inside it), sizes for people, and the JSON records of ``--json``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from ftx.errors import FtxError, RemoteError

if TYPE_CHECKING:
    from ftx.client import Download, Skipped, Upload


def printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped.

    Names and messages that come from a server go through this before reaching the terminal,
    so that escape sequences in them cannot rewrite what the user sees.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def write_line(text: str) -> None:
    """Print one line on stderr; while a progress bar is drawn there, above it (the bar is
    cleared, the line printed, the bar drawn again), so that the two never share a line."""
    tqdm_module = sys.modules.get("tqdm")  # imported only once a bar was drawn
    if tqdm_module is not None and getattr(tqdm_module.tqdm, "_instances", None):
        tqdm_module.tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def say(args: argparse.Namespace, message: str) -> None:
    """Print ``message`` on stderr (see :func:`write_line`), unless ``--quiet``; escaped with
    :func:`printable`, since what is said often quotes a server (an error retried, a name)."""
    if not args.quiet:
        write_line(printable(message))


class TerminalLogHandler(logging.Handler):
    """Writes log records with :func:`write_line`, escaped with :func:`printable` (a record may
    quote the server): ``-v`` diagnostics stay out of the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_line(printable(self.format(record)))
        except Exception:  # pragma: no cover - as logging.StreamHandler does
            self.handleError(record)


def human_size(size: float) -> str:
    """``size`` bytes, e.g. ``512 B`` or ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def timing(size: int, offset: int, seconds: float) -> str:
    """How a transfer of ``size`` bytes went, of which ``offset`` were there already (resumed):
    ``"3.0 MiB in 0.01 s, 261.9 MiB/s"``, or ``"500.0 MiB, resumed at 322.0 MiB: 178.0 MiB in
    0.24 s, 741.7 MiB/s"``. Rates count only the bytes that crossed the network; files under
    1 MiB get no time."""
    moved = size - offset
    said = human_size(size)
    if offset:
        said += f", resumed at {human_size(offset)}: {human_size(moved)}"
    if moved >= 2**20 and seconds > 0:
        said += f" in {seconds:.2f} s, {moved / seconds / 2**20:.1f} MiB/s"
    return said


def as_json(path: str, result: Download | Upload | FtxError | Skipped) -> dict[str, Any]:
    """What ``--json`` prints about the file at ``path``: saved (or sent), skipped, failed."""
    from ftx.client import Download, Skipped, Upload  # (not loaded by 'ftx serve')

    if isinstance(result, Download):
        return {
            "path": path,
            "status": "saved",
            "dest": str(result.dest),
            "size": result.size,
            "offset": result.offset,
            "mtime_ns": result.mtime_ns,
            "digest": result.digest,
            "digest_algorithm": result.digest_algorithm,
            "seconds": round(result.seconds, 6),
        }
    if isinstance(result, Upload):
        return {
            "path": path,
            "status": "sent",
            "dest": result.path,
            "size": result.size,
            "offset": result.offset,
            "digest": result.digest,
            "digest_algorithm": result.digest_algorithm,
            "seconds": round(result.seconds, 6),
        }
    if isinstance(result, Skipped):
        return {"path": path, "status": "skipped", "reason": result.reason}
    code = result.code if isinstance(result, RemoteError) else type(result).__name__
    return {"path": path, "status": "failed", "error": code, "message": str(result)}
