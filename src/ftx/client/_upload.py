"""The client's side of uploads (:meth:`ftx.Client.put`, :meth:`ftx.Client.mkdir`).

An upload sends PUT with the file's size, the digest algorithm and a *source* token naming this
version of the local file (from its device, inode, size and times, like the server's file
identity). The server answers READY with the offset to send from: the length of its part file
when an earlier upload of the same source was interrupted, else 0. The client sends the rest of
the file as DATA and the digest of the *whole* file in END (the bytes before the offset are
hashed from the local file); the server answers DONE once its copy matches that digest and is
in place under the final name. If a resumed upload does not verify, it is sent again from zero,
once. A file under 1 MiB is sent with no source token: it is sent whole again rather than
resumed, and the server keeps no resume record for it.

A local file that changes while it is being sent is not finished: the connection is closed
(there is no way to abandon an upload otherwise), nothing appears on the server, and a later
upload of the new version starts from zero.

:func:`plan_uploads` turns the command line's local paths into the directories to create and
the files to send, top-down, for ``ftx put -r``.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final, Literal, Protocol, Self

import trio

from ftx._threads import ThreadJob, run_together
from ftx.client._partfile import RESUMABLE_SIZE
from ftx.errors import IntegrityError, LocalFileError, RemoteError
from ftx.fs import file_identity, read_cached_into
from ftx.protocol import UPLOAD_FEATURE, ClientProtocol, ErrorCode, Hasher, new_hasher
from ftx.protocol.messages import Data, Done, Error, FileEnd, MakeDir, Message, Put, Ready

__all__ = [
    "Planned",
    "Upload",
    "UploadWire",
    "local_name",
    "make_directory",
    "plan_uploads",
    "remote_join",
    "send_file",
]

logger = logging.getLogger("ftx.client")

ProgressCallback = Callable[[int, int], object]
UPLOAD_CHUNK: Final = 512 * 1024
# While the start of a resumed file is hashed, an empty DATA this often tells the server the
# client is still there (the server cuts off an upload that sends nothing for its idle timeout).
_KEEPALIVE_SECONDS: Final = 5.0
_HASH_BLOCK: Final = 1 << 20
# Chunks smaller than this are hashed in the event loop's thread.
_INLINE_CHUNK: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Upload:
    """What :meth:`ftx.Client.put` stored on the server."""

    source: Path
    path: str
    """Where the file is on the server, relative to the served directory."""
    size: int
    offset: int
    """How many bytes the server already held from an interrupted upload (0: sent whole)."""
    digest: str
    """The hex digest of the whole file, which the server's copy matched."""
    digest_algorithm: str
    created: bool
    """False when the upload replaced a file that was there."""
    seconds: float


class UploadWire(Protocol):
    """What an upload needs of its connection (:class:`ftx.Client` is one): send and receive
    checked messages, number requests, and give up (close) when an upload cannot be finished.
    The members are the client's private ones: only the client's own modules use them."""

    @property
    def digest_algorithm(self) -> str:
        """The digest the server's copy is checked with."""

    @property
    def _protocol(self) -> ClientProtocol:
        """The connection's protocol state: the server's features and frame limit; it numbers
        the requests."""

    async def _send(self, *messages: Message) -> None:
        """Send the messages, in one write if they are small."""

    async def _receive(self, into: bytearray | None = None) -> Message:
        """The next message; closes the connection on any failure."""

    async def _fail(self) -> None:
        """Close the connection (an upload that cannot be finished cannot be abandoned)."""


