"""``put -r`` of one directory as one stream (feature ``tree-put``, docs/protocol.md section 23).

One TREE_PUT; then, without waiting for answers, the tree: for each directory a TREE_ASK a few
directories ahead (what does the server have there?), its TREE_DIR, and its small files read
and hashed in worker threads, many to a TREE_FILES frame. A task of its own reads everything
the server sends, at all times: the answers to the asks (kept until their directory comes up:
at most :data:`_ASK_AHEAD` directories' worth), the files stored (TREE_STORED), the entries
that failed (TREE_SKIP), and TREE_END. A file the server has with the same size and
modification time (with ``checksum``: the same digest) is not sent; one it has that differs is
refused here as ``exists`` unless ``overwrite``. Large files (a quarter of the server's frame
limit, at most 256 KiB, or more) go after the stream as PUTs (which resume and are verified
the same way), over several connections if the caller allows (``_tree_put_large.py``).
"""

from __future__ import annotations

import posixpath
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final

import trio

from ftx._threads import ThreadJob, run_together
from ftx.client._streams import file_digest
from ftx.client._tree_put_large import Connect, send_large_files
from ftx.client._tree_put_local import LocalDir, LocalFile, ReadBatch, read_files, walk_tree
from ftx.client._tree_put_report import TreePutReport
from ftx.client._upload import UploadWire
from ftx.errors import IntegrityError, LocalFileError, RemoteError
from ftx.protocol import TREE_PUT_FEATURE, ErrorCode
from ftx.protocol.messages import (
    Error,
    TreeAsk,
    TreeDir,
    TreeEnd,
    TreeFiles,
    TreeHave,
    TreeHaveEnd,
    TreePut,
    TreePutEnd,
    TreeSkip,
    TreeStored,
)

__all__ = ["TreePutReport", "put_tree"]

# How many directories ahead the client asks what the server has (MAX_TREE_ASKS is the limit).
_ASK_AHEAD: Final = 8
# What the client keeps of one directory's have pages (more names are simply sent again).
_MAX_HAVE: Final = 1_000_000
_SMALL_FILE_SIZE: Final = 256 * 1024
_MAX_RECORDS: Final = 512
_MAX_FRAME: Final = (1 << 20) + (64 << 10)
_FRAME_RESERVE: Final = 16 << 10


@dataclass(slots=True)
class _Ask:
    path: str
    have: dict[str, tuple[int, int, str | None]] = field(default_factory=dict)
    answered: trio.Event = field(default_factory=trio.Event)


async def put_tree(
    client: UploadWire,
    local: Path,
    remote: str,
    *,
    overwrite: bool,
    checksum: bool,
    report: TreePutReport,
    jobs: int = 1,
    connect: Connect | None = None,
) -> bool:
    """Upload the local directory ``local`` to the directory ``remote`` on the server (created
    if missing; its parent must exist) as one stream, then its large files with PUT (over this
    connection and up to ``jobs - 1`` more that ``connect`` makes, see
    :func:`~ftx.client._tree_put_large.send_large_files`); report each file through
    ``report``. Return False, sending nothing, if the server does not offer
    tree uploads (the caller sends the files one by one).

    Raises:
        RemoteError: the server refused the whole tree (``read-only``, ``not-found``, ...).
        LocalFileError: ``local`` cannot be read as a directory.
        ConnectionLostError, RemoteProtocolError: the connection failed; what was reported
            stored is stored, and a re-run sends only the rest.
    """
    if TREE_PUT_FEATURE not in client._protocol.features:
        return False
    algorithm = client.digest_algorithm
    request = TreePut(
        client._protocol.new_request_id(), remote, algorithm, overwrite=overwrite, checksum=checksum
    )
    # What an earlier attempt left in flight is sent again (or found up to date) by this one.
    report.sizes.clear()
    report.queued = report.queued_bytes = 0
    report.sending.clear()
    walk = walk_tree(local)
    first = await trio.to_thread.run_sync(next, walk)  # (raises LocalFileError: nothing sent)
    sender = _Sender(client, request, report, walk, first)
    await client._send(request)
    try:
        await run_together(sender.send, sender.receive)
    except BaseException:
        if not sender.answered:  # a stream cut short cannot be abandoned: close the connection
            await client._fail()
        raise
    report.listing_done = True  # every file of the tree is counted now
    await send_large_files(client, sender.large, report, overwrite, jobs=jobs, connect=connect)
    return True


