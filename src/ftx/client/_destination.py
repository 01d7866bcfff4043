"""Where a download goes, and whether it may go there: the checks made before a part file is
created (and again, without a race, when it is renamed into place: see
:mod:`ftx.client._partfile`). They block (a few ``stat`` calls); the client makes them where
that does not matter, or in worker threads.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from ftx.errors import LocalFileError

__all__ = [
    "check_destination",
    "check_not_a_directory",
    "check_replaceable",
    "is_null_device",
    "local_destination",
]


def local_destination(remote_path: str, dest: str | os.PathLike[str] | None) -> Path:
    """Where a download of ``remote_path`` goes: ``dest``, or inside it if it is a directory,
    or the remote file's name in the current directory when ``dest`` is ``None``.

    The name is taken from the path the user asked for, never from anything a server says.

    Raises:
        LocalFileError: the remote path names no file (``""``, ``"."``, ``"dir/.."``), or
            ``dest`` ends with a slash but is no directory.
    """
    name = posixpath.basename(posixpath.normpath(remote_path.rstrip("/") or "."))
    if dest is not None and not os.path.isdir(dest):
        if os.fspath(dest).endswith(os.sep):  # "-o new/" means a directory, as for cp
            raise LocalFileError(f"cannot save to {os.fspath(dest)}: no such directory")
        return dest if isinstance(dest, Path) else Path(dest)
    if name in ("", ".", "..", "/"):
        raise LocalFileError(f"{remote_path!r} names no file: give a destination with -o")
    return Path(dest if dest is not None else ".") / name


def check_destination(
    target: Path, *, overwrite: bool, known_directories: set[str] | None = None
) -> None:
    """Refuse early a download that could not be saved at ``target`` (checked again, without a
    race, when the part file is renamed into place).

    ``known_directories``, if given, holds the directories found to exist by earlier calls (and
    gets this one's): for many files into few directories.

    The null device (``-o /dev/null``) is accepted as it is: a download there is verified and
    its data dropped (see :func:`part_for`).

    Raises:
        LocalFileError: ``target`` exists (and ``overwrite`` is false), is not a regular file
            or a symbolic link to one (a device, a pipe, a socket, a directory, or a link to one
            of those: never replaced, never written through, ``overwrite`` or not), or its
            directory does not exist.
    """
    if is_null_device(target):
        return
    check_replaceable(target)  # never a device, a pipe, a socket, or a link to one
    if not overwrite and os.path.lexists(target):
        raise LocalFileError(f"{target} already exists (use --force to replace)")
    parent = os.path.dirname(target) or "."
    if known_directories is not None and parent in known_directories:
        return
    if not os.path.isdir(parent):
        raise LocalFileError(f"cannot save to {target}: {parent} is not a directory")
    if known_directories is not None:
        known_directories.add(parent)


def check_not_a_directory(target: Path, remote_path: str) -> None:
    """Refuse to save the file at ``remote_path`` to ``target`` when a directory is there: it
    is neither saved inside it nor replaces it (a symbolic link there is not followed).

    Raises:
        LocalFileError: ``target`` is a directory.
    """
    try:
        mode = os.lstat(target).st_mode
    except OSError:
        return  # nothing there, or nothing we can tell: check_destination says the rest
    if stat.S_ISDIR(mode):
        raise LocalFileError(
            f"{target} is a directory: the server's file {remote_path!r} is not saved there"
        )


def is_null_device(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` is the null device, named as such (``/dev/null``)."""
    name = os.fspath(target)
    if not name.endswith("null") or os.path.normpath(name) != os.devnull:
        return False  # (no system call, nor much else, for every other file)
    try:
        return stat.S_ISCHR(os.stat(target).st_mode)
    except OSError:
        return False


def check_replaceable(
    target: str | os.PathLike[str], dir_fd: int | None = None, shown: str | None = None
) -> None:
    """Refuse to replace anything but a file, a symbolic link to a file or a dangling link (as
    root, a device node; or a link to standard output, which would then be written through).
    With ``dir_fd``, ``target`` is a name in that directory, and ``shown`` its path for
    messages."""
    target_text = shown if shown is not None else os.fspath(target)
    try:
        mode = os.stat(target, dir_fd=dir_fd, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            mode = os.stat(target, dir_fd=dir_fd).st_mode  # what the link leads to
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there, or a dangling link (the caller checks the directory)
    except OSError as exc:
        raise LocalFileError(f"cannot save to {target_text}: {exc.strerror}") from exc
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else f"not a regular file ({_kind(mode)})"
        raise LocalFileError(f"{target_text} is {kind}: ftx writes only files (-o - for stdout)")


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"
