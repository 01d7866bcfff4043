"""What the sandbox hands out: an :class:`OpenedFile` with the metadata it had when opened (and
its identities), a :class:`DirectoryListing` read page by page, as :class:`FsEntry` items."""

from __future__ import annotations

import enum
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Final, Self

__all__ = [
    "UPLOAD_PART_SUFFIX",
    "DirectoryListing",
    "FileType",
    "FsEntry",
    "OpenedFile",
    "entry_of",
    "file_identity",
    "identity_key",
    "is_upload_in_progress",
    "portable_identity",
    "read_cached_into",
]


_RWF_NOWAIT: Final[int | None] = getattr(os, "RWF_NOWAIT", None)


def read_cached_into(fd: int, buffer: bytearray | memoryview, offset: int) -> int | None:
    """Read the open file ``fd`` from ``offset`` into ``buffer``, but only from the page cache:
    how many bytes were read (maybe fewer than asked for), or ``None`` if the read would have
    to wait for the disk (or the system cannot tell), so that an event loop can call this and
    fall back to a worker thread."""
    if _RWF_NOWAIT is None:
        return None
    try:
        count = os.preadv(fd, [buffer], offset, _RWF_NOWAIT)
    except OSError:
        # EAGAIN: not cached. EOPNOTSUPP and friends: this file system cannot say.
        return None
    # 0 may mean EOF or "nothing cached here"; only a blocking read can tell them apart.
    return count or None


UPLOAD_PART_SUFFIX: Final = ".ftx-upload-part"
"""An upload in progress is written to ``NAME`` + this (and its resume record beside it, with
``.resume`` added): neither is listed or served until it is complete under its own name."""


def is_upload_in_progress(name: str) -> bool:
    """Whether ``name`` is the part file (or resume record) of an upload in progress."""
    return name.endswith((UPLOAD_PART_SUFFIX, UPLOAD_PART_SUFFIX + ".resume"))


def file_identity(st: os.stat_result) -> str:
    """An opaque token that changes whenever the file's content or metadata change.

    It is stable across server restarts, so that a resume can check it continues the same file.
    ctime is in it because it changes on every write, even one that restores the mtime.
    """
    key = ":".join(map(str, identity_key(st)))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def portable_identity(path: str, st: os.stat_result) -> str:
    """An opaque token built only from what replicas of a file share: its path relative to
    the served root, its size and its modification time (``st_mtime_ns``).

    Two servers holding the same file (a shared directory, or copies made with ``rsync -a`` or
    ``cp -p``) give it the same token, so a download begun on one can be resumed on the other.
    It does not change on a write that keeps the size and restores the mtime: what catches
    such a file is the whole-file digest the client checks at the end.
    """
    key = f"portable:{st.st_size}:{st.st_mtime_ns}:{path}"
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def identity_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class FileType(enum.Enum):
    """What a directory entry is. Symbolic links are reported as such, not followed."""

    FILE = enum.auto()
    DIRECTORY = enum.auto()
    SYMLINK = enum.auto()
    OTHER = enum.auto()


@dataclass(frozen=True, slots=True)
class FsEntry:
    """One directory entry: ``name`` is a single path component; ``size`` is 0 but for a
    regular file; ``mode`` holds the permission bits only."""

    name: str
    type: FileType
    size: int
    mtime_ns: int
    mode: int


@dataclass(slots=True)
class OpenedFile:
    """A regular file opened for reading, with the metadata it had when it was opened."""

    fd: int
    stat: os.stat_result

    @property
    def size(self) -> int:
        return self.stat.st_size

    @property
    def identity(self) -> str:
        return file_identity(self.stat)

    def read_into(self, buffer: bytearray | memoryview, offset: int) -> int:
        """Read from ``offset`` into ``buffer``; return how many bytes were read (0 at EOF)."""
        return os.preadv(self.fd, [buffer], offset)

    def read_cached_into(self, buffer: bytearray | memoryview, offset: int) -> int | None:
        """Like :meth:`read_into`, but only from the page cache: ``None`` if the read would have
        to wait for the disk (or the system cannot tell), so that an event loop can call this
        and fall back to a worker thread. May read less than asked for.
        """
        return read_cached_into(self.fd, buffer, offset)

    def changed(self) -> bool:
        """True if the file's size, mtime or ctime differ from when it was opened."""
        now = os.fstat(self.fd)
        return (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
            self.stat.st_size,
            self.stat.st_mtime_ns,
            self.stat.st_ctime_ns,
        )

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class DirectoryListing:
    """The entries of one directory, read page by page so that memory stays bounded."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._iterator = os.scandir(fd)

    @property
    def fd(self) -> int:
        """The directory's descriptor (owned by the listing: closed with it)."""
        return self._fd

    def next_page(self, max_entries: int) -> list[FsEntry]:
        """Return up to ``max_entries`` more entries; an empty list at the end."""
        page: list[FsEntry] = []
        for dir_entry in self._iterator:
            try:
                st = dir_entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed while we list: it is no longer there to show
            entry = entry_of(dir_entry.name, st)
            if entry is not None and not is_upload_in_progress(entry.name):
                page.append(entry)
                if len(page) >= max_entries:
                    break
        return page

    def close(self) -> None:
        self._iterator.close()
        os.close(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def entry_of(name: str, st: os.stat_result) -> FsEntry | None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return None  # not valid UTF-8 on disk: the protocol cannot name it
    if stat.S_ISLNK(st.st_mode):
        kind = FileType.SYMLINK
    elif stat.S_ISDIR(st.st_mode):
        kind = FileType.DIRECTORY
    elif stat.S_ISREG(st.st_mode):
        kind = FileType.FILE
    else:
        kind = FileType.OTHER
    size = st.st_size if kind is FileType.FILE else 0
    return FsEntry(name, kind, size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
