"""Answering BLOCKS (docs/protocol.md, section 22): the digest of each block of a file and of
the whole file, computed in one read by a worker thread and remembered per file identity (in
memory, and in the ``--state-dir`` store if there is one), as whole-file digests are.

The whole-file digest computed on the way is remembered under the key GET uses too, so a later
GET of the same file (or the client's check at the end) does not read it again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Final, Protocol

import trio

from ftx.errors import FtxError
from ftx.fs import FsError, OpenedFile, file_identity, portable_identity
from ftx.protocol import DIGEST_ALGORITHMS, ErrorCode, block_count, block_size_for, new_hasher
from ftx.protocol.messages import BlockList, Blocks, Error, Message
from ftx.server._access_log import AccessRecord
from ftx.server._fs_wire import error_code
from ftx.server._resources import DigestCache, ServerResources

__all__ = ["BlockHandler", "BlockSession", "hash_blocks"]

_READ_SIZE: Final = 1 << 20


class BlockSession(Protocol):
    """What a :class:`BlockHandler` needs of its connection (a
    :class:`~ftx.server._session.Session`)."""

    async def send(self, *messages: Message) -> None:
        """Send the messages. Raises what the session's ``send`` raises."""


def _parse_entry(entry: str | None, size: int) -> tuple[int, list[str], str] | None:
    """A remembered ``"<block size>;<file digest>;<block digest>,..."``; ``None`` for none, or
    for one that does not fit a file of ``size`` bytes (a damaged store is a miss)."""
    if entry is None:
        return None
    try:
        block_text, whole, joined = entry.split(";")
        block = int(block_text)
    except ValueError:
        return None
    digests = joined.split(",") if joined else []
    if block != block_size_for(size) or len(digests) != block_count(size, block):
        return None
    return block, digests, whole


class _Stopped(FtxError):
    """The hashing thread was asked to stop (its request was cancelled)."""


def hash_blocks(
    opened: OpenedFile, algorithm: str, stop: threading.Event
) -> tuple[int, list[str], str] | None:
    """Read the whole file once: ``(block size, digest of each block, digest of the file)``,
    or ``None`` if it was truncated meanwhile. Blocks; run it in a worker thread.

    Raises:
        _Stopped: ``stop`` was set.
        OSError: the file cannot be read.
    """
    size = opened.size
    block = block_size_for(size)
    whole = new_hasher(algorithm)
    digests: list[str] = []
    view = memoryview(bytearray(_READ_SIZE))
    position = 0
    for index in range(block_count(size, block)):
        hasher = new_hasher(algorithm)
        end = min(size, (index + 1) * block)
        while position < end:
            if stop.is_set():
                raise _Stopped
            count = opened.read_into(view[: min(_READ_SIZE, end - position)], position)
            if count == 0:
                return None
            hasher.update(view[:count])
            whole.update(view[:count])
            position += count
        digests.append(hasher.hexdigest())
    return block, digests, whole.hexdigest()


class BlockHandler:
    """Answers the BLOCKS requests of one connection.

    Args:
        session: the connection, to send on.
        resources: what the server's connections share (the root, the digest caches).
        portable: name files by their portable identity (path, size, mtime).
    """

    def __init__(
        self, session: BlockSession, resources: ServerResources, *, portable: bool = False
    ) -> None:
        self._session = session
        self._root = resources.root
        self._digests: DigestCache = resources.digests
        self._blocks: DigestCache = resources.block_digests
        self._identity: Callable[[str, os.stat_result], str] = (
            portable_identity if portable else lambda _path, st: file_identity(st)
        )

    async def answer(self, request: Blocks, record: AccessRecord) -> None:
        """Answer ``request`` with BLOCK_LIST or a per-request ERROR, noting it in ``record``.
        Raises what the session's ``send`` raises."""
        if request.digest not in DIGEST_ALGORITHMS:
            await self._refuse(request, record, ErrorCode.BAD_REQUEST, "unknown digest")
            return
        try:
            opened = await trio.to_thread.run_sync(self._root.open_file, request.path)
        except FsError as exc:
            await self._refuse(request, record, error_code(exc), exc.message)
            return
        with opened:
            identity = self._identity(request.path, opened.stat)
            record.size = opened.size
            if request.identity is not None and request.identity != identity:
                message = f"{request.path!r} changed since the transfer began"
                await self._refuse(request, record, ErrorCode.CHANGED, message)
                return
            hashed = await self._recall_or_hash(opened, request.digest)
            if hashed is None:
                message = f"{request.path!r} changed while it was read"
                await self._refuse(request, record, ErrorCode.CHANGED, message)
                return
            block, digests, whole = hashed
            await self._session.send(
                BlockList(
                    request.request_id,
                    size=opened.size,
                    mtime_ns=opened.stat.st_mtime_ns,
                    identity=identity,
                    digest=request.digest,
                    block_size=block,
                    blocks=tuple(digests),
                    file_digest=whole,
                )
            )

    async def _recall_or_hash(
        self, opened: OpenedFile, algorithm: str
    ) -> tuple[int, list[str], str] | None:
        """The file's block digests: remembered (by algorithm and local identity), or read."""
        key = f"{algorithm}:{opened.identity}"  # (GET's key for the whole-file digest)
        blocks_key = f"blocks-{key}"  # distinct: the two caches may share one store
        known = _parse_entry(await self._blocks.recall(blocks_key), opened.size)
        if known is not None:
            return known
        stop = threading.Event()
        try:
            hashed = await trio.to_thread.run_sync(
                hash_blocks, opened, algorithm, stop, abandon_on_cancel=True
            )
        finally:
            stop.set()  # (a cancelled hash stops at its next read)
        if hashed is None or opened.changed():
            return None
        block, digests, whole = hashed
        await self._blocks.remember(blocks_key, f"{block};{whole};{','.join(digests)}")
        await self._digests.remember(key, whole)  # GET's key: its END needs no read either
        return hashed

    async def _refuse(
        self, request: Blocks, record: AccessRecord, code: ErrorCode, message: str
    ) -> None:
        record.result = code
        record.message = message
        await self._session.send(Error(request.request_id, code, message))
