"""One part of a tree upload (docs/protocol.md section 23): written to a part file created
exclusively, closed with its stamp, and later published by name after the group's flush.

The rules are those of every upload (:mod:`ftx.server._writes`): names used relative to their
directory's descriptor, ``O_NOFOLLOW``, a part that is a lone regular file and locked while it
is written or published, a link that never replaces anything (or, when the upload may
overwrite, a rename that replaces a file or a link and never a directory). A part created with
``O_EXCL`` is new, regular and ours, so it needs no further check; the commit reopens it and
publishes it only if its stamp (device, inode, size, change time) is unchanged: nothing wrote,
truncated or linked it in between.

Everything here blocks: worker threads call it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from typing import Final

from ftx._names import sibling_name
from ftx.fs import FsError, FsReason
from ftx.server._writes import PART_SUFFIX, PartStamp, write_error

__all__ = ["CREATE_FLAGS", "publish_part", "write_new_part"]

CREATE_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""How a part is created: exclusively, never through a link."""
_REOPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NO_HARD_LINKS: Final = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK)


def write_new_part(
    fd: int, dir_fd: int, part: str, mtime_ns: int, data: memoryview, path: str
) -> PartStamp:
    """Lock, write and close the part just created (``O_EXCL``: new, regular, ours); return
    its stamp. Raises FsError (the part deleted, unless another upload took it first)."""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FsError(FsReason.IN_USE, f"another upload to {path!r} is in progress") from None
        try:
            view = data
            position = 0
            while position < view.nbytes:
                position += os.pwrite(fd, view[position:], position)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            st = os.fstat(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(part, dir_fd=dir_fd)
            raise write_error(exc, path) from None
    finally:
        os.close(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)


def publish_part(
    dir_fd: int, name: str, stamp: PartStamp, path: str, *, overwrite: bool, flush: bool
) -> None:
    """Give the part of ``name`` its name: reopened and locked, only if untouched since it
    was written (its stamp), linked without replacing anything (or, with ``overwrite``,
    renamed over a file or link; never over a directory). ``flush``: ``fsync`` it first (where
    ``syncfs`` is missing). Raises FsError (the part deleted, unless it is not ours now)."""
    part = sibling_name(name, PART_SUFFIX)
    try:
        fd = os.open(part, _REOPEN_FLAGS, dir_fd=dir_fd)
    except OSError:
        raise FsError(FsReason.IN_USE, f"the part of {path!r} vanished meanwhile") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FsError(FsReason.IN_USE, f"another upload to {path!r} is in progress") from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns) != stamp or st.st_nlink != 1:
            raise FsError(FsReason.IN_USE, f"the part of {path!r} changed meanwhile")
        try:
            if flush:
                os.fsync(fd)
            _link(dir_fd, part, name, overwrite)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(part, dir_fd=dir_fd)
            raise _publish_error(exc, dir_fd, name, path) from None
    finally:
        os.close(fd)


def _link(dir_fd: int, part: str, name: str, overwrite: bool) -> None:
    if overwrite:
        os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    try:
        os.link(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        # No hard links on this file system: check, then rename (a narrow race, there only).
        if exc.errno not in _NO_HARD_LINKS:
            raise
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        raise FileExistsError(errno.EEXIST, "exists") from None
    else:
        os.unlink(part, dir_fd=dir_fd)


def _publish_error(exc: OSError, dir_fd: int, name: str, path: str) -> FsError:
    if isinstance(exc, FileExistsError | IsADirectoryError):
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return FsError(FsReason.NOT_A_FILE, f"{path!r} is a directory")
        return FsError(FsReason.EXISTS, f"{path!r} already exists")
    return write_error(exc, path)
