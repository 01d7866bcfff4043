"""The file system as the server sees it.

:class:`ServedRoot` is the server's view of the directory it serves. Every lookup walks the
requested path one component at a time from a descriptor of the root, with ``O_NOFOLLOW`` and
``dir_fd``, and checks the opened file with ``fstat``: a path can never lead outside the root,
even when a directory is swapped for a symbolic link between the check and the open.
``Path.resolve()`` followed by a prefix check would be open to exactly that race.

Symbolic links inside the root are resolved here, not by the kernel: a relative link whose
target stays inside the root is followed; an absolute link, or one that climbs out of the root,
is refused (:attr:`FsReason.OUTSIDE_ROOT`) without ever touching its target.

It speaks its own language, not the protocol's: a refusal is an :class:`FsError` with an
:class:`FsReason`, a listing is made of :class:`FsEntry`; the server translates both for its
clients (:mod:`ftx.server._fs_wire`).

Everything here blocks; the trio layers call it through :func:`trio.to_thread.run_sync` where a
call may take long. POSIX only (it needs ``dir_fd`` support).
"""

from __future__ import annotations

import enum
import errno
import hashlib
import os
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from ftx.errors import FtxError

__all__ = [
    "UPLOAD_PART_SUFFIX",
    "DirectoryListing",
    "FileType",
    "FsEntry",
    "FsError",
    "FsReason",
    "OpenedFile",
    "ServedRoot",
    "file_identity",
    "is_upload_in_progress",
    "portable_identity",
    "read_cached_into",
]

MAX_SYMLINKS: Final = 40
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: should a FIFO slip in between the check and the open, the open must not hang.
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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
    key = ":".join(map(str, _identity_key(st)))
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


def _identity_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
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


def _os_error(exc: OSError, path: str) -> FsError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FsError(FsReason.PERMISSION_DENIED, f"permission denied: {path!r}")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
        return FsError(FsReason.NOT_FOUND, f"no such file or directory: {path!r}")
    return FsError(FsReason.UNEXPECTED, f"cannot open {path!r}: {os.strerror(exc.errno or 0)}")


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
            entry = _entry(dir_entry.name, st)
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


def _entry(name: str, st: os.stat_result) -> FsEntry | None:
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


