"""The server's edge with its sandbox: :mod:`ftx.fs` speaks its own language (an
:class:`~ftx.fs.FsReason` for a refusal, an :class:`~ftx.fs.FsEntry` in a listing), and this is
the one place that says what each becomes on the wire.

Both tables must name every member of the enum they translate (the tests check it): a reason
added to :mod:`ftx.fs` without its error code here would fail the tests, not a client.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ftx.fs import FileType, FsEntry, FsError, FsReason
from ftx.protocol import ErrorCode
from ftx.protocol.messages import Entry, EntryType

__all__ = ["ENTRY_TYPES", "ERROR_CODES", "error_code", "wire_entry"]

ERROR_CODES: Final[Mapping[FsReason, ErrorCode]] = MappingProxyType(
    {
        FsReason.OUTSIDE_ROOT: ErrorCode.OUTSIDE_ROOT,
        FsReason.INVALID_PATH: ErrorCode.BAD_REQUEST,
        FsReason.NOT_FOUND: ErrorCode.NOT_FOUND,
        FsReason.PERMISSION_DENIED: ErrorCode.PERMISSION_DENIED,
        FsReason.NOT_A_FILE: ErrorCode.NOT_A_FILE,
        FsReason.EXISTS: ErrorCode.EXISTS,
        FsReason.IN_USE: ErrorCode.BUSY,
        FsReason.NO_SPACE: ErrorCode.NO_SPACE,
        FsReason.READ_ONLY: ErrorCode.READ_ONLY,
        FsReason.UNEXPECTED: ErrorCode.INTERNAL,
    }
)
"""The wire error code a refusal of the sandbox is answered with, by reason."""

ENTRY_TYPES: Final[Mapping[FileType, EntryType]] = MappingProxyType(
    {
        FileType.FILE: EntryType.FILE,
        FileType.DIRECTORY: EntryType.DIRECTORY,
        FileType.SYMLINK: EntryType.SYMLINK,
        FileType.OTHER: EntryType.OTHER,
    }
)
"""The wire type of a listed entry, by the sandbox's file type."""


def error_code(exc: FsError) -> ErrorCode:
    """The error code to answer a request with when the sandbox refused it with ``exc`` (whose
    message goes to the client unchanged)."""
    return ERROR_CODES[exc.reason]


def wire_entry(entry: FsEntry) -> Entry:
    """The listing entry to send for ``entry``."""
    return Entry(entry.name, ENTRY_TYPES[entry.type], entry.size, entry.mtime_ns, entry.mode)
