"""The server's side of uploads: answering PUT and MKDIR on one connection.

A server accepts uploads only when it was made writable (``ServerConfig.writable``, with
``allow_overwrite`` and ``max_upload_size``); otherwise it answers both requests with ``read-only``
and touches nothing. A PUT is checked (size limit, path, what is at the final name, the part file,
free space) before READY is sent; then the client's DATA is written to the part file and hashed as
it arrives, and the file is published only if the client's END carries the same digest of the whole
file. Whatever goes wrong after READY is answered only after the client's END (the rest of its DATA
is read and dropped), so the connection stays usable; a lost connection leaves the part file for a
resume.

The file system side is :mod:`ftx.server._writes`.
"""

from __future__ import annotations

import logging
import stat
from functools import partial
from typing import Final, Protocol

import trio

from ftx._threads import ThreadJob
from ftx.errors import FtxError
from ftx.fs import FsError, FsReason, ServedRoot
from ftx.protocol import DIGEST_ALGORITHMS, UPLOAD_FEATURE, ErrorCode, Hasher, new_hasher
from ftx.protocol.messages import Data, Done, Error, FileEnd, MakeDir, Message, Put, Ready
from ftx.server._access_log import AccessRecord
from ftx.server._config import ServerConfig
from ftx.server._fs_wire import error_code
from ftx.server._limits import WriteStalledError
from ftx.server._writes import UploadTarget, make_directory

__all__ = ["UploadHandler", "UploadSession", "UploadStalledError"]

# Chunks smaller than this are written and hashed in the event loop's thread.
_INLINE_CHUNK: Final = 64 * 1024

logger = logging.getLogger("ftx.server")


class UploadStalledError(WriteStalledError):
    """The client sent no upload data for the whole idle period (it is treated like a client
    that stopped reading: cut off)."""


class _DigestMismatchError(FtxError):
    """The data received does not match the digest the client sent (its message is the one
    to answer ``digest-mismatch`` with)."""


class UploadSession(Protocol):
    """What an :class:`UploadHandler` needs of the connection it answers on (implemented by
    :class:`~ftx.server._session.Session`)."""

    async def send(self, *messages: Message) -> None:
        """Send the messages (after anything queued).

        Raises:
            WriteStalledError: the client accepted no frame within the idle period.
            trio.BrokenResourceError, trio.ClosedResourceError: the connection is gone.
        """

    async def receive(self) -> Message:
        """The next message from the client, already checked by the session's
        :class:`~ftx.protocol.ServerProtocol`.

        Raises:
            trio.EndOfChannel: the client closed the connection.
            RemoteProtocolError: the client broke the protocol.
        """

    async def farewell(self, code: ErrorCode, message: str) -> None:
        """Tell the client, with a connection-level ERROR, why the connection is being closed.
        Never raises (but :exc:`trio.Cancelled`)."""

    def check_stop(self) -> None:
        """Called between frames; raises when the session must stop."""

    @property
    def features(self) -> frozenset[str]:
        """The features in use on the connection (listed in both HELLOs)."""


