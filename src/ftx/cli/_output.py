"""What the commands print: names made safe for the terminal, messages on stderr, sizes for
people, and the JSON record of one file of ``ftx get --json``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ftx.client import Download, Skipped
from ftx.errors import FtxError, RemoteError


def printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped.

    Names and messages that come from a server go through this before reaching the terminal,
    so that escape sequences in them cannot rewrite what the user sees.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def say(args: argparse.Namespace, message: str) -> None:
    """Print ``message`` on stderr, unless ``--quiet``; escaped with :func:`printable`, since
    what is said often quotes a server (an error retried, a name)."""
    if not args.quiet:
        print(printable(message), file=sys.stderr)


def human_size(size: float) -> str:
    """``size`` bytes, e.g. ``512 B`` or ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def as_json(path: str, result: Download | FtxError | Skipped) -> dict[str, Any]:
    """What ``ftx get --json`` prints about the file at ``path``: saved, skipped or failed."""
    if isinstance(result, Download):
        return {
            "path": path,
            "status": "saved",
            "dest": str(result.dest),
            "size": result.size,
            "mtime_ns": result.mtime_ns,
            "digest": result.digest,
            "digest_algorithm": result.digest_algorithm,
            "seconds": round(result.seconds, 6),
        }
    if isinstance(result, Skipped):
        return {"path": path, "status": "skipped", "reason": result.reason}
    code = result.code if isinstance(result, RemoteError) else type(result).__name__
    return {"path": path, "status": "failed", "error": code, "message": str(result)}
