"""Walking a directory tree beneath a served root, for tree streams (docs/protocol.md §21).

:class:`TreeWalker` goes through the tree in its canonical order: depth first, a directory's
files before its subdirectories, names sorted by their UTF-8 bytes (so that a client can list
what it has in the same order, and the server can merge the two). Every directory is opened
with ``O_NOFOLLOW`` relative to its parent's descriptor, and every file relative to its
directory's, so nothing outside the root is ever reached; symbolic links and special files
are reported, not followed. Small files are read whole, here, in the same call; large ones are
returned open, for the caller to stream.

Like :mod:`ftx.fs` (which it builds on) it speaks its own language, not the protocol's, and it
blocks: call :meth:`TreeWalker.next_batch` through :func:`trio.to_thread.run_sync`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from ftx.fs import DirectoryListing, OpenedFile, is_upload_in_progress

__all__ = [
    "MAX_DEPTH",
    "DirItem",
    "Have",
    "LargeItem",
    "SameItem",
    "SkipItem",
    "SmallItem",
    "TreeWalker",
    "WalkItem",
    "sort_key",
]

MAX_DEPTH: Final = 128
"""Directories nested deeper than this below the tree's root are reported, not entered."""
_MAX_NAME_BYTES: Final = 255
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

Have = dict[str, tuple[int, int, str | None]]
"""What the client has in one directory: name to (size, mtime_ns, digest or None)."""


@dataclass(frozen=True, slots=True)
class DirItem:
    """A directory, relative to the tree's root ("" for the root)."""

    path: str


@dataclass(frozen=True, slots=True)
class SmallItem:
    """A small file of the current directory, read whole."""

    name: str
    mtime_ns: int
    mode: int
    digest: str | None
    content: bytes


@dataclass(slots=True)
class LargeItem:
    """A large file of the current directory, open: the caller streams it, then closes it."""

    name: str
    opened: OpenedFile


@dataclass(frozen=True, slots=True)
class SameItem:
    """A file of the current directory the client has already: left out."""

    name: str


@dataclass(frozen=True, slots=True)
class SkipItem:
    """An entry not sent: ``reason`` is ``"symlink"``, ``"not-a-file"``, ``"not-found"``,
    ``"permission-denied"``, ``"too-large"`` (too deep) or ``"internal"``."""

    path: str
    reason: str
    message: str


WalkItem = DirItem | SmallItem | LargeItem | SkipItem | SameItem


def sort_key(name: str) -> bytes:
    """The canonical order of names in a directory: by their UTF-8 bytes."""
    return name.encode("utf-8", "surrogateescape")