class ServedRoot:
    """A directory served: every lookup stays inside it. Nothing here writes; uploads create
    files through :meth:`open_parent` (see :mod:`ftx.server._writes`).

    Args:
        path: the directory to serve. It is opened once, here; if it is later renamed or
            replaced, the server goes on serving the directory it opened.

    Raises:
        OSError: ``path`` cannot be opened as a directory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: Final = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType
    ) -> None:
        self.close()

    def open_file(self, path: str) -> OpenedFile:
        """Open the regular file at ``path`` (relative to the root) for reading.

        Raises:
            FsError: for ``OUTSIDE_ROOT``, ``INVALID_PATH``, ``NOT_FOUND``, ``PERMISSION_DENIED``,
                ``NOT_A_FILE`` (directories, FIFOs, devices, sockets) or ``UNEXPECTED``.
        """
        with self._walk(path) as (dir_fd, name, st):
            _refuse_upload_in_progress(path, name)
            if name is None or stat.S_ISDIR(st.st_mode):
                raise FsError(FsReason.NOT_A_FILE, f"{path!r} is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise FsError(FsReason.NOT_A_FILE, f"{path!r} is not a regular file")
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise _raced_or(exc, path) from None
            opened = OpenedFile(fd, os.fstat(fd))
            if not stat.S_ISREG(opened.stat.st_mode) or not _same_file(opened.stat, st):
                opened.close()
                raise FsError(FsReason.NOT_FOUND, f"{path!r} changed while being opened")
            return opened

    def is_unchanged(self, path: str, known: os.stat_result) -> bool:
        """Whether ``path`` still leads to the file that had the metadata ``known``, with the
        same identity (so unchanged): a cheap check before answering from a copy read earlier.
        One ``stat``, following links as they are now, opening nothing; ``False`` whenever in
        doubt (the caller then opens the file again, the careful way)."""
        try:
            now = os.stat("/".join(split_request_path(path)) or ".", dir_fd=self._fd)
        except (OSError, FsError):
            return False
        return _identity_key(now) == _identity_key(known)

    def list_directory(self, path: str) -> DirectoryListing | FsEntry:
        """Open the directory at ``path`` for listing, or return the entry of a non-directory.

        Raises:
            FsError: as :meth:`open_file` does (except ``NOT_A_FILE``).
        """
        with self._walk(path) as (dir_fd, name, st):
            _refuse_upload_in_progress(path, name)
            if name is not None and not stat.S_ISDIR(st.st_mode):
                # Named as asked, even when a symbolic link led to it (as `ls -L` does).
                asked = split_request_path(path)[-1:]
                entry = _entry(asked[0] if asked and asked[0] != ".." else name, st)
                if entry is None:  # pragma: no cover - the request itself was valid UTF-8
                    raise FsError(FsReason.NOT_FOUND, f"no such file: {path!r}")
                return entry
            try:
                fd = os.open(name or ".", _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise _raced_or(exc, path) from None
            if not _same_file(os.fstat(fd), st):
                os.close(fd)
                raise FsError(FsReason.NOT_FOUND, f"{path!r} changed while being opened")
            return DirectoryListing(fd)

    def open_parent(self, path: str) -> tuple[int, str]:
        """Open the directory that holds (or is to hold) ``path``, for creating something in it.

        Returns the directory's descriptor, which the caller closes, and the last component of
        ``path``: a single name, never ``.`` or ``..``. The directories on the way are resolved
        as :meth:`open_file` resolves them, so the descriptor is always inside the root; the last
        component itself is not looked at.

        Raises:
            FsError: as :meth:`open_file` does for the directories on the way (``NOT_FOUND``
                when one of them is not a directory), and ``INVALID_PATH`` for a path that names
                no file (the root, or one ending in ``..``).
        """
        parts = split_request_path(path)
        if not parts or parts[-1] == "..":
            raise FsError(FsReason.INVALID_PATH, f"{path!r} names no file")
        with self._walk("/".join(parts[:-1])) as (dir_fd, name, st):
            if not stat.S_ISDIR(st.st_mode):
                raise FsError(FsReason.NOT_FOUND, f"no such directory for {path!r}")
            try:
                fd = os.open(name or ".", _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise _raced_or(exc, path) from None
            if not _same_file(os.fstat(fd), st):
                os.close(fd)
                raise FsError(FsReason.NOT_FOUND, f"{path!r} changed while being opened")
            return fd, parts[-1]

    def _walk(self, path: str) -> _Walk:
        return _Walk(self._fd, path)


def _refuse_upload_in_progress(path: str, reached: str | None) -> None:
    """Refuse (``NOT_FOUND``) a path whose last component, as asked or as reached through
    symbolic links, is the name of an upload in progress: such names are neither listed nor
    served, so they are not there."""
    asked = split_request_path(path)[-1:]
    if any(is_upload_in_progress(name) for name in (*asked, reached or "")):
        raise FsError(FsReason.NOT_FOUND, f"no such file or directory: {path!r}")


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _raced_or(exc: OSError, path: str, races: tuple[int, ...] = (errno.ELOOP,)) -> FsError:
    # ELOOP from O_NOFOLLOW: it was swapped for a symbolic link after we looked.
    if exc.errno in races:
        return FsError(FsReason.NOT_FOUND, f"{path!r} changed while being opened")
    return _os_error(exc, path)


class _Walk:
    """Resolves a requested path to (directory fd, last component, its lstat) inside the root.

    The last component is ``None`` when the path names the root itself. Directory descriptors
    opened on the way are closed when the ``with`` block ends.
    """

    def __init__(self, root_fd: int, path: str) -> None:
        self._root_fd = root_fd
        self._path = path
        self._stack: list[int] = []  # descriptors of the directories below the root, owned

    def __enter__(self) -> tuple[int, str | None, os.stat_result]:
        try:
            return self._resolve()
        except BaseException:
            self._close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self._close()

    def _close(self) -> None:
        while self._stack:
            os.close(self._stack.pop())

    @property
    def _current(self) -> int:
        return self._stack[-1] if self._stack else self._root_fd

    def _resolve(self) -> tuple[int, str | None, os.stat_result]:
        path = self._path
        todo = deque(split_request_path(path))
        links = 0
        while todo:
            name = todo.popleft()
            if name == "..":
                if not self._stack:
                    raise FsError(FsReason.OUTSIDE_ROOT, f"{path!r} leads outside the root")
                os.close(self._stack.pop())
                continue
            try:
                st = os.stat(name, dir_fd=self._current, follow_symlinks=False)
            except OSError as exc:
                raise _os_error(exc, path) from None
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise FsError(FsReason.NOT_FOUND, f"{path!r}: too many symbolic links")
                todo.extendleft(reversed(self._link_components(name, path)))
                continue
            if not todo:
                return self._current, name, st
            if not stat.S_ISDIR(st.st_mode):
                raise FsError(FsReason.NOT_FOUND, f"no such file or directory: {path!r}")
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=self._current)
            except OSError as exc:
                raise _raced_or(exc, path) from None
            self._stack.append(fd)
            if not _same_file(os.fstat(fd), st):
                raise FsError(FsReason.NOT_FOUND, f"{path!r} changed while being opened")
        return self._current, None, os.fstat(self._current)

    def _link_components(self, name: str, path: str) -> list[str]:
        try:
            target = os.readlink(name, dir_fd=self._current)
        except OSError as exc:
            # EINVAL: no longer a link; ENOENT: gone. Both: replaced after we looked.
            raise _raced_or(exc, path, (errno.EINVAL, errno.ENOENT)) from None
        if target.startswith("/"):
            # Refused without looking: the answer must not depend on what exists out there.
            raise FsError(FsReason.OUTSIDE_ROOT, f"{path!r} leads outside the served directory")
        return [part for part in target.split("/") if part not in ("", ".")]
