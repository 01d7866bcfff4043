"""What the server has in a directory of a tree upload (docs/protocol.md section 23.4): the
answer to a TREE_ASK, read from one directory listing, page by page.

The directory is opened one component at a time below the tree's directory, without following
links; a missing one, or one that is not a directory, has nothing. Only regular files are
listed (links not followed), and only names a tree stream can carry (valid UTF-8, at most 255
bytes, no backslash) that are not the part files of uploads. Blocks: worker threads call it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Generator
from typing import Final

from ftx.fs import is_upload_in_progress
from ftx.protocol import new_hasher
from ftx.protocol.messages import HaveRecord

__all__ = ["have_pages"]

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_NAME_BYTES: Final = 255
_HASH_BLOCK: Final = 1 << 20


def have_pages(
    top: int, path: str, algorithm: str | None, max_records: int, max_bytes: int
) -> Generator[list[HaveRecord], None, None]:
    """The regular files of the directory ``path`` below the directory ``top`` (a descriptor),
    as pages of at most ``max_records`` records and about ``max_bytes`` (each name counted six
    times over, as its JSON may be escaped); with ``algorithm``, each file's digest (the file is
    read whole)."""
    fd = os.dup(top)
    try:
        for name in path.split("/") if path else ():
            inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
    except OSError:
        os.close(fd)
        return
    try:
        page: list[HaveRecord] = []
        size = 0
        with os.scandir(fd) as entries:
            for entry in entries:
                record = _have(fd, entry, algorithm)
                if record is None:
                    continue
                weight = 6 * len(record.name.encode()) + 200
                if page and (len(page) >= max_records or size + weight > max_bytes):
                    yield page
                    page, size = [], 0
                page.append(record)
                size += weight
        if page:
            yield page
    finally:
        os.close(fd)


def _have(fd: int, entry: os.DirEntry[str], algorithm: str | None) -> HaveRecord | None:
    name = entry.name
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return None
    if size > _MAX_NAME_BYTES or "\\" in name or is_upload_in_progress(name):
        return None
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    digest = None if algorithm is None else _file_digest(fd, name, algorithm)
    return HaveRecord(name, st.st_size, st.st_mtime_ns, digest)


def _file_digest(dir_fd: int, name: str, algorithm: str) -> str | None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        hasher = new_hasher(algorithm)
        position = 0
        while block := os.pread(fd, _HASH_BLOCK, position):
            hasher.update(block)
            position += len(block)
        return hasher.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)
