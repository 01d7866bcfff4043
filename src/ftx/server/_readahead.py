"""Small files read ahead: the files that a batch of pipelined GETs asks for, opened and read
in one worker-thread hop, so that answering each small file costs no hop of its own.

A thread hop (and the two context switches it costs) is most of what the server spends on a
4 KiB file; reading ahead for a batch pays one hop for all of it. Only files that fit in the
batch's buffer are read; every file is closed again at once, so a batch holds no descriptors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ftx.fs import FsError, OpenedFile, ServedRoot, file_identity
from ftx.protocol.messages import Get

__all__ = ["BATCH_BUFFER_SIZE", "MAX_BATCH", "SMALL_FILE_SIZE", "SmallFile", "read_small_files"]

# Files up to this size are read ahead and answered in one write.
SMALL_FILE_SIZE: Final = 64 * 1024
# The buffer a batch reads into (from a pool: this bounds the server's memory for batches).
BATCH_BUFFER_SIZE: Final = 256 * 1024
# The most requests read ahead for at once.
MAX_BATCH: Final = 32


@dataclass(frozen=True, slots=True)
class SmallFile:
    """A whole file, read while unchanged, with the metadata it had then."""

    stat: os.stat_result
    content: memoryview | bytes  # a view of the batch's buffer, or a copy of it

    @property
    def identity(self) -> str:
        return file_identity(self.stat)


def read_small_files(
    root: ServedRoot, requests: Sequence[Get], buffer: bytearray
) -> dict[int, SmallFile | OpenedFile | FsError]:
    """Open the files that ``requests`` ask for and read the small ones into ``buffer``.

    Returns, by request id, the :class:`SmallFile` read or the :class:`FsError` that opening
    raised; for a batch of one request, a large file is returned open (the caller closes it),
    so that a lone GET costs one hop too. A request missing from the result (a large file in a
    batch, no room left in ``buffer``, a file that changed or could not be read) is answered
    the usual way, which opens it again.
    """
    results: dict[int, SmallFile | OpenedFile | FsError] = {}
    view = memoryview(buffer)
    used = 0
    for request in requests:
        try:
            opened = root.open_file(request.path)
        except FsError as exc:
            results[request.request_id] = exc
            continue
        if len(requests) == 1 and opened.size > SMALL_FILE_SIZE:
            results[request.request_id] = opened
            break
        with opened:
            size = opened.size
            if size > SMALL_FILE_SIZE or used + size + 1 > len(buffer):
                continue
            target = view[used : used + size + 1]  # one byte more: notice a file that grew
            try:
                count = os.preadv(opened.fd, [target], 0)
                unchanged = count == size and not opened.changed()
            except OSError:
                continue  # the usual path will meet the error again, and report it
            if unchanged:
                results[request.request_id] = SmallFile(opened.stat, target[:size])
                used += size
    return results
