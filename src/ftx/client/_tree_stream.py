"""``get -r`` of one directory as one stream (feature ``tree``, docs/protocol.md section 21).

One TREE request; the client sends what it already has (a have-list, streamed page by page in
the tree's canonical order, so the server can leave those files out) while it reads the answer:
directories, batches of small files, large files (received by :mod:`ftx.client._receive`, as a
GET's answer) and skipped entries. The small files of a batch are verified and written by one
worker-thread job (each through a part file created exclusively, its time set, then renamed),
which runs while the next batch is received; :mod:`ftx.client._tree` flushes the file systems
once at the end.

Every name from the wire is checked twice: by the decoder (one path component, no separator,
NUL, ``.`` or ``..``, at most 255 bytes), and here before use. Directories are created and
opened one component at a time with ``O_NOFOLLOW`` relative to their parent's descriptor, so a
symbolic link planted where a directory should be is refused, never followed: nothing is
written outside the destination. An entry that fails (refused, unreadable on the server, a
local error) is reported and the stream goes on.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, TypeVar, cast

import trio

from ftx._threads import ThreadJob, leaf_exceptions
from ftx.client._client import Client
from ftx.client._partfile import DiscardingPart, PartFile
from ftx.client._receive import (
    Download,
    GetOptions,
    ReceiveBuffers,
    receive_answer,
)
from ftx.client._tree_disk import (
    DIR_FLAGS,
    Batch,
    Skipped,
    TreeProgress,
    TreeResult,
    have_pages,
    open_directory,
    open_path,
    safe_name,
    write_batch,
)
from ftx.errors import IntegrityError, LocalFileError, RemoteError
from ftx.framing import BlockingReceiver
from ftx.protocol import TREE_FEATURE, ClientProtocol, ErrorCode
from ftx.protocol.messages import (
    Error,
    Message,
    TreeDir,
    TreeEnd,
    TreeFile,
    TreeFiles,
    TreeGet,
    TreeHave,
    TreeHaveEnd,
    TreeSame,
    TreeSkip,
)

__all__ = ["stream_tree"]

# How many batches of small files are written at once, each by a worker thread.
_WRITERS: Final = 2


# How many pages of the have-list one worker-thread call lists at most (each holds at most
# 1,000 records, usually one directory's).
_HAVE_BATCH: Final = 32

_T = TypeVar("_T")


def _take_pages(pages: Iterator[TreeHave], wanted: int) -> list[TreeHave]:
    """The next pages of ``pages``: at most ``wanted``, and at most about 4,000 records."""
    batch: list[TreeHave] = []
    records = 0
    for page in pages:
        batch.append(page)
        records += len(page.files)
        if len(batch) >= wanted or records >= 4000:
            break
    return batch


class _TreeWire:
    """The client, as :func:`~ftx.client._receive.receive_answer` sees it while it receives a
    large file of a tree: a TREE_SKIP that ends the file reads as the ERROR of a GET would."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @property
    def digest_algorithm(self) -> str:
        return self._client.digest_algorithm

    @property
    def _protocol(self) -> ClientProtocol:
        return self._client._protocol

    @property
    def _receive_buffers(self) -> ReceiveBuffers:
        return self._client._receive_buffers

    async def _send(self, *messages: Message) -> None:
        await self._client._send(*messages)

    async def _receive(self, into: bytearray | None = None) -> Message:
        message = await self._client._receive(into)
        if isinstance(message, TreeSkip):
            return Error(message.request_id, message.code, message.message)
        return message

    async def _fail(self) -> None:
        await self._client._fail()

    # The bulk path (client/_bulk.py) for a large file of the tree: the same thread span as a
    # GET's; the message that ends the span is translated as _receive translates it.

    @property
    def _spans_supported(self) -> bool:
        return self._client._spans_supported

    async def _receive_span(self, work: Callable[[BlockingReceiver], _T]) -> _T:
        result = await self._client._receive_span(work)
        if isinstance(result, tuple) and result and isinstance(result[0], TreeSkip):
            skip = result[0]
            return cast(_T, (Error(skip.request_id, skip.code, skip.message), *result[1:]))
        return result

    def _note_progress(self, message: Message | None) -> None:
        self._client._note_progress(message)


