"""Downloading one file: the GET, then its answer (FILE, DATA until END) into a part file,
verified against the whole-file digest, then published (renamed into place). Used by
:class:`ftx.client.Client`, which passes itself as the :class:`DownloadWire`.

On plain TCP, the DATA of a big file is received, written and hashed by one worker thread
that owns the socket meanwhile (:mod:`ftx.client._bulk`). Elsewhere (TLS), big files are
received into two reused buffers (one filling while the other is written and hashed in a worker
thread); small chunks are written and hashed in the event loop's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final, Protocol

import trio

from ftx._threads import ThreadJob
from ftx.client._bulk import BulkWire, bulk_eligible, receive_data_in_thread
from ftx.client._partfile import RESUMABLE_SIZE, PartFile, ResumeRecord, part_for
from ftx.errors import IntegrityError, LocalFileError, RemoteError
from ftx.framing import Buffer
from ftx.protocol import ClientProtocol, ErrorCode, Hasher, new_hasher
from ftx.protocol.messages import Data, Error, FileEnd, FileHeader, Get, Message

logger = logging.getLogger("ftx.client")

__all__ = [
    "Download",
    "DownloadWire",
    "GetOptions",
    "ProgressCallback",
    "ReceiveBuffers",
    "download",
    "get_request",
    "receive_answer",
]

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
    offset: int = 0
    """The bytes a resumed download already held (its part file's); only the rest crossed the
    network in ``seconds``."""


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
    # A destination that is an existing directory receives the file inside it (as `-o DIR`);
    # else the destination is the file's own path, and a directory there is a conflict.
    into_directories: bool = True


class DownloadWire(BulkWire, Protocol):
    """What a download needs of its connection (:class:`ftx.Client` is one). The members are
    the client's private ones: only the client's own modules use them."""

    @property
    def digest_algorithm(self) -> str:
        """The digest a verified download asks for."""

    @property
    def _protocol(self) -> ClientProtocol:
        """The connection's protocol state (it numbers the requests)."""

    @property
    def _receive_buffers(self) -> ReceiveBuffers:
        """The connection's buffers for big files."""

    async def _send(self, *messages: Message) -> None:
        """Send the messages, in one write if they are small."""

    async def _receive(self, into: bytearray | None = None) -> Message:
        """The next message, received ``into`` that buffer if one is given (a DATA chunk is
        then a view of it); closes the connection on any failure."""

    async def _fail(self) -> None:
        """Close the connection (the rest of an answer is then unreadable)."""


async def download(
    wire: DownloadWire,
    path: str,
    target: Path,
    *,
    progress: ProgressCallback | None,
    options: GetOptions,
    resume: bool,
    part: PartFile | None = None,
) -> Download:
    """Download the file at ``path`` on the server to ``target`` (checked by the caller)
    through its part file (``part``, if given: e.g. one that streams to standard output); from
    where an earlier download of it stopped, if ``resume`` and the server's file is still the
    one the part holds the start of (else from zero). A resumed download that does not verify
    is started again from zero, once (docs/protocol.md, 9.5).

    Raises:
        RemoteError, IntegrityError, LocalFileError, ConnectionLostError, RemoteProtocolError:
            as :meth:`ftx.Client.get` says.
    """
    started = time.monotonic()
    part = part if part is not None else part_for(target)
    resume_from = part.resumable(path) if resume else None
    if resume_from is not None:
        offset, identity = resume_from
        logger.debug("%r: resuming at byte %d of %s (identity %r)", path, offset, target, identity)
        await wire._send(get_request(wire, path, options.verify, offset, identity))
        try:
            return await receive_answer(
                wire, path, part, progress, options, started, identity=identity
            )
        except RemoteError as exc:
            if exc.code != ErrorCode.CHANGED:
                raise
            # The file is not the one the part holds the start of: start from zero.
            logger.debug("%r changed on the server since the part was written: from zero", path)
        except IntegrityError:
            # The part did not hold the start of this file (it is gone): once from zero.
            logger.debug("%r: the resumed download did not verify: from zero", path)
    await wire._send(get_request(wire, path, options.verify))
    return await receive_answer(wire, path, part, progress, options, started)


def get_request(
    wire: DownloadWire, path: str, verify: bool, offset: int = 0, identity: str | None = None
) -> Get:
    """The next GET request of ``wire``'s connection: for ``path`` from ``offset`` (of the file
    with that ``identity``), with the connection's digest if ``verify``."""
    digest = wire.digest_algorithm if verify else None
    request_id = wire._protocol.new_request_id()
    return Get(request_id, path, offset=offset, identity=identity, digest=digest)


async def receive_answer(
    wire: DownloadWire,
    path: str,
    part: PartFile,
    progress: ProgressCallback | None,
    options: GetOptions,
    started: float,
    *,
    identity: str | None = None,
) -> Download:
    """Receive the answer to the oldest outstanding GET and save the file through ``part``
    (not open yet). ``identity`` is the one the GET asked for, if it did: a FILE with another
    is answered as ``changed`` would be (its data is read and dropped; the part is untouched).

    Raises:
        RemoteError: the server refused the request, or failed mid-way (the part is dropped);
            ``changed`` also when the FILE carries another identity than the one asked for.
        IntegrityError: the data does not match the server's digest (the part is dropped).
        LocalFileError: the part cannot be written or published. The connection is closed
            unless the rest of the answer was read (always, with ``options.skip_unwritable``).
        ConnectionLostError, RemoteProtocolError: the connection failed.
    """
    header = await wire._receive(None)
    if isinstance(header, Error):
        raise RemoteError(header.code, header.message)
    assert isinstance(header, FileHeader)
    if identity is not None and header.identity != identity:
        # Bytes of another version of the file must not be appended to the part's: as if the
        # server had answered `changed` (docs/protocol.md, section 9.5).
        await _skip_rest(wire, header)
        raise RemoteError(
            ErrorCode.CHANGED, f"the server answered the resume of {path!r} with another file"
        )
    try:
        _open_part(part, path, header)
    except LocalFileError:
        if options.skip_unwritable:
            await _skip_rest(wire, header)
        else:
            await wire._fail()  # the rest of this answer is still on its way: give up
        raise
    answered = False
    try:
        digest = await _receive_file(wire, header, part, progress, verify=options.verify)
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
            await wire._fail()  # the rest of this answer is still on its way: give up
        raise
    return Download(
        path,
        part.dest,
        header.size,
        header.mtime_ns,
        digest,
        header.digest if digest else None,
        time.monotonic() - started,
        header.offset,
    )


async def _receive_file(
    wire: DownloadWire,
    header: FileHeader,
    part: PartFile,
    progress: ProgressCallback | None,
    verify: bool,
) -> str | None:
    hasher = new_hasher(header.digest) if verify and header.digest else None
    if hasher is not None and header.offset:
        # The digest covers the whole file: hash what the part file already holds.
        await trio.to_thread.run_sync(part.hash_prefix, header.offset, hasher)
    done, total = header.offset, header.size
    if progress is not None:
        progress(done, total)
    if bulk_eligible(wire, total - done):
        buffer = wire._receive_buffers.one()
        message, done = await receive_data_in_thread(
            wire, part, hasher, buffer, progress, done, total
        )
        return _check_end(header, part, hasher, message, verify)
    # Each chunk is written, and hashed, in worker threads while the next one is received.
    jobs: list[ThreadJob[object]] = []
    buffers = wire._receive_buffers.for_size(total - done)
    turn = 0
    receive = wire._receive  # (looked up once: it is called for every DATA frame)
    try:
        while True:
            try:
                # The buffer filled now was last used two chunks ago: its jobs are done.
                message = await receive(buffers[turn] if buffers else None)
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
    return _check_end(header, part, hasher, message, verify)


def _check_end(
    header: FileHeader, part: PartFile, hasher: Hasher | None, message: Message, verify: bool
) -> str | None:
    """Check the message that ended the DATA of the file ``header`` announced (END, or an
    ERROR); return the verified digest (``None`` if verification was off).

    Raises:
        RemoteError: it is an ERROR (the part is dropped).
        IntegrityError: the data does not match the END's digest (the part is dropped).
    """
    if isinstance(message, Error):
        part.discard()  # e.g. the file changed mid-way: these bytes are of no use
        raise RemoteError(message.code, message.message)
    assert isinstance(message, FileEnd)
    if hasher is not None:
        logger.debug(
            "%d bytes received; %s digest %s, the server's %r",
            header.size,
            header.digest,
            hasher.hexdigest(),
            message.digest,
        )
    if hasher is not None and message.digest != hasher.hexdigest():
        part.discard()
        raise IntegrityError(
            f"{header.size}-byte download does not match the server's {header.digest}: "
            f"expected {message.digest}, got {hasher.hexdigest()}; nothing was saved"
        )
    return message.digest if verify else None


async def _skip_rest(wire: DownloadWire, header: FileHeader) -> None:
    """Read and drop the rest of an answer whose file cannot be saved (as rsync does), so
    that the answers after it can still be read."""
    buffers = wire._receive_buffers.for_size(header.size - header.offset)
    while isinstance(await wire._receive(buffers[0] if buffers else None), Data):
        pass  # until END (or an ERROR: the file changed meanwhile)


class ReceiveBuffers:
    """A connection's receive buffers for big files, made on first use and then reused: one
    for the bulk path (:meth:`one`), two for the two-buffer path (:meth:`for_size`).

    Args:
        max_frame_size: the connection's frame limit (the buffers' size).
    """

    def __init__(self, max_frame_size: int) -> None:
        self._max_frame_size = max_frame_size
        self._buffers: list[bytearray] = []

    def _make(self, count: int) -> list[bytearray]:
        while len(self._buffers) < count:
            self._buffers.append(bytearray(self._max_frame_size))
        return self._buffers

    def for_size(self, size: int) -> tuple[bytearray, bytearray] | None:
        """The two buffers, if a download of ``size`` bytes should use them."""
        if size < _BUFFERED_RECEIVE_SIZE:
            return None
        first, second = self._make(2)[:2]
        return first, second

    def one(self) -> bytearray:
        """One buffer (the bulk path's: a thread fills, writes and hashes it in turn)."""
        return self._make(1)[0]


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