class _LocalFile:
    """A local regular file opened for reading, with the metadata it had when opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # O_NONBLOCK: opening a FIFO must not hang (it is refused just below).
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise LocalFileError(f"cannot read {path}: {exc.strerror}") from exc
        self.stat = os.fstat(self.fd)
        if not stat.S_ISREG(self.stat.st_mode):
            os.close(self.fd)
            what = "a directory" if stat.S_ISDIR(self.stat.st_mode) else "not a regular file"
            raise LocalFileError(f"cannot send {path}: it is {what}")

    @property
    def source(self) -> str:
        return file_identity(self.stat)

    def read(self, position: int, count: int) -> bytes:
        try:
            return os.pread(self.fd, count, position)
        except OSError as exc:
            raise LocalFileError(f"cannot read {self.path}: {exc.strerror}") from exc

    def read_cached(self, position: int, count: int) -> bytearray | None:
        """The ``count`` bytes from ``position`` if all are in the page cache (so that reading
        them cannot block), else ``None``: then :meth:`read` them in a worker thread."""
        buffer = bytearray(count)
        got = read_cached_into(self.fd, buffer, position)
        return buffer if got == count else None

    def hash_prefix(self, end: int, hasher: Hasher) -> None:
        position = 0
        while position < end:
            block = self.read(position, min(_HASH_BLOCK, end - position))
            if not block:
                raise LocalFileError(f"{self.path} shrank while being sent")
            hasher.update(block)
            position += len(block)

    def changed(self) -> bool:
        now = os.fstat(self.fd)
        then = self.stat
        return (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
            then.st_size,
            then.st_mtime_ns,
            then.st_ctime_ns,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)


async def send_file(
    wire: UploadWire,
    source: Path,
    path: str,
    *,
    progress: ProgressCallback | None,
    overwrite: bool,
    resume: bool,
    preserve_mtime: bool,
) -> Upload:
    """Upload the local file ``source`` to ``path`` on the server (see the module docs).

    Raises:
        RemoteError: the server refused (``read-only``, ``exists``, ``too-large``,
            ``no-space``, a refused path, ...).
        IntegrityError: the server's copy did not match the digest; nothing was saved.
        LocalFileError: ``source`` cannot be read, is not a regular file, or changed while it
            was being sent (then the connection is closed).
        ConnectionLostError, RemoteProtocolError: the connection failed.
    """
    _check_uploads(wire)
    started = time.monotonic()
    with _LocalFile(source) as local:
        token = local.source if resume and local.stat.st_size >= RESUMABLE_SIZE else None
        try:
            return await _send_once(wire, local, path, token, overwrite, preserve_mtime, progress)
        except _ResumedMismatchError:
            logger.debug("%s: the resumed upload did not verify: sending it again from zero", path)
            # The part the server held did not hold the start of this file after all: again,
            # from zero (the server dropped the part).
            upload = await _send_once(wire, local, path, token, overwrite, preserve_mtime, progress)
    return Upload(
        upload.source,
        upload.path,
        upload.size,
        upload.offset,
        upload.digest,
        upload.digest_algorithm,
        upload.created,
        time.monotonic() - started,
    )


def _check_uploads(wire: UploadWire) -> None:
    """Raise :exc:`RemoteError` ``read-only``, without asking, if the server offers no uploads."""
    if UPLOAD_FEATURE not in wire._protocol.features:
        raise RemoteError(ErrorCode.READ_ONLY, "the server does not accept uploads")


class _ResumedMismatchError(IntegrityError):
    """The server's part did not hold the start of this file after all: send it again."""


async def _send_once(
    wire: UploadWire,
    local: _LocalFile,
    path: str,
    token: str | None,
    overwrite: bool,
    preserve_mtime: bool,
    progress: ProgressCallback | None,
) -> Upload:
    started = time.monotonic()
    size = local.stat.st_size
    algorithm = wire.digest_algorithm
    request_id = wire._protocol.new_request_id()
    mtime_ns = local.stat.st_mtime_ns if preserve_mtime else None
    await wire._send(Put(request_id, path, size, algorithm, token, overwrite, mtime_ns))
    answer = await wire._receive()
    if isinstance(answer, Error):
        raise RemoteError(answer.code, answer.message)
    assert isinstance(answer, Ready)  # ClientProtocol lets nothing else through
    offset = answer.offset
    if offset:
        logger.debug("%s: the server holds its first %d bytes: resuming from there", path, offset)
    try:
        digest = await _send_data(wire, local, offset, new_hasher(algorithm), progress)
        await wire._send(FileEnd(request_id, digest))
    except BaseException:
        await wire._fail()  # the upload cannot be finished: close (the server keeps its part)
        raise
    answer = await wire._receive()
    if isinstance(answer, Error):
        if answer.code != ErrorCode.DIGEST_MISMATCH:
            raise RemoteError(answer.code, answer.message)
        if offset:
            raise _ResumedMismatchError(answer.message)
        raise IntegrityError(f"the server's copy of {local.path} did not verify: {answer.message}")
    assert isinstance(answer, Done)
    seconds = time.monotonic() - started
    return Upload(local.path, path, size, offset, digest, algorithm, answer.created, seconds)


async def _send_data(
    wire: UploadWire,
    local: _LocalFile,
    offset: int,
    hasher: Hasher,
    progress: ProgressCallback | None,
) -> str:
    """Send the file from ``offset`` as DATA; return the digest of the whole file. Each chunk
    is read ahead, and hashed, in worker threads while the previous one is sent; a small one
    found in the page cache is read here (a thread hop would cost more than the read), which
    for a tree of small files saves most of a file's thread hops."""
    size = local.stat.st_size
    chunk_size = min(UPLOAD_CHUNK, wire._protocol.peer_max_frame_size - 1)
    if offset:
        await _hash_prefix(wire, local, offset, hasher)
    position = offset
    if progress is not None:
        progress(position, size)

    def read_next() -> ThreadJob[bytes] | bytearray | None:
        count = min(chunk_size, size - position)
        if count <= 0:
            return None
        if count < _INLINE_CHUNK and (cached := local.read_cached(position, count)) is not None:
            return cached
        return ThreadJob(partial(local.read, position, count))

    reading = read_next()
    try:
        while reading is not None:
            chunk = await reading.result() if isinstance(reading, ThreadJob) else reading
            reading = None
            if not chunk:
                raise LocalFileError(f"{local.path} shrank while being sent; nothing was saved")
            position += len(chunk)
            reading = read_next()
            hashing = (
                ThreadJob(partial(hasher.update, chunk)) if len(chunk) >= _INLINE_CHUNK else None
            )
            if hashing is None:
                hasher.update(chunk)
            try:
                await wire._send(Data(chunk))
            finally:
                if hashing is not None:
                    await hashing.wait_quietly()
            if progress is not None:
                progress(position, size)
    finally:
        if isinstance(reading, ThreadJob):
            await reading.wait_quietly()  # never close the file under a running read
    # An fstat: for a small file, a thread hop would cost more than it may block.
    changed = (
        local.changed() if size < _INLINE_CHUNK else await trio.to_thread.run_sync(local.changed)
    )
    if changed:
        raise LocalFileError(f"{local.path} changed while being sent; nothing was saved")
    return hasher.hexdigest()


