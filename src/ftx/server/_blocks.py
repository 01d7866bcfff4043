"""Answering BLOCKS (docs/protocol.md, section 22): the digest of each block of a file and of
the whole file, computed in one read by a worker thread and remembered per file identity (in
memory, and in the ``--state-dir`` store if there is one), as whole-file digests are.

The whole-file digest computed on the way is remembered under the key GET uses too, so a later
GET of the same file (or the client's check at the end) does not read it again. While a file is
read, a client that lists ``block-progress`` is sent a BLOCK_PROGRESS after each second of it,
so that its progress deadline does not run out on a large file.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

import trio

from ftx.errors import FtxError
from ftx.fs import FsError, OpenedFile, file_identity, portable_identity
from ftx.protocol import (
    BLOCK_PROGRESS_FEATURE,
    DIGEST_ALGORITHMS,
    ErrorCode,
    Hasher,
    block_count,
    block_size_for,
    new_hasher,
)
from ftx.protocol.messages import BlockList, BlockProgress, Blocks, Error, Message
from ftx.server._access_log import AccessRecord
from ftx.server._fs_wire import error_code
from ftx.server._resources import DigestCache, ServerResources

__all__ = ["BlockHandler", "BlockHashing", "BlockSession"]

_READ_SIZE: Final = 1 << 20
PROGRESS_INTERVAL: Final = 1.0
"""Seconds of reading between two BLOCK_PROGRESS messages (and the longest a worker-thread
call of :meth:`BlockHashing.advance` runs)."""


class BlockSession(Protocol):
    """What a :class:`BlockHandler` needs of its connection (a
    :class:`~ftx.server._session.Session`)."""

    async def send(self, *messages: Message) -> None:
        """Send the messages. Raises what the session's ``send`` raises."""

    @property
    def features(self) -> frozenset[str]:
        """The features in use on the connection (listed in both HELLOs)."""


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


class BlockHashing:
    """Reads a file once, hashing each block and the whole file: piece by piece, so that the
    trio side can report progress between pieces. Everything here blocks; run
    :meth:`advance` in a worker thread.

    Args:
        opened: the file (its size as opened is the size hashed).
        algorithm: the digest algorithm.
        stop: set to make a running :meth:`advance` stop at its next read.
    """

    def __init__(self, opened: OpenedFile, algorithm: str, stop: threading.Event) -> None:
        self._opened = opened
        self._algorithm = algorithm
        self._stop = stop
        self.size: Final = opened.size
        self.block_size: Final = block_size_for(self.size)
        self.position = 0
        """Bytes read and hashed so far."""
        self.digests: list[str] = []
        """The digest of each block done so far."""
        self._whole = new_hasher(algorithm)
        self._block: Hasher = new_hasher(algorithm)
        self._view = memoryview(bytearray(_READ_SIZE))

    @property
    def done(self) -> bool:
        """Whether every block is hashed (:attr:`digests` then holds them all)."""
        return len(self.digests) == block_count(self.size, self.block_size)

    def whole_digest(self) -> str:
        """The digest of the whole file; call once :attr:`done`."""
        return self._whole.hexdigest()

    def advance(self, seconds: float) -> bool:
        """Read and hash on, for about ``seconds`` (at least one read), or to the end. Return
        ``False`` if the file turned out shorter than it was (truncated meanwhile), else
        ``True``.

        Raises:
            _Stopped: ``stop`` was set.
            OSError: the file cannot be read.
        """
        until = time.monotonic() + seconds
        while not self.done:
            if self._stop.is_set():
                raise _Stopped
            end = min(self.size, (len(self.digests) + 1) * self.block_size)
            if self.position < end:
                count = self._opened.read_into(
                    self._view[: min(_READ_SIZE, end - self.position)], self.position
                )
                if count == 0:
                    return False
                self._block.update(self._view[:count])
                self._whole.update(self._view[:count])
                self.position += count
            if self.position == end:
                self.digests.append(self._block.hexdigest())
                self._block = new_hasher(self._algorithm)
            if time.monotonic() >= until:
                break
        return True


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
            hashed = await self._recall_or_hash(opened, request)
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
        self, opened: OpenedFile, request: Blocks
    ) -> tuple[int, list[str], str] | None:
        """The file's block digests: remembered (by algorithm and local identity), or read (with
        a BLOCK_PROGRESS after each second of reading, where the client accepts them)."""
        key = f"{request.digest}:{opened.identity}"  # (GET's key for the whole-file digest)
        blocks_key = f"blocks-{key}"  # distinct: the two caches may share one store
        known = _parse_entry(await self._blocks.recall(blocks_key), opened.size)
        if known is not None:
            return known
        stop = threading.Event()
        hashing = BlockHashing(opened, request.digest, stop)
        progress = BLOCK_PROGRESS_FEATURE in self._session.features
        try:
            while not hashing.done:
                whole = await trio.to_thread.run_sync(
                    hashing.advance, PROGRESS_INTERVAL, abandon_on_cancel=True
                )
                if not whole:
                    return None
                if progress and not hashing.done:
                    await self._session.send(
                        BlockProgress(request.request_id, hashing.size, hashing.position)
                    )
        finally:
            stop.set()  # (a cancelled hash stops at its next read)
        if opened.changed():
            return None
        hashed = (hashing.block_size, hashing.digests, hashing.whole_digest())
        block, digests, whole_digest = hashed
        await self._blocks.remember(blocks_key, f"{block};{whole_digest};{','.join(digests)}")
        await self._digests.remember(key, whole_digest)  # GET's key: its END needs no read either
        return hashed

    async def _refuse(
        self, request: Blocks, record: AccessRecord, code: ErrorCode, message: str
    ) -> None:
        record.result = code
        record.message = message
        await self._session.send(Error(request.request_id, code, message))
