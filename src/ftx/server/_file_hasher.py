"""Hashing a whole file in a worker thread while it is sent by other means (``sendfile`` on the
event loop's path, where each chunk cannot be hashed as it goes)."""

from __future__ import annotations

from collections.abc import Callable

from ftx._threads import ThreadJob
from ftx.fs import OpenedFile
from ftx.protocol import Hasher

__all__ = ["FileHasher"]


class FileHasher:
    """Hashes a whole file in a worker thread, starting now, while it is sent by other means."""

    def __init__(
        self,
        opened: OpenedFile,
        hasher: Hasher,
        buffer: bytearray,
        on_finished: Callable[[], object],
    ) -> None:
        self._opened = opened
        self._hasher = hasher
        self._buffer = buffer
        self._position = 0
        self._end = opened.size  # lowered to stop the thread early
        self._job = ThreadJob(self._run, on_done=on_finished)

    def _run(self) -> str | None:
        view = memoryview(self._buffer)
        while self._position < (end := self._end):  # _end may drop to 0 at any time
            count = self._opened.read_into(view[: end - self._position], self._position)
            if count == 0:
                return None  # truncated: the transfer notices the change too
            self._hasher.update(view[:count])
            self._position += count
        return self._hasher.hexdigest() if self._position == self._opened.size else None

    def stop_unless(self, budget: int) -> None:
        """Stop hashing unless at most ``budget`` bytes remain to hash."""
        if self._opened.size - self._position > budget:
            self._end = 0

    async def digest(self) -> str | None:
        """Wait for the thread; the digest of the whole file, or ``None`` if it stopped or the
        file was truncated."""
        return await self._job.result()

    async def wait_quietly(self) -> None:
        """Wait for the thread, ignoring its outcome: for cleanup after a failure."""
        await self._job.wait_quietly()
