"""``--checksum``: whether a file already at the destination has the same content as the one
on the other side, by digest (the server computes its own; ours is read from disk)."""

from __future__ import annotations

import logging
from pathlib import Path

import trio

import ftx
from ftx.client import file_digest
from ftx.errors import RemoteError

__all__ = ["same_digest"]

logger = logging.getLogger("ftx.cli")


async def same_digest(client: ftx.Client, remote: str, local: Path, size: int) -> bool:
    """Whether the local file has the server's digest of the file at ``remote`` (``size``
    bytes, as listed): ``--checksum``. A refusal or an unreadable local file is a no."""
    try:
        theirs = await client.checksum(remote, size)
        ours = await trio.to_thread.run_sync(file_digest, local, client.digest_algorithm)
    except (RemoteError, OSError):
        return False  # the transfer itself then says what is wrong
    same = ours == theirs
    logger.debug(
        "%s: %s digest %s the server's",
        local,
        client.digest_algorithm,
        "matches" if same else "differs from",
    )
    return same