async def _hash_prefix(wire: UploadWire, local: _LocalFile, end: int, hasher: Hasher) -> None:
    """Hash the first ``end`` bytes of the local file, sending an empty DATA every few seconds
    meanwhile so that the server does not take the silence for a dead client."""
    done = trio.Event()

    async def hash_it() -> None:
        await trio.to_thread.run_sync(local.hash_prefix, end, hasher)
        done.set()

    async def keep_alive() -> None:
        while not done.is_set():
            with trio.move_on_after(_KEEPALIVE_SECONDS):
                await done.wait()
            if not done.is_set():
                await wire._send(Data(b""))

    await run_together(hash_it, keep_alive)


async def make_directory(wire: UploadWire, path: str) -> bool:
    """Create the directory ``path`` on the server; return whether it was created (false: it
    existed already).

    Raises:
        RemoteError: the server refused (``read-only``, ``exists`` when something else has
            that name, ``not-found`` when the parent is missing, ...).
        ConnectionLostError, RemoteProtocolError: the connection failed.
    """
    _check_uploads(wire)
    await wire._send(MakeDir(wire._protocol.new_request_id(), path))
    answer = await wire._receive()
    if isinstance(answer, Error):
        raise RemoteError(answer.code, answer.message)
    assert isinstance(answer, Done)
    return answer.created


@dataclass(frozen=True, slots=True)
class Planned:
    """One step of an upload: a directory to create or a file to send."""

    local: Path
    remote: str
    kind: Literal["dir", "file"]


def remote_join(directory: str, name: str) -> str:
    """``directory/name`` on the server (``directory`` may be ``""``, the served root)."""
    directory = directory.rstrip("/")
    return f"{directory}/{name}" if directory else name


def plan_uploads(
    sources: Sequence[str | os.PathLike[str]],
    to: str,
    *,
    recursive: bool,
    on_skip: Callable[[Path, str], object],
) -> Iterator[Planned]:
    """The directories to create and files to send, top-down, to upload ``sources`` into the
    server directory ``to``: a file as ``to/NAME``; with ``recursive``, a directory as
    ``to/NAME`` with everything under it. Under a directory, symbolic links and special files
    are skipped (``on_skip(path, reason)``); a named file that is a link is followed.

    Raises:
        LocalFileError: a source does not exist, is a directory (without ``recursive``) or a
            special file, or has a name that is not valid UTF-8.
    """
    for source in sources:
        path = Path(source)
        try:
            st = path.stat()
        except OSError as exc:
            raise LocalFileError(f"cannot send {path}: {exc.strerror}") from exc
        name = local_name(path)
        if stat.S_ISREG(st.st_mode):
            yield Planned(path, remote_join(to, name), "file")
        elif not stat.S_ISDIR(st.st_mode):
            raise LocalFileError(f"cannot send {path}: it is not a regular file")
        elif not recursive:
            raise LocalFileError(f"cannot send {path}: it is a directory (use -r)")
        else:
            yield from _plan_tree(path, remote_join(to, name), on_skip)


def local_name(path: Path) -> str:
    """The name ``path`` is uploaded under: its last component (of the absolute path, so that
    ``.`` is named too).

    Raises:
        LocalFileError: the name is not valid UTF-8, or there is none (``/``).
    """
    path = Path(os.path.abspath(path))
    name = path.name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalFileError(f"cannot send {path}: its name is not valid UTF-8") from None
    if not name:
        raise LocalFileError(f"cannot send {path}: it has no name (send what is inside it)")
    return name


def _plan_tree(top: Path, remote: str, on_skip: Callable[[Path, str], object]) -> Iterator[Planned]:
    yield Planned(top, remote, "dir")
    try:
        entries = sorted(os.scandir(top), key=lambda entry: entry.name)
    except OSError as exc:
        on_skip(top, f"cannot list it: {exc.strerror}")
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            name = local_name(path)
        except LocalFileError:
            on_skip(path, "its name is not valid UTF-8")
            continue
        if entry.is_symlink():
            on_skip(path, "symbolic link")
        elif entry.is_dir(follow_symlinks=False):
            yield from _plan_tree(path, remote_join(remote, name), on_skip)
        elif entry.is_file(follow_symlinks=False):
            yield Planned(path, remote_join(remote, name), "file")
        else:
            on_skip(path, "not a regular file")