def _usable(name: str) -> bool:
    """Whether ``name`` can travel in a tree stream (the protocol's name rules)."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return 0 < size <= _MAX_NAME_BYTES and "\\" not in name and not is_upload_in_progress(name)


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


@dataclass(slots=True)
class _Frame:
    path: str
    fd: int
    subdirectories: Iterator[str]
    depth: int


class TreeWalker:
    """The tree under one directory, walked a batch at a time (see the module's docstring).

    Args:
        listing: the tree's root directory, opened (:meth:`ftx.fs.ServedRoot.list_directory`);
            the walker closes it.
        small_size: files smaller than this are read whole (:class:`SmallItem`).
        digest: computes a small file's digest, or ``None`` for no digests.
        checksum: a file the client has is left out only if its digest is the client's
            (otherwise, if its size and modification time are).
    """

    def __init__(
        self,
        listing: DirectoryListing,
        *,
        small_size: int,
        digest: Callable[[bytes], str] | None,
        file_digest: Callable[[OpenedFile], str] | None = None,
        checksum: bool = False,
    ) -> None:
        self._listing = listing
        self._small_size = small_size
        self._digest = digest
        self._file_digest = file_digest
        self._checksum = checksum
        self._stack: list[_Frame] = []
        # The current directory's files, and the index of the next one.
        self._files: list[tuple[str, os.stat_result]] = []
        self._next_file = 0
        self._directory = ""
        self._directory_fd = -1
        self._started = False
        self.have: Have = {}
        """What the client has in the current directory (set by the caller after each
        :class:`DirItem`, when it sends what it has)."""
        self.unchanged = 0
        """How many files were left out because the client has them."""

    def close(self) -> None:
        """Close every descriptor still open."""
        for frame in self._stack:
            if frame.fd != self._listing.fd:
                os.close(frame.fd)
        self._stack.clear()
        self._listing.close()

    def next_batch(
        self, max_files: int, max_bytes: int, stop_at_directories: bool = False
    ) -> list[WalkItem]:
        """The next items, in order: at most ``max_files`` small files holding about
        ``max_bytes`` in all; the batch ends after a :class:`LargeItem` and, with
        ``stop_at_directories``, after a :class:`DirItem`. Empty at the end of the tree."""
        items: list[WalkItem] = []
        files = size = 0
        while files < max_files and size < max_bytes:
            if self._next_file < len(self._files):
                entry: tuple[str, os.stat_result] | None = self._files[self._next_file]
                self._next_file += 1
            else:
                entry = None
            if entry is None:
                found = self._next_directory(items)
                if not found:
                    return items
                if stop_at_directories:
                    return items
                continue
            item = self._file(*entry)
            if item is None:
                continue
            items.append(item)
            if isinstance(item, LargeItem):
                return items
            if isinstance(item, SmallItem | SameItem):
                files += 1
                size += len(item.content) + 64 if isinstance(item, SmallItem) else 64
        return items

    def take_unchanged(self, max_files: int) -> list[SameItem]:
        """The next files of the current directory, at most ``max_files``, that the client has
        already with the same size and modification time (:attr:`have`): left out, as
        :meth:`next_batch` would leave them out, but decided from the listing alone (no
        system call, so the caller need not use a thread). Stops at the first other file; with
        ``checksum`` (digests to compare) it takes none."""
        taken: list[SameItem] = []
        if self._checksum or not self.have:
            return taken
        have, files, index = self.have, self._files, self._next_file
        end = min(len(files), index + max_files)
        while index < end:
            name, listed = files[index]
            known = have.get(name)
            if (
                known is None
                or not stat.S_ISREG(listed.st_mode)
                or known[:2] != (listed.st_size, listed.st_mtime_ns)
            ):
                break
            taken.append(SameItem(name))
            index += 1
        self._next_file = index
        self.unchanged += len(taken)
        return taken

    def _next_directory(self, items: list[WalkItem]) -> bool:
        """Enter the next directory, appending its :class:`DirItem` (and skips) to ``items``;
        False at the end of the tree."""
        if not self._started:
            self._started = True
            return self._enter("", self._listing.fd, 0, items)
        while self._stack:
            frame = self._stack[-1]
            name = next(frame.subdirectories, None)
            if name is None:
                self._stack.pop()
                if frame.fd != self._listing.fd:
                    os.close(frame.fd)
                continue
            path = _join(frame.path, name)
            if frame.depth + 1 > MAX_DEPTH:
                items.append(SkipItem(path, "too-large", f"more than {MAX_DEPTH} levels deep"))
                continue
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=frame.fd)
            except OSError as exc:
                items.append(_skip_for(path, exc))
                continue
            if self._enter(path, fd, frame.depth + 1, items):
                return True
        return False

    def _enter(self, path: str, fd: int, depth: int, items: list[WalkItem]) -> bool:
        """List the directory ``fd`` at ``path``: its files become the current ones, its
        subdirectories a new frame."""
        files: list[tuple[str, os.stat_result]] = []
        subdirectories: list[str] = []
        try:
            with os.scandir(fd) as entries:
                for dir_entry in entries:
                    name = dir_entry.name
                    if not _usable(name):
                        continue
                    try:
                        st = dir_entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed while we list
                    if stat.S_ISDIR(st.st_mode):
                        subdirectories.append(name)
                    else:  # files, and links and the rest, reported in their place
                        files.append((name, st))
        except OSError as exc:
            if fd != self._listing.fd:
                os.close(fd)
            items.append(_skip_for(path, exc))
            return False
        files.sort(key=lambda pair: sort_key(pair[0]))
        subdirectories.sort(key=sort_key)
        self._stack.append(_Frame(path, fd, iter(subdirectories), depth))
        self._directory, self._directory_fd = path, fd
        self._files, self._next_file = files, 0
        self.have = {}
        items.append(DirItem(path))
        return True

    def _file(self, name: str, listed: os.stat_result) -> WalkItem | None:
        """The item for the file ``name`` of the current directory, or ``None`` to leave it
        out (it vanished)."""
        path = _join(self._directory, name)
        if stat.S_ISLNK(listed.st_mode):
            return SkipItem(path, "symlink", "a symbolic link (not followed)")
        if not stat.S_ISREG(listed.st_mode):
            return SkipItem(path, "not-a-file", "not a regular file")
        known = self.have.get(name)
        if (
            known is not None
            and not self._checksum
            and known[:2] == (listed.st_size, listed.st_mtime_ns)
        ):
            self.unchanged += 1
            return SameItem(name)
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=self._directory_fd)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None  # removed since it was listed
            return _skip_for(path, exc)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (
                listed.st_dev,
                listed.st_ino,
            ):
                return SkipItem(path, "not-found", "changed while being opened")
            if st.st_size >= self._small_size:
                opened = OpenedFile(fd, st)
                fd = -1  # (the opened file's now)
                return self._large(name, opened, known)
            content = _read_whole(fd, st.st_size)
        except OSError as exc:
            return _skip_for(path, exc)
        finally:
            if fd >= 0:
                os.close(fd)
        if content is None:
            return SkipItem(path, "changed", "changed while being read")
        digest = self._digest(content) if self._digest is not None else None
        if known is not None and self._checksum and digest is not None and known[2] == digest:
            self.unchanged += 1
            return SameItem(name)
        return SmallItem(name, st.st_mtime_ns, stat.S_IMODE(st.st_mode), digest, content)

    def _large(
        self, name: str, opened: OpenedFile, known: tuple[int, int, str | None] | None
    ) -> WalkItem:
        """The item for a large file, open (closed here if it is left out)."""
        try:
            if (
                known is not None
                and self._checksum
                and self._file_digest is not None
                and known[0] == opened.stat.st_size
                and known[2] == self._file_digest(opened)
            ):
                opened.close()
                self.unchanged += 1
                return SameItem(name)
        except BaseException:
            opened.close()
            raise
        return LargeItem(name, opened)


def _read_whole(fd: int, size: int) -> bytes | None:
    """The file's ``size`` bytes, or ``None`` if it holds more or fewer now."""
    content = os.pread(fd, size + 1, 0)
    if len(content) != size:
        return None
    return content


def _skip_for(path: str, exc: OSError) -> SkipItem:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SkipItem(path, "permission-denied", "permission denied")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return SkipItem(path, "symlink", "replaced by a symbolic link or a file; not followed")
    if exc.errno == errno.ENOENT:
        return SkipItem(path, "not-found", "removed while the tree was read")
    return SkipItem(path, "internal", os.strerror(exc.errno or 0))
