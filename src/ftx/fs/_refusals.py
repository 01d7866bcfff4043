"""Why the sandbox refuses: :class:`FsReason` and :class:`FsError`, and the lexical check of a
requested path (which depends on the string alone, never on the disk)."""

from __future__ import annotations

import enum
import errno
import os

from ftx.errors import FtxError

__all__ = ["FsError", "FsReason", "os_error", "raced_or", "split_request_path"]


class FsReason(enum.Enum):
    """Why the file system side refused."""

    OUTSIDE_ROOT = enum.auto()  # the path leads out of the root (absolute, "..", a link)
    INVALID_PATH = enum.auto()  # NUL, backslash, not Unicode, too long, reserved, or no name
    NOT_FOUND = enum.auto()  # nothing there (or it changed while being opened)
    PERMISSION_DENIED = enum.auto()  # the system does not let the server read (or write) it
    NOT_A_FILE = enum.auto()  # not the regular file needed: a directory, FIFO, device...
    EXISTS = enum.auto()  # something is already at the name to create
    IN_USE = enum.auto()  # another upload is writing the same file
    NO_SPACE = enum.auto()  # the file system is full (or a quota or size limit is reached)
    READ_ONLY = enum.auto()  # the file system is mounted read-only
    UNEXPECTED = enum.auto()  # any other failure, or a change nothing should have made


class FsError(FtxError):
    """A lookup (or a write) was refused, for ``reason``; ``message`` names only the path the
    client asked for, never anything of the server's own layout."""

    def __init__(self, reason: FsReason, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(message)


def split_request_path(path: str) -> list[str]:
    """Check a requested path lexically and return its components.

    Raises:
        FsError: ``INVALID_PATH`` for a NUL byte, a backslash or a path that is not Unicode;
            ``OUTSIDE_ROOT`` for an absolute path or a ``..`` that climbs above the root. The
            answer depends only on the string, never on what exists on disk.
    """
    if path.startswith("/"):
        raise FsError(FsReason.OUTSIDE_ROOT, f"{path!r} is absolute; paths are relative")
    if "\x00" in path:
        raise FsError(FsReason.INVALID_PATH, "the path contains a NUL byte")
    if "\\" in path:
        raise FsError(FsReason.INVALID_PATH, f"{path!r} contains a backslash; separate with '/'")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate would reach a name that is not UTF-8 on disk: not servable.
        raise FsError(FsReason.INVALID_PATH, "the path is not valid Unicode") from None
    parts = [part for part in path.split("/") if part not in ("", ".")]
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            raise FsError(FsReason.OUTSIDE_ROOT, f"{path!r} leads outside the served directory")
    return parts


def os_error(exc: OSError, path: str) -> FsError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FsError(FsReason.PERMISSION_DENIED, f"permission denied: {path!r}")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
        return FsError(FsReason.NOT_FOUND, f"no such file or directory: {path!r}")
    return FsError(FsReason.UNEXPECTED, f"cannot open {path!r}: {os.strerror(exc.errno or 0)}")


def raced_or(exc: OSError, path: str, races: tuple[int, ...] = (errno.ELOOP,)) -> FsError:
    # ELOOP from O_NOFOLLOW: it was swapped for a symbolic link after we looked.
    if exc.errno in races:
        return FsError(FsReason.NOT_FOUND, f"{path!r} changed while being opened")
    return os_error(exc, path)
