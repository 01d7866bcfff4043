"""Receiving one GET's answer into a part file: FILE, then DATA until END, verified against
the whole-file digest, then published (renamed into place). Used by :class:`ftx.client.Client`,
one :class:`FileReceiver` per connection.

Big files are received into two reused buffers (one filling while the other is written and
hashed in a worker thread); small chunks are written and hashed in the event loop's thread.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import trio

from ftx._threads import ThreadJob
from ftx.client._partfile import RESUMABLE_SIZE, PartFile, ResumeRecord
from ftx.errors import IntegrityError, LocalFileError, RemoteError
from ftx.framing import Buffer
from ftx.protocol import Hasher, new_hasher
from ftx.protocol.messages import Data, Error, FileEnd, FileHeader, Message

__all__ = ["Download", "FileReceiver", "GetOptions", "ProgressCallback"]

ProgressCallback = Callable[[int, int], object]
"""Called as ``progress(bytes_done, bytes_total)`` as a download advances."""

# Chunks smaller than this are written and hashed in the event loop's thread.
_INLINE_CHUNK: Final = 64 * 1024
# Files at least this large are received into two reused buffers (one filling while the other
# is written and hashed) instead of a new bytes object per frame, which costs page faults.
_BUFFERED_RECEIVE_SIZE: Final = 4 << 20


@dataclass(frozen=True, slots=True)
class Download:
    """What :meth:`Client.get` saved."""

    path: str
    dest: Path
    size: int
    mtime_ns: int
    digest: str | None
    """The hex digest of the whole file, verified; ``None`` if verification was off."""
    digest_algorithm: str | None
    """``"xxh3-128"``, ``"blake3"`` or ``"sha256"``; ``None`` if verification was off."""
    seconds: float


@dataclass(frozen=True, slots=True)
class GetOptions:
    overwrite: bool
    verify: bool
    preserve_mtime: bool
    preserve_mode: bool
    durable: bool  # flush each file to disk before renaming it (else the caller syncs)
    # A file whose part cannot be created is skipped (its data read and dropped) so that the
    # connection goes on with the next answer; else the connection is closed.
    skip_unwritable: bool = False


class FileReceiver:
    """Receives the answers to GET requests on one connection into part files.

    Args:
        receive: ``receive(into)`` returns the connection's next message, received into the
            buffer ``into`` if one is given (a DATA chunk is then a view of it); it closes the
            connection on any failure.
        fail: closes the connection (the rest of an answer is then unreadable).
        max_frame_size: the connection's frame limit (the receive buffers' size).
    """

    def __init__(
        self,
        receive: Callable[[bytearray | None], Awaitable[Message]],
        fail: Callable[[], Awaitable[None]],
        max_frame_size: int,
    ) -> None:
        self._receive_message = receive
        self._fail = fail
        self._max_frame_size = max_frame_size
        self._receive_buffers: tuple[bytearray, bytearray] | None = None

    async def receive_answer(
        self,
        path: str,
        part: PartFile,
        progress: ProgressCallback | None,
        options: GetOptions,
        started: float,
    ) -> Download:
        """Receive the answer to the oldest outstanding GET and save the file through ``part``
        (not open yet)."""
        header = await self._receive_message(None)
        if isinstance(header, Error):
            raise RemoteError(header.code, header.message)
        assert isinstance(header, FileHeader)
        try:
            _open_part(part, path, header)
        except LocalFileError:
            if options.skip_unwritable:
                await self._skip_rest(header)
            else:
                await self._fail()  # the rest of this answer is still on its way: give up
            raise
        answered = False
        try:
            digest = await self._receive_file(header, part, progress, verify=options.verify)
            answered = True
            publish = partial(
                part.publish,
                overwrite=options.overwrite,
                mtime_ns=header.mtime_ns if options.preserve_mtime else None,
                mode=header.mode & 0o777 if options.preserve_mode else None,
                durable=options.durable,
            )
            if options.durable:
                await trio.to_thread.run_sync(publish)  # fsync can take milliseconds
            else:
                publish()
        except BaseException as exc:
            part.close()
            answered = answered or isinstance(exc, RemoteError | IntegrityError)
            if not answered:
                await self._fail()  # the rest of this answer is still on its way: give up
            raise
        return Download(
            path,
            part.dest,
            header.size,
            header.mtime_ns,
            digest,
            header.digest if digest else None,
            time.monotonic() - started,
        )

    async def _receive_file(
        self, header: FileHeader, part: PartFile, progress: ProgressCallback | None, verify: bool
    ) -> str | None:
        hasher = new_hasher(header.digest) if verify and header.digest else None
        if hasher is not None and header.offset:
            # The digest covers the whole file: hash what the part file already holds.
            await trio.to_thread.run_sync(part.hash_prefix, header.offset, hasher)
        done, total = header.offset, header.size
        if progress is not None:
            progress(done, total)
        # Each chunk is written, and hashed, in worker threads while the next one is received.
        jobs: list[ThreadJob[object]] = []
        buffers = self._buffers_for(total - done)
        turn = 0
        try:
            while True:
                try:
                    # The buffer filled now was last used two chunks ago: its jobs are done.
                    message = await self._receive_message(buffers[turn] if buffers else None)
                    turn ^= 1
                except BaseException:
                    if done == 0:
                        part.discard()  # nothing worth keeping for a resume
                    raise
                if not isinstance(message, Data):
                    break
                for job in jobs:
                    await job.result()
                jobs.clear()
                data = message.data
                size = memoryview(data).nbytes
                if size < _INLINE_CHUNK:
                    part.write(data)  # a thread hop would cost more than the work
                    if hasher is not None:
                        hasher.update(data)
                else:
                    jobs.append(ThreadJob(partial(_write_and_hash, part, hasher, data)))
                done += size
                if progress is not None:
                    progress(done, total)
            for job in jobs:
                await job.result()
        finally:
            for job in jobs:
                await job.wait_quietly()  # never close the part file under a running write
        if isinstance(message, Error):
            part.discard()  # e.g. the file changed mid-way: these bytes are of no use
            raise RemoteError(message.code, message.message)
        assert isinstance(message, FileEnd)
        if hasher is not None and message.digest != hasher.hexdigest():
            part.discard()
            raise IntegrityError(
                f"{header.size}-byte download does not match the server's {header.digest}: "
                f"expected {message.digest}, got {hasher.hexdigest()}; nothing was saved"
            )
        return message.digest if verify else None

    async def _skip_rest(self, header: FileHeader) -> None:
        """Read and drop the rest of an answer whose file cannot be saved (as rsync does), so
        that the answers after it can still be read."""
        buffers = self._buffers_for(header.size - header.offset)
        while isinstance(await self._receive_message(buffers[0] if buffers else None), Data):
            pass  # until END (or an ERROR: the file changed meanwhile)

    def _buffers_for(self, size: int) -> tuple[bytearray, bytearray] | None:
        """The two receive buffers, if a download of ``size`` bytes should use them."""
        if size < _BUFFERED_RECEIVE_SIZE:
            return None
        if self._receive_buffers is None:
            frame = self._max_frame_size
            self._receive_buffers = (bytearray(frame), bytearray(frame))
        return self._receive_buffers


def _open_part(part: PartFile, path: str, header: FileHeader) -> None:
    """Open the part file for the answer ``header`` begins, with a resume record if the file
    is worth one; if that fails, closed again (and deleted, if it was just created empty)."""
    part.open(keep=header.offset)
    if header.size - header.offset >= RESUMABLE_SIZE:
        try:
            part.write_record(ResumeRecord(path, header.identity, header.size, header.digest))
        except LocalFileError:
            if header.offset:
                part.close()  # the start of the file, kept for a later resume
            else:
                part.discard()
            raise


def _write_and_hash(part: PartFile, hasher: Hasher | None, data: Buffer) -> None:
    """One worker-thread job per chunk: a second thread hop would cost more than the overlap of
    writing with hashing gains (the receive is what runs in parallel)."""
    part.write(data)
    if hasher is not None:
        hasher.update(data)
