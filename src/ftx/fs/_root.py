"""The served directory: :class:`ServedRoot` walks every requested path one component at a time
from a descriptor of the root (see :mod:`ftx.fs`)."""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from ftx.fs._files import (
    DirectoryListing,
    FsEntry,
    OpenedFile,
    entry_of,
    identity_key,
    is_upload_in_progress,
)
from ftx.fs._refusals import FsError, FsReason, os_error, raced_or, split_request_path

__all__ = ["MAX_SYMLINKS", "ServedRoot"]


MAX_SYMLINKS: Final = 40


_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# O_NONBLOCK: should a FIFO slip in between the check and the open, the open must not hang.
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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
                raise raced_or(exc, path) from None
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
        return identity_key(now) == identity_key(known)

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
                entry = entry_of(asked[0] if asked and asked[0] != ".." else name, st)
                if entry is None:  # pragma: no cover - the request itself was valid UTF-8
                    raise FsError(FsReason.NOT_FOUND, f"no such file: {path!r}")
                return entry
            return DirectoryListing(_open_directory(dir_fd, name, st, path))

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
            return _open_directory(dir_fd, name, st, path), parts[-1]

    def _walk(self, path: str) -> _Walk:
        return _Walk(self._fd, path)


def _refuse_upload_in_progress(path: str, reached: str | None) -> None:
    """Refuse (``NOT_FOUND``) a path whose last component, as asked or as reached through
    symbolic links, is the name of an upload in progress: such names are neither listed nor
    served, so they are not there."""
    asked = split_request_path(path)[-1:]
    if any(is_upload_in_progress(name) for name in (*asked, reached or "")):
        raise FsError(FsReason.NOT_FOUND, f"no such file or directory: {path!r}")


def _open_directory(dir_fd: int, name: str | None, st: os.stat_result, path: str) -> int:
    """Open the directory ``name`` in ``dir_fd`` (``dir_fd`` itself if ``name`` is ``None``)
    that the walk found with ``st``; raise FsError if it is no longer that directory."""
    try:
        fd = os.open(name or ".", _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise raced_or(exc, path) from None
    if not _same_file(os.fstat(fd), st):
        os.close(fd)
        raise FsError(FsReason.NOT_FOUND, f"{path!r} changed while being opened")
    return fd


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


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
                raise os_error(exc, path) from None
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
                raise raced_or(exc, path) from None
            self._stack.append(fd)
            if not _same_file(os.fstat(fd), st):
                raise FsError(FsReason.NOT_FOUND, f"{path!r} changed while being opened")
        return self._current, None, os.fstat(self._current)

    def _link_components(self, name: str, path: str) -> list[str]:
        try:
            target = os.readlink(name, dir_fd=self._current)
        except OSError as exc:
            # EINVAL: no longer a link; ENOENT: gone. Both: replaced after we looked.
            raise raced_or(exc, path, (errno.EINVAL, errno.ENOENT)) from None
        if target.startswith("/"):
            # Refused without looking: the answer must not depend on what exists out there.
            raise FsError(FsReason.OUTSIDE_ROOT, f"{path!r} leads outside the served directory")
        return [part for part in target.split("/") if part not in ("", ".")]