async def stream_tree(
    client: Client,
    remote: str,
    local: Path,
    *,
    overwrite: bool,
    verify: bool,
    preserve_mode: bool,
    checksum: bool,
    finish: Callable[[str, TreeResult], object],
    totals: TreeProgress,
    directories: set[str],
) -> bool:
    """Fetch the directory ``remote`` into the local directory ``local`` (created if needed)
    as one stream; report every file and skip through ``finish``. Return False if the server
    does not offer tree streams (nothing is sent then), or answers that ``remote`` is not a
    directory (its answer read, the connection usable): the caller fetches it file by file.

    Raises:
        LocalFileError: ``local`` cannot be created or opened as a directory.
        RemoteError: the server refused the tree (e.g. ``not-found``).
        ConnectionLostError, RemoteProtocolError: the connection failed; what was saved stays
            saved, and a re-run fetches only the rest.
    """
    if TREE_FEATURE not in client._protocol.features:
        return False
    algorithm = client.digest_algorithm if verify else None
    request = TreeGet(
        client._protocol.new_request_id(),
        remote,
        digest=algorithm,
        have=not overwrite,
        checksum=checksum and algorithm is not None,
    )
    await client._send(request)
    receiver = _Receiver(client, request, local, overwrite, preserve_mode, finish, totals)

    async def send_have() -> None:
        pages = have_pages(local, algorithm if request.checksum else None, request.request_id)
        # One worker-thread call lists several directories (the first call one page, so the
        # server can start at once; then more each time, up to _HAVE_BATCH).
        wanted = 1
        while batch := await trio.to_thread.run_sync(_take_pages, pages, wanted):
            await client._send(*batch)
            wanted = min(wanted * 2, _HAVE_BATCH)
        await client._send(TreeHaveEnd(request.request_id))

    try:
        async with trio.open_nursery() as nursery:
            if request.have:
                nursery.start_soon(send_have)
            try:
                found = await receiver.run()
            finally:
                # The batch being written is finished (and reported) even when the stream
                # failed: its files are whole.
                with trio.CancelScope(shield=True):
                    await receiver.settle_quietly()
                receiver.close()
                directories.update(receiver.directories)
    except BaseExceptionGroup as group:
        leaves = [exc for exc in leaf_exceptions(group) if not isinstance(exc, trio.Cancelled)]
        if len(leaves) == 1:
            raise leaves[0] from None
        raise
    return found


