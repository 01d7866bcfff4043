"""Server-wide resources shared by every connection: the served root, chunk buffers and known
file digests, gathered in one :class:`ServerResources` that the server hands to each session."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import trio

from ftx.fs import ServedRoot
from ftx.server._config import ServerConfig
from ftx.server._digest_store import DigestStore, check_state_dir
from ftx.server._readahead import BATCH_BUFFER_SIZE

__all__ = ["BufferPool", "DigestCache", "ServerResources"]

# All connections together read and send through at most this much buffer memory.
_BUFFER_MEMORY: Final = 32 * 1024 * 1024
_BATCH_BUFFERS: Final = 64  # of BATCH_BUFFER_SIZE (256 KiB): 16 MiB at most


class BufferPool:
    """At most ``max_buffers`` chunk buffers of ``size`` bytes, lent out to connections.

    This is what bounds the server's memory however many clients connect: a connection holds a
    buffer only while one chunk is being read, hashed and sent, and waits for one otherwise.
    Buffers are reused rather than freed, so that a busy server does not keep asking the
    allocator (and the kernel) for fresh memory.
    """

    def __init__(self, size: int, max_buffers: int) -> None:
        if size < 1 or max_buffers < 1:
            raise ValueError("size and max_buffers must be at least 1")
        self.size: Final = size
        self.max_buffers: Final = max_buffers
        self._free: list[bytearray] = []
        self._available = trio.Semaphore(max_buffers)

    async def acquire(self) -> bytearray:
        """Borrow a buffer until :meth:`release`."""
        await self._available.acquire()
        return self._free.pop() if self._free else bytearray(self.size)

    def release(self, buffer: bytearray) -> None:
        """Give back a buffer from :meth:`acquire`."""
        self._free.append(buffer)
        self._available.release()


class DigestCache:
    """The digests of files already read whole, by algorithm and file identity (device, inode,
    size, mtime, ctime), so that a file downloaded again, or resumed, is not hashed again.

    The identity changes on any write to the file (ctime), so a stale digest is never served
    for a file changed through the file system. Least recently used entries are dropped first.
    With a ``store`` (``--state-dir``), :meth:`recall` and :meth:`remember` also read and write
    it, in a worker thread, so that digests outlive the process.
    """

    def __init__(self, max_entries: int = 4096, store: DigestStore | None = None) -> None:
        self.max_entries: Final = max_entries
        self.store: Final = store
        self._digests: OrderedDict[str, str] = OrderedDict()

    async def recall(self, key: str) -> str | None:
        """The digest remembered under ``key``, here or in the store."""
        digest = self.get(key)
        if digest is None and self.store is not None:
            digest = await trio.to_thread.run_sync(self.store.get, key)
            if digest is not None:
                self.put(key, digest)
        return digest

    async def remember(self, key: str, digest: str) -> None:
        """Remember ``digest`` under ``key``, here and in the store."""
        self.put(key, digest)
        if self.store is not None:
            await trio.to_thread.run_sync(self.store.put, key, digest)

    def get(self, identity: str) -> str | None:
        digest = self._digests.get(identity)
        if digest is not None:
            self._digests.move_to_end(identity)
        return digest

    def put(self, identity: str, digest: str) -> None:
        self._digests[identity] = digest
        self._digests.move_to_end(identity)
        while len(self._digests) > self.max_entries:
            self._digests.popitem(last=False)


class ServerResources:
    """What the connections of one server share: the directory served, the buffer pools that
    bound the server's memory, and the digest cache.

    Args:
        root: the directory served (owned by the caller, who closes it).
        config: the server's settings (the chunk buffers are ``config.chunk_size`` bytes;
            digests are kept in ``config.state_dir`` if set).

    Raises:
        ValueError: ``config.state_dir`` is inside the served directory, cannot be made, or
            its digest store cannot be opened.
    """

    def __init__(self, root: ServedRoot, config: ServerConfig) -> None:
        self.root: Final = root
        chunks = max(2, _BUFFER_MEMORY // config.chunk_size)
        self.buffers: Final = BufferPool(config.chunk_size, chunks)
        # Separate from the chunk buffers: a batch holds its buffer while a large file in it
        # is sent with a chunk buffer, so one pool for both could run dry and deadlock.
        self.batch_buffers: Final = BufferPool(BATCH_BUFFER_SIZE, _BATCH_BUFFERS)
        store = None
        if config.state_dir is not None:
            store = DigestStore(check_state_dir(config.state_dir, root.path))
        self.digests: Final = DigestCache(store=store)
        # Block digests (BLOCKS, docs/protocol.md section 22): up to 512 digests an entry,
        # so fewer entries (at most ~34 KB each: ~9 MB in all).
        self.block_digests: Final = DigestCache(max_entries=256, store=store)
