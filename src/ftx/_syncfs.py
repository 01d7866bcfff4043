"""``syncfs(2)``: flush one file system to disk. Python's ``os`` does not offer it, so it is
called through ctypes where the C library has it (Linux); elsewhere callers flush file by file.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable

__all__ = ["syncfs", "syncfs_function"]


def syncfs(fd: int) -> bool:
    """Flush the file system that holds the open file ``fd``; return False (doing nothing)
    where ``syncfs`` is missing. Blocks.

    Raises:
        OSError: the file system reported that it could not write its data.
    """
    function = syncfs_function()
    if function is None:
        return False
    if function(fd) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return True


@functools.cache
def syncfs_function() -> Callable[[int], int] | None:
    """The C library's ``syncfs``, or ``None`` where it has none (e.g. macOS)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to load (not on any POSIX system)
        return None
    function = getattr(libc, "syncfs", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]