class _Sender:
    """One tree upload in progress: the sending side and the reading side."""

    def __init__(
        self,
        client: UploadWire,
        request: TreePut,
        report: TreePutReport,
        walk: Iterator[LocalDir],
        first: LocalDir,
    ) -> None:
        self._client = client
        self._request = request
        self._report = report
        self._walk = walk
        self._first: LocalDir | None = first
        self._asks: deque[_Ask] = deque()  # sent, their answer not yet complete
        limit = client._protocol.peer_max_frame_size
        self._small = min(_SMALL_FILE_SIZE, limit // 4)
        self._budget = min(limit, _MAX_FRAME) - _FRAME_RESERVE
        self.large: list[tuple[Path, str, int]] = []  # (local, remote, size)
        self.answered = False
        self._dirs = 0
        self._files = 0

    def _remote(self, relative: str) -> str:
        return posixpath.join(self._request.path, relative) if relative else self._request.path

    async def receive(self) -> None:
        """Read the server's answer to its TREE_END: never waits on the sending side."""
        client, report = self._client, self._report
        while True:
            message = await client._receive()
            if isinstance(message, TreeHave):
                have = self._asks[0].have
                for file in message.files[: max(0, _MAX_HAVE - len(have))]:
                    have[file.name] = (file.size, file.mtime_ns, file.digest)
            elif isinstance(message, TreeHaveEnd):
                self._asks.popleft().answered.set()
            elif isinstance(message, TreeStored):
                base = self._remote(message.path)
                for name in message.names:
                    report.note_stored(posixpath.join(base, name))
            elif isinstance(message, TreeSkip):
                path = self._remote(message.path)
                error = RemoteError(message.code, message.message)
                if message.code == ErrorCode.EXISTS:
                    error = RemoteError(
                        message.code, f"{message.message} (use --force to replace it)"
                    )
                if message.code == ErrorCode.DIGEST_MISMATCH:
                    report.note_failed(path, IntegrityError(message.message))
                else:
                    report.note_failed(path, error)
            elif isinstance(message, Error):
                self.answered = True  # (the answer is over: the connection is usable)
                raise RemoteError(message.code, message.message)
            else:
                assert isinstance(message, TreeEnd)  # the protocol lets nothing else through
                return

    async def send(self) -> None:
        """Walk the tree and send it (asks ahead, directories, frames of small files)."""
        walk = self._walk
        ahead: deque[tuple[LocalDir, _Ask | None]] = deque()
        ended = False
        while True:
            while not ended and len(ahead) < _ASK_AHEAD:
                found, self._first = self._first, None
                if found is None:
                    found = await trio.to_thread.run_sync(next, walk, None)
                if found is None:
                    ended = True
                    break
                ahead.append((found, await self._ask(found)))
            if not ahead:
                break
            directory, ask = ahead.popleft()
            if ask is not None:
                await ask.answered.wait()
            await self._send_directory(directory, {} if ask is None else ask.have)
        await self._client._send(TreePutEnd(self._request.request_id, self._dirs, self._files))

    async def _ask(self, directory: LocalDir) -> _Ask | None:
        if self._request.overwrite or not directory.files:
            return None  # everything is sent anyway; or nothing to compare
        ask = _Ask(directory.path)
        self._asks.append(ask)
        await self._client._send(TreeAsk(self._request.request_id, directory.path))
        return ask

    async def _send_directory(
        self, directory: LocalDir, have: dict[str, tuple[int, int, str | None]]
    ) -> None:
        report = self._report
        for local, reason in directory.skipped:
            report.skipped(local, reason)
        if directory.skipped and directory.skipped[0][0] == directory.local:
            return  # the directory itself could not be read
        request_id = self._request.request_id
        await self._client._send(TreeDir(request_id, directory.path))
        self._dirs += 1
        remote = self._remote(directory.path)
        small: list[tuple[LocalFile, str | None]] = []
        for file in directory.files:
            path = posixpath.join(remote, file.name)
            known = have.get(file.name)
            digest = None
            if known is not None and not self._request.overwrite:
                if known[:2] == (file.size, file.mtime_ns) and not self._request.checksum:
                    report.note_unchanged(path)
                    continue
                if not (self._request.checksum and known[0] == file.size and known[2]):
                    message = f"{path!r} already exists on the server (use --force to replace it)"
                    report.note_failed(path, RemoteError(ErrorCode.EXISTS, message))
                    continue
                digest = known[2]  # the same content is up to date, another refused
            if file.size >= self._small:
                await self._large(directory.local / file.name, path, file.size, digest)
            else:
                small.append((file, digest))
        await self._send_small(directory, remote, small)

    async def _large(self, local: Path, remote: str, size: int, digest: str | None) -> None:
        if digest is not None:
            algorithm = self._request.digest
            try:
                mine = await trio.to_thread.run_sync(file_digest, local, algorithm)
            except OSError as exc:
                self._report.note_failed(remote, LocalFileError(f"cannot read {local}: {exc}"))
                return
            if mine == digest:
                self._report.note_unchanged(remote)
            else:
                message = f"{remote!r} already exists on the server (use --force to replace it)"
                self._report.note_failed(remote, RemoteError(ErrorCode.EXISTS, message))
            return
        self._queue_large(local, remote, size)

    def _queue_large(self, local: Path, remote: str, size: int) -> None:
        """Put a large file aside for a PUT after the stream (so that it can resume)."""
        self.large.append((local, remote, size))
        self._report.queued += 1
        self._report.queued_bytes += size

    async def _send_small(
        self, directory: LocalDir, remote: str, files: list[tuple[LocalFile, str | None]]
    ) -> None:
        """Read the files in batches of about a frame each, the next batch read while the
        frames of this one are sent."""
        batches: list[list[tuple[LocalFile, str | None]]] = [[]]
        size = 0
        for file, digest in files:
            if batches[-1] and (len(batches[-1]) >= _MAX_RECORDS or size >= self._budget):
                batches.append([])
                size = 0
            batches[-1].append((file, digest))
            size += file.size + 6 * len(file.name) + 400
        read = partial(
            read_files,
            directory.local,
            algorithm=self._request.digest,
            max_records=_MAX_RECORDS,
            max_bytes=self._budget,
            small_size=self._small,
        )
        jobs = deque(ThreadJob(partial(read, batch)) for batch in batches[:1] if batch)
        index = 1
        try:
            while jobs:
                batch = await jobs.popleft().result()
                if index < len(batches):
                    jobs.append(ThreadJob(partial(read, batches[index])))
                    index += 1
                await self._send_batch(batch, directory.local, remote)
        finally:
            for job in jobs:
                await job.wait_quietly()

    async def _send_batch(self, batch: ReadBatch, local: Path, remote: str) -> None:
        report = self._report
        for name, error in batch.failed:
            report.note_failed(posixpath.join(remote, name), error)
        for name in batch.same:
            report.note_unchanged(posixpath.join(remote, name))
        for file in batch.grown:
            self._queue_large(local / file.name, posixpath.join(remote, file.name), file.size)
        request_id = self._request.request_id
        for records, content in batch.frames:
            for record in records:
                report.sizes[posixpath.join(remote, record.name)] = record.size
            self._files += len(records)
            await self._client._send(TreeFiles(request_id, records, content))