class UploadHandler:
    """Answers the PUT and MKDIR requests of one connection, in ``root``, as ``config`` allows
    (``writable``, ``allow_overwrite``, ``max_upload_size``, ``idle_timeout``), moving messages
    through ``session``."""

    def __init__(self, session: UploadSession, config: ServerConfig, root: ServedRoot) -> None:
        self._session = session
        self._config = config
        self._root = root

    async def answer(self, request: Put | MakeDir, record: AccessRecord) -> None:
        """Answer ``request`` completely, filling in its access ``record``: ``read-only``
        unless the server is writable and the feature ``upload`` is in use.

        Raises:
            UploadStalledError: the client stopped sending in the middle of an upload (it was
                told so with a connection-level ``timeout`` ERROR).
            trio.BrokenResourceError: the client closed the connection in the middle of an
                upload (the part file is kept for a resume).
            RemoteProtocolError: the client broke the protocol.
        """
        if not self._config.writable:
            await self._refuse(request, record, ErrorCode.READ_ONLY, "this server is read-only")
        elif UPLOAD_FEATURE not in self._session.features:
            # The client did not list the feature: uploads are not in use (section 18.1).
            message = f"uploads need the {UPLOAD_FEATURE!r} feature, which the client did not list"
            await self._refuse(request, record, ErrorCode.READ_ONLY, message)
        elif isinstance(request, MakeDir):
            await self._make_directory(request, record)
        else:
            await self._put(request, record)

    async def _refuse(
        self, request: Put | MakeDir, record: AccessRecord, code: ErrorCode, message: str
    ) -> None:
        record.result = code
        record.message = message
        await self._session.send(Error(request.request_id, code, message))

    async def _make_directory(self, request: MakeDir, record: AccessRecord) -> None:
        try:
            created = await trio.to_thread.run_sync(make_directory, self._root, request.path)
        except FsError as exc:
            await self._refuse(request, record, error_code(exc), exc.message)
            return
        await self._session.send(Done(request.request_id, created))

    async def _put(self, request: Put, record: AccessRecord) -> None:
        record.size = request.size
        limit = self._config.max_upload_size
        if request.digest not in DIGEST_ALGORITHMS:
            message = f"unknown digest {request.digest}"
            await self._refuse(request, record, ErrorCode.BAD_REQUEST, message)
            return
        if limit is not None and request.size > limit:
            message = f"{request.size} bytes is more than this server accepts ({limit} bytes)"
            await self._refuse(request, record, ErrorCode.TOO_LARGE, message)
            return
        try:
            target, offset = await trio.to_thread.run_sync(self._open_target, request)
        except FsError as exc:
            await self._refuse(request, record, error_code(exc), exc.message)
            return
        with target:
            record.offset = offset
            await self._session.send(Ready(request.request_id, offset))
            try:
                created = await self._receive_file(request, target, offset, record)
            except FsError as exc:
                await self._refuse(request, record, error_code(exc), exc.message)
                return
            except _DigestMismatchError as exc:
                await self._refuse(request, record, ErrorCode.DIGEST_MISMATCH, str(exc))
                return
        await self._session.send(Done(request.request_id, created))

    def _open_target(self, request: Put) -> tuple[UploadTarget, int]:
        """Open where the upload lands and :meth:`_prepare` it, in one worker-thread hop (a
        tree of small files pays for every hop): the target, and the offset to resume from.
        Raises :class:`~ftx.fs.FsError`, the target then closed."""
        target = UploadTarget.open(self._root, request.path)
        try:
            return target, self._prepare(target, request)
        except BaseException:
            target.close()
            raise

    def _prepare(self, target: UploadTarget, request: Put) -> int:
        """Check what is at the final name, open the part file; return the offset to resume
        from. Raises :class:`~ftx.fs.FsError`."""
        existing = target.existing()
        path = request.path
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                raise FsError(FsReason.NOT_A_FILE, f"{path!r} is a directory")
            if not (stat.S_ISREG(existing.st_mode) or stat.S_ISLNK(existing.st_mode)):
                raise FsError(FsReason.NOT_A_FILE, f"{path!r} is not a regular file")
            if existing.st_nlink > 1:
                target.forget_published_part(existing)
            if not request.overwrite:
                raise FsError(FsReason.EXISTS, f"{path!r} already exists")
            if not self._config.allow_overwrite:
                message = f"{path!r} already exists, and this server does not replace files"
                raise FsError(FsReason.EXISTS, message)
        offset = target.open_part(source=request.source, size=request.size)
        if target.free_space() < request.size - offset:
            raise FsError(FsReason.NO_SPACE, f"not enough space on the server for {path!r}")
        return offset

    async def _receive_file(
        self, request: Put, target: UploadTarget, offset: int, record: AccessRecord
    ) -> bool:
        """Receive the DATA and END of an upload into ``target``; verify and publish it.

        Returns whether the final name was new.

        Raises (after the client's END):
            FsError: the file could not be stored.
            _DigestMismatchError: it did not match the digest; it was deleted.
        """
        hasher = new_hasher(request.digest)
        failure: FsError | None = None
        if offset:
            try:
                await trio.to_thread.run_sync(target.hash_prefix, offset, hasher)
            except FsError as exc:
                failure = exc
        end, failure = await self._receive_data(target, offset, hasher, record, failure)
        if failure is not None:
            raise failure
        if end.digest != hasher.hexdigest():
            await trio.to_thread.run_sync(target.discard)
            raise _DigestMismatchError(
                f"the data received for {request.path!r} does not match the digest sent "
                f"(expected {end.digest}, got {hasher.hexdigest()}); nothing was saved",
            )
        overwrite = request.overwrite and self._config.allow_overwrite
        publish = partial(target.publish, overwrite=overwrite, mtime_ns=request.mtime_ns)
        return await trio.to_thread.run_sync(publish)

    async def _receive_data(
        self,
        target: UploadTarget,
        position: int,
        hasher: Hasher,
        record: AccessRecord,
        failure: FsError | None,
    ) -> tuple[FileEnd, FsError | None]:
        """Write and hash each DATA until the client's END; once writing has failed, read and
        drop the rest. Each chunk is written and hashed in worker threads while the next one
        is received."""
        jobs: list[ThreadJob[object]] = []
        check_stop = self._session.check_stop
        try:
            while True:
                check_stop()
                message = await self._next_message()
                try:
                    for job in jobs:
                        await job.result()
                except FsError as exc:
                    failure = failure or exc
                jobs.clear()
                if isinstance(message, FileEnd):
                    return message, failure
                assert isinstance(message, Data)  # ServerProtocol lets nothing else through
                data = message.data
                size = memoryview(data).nbytes
                if failure is None and size < _INLINE_CHUNK:
                    try:
                        target.write(data, position)
                    except FsError as exc:
                        failure = exc
                    hasher.update(data)
                elif failure is None:
                    jobs.append(ThreadJob(partial(target.write, data, position)))
                    jobs.append(ThreadJob(partial(hasher.update, data)))
                position += size
                record.bytes += size
        finally:
            for job in jobs:
                await job.wait_quietly()  # never close the part file under a running write

    async def _next_message(self) -> Message:
        with trio.move_on_after(self._config.idle_timeout) as idle:
            try:
                return await self._session.receive()
            except trio.EndOfChannel:
                raise trio.BrokenResourceError(
                    "the client closed the connection in the middle of an upload"
                ) from None
        assert idle.cancelled_caught
        message = f"no upload data for {self._config.idle_timeout:g} seconds"
        await self._session.farewell(ErrorCode.TIMEOUT, message)
        raise UploadStalledError(message)