class _Receiver:
    """Reads one TREE answer and saves what it holds."""

    def __init__(
        self,
        client: Client,
        request: TreeGet,
        local: Path,
        overwrite: bool,
        preserve_mode: bool,
        finish: Callable[[str, TreeResult], object],
        totals: TreeProgress,
    ) -> None:
        self._client = client
        self._request = request
        self._local = local
        self._overwrite = overwrite
        self._preserve_mode = preserve_mode
        self._finish = finish
        self._totals = totals
        self._top: int | None = None
        self._fd: int | None = None  # the current directory, or None if it failed
        self._directory = ""
        self._failed: list[str] = []  # directories that could not be made: their subtrees too
        # The batches being written, oldest first, each with its own descriptor of its
        # directory (closed once the job is done).
        self._jobs: deque[tuple[ThreadJob[list[tuple[str, TreeResult]]], int]] = deque()
        self.directories: set[str] = set()

    def close(self) -> None:
        """Close the descriptors still open (call once no job runs: :meth:`settle_quietly`)."""
        for fd in (self._fd, self._top, *(fd for _, fd in self._jobs)):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._top = None
        self._jobs.clear()

    async def _settle(self, keep: int = 0) -> None:
        """Wait for the oldest batches being written until at most ``keep`` are; report their
        files."""
        while len(self._jobs) > keep:
            job, fd = self._jobs[0]
            try:
                results = await job.result()
            finally:
                self._jobs.popleft()
                os.close(fd)
            for remote, result in results:
                self._report(remote, result)

    async def settle_quietly(self) -> None:
        """Wait for every batch being written, and report them; never raises."""
        while self._jobs:
            with contextlib.suppress(Exception):
                await self._settle()

    def _report(self, remote: str, result: TreeResult) -> None:
        self._totals.files_done += not isinstance(result, Skipped)
        if isinstance(result, Download):
            self._totals.bytes_done += result.size
        self._finish(remote, result)

    def _remote(self, relative: str) -> str:
        base = self._request.path.strip("/")
        return "/".join(part for part in (base, relative) if part)

    async def run(self) -> bool:
        """Read the answer to its end; False if the server answered ``not-a-directory``."""
        client = self._client
        while True:
            message = await client._receive()
            if isinstance(message, Error):
                await self._settle()
                if message.code == ErrorCode.NOT_A_DIRECTORY and self._top is None:
                    return False
                raise RemoteError(message.code, message.message)
            if isinstance(message, TreeFiles):
                await self._files(message)
                continue
            match message:
                case TreeDir():
                    self._enter(message.path)
                case TreeFile():
                    await self._large(message.name)
                case TreeSkip():
                    self._skip(message)
                case TreeSame():
                    self._same(message)
                case TreeEnd():
                    await self._settle()
                    return True

    def _open_top(self) -> int:
        if self._top is None:
            parent = self._local.parent
            name = self._local.name
            if not name:  # the destination itself
                self._top = os.open(self._local, DIR_FLAGS & ~os.O_NOFOLLOW)
            else:
                parent_fd = os.open(parent, DIR_FLAGS & ~os.O_NOFOLLOW)
                try:
                    self._top = open_directory(parent_fd, name)
                finally:
                    os.close(parent_fd)
        return self._top

    def _enter(self, path: str) -> None:
        if self._fd is not None:
            os.close(self._fd)  # no job writes into it now (settled)
        self._fd = None
        self._directory = path
        if any(path == failed or path.startswith(failed + "/") for failed in self._failed):
            return  # below a directory that failed, and was reported: nothing to say again
        try:
            top = self._open_top()
            self._fd = open_path(top, path)
        except LocalFileError as exc:
            if self._top is None:
                raise
            self._failed.append(path)
            self._finish(self._remote(path), exc)
        except OSError as exc:
            if self._top is None:
                raise LocalFileError(f"cannot open {self._local}: {exc.strerror}") from exc
            self._failed.append(path)
            self._finish(self._remote(path), LocalFileError(f"cannot open {path!r}: {exc}"))
        else:
            self.directories.add(os.fspath(self._local / path if path else self._local))

    async def _files(self, message: TreeFiles) -> None:
        self._totals.files_found += len(message.records)
        self._totals.bytes_found += sum(record.size for record in message.records)
        remote = self._remote(self._directory)
        if self._fd is None:
            return  # its directory failed, and was reported
        # Batches are written by up to _WRITERS worker threads at once (each into its own
        # directory, mostly: file systems lock a directory while they add a name to it).
        await self._settle(keep=_WRITERS - 1)
        fd = os.dup(self._fd)  # the job's own: the directory may change before it is done
        local = self._local / self._directory if self._directory else self._local
        batch = Batch(fd, local, remote, message.records, message.content)
        algorithm = self._request.digest
        overwrite, preserve = self._overwrite, self._preserve_mode
        try:
            job = ThreadJob(lambda: write_batch(batch, algorithm, overwrite, preserve))
        except BaseException:
            os.close(fd)
            raise
        self._jobs.append((job, fd))

    async def _large(self, name: str) -> None:
        remote = f"{self._remote(self._directory)}/{name}".lstrip("/")
        wire = _TreeWire(self._client)
        options = GetOptions(
            overwrite=self._overwrite,
            verify=self._request.digest is not None,
            preserve_mtime=True,
            preserve_mode=self._preserve_mode,
            durable=False,
            skip_unwritable=True,
            into_directories=False,
        )
        counted = 0
        found = False

        def progress(done: int, total: int) -> None:
            nonlocal counted, found
            if not found:
                found = True
                self._totals.bytes_found += total
            self._totals.bytes_done += done - counted
            counted = done

        local = self._local / self._directory if self._directory else self._local
        part: PartFile = DiscardingPart(Path(os.devnull))  # read and dropped, unless saved
        if self._fd is not None:  # (else its directory failed, and was reported)
            # Every name relative to the directory's descriptor (opened without following
            # links, as for the small files): a directory swapped for a link meanwhile changes
            # nothing.
            part = PartFile(local / safe_name(name), dir_fd=self._fd)
        self._totals.files_found += self._fd is not None
        try:
            download = await receive_answer(wire, remote, part, progress, options, time.monotonic())
        except (RemoteError, IntegrityError, LocalFileError) as exc:
            self._totals.bytes_done -= counted
            self._report(remote, exc)
            return
        self._totals.bytes_done -= counted
        if self._fd is not None:
            self._report(remote, download)

    def _same(self, message: TreeSame) -> None:
        remote = self._remote(self._directory)
        self._totals.files_found += len(message.names)
        self._totals.files_done += len(message.names)
        for name in message.names:
            path = f"{remote}/{name}" if remote else name
            self._finish(path, Skipped(path, "up to date"))

    def _skip(self, message: TreeSkip) -> None:
        remote = self._remote(message.path)
        if message.code == "symlink":
            self._finish(
                remote, Skipped(remote, "a symbolic link (not followed; fetch its target by name)")
            )
        elif message.code == "not-a-file":
            self._finish(remote, Skipped(remote, "not a regular file"))
        else:
            self._totals.files_done += 1
            self._finish(remote, RemoteError(message.code, message.message))
