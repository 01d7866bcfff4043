"""Ranged GETs and block digests (docs/protocol.md, section 22): the feature that announces
them, the block size every peer derives from a file's size, and the checks a BLOCK_LIST answer
must pass. Sans-IO; re-exported by :mod:`ftx.protocol`.

A file is cut into blocks of :func:`block_size_for` bytes (8 MiB, doubled as often as needed so
that no file has more than :data:`MAX_BLOCKS`): the digests of all of them fit in one frame of
the smallest size a peer may accept (64 KiB), however large the file, and two servers holding
the same file always cut it alike.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BASE_BLOCK_SIZE",
    "BLOCK_PROGRESS_FEATURE",
    "MAX_BLOCKS",
    "RANGES_FEATURE",
    "block_count",
    "block_size_for",
    "overflows",
    "range_end",
]

RANGES_FEATURE: Final = "ranges"
"""Listed by a peer that speaks ranged GETs (``length``) and BLOCKS / BLOCK_LIST (§22)."""
BLOCK_PROGRESS_FEATURE: Final = "block-progress"
"""Listed by a server that may answer BLOCKS with BLOCK_PROGRESS messages before its
BLOCK_LIST, and by a client that accepts them (§22.2): with both, a file read for the first
time keeps the client's progress deadline from running out, however large it is."""
BASE_BLOCK_SIZE: Final = 8 << 20
"""The smallest block: 8 MiB. A bad replica costs at most this much fetched again, and one
request per block is a negligible overhead (a few hundred bytes per 8 MiB)."""
MAX_BLOCKS: Final = 512
"""The most blocks a file has: 512 digests of 64 hex digits are about 34 KB of JSON, which
fits in the smallest frame limit (64 KiB)."""
_MAX_INT: Final = (1 << 63) - 1


def block_size_for(size: int) -> int:
    """The block size of a file of ``size`` bytes: :data:`BASE_BLOCK_SIZE` times the smallest
    power of two that leaves at most :data:`MAX_BLOCKS` blocks.

    Raises:
        ValueError: ``size`` is negative.
    """
    if size < 0:
        raise ValueError("a file size cannot be negative")
    block = BASE_BLOCK_SIZE
    while -(-size // block) > MAX_BLOCKS:
        block *= 2
    return block


def block_count(size: int, block_size: int) -> int:
    """How many blocks a file of ``size`` bytes has (0 for an empty file); the last one may be
    shorter than ``block_size``."""
    return -(-size // block_size)


def range_end(offset: int, length: int | None, size: int) -> int:
    """Where the DATA of a GET from ``offset`` for ``length`` bytes (``None``: to the end) of a
    file of ``size`` bytes ends: never past the end of the file."""
    if length is None:
        return size
    return min(size, offset + length)


def overflows(offset: int, length: int | None) -> bool:
    """Whether ``offset + length`` lies beyond 2^63-1 (a GET the server refuses)."""
    return length is not None and offset + length > _MAX_INT
