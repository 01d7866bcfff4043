"""Flushing a batch of downloads to disk at once: the file systems they were saved on, not every
file system of the machine.

``os.sync()`` waits for every dirty page of the system, including another program's big copy
to a slow USB stick. Linux's ``syncfs(2)`` flushes one file system; Python's ``os`` does not
offer it, so it is called through ctypes where the C library has it.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

from ftx._syncfs import syncfs_function as _syncfs
from ftx.errors import LocalFileError

__all__ = ["sync_file_systems"]


def sync_file_systems(directories: Iterable[str | os.PathLike[str]]) -> None:
    """Flush to disk the file systems that hold ``directories`` (``syncfs`` once for each);
    everything (``sync``) where ``syncfs`` is missing. Blocks: call it from a worker thread.

    Raises:
        LocalFileError: a file system reported that it could not write its data (an I/O
            error, a full disk), so files already renamed into place may not survive a power
            cut.
    """
    syncfs = _syncfs()
    if syncfs is None:
        os.sync()
        return
    done: set[int] = set()
    for directory in directories:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue  # removed since: nothing of ours is left there to flush
        try:
            device = os.fstat(fd).st_dev
            if device in done:
                continue
            done.add(device)
            if syncfs(fd) != 0:
                error = ctypes.get_errno()
                message = f"cannot flush {os.fspath(directory)} to disk: {os.strerror(error)}"
                raise LocalFileError(message)
        finally:
            os.close(fd)
