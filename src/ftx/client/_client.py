"""The ftx client: download files, list directories, and upload files (:mod:`ftx.client._upload`) to
a writable server.

::

    async with ftx.connect("127.0.0.1", 3890) as client:
        result = await client.get("docs/report.pdf", "report.pdf", progress=print)
        entries = await client.list("docs")

A download is written to ``DEST.part``, checked against the server's digest of the whole file,
flushed to disk and only then renamed to ``DEST``: a failed or interrupted download never leaves
a file at ``DEST`` that looks complete, and never replaces an existing one before the new copy
is verified. The local name comes from the caller's arguments only, never from the server.

Progress is reported through a callback; drawing it is the caller's business (the CLI uses tqdm).
"""

from __future__ import annotations

import os
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from ftx._tls import open_tls_stream
from ftx.client._config import ClientConfig
from ftx.client._connection import ClientConnection
from ftx.client._destination import check_destination, local_destination
from ftx.client._receive import Download, GetOptions, ProgressCallback, download, get_request
from ftx.client._streams import StreamPart
from ftx.errors import FtxError, RemoteError, RemoteProtocolError
from ftx.framing import Buffer
from ftx.protocol.messages import (
    BlockList,
    Entry,
    Error,
    FileEnd,
    FileHeader,
    ListDir,
    ListEnd,
    ListEntries,
)

if TYPE_CHECKING:
    from ftx.client._tree_put_report import TreePutReport
    from ftx.client._upload import Upload

__all__ = ["Client", "Download", "ProgressCallback", "connect", "local_destination"]

DEFAULT_PIPELINE_WINDOW: Final = 64


class Client(ClientConnection):
    """A client connection over any :class:`trio.abc.Stream` (see :func:`connect` for TCP).

    Requests from several tasks are answered one after the other. After a transfer breaks (the
    connection is lost, the server misbehaves, the local disk fails) the client is closed.

    Args:
        stream: a connected stream to an ftx server; the client owns it from now on.
        config: how the connection behaves (frame limit, idle timeout, token, digest; see
            :class:`ClientConfig`).

    Besides the file operations below, :meth:`handshake`, :meth:`aclose`,
    :attr:`digest_algorithm` and :attr:`server_hello` concern the connection itself.
    """

    async def get(
        self,
        path: str,
        dest: str | os.PathLike[str] | None = None,
        *,
        progress: ProgressCallback | None = None,
        overwrite: bool = False,
        verify: bool = True,
        preserve_mtime: bool = True,
        preserve_mode: bool = False,
        durable: bool = True,
        resume: bool = True,
    ) -> Download:
        """Download the file at ``path`` on the server to ``dest`` (see :func:`local_destination`).

        Args:
            path: the file's path on the server, relative to the served directory.
            dest: the local file or directory to save it to.
            progress: called with ``(bytes_done, bytes_total)`` as data arrives.
            overwrite: replace ``dest`` if it exists (after the new copy is verified).
            verify: ask for and check a digest of the whole file (see :attr:`digest_algorithm`;
                turn off only to measure).
            preserve_mtime: give the local file the server file's modification time.
            preserve_mode: give the local file the server file's permission bits (read, write,
                execute; never set-user-ID, set-group-ID or sticky). Otherwise new files get
                the usual defaults (0o666 less the umask).
            durable: flush the file to disk before renaming it into place, so that it survives
                a power cut too (an fsync: milliseconds per file on most disks). Without it the
                rename is just as atomic for every program, and the data reaches the disk
                whenever the system writes it back.
            resume: continue from ``DEST.part`` left by an interrupted download of the same
                ``path``, if the server's file is still the same one (same identity); if it
                changed, start again from zero. The whole file is verified either way.

        Raises:
            RemoteError: the server refused (not found, outside the root, changed, ...).
            IntegrityError: the data received does not match the server's digest.
            LocalFileError: ``dest`` exists (without ``overwrite``) or cannot be written.
            ConnectionLostError: the connection broke before the file was complete.
            RemoteProtocolError: the server broke the protocol.
        """
        target = local_destination(path, dest)
        check_destination(target, overwrite=overwrite)
        options = GetOptions(overwrite, verify, preserve_mtime, preserve_mode, durable=durable)
        async with self._lock:
            await self._check_open()
            return await download(
                self, path, target, progress=progress, options=options, resume=resume
            )

    async def stream(
        self,
        path: str,
        fd: int,
        *,
        progress: ProgressCallback | None = None,
        verify: bool = True,
        name: str = "-",
    ) -> Download:
        """Download the file at ``path`` on the server and write its bytes to the open
        descriptor ``fd`` (standard output, say) as they arrive. The digest is checked at the
        end, once every byte is out: a mismatch cannot take them back, and is raised for the
        caller to report. Nothing is resumed.

        Raises:
            IntegrityError: the bytes written do not match the server's digest.
            BrokenPipeError: the reader of ``fd`` went away.
            LocalFileError: another error writing to ``fd``.
            RemoteError, ConnectionLostError, RemoteProtocolError: as for :meth:`get`.
        """
        options = GetOptions(False, verify, False, False, durable=False)
        async with self._lock:
            await self._check_open()
            return await download(
                self,
                path,
                Path(name),
                progress=progress,
                options=options,
                resume=False,
                part=StreamPart(fd, name),
            )

    async def checksum(self, path: str, size: int) -> str:
        """The server's digest of the whole file at ``path``, in :attr:`digest_algorithm`,
        without its data: a GET from ``size`` (the file's size, as a listing gave it) on. To
        compare a local copy by content (``ftx get --checksum``).

        Raises:
            RemoteError: the server refused (``bad-request`` if the file is now shorter than
                ``size``, ``not-found``, ...).
            ConnectionLostError, RemoteProtocolError: as for :meth:`get`.
        """
        async with self._lock:
            await self._check_open()
            await self._send(get_request(self, path, True, size))
            message = await self._receive()
            while not isinstance(message, FileEnd | Error):
                message = await self._receive()  # FILE, and DATA if the file grew since
            if isinstance(message, Error):
                raise RemoteError(message.code, message.message)
            return message.digest or ""

    async def block_list(self, path: str, algorithm: str | None = None) -> BlockList:
        """The server's digests of each block of the file at ``path``, and of the whole file
        (feature ``ranges``; docs/protocol.md, section 22), with ``algorithm`` (default:
        :attr:`digest_algorithm`).

        Raises:
            LocalProtocolError: the server does not offer ``ranges`` (nothing was sent).
            RemoteError, ConnectionLostError, RemoteProtocolError: as for :meth:`get`.
        """
        from ftx.client._ranges import request_blocks

        async with self._lock:
            await self._check_open()
            return await request_blocks(self, path, algorithm or self.digest_algorithm)

    async def read_range(
        self,
        path: str,
        offset: int,
        length: int,
        *,
        identity: str,
        sink: Callable[[Buffer], object],
    ) -> FileHeader:
        """Fetch ``length`` bytes of the file at ``path`` from ``offset`` (fewer at its end)
        with a ranged GET, if the file still has ``identity``: each chunk is handed to ``sink``
        as it arrives (a view, valid until ``sink`` returns). Nothing is verified here: check
        the bytes against :meth:`block_list`. Returns the FILE header.

        Raises:
            LocalProtocolError: the server does not offer ``ranges`` (nothing was sent).
            RemoteError, ConnectionLostError, RemoteProtocolError: as for :meth:`get`.
        """
        from ftx.client._ranges import fetch_range

        async with self._lock:
            await self._check_open()
            if self._range_buffer is None:
                self._range_buffer = bytearray(self._channel.max_frame_size)
            return await fetch_range(
                self,
                path,
                offset,
                length,
                identity=identity,
                buffer=self._range_buffer,
                sink=sink,
            )

    async def get_many(
        self,
        files: Iterable[tuple[str, str | os.PathLike[str]]],
        *,
        on_done: Callable[[str, Download | FtxError], object] | None = None,
        progress: ProgressCallback | None = None,
        overwrite: bool = False,
        verify: bool = True,
        preserve_mtime: bool = True,
        preserve_mode: bool = False,
        window: int = DEFAULT_PIPELINE_WINDOW,
    ) -> list[Download | FtxError]:
        """Download several files, pipelining the requests so that small files do not cost a
        round trip each. Returns one result per file, in order: a :class:`Download`, or the
        error that file met (:exc:`RemoteError`, :exc:`IntegrityError`, :exc:`LocalFileError`)
        while the others went on. (A file whose part file cannot be created, say because a
        directory has its name, is still sent by the server: its data is read and dropped.)

        Each file is verified, resumed when possible and renamed into place as :meth:`get`
        does; the files are flushed to disk together at the end (one ``syncfs`` per file
        system they were saved on, instead of an fsync per file; ``sync`` where the system has
        no ``syncfs``).

        Args:
            files: ``(remote path, local destination)`` pairs; a destination may be an
                existing directory, as for :meth:`get`.
            on_done: called with ``(remote path, result)`` as each file ends.
            progress: called with ``(bytes_done, bytes_total)`` for the file in progress.
            window: how many requests may be outstanding at once.

        Raises:
            ConnectionLostError, RemoteProtocolError: the connection failed; files already
                saved stay saved, the rest are not (their parts are kept for a resume).
            LocalFileError: the final flush failed (an I/O error): the files are in place, but
                may not survive a power cut.
        """
        items = list(files)
        send_items, receive_items = trio.open_memory_channel[tuple[str, str | os.PathLike[str]]](
            len(items)
        )
        async with send_items:
            for item in items:
                send_items.send_nowait(item)
        # Results come as files finish; put each back in its place in the list.
        places: dict[str, deque[int]] = {}
        for index, (path, _) in enumerate(items):
            places.setdefault(path, deque()).append(index)
        results: list[Download | FtxError | None] = [None] * len(items)

        def record(path: str, result: Download | FtxError) -> None:
            results[places[path].popleft()] = result
            if on_done is not None:
                on_done(path, result)

        await self.fetch(
            receive_items,
            on_done=record,
            progress=progress,
            overwrite=overwrite,
            verify=verify,
            preserve_mtime=preserve_mtime,
            preserve_mode=preserve_mode,
            window=window,
        )
        return [result for result in results if result is not None]

    async def fetch(
        self,
        files: trio.abc.ReceiveChannel[tuple[str, str | os.PathLike[str]]],
        *,
        on_done: Callable[[str, Download | FtxError], object],
        progress: ProgressCallback | None = None,
        overwrite: bool = False,
        verify: bool = True,
        preserve_mtime: bool = True,
        preserve_mode: bool = False,
        window: int = DEFAULT_PIPELINE_WINDOW,
        sync: bool = True,
        into_directories: bool = True,
    ) -> None:
        """Download the files that arrive on ``files`` until it is closed: :meth:`get_many` for
        a stream of work (several clients may share one channel, each taking the next file).

        ``on_done`` is called with each result in the order the files were taken. ``sync=False``
        leaves the final flush to the caller. ``into_directories=False`` makes each destination
        the file's own path: a directory there is then a :exc:`LocalFileError` of that file,
        not a place to save it into (``ftx.tree`` downloads so). Raises as :meth:`get_many`
        does.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        options = GetOptions(
            overwrite,
            verify,
            preserve_mtime,
            preserve_mode,
            durable=False,
            skip_unwritable=True,
            into_directories=into_directories,
        )
        from ftx.client._flush import sync_file_systems
        from ftx.client._pipeline import fetch_files

        async with self._lock:
            await self._check_open()
            directories = await fetch_files(
                self, files, on_done=on_done, progress=progress, options=options, window=window
            )
        if sync and directories:
            await trio.to_thread.run_sync(sync_file_systems, directories)

    async def list(self, path: str = "") -> list[Entry]:
        """Return the entries of the directory at ``path`` on the server ("" is the root), or
        the one entry of ``path`` if it is not a directory. Unsorted, and as sent: a server
        must not list a name twice, but nothing here removes one that it does (see
        :mod:`ftx.client._tree`). At most :data:`~ftx.protocol.MAX_LIST_ENTRIES` entries.

        Raises:
            RemoteError: as for :meth:`get`; ``too-large`` for a directory of more entries
                than one listing may hold.
            ConnectionLostError, RemoteProtocolError: as for :meth:`get` (more entries than
                the limit is a protocol violation).
        """
        async with self._lock:
            await self._check_open()
            request_id = self._protocol.new_request_id()
            await self._send(ListDir(request_id, path))
            entries: list[Entry] = []
            while True:
                message = await self._receive()
                if isinstance(message, ListEntries):
                    entries.extend(message.entries)
                elif isinstance(message, Error):
                    raise RemoteError(message.code, message.message)
                else:
                    assert isinstance(message, ListEnd)
                    if message.count != len(entries):
                        raise RemoteProtocolError(
                            f"the listing announced {message.count} entries but sent {len(entries)}"
                        )
                    return entries

    async def put(
        self,
        source: str | os.PathLike[str],
        path: str | None = None,
        *,
        progress: ProgressCallback | None = None,
        overwrite: bool = False,
        resume: bool = True,
        preserve_mtime: bool = True,
    ) -> Upload:
        """Upload the local file ``source`` to ``path`` on the server (default: its name, in the
        served directory), verified end to end (see :mod:`ftx.client._upload`).

        Args:
            progress: called with ``(bytes_done, bytes_total)`` as data goes out.
            overwrite: replace the file at ``path`` if there is one (if the server allows it).
            resume: continue an interrupted upload of the same, unchanged, local file from
                where the server's part file ends (for a file of 1 MiB or more: a smaller one
                is sent whole again).
            preserve_mtime: give the server's file the local file's modification time.

        Raises:
            RemoteError: the server refused: ``read-only`` (also without asking, when the
                server does not offer uploads), ``exists``, ``too-large``, ``no-space``, or a
                refused path (``outside-root``, ``not-found``, ``bad-request``, ...).
            IntegrityError: the server's copy did not match the digest; nothing was saved.
            LocalFileError: ``source`` cannot be read, is not a regular file, or changed while
                it was being sent.
            ConnectionLostError, RemoteProtocolError: as for :meth:`get`.
        """
        from ftx.client._upload import local_name, send_file

        local = Path(source)
        target = path if path is not None else local_name(local)
        async with self._lock:
            await self._check_open()
            return await send_file(
                self,
                local,
                target,
                progress=progress,
                overwrite=overwrite,
                resume=resume,
                preserve_mtime=preserve_mtime,
            )

    async def put_tree(
        self,
        source: str | os.PathLike[str],
        path: str,
        *,
        overwrite: bool = False,
        checksum: bool = False,
        report: TreePutReport | None = None,
        jobs: int = 1,
        connect: Callable[[], Awaitable[Client]] | None = None,
    ) -> TreePutReport | None:
        """Upload the local directory ``source`` with everything under it to the directory
        ``path`` on the server (created if missing; its parent must exist) as one tree stream
        (feature ``tree-put``, see :mod:`ftx.client._tree_put`). Files the server has with
        the same size and time (``checksum``: the same digest) are not sent; with
        ``overwrite`` every file is, replacing what is there if the server allows it. Large
        files go after the stream, on this connection and, given ``connect`` (which opens a
        new one to the same server), up to ``jobs - 1`` more side by side.

        Returns ``report`` (a new one if ``None``) with the totals, after each file was
        reported through it; ``None``, having sent nothing, if the server does not offer tree
        uploads (send the files with :meth:`put` then).

        Raises:
            RemoteError: the server refused the tree as a whole.
            LocalFileError: ``source`` cannot be read as a directory.
            ConnectionLostError, RemoteProtocolError: as for :meth:`get`; what was reported
                stored is stored, and a re-run sends only the rest.
        """
        from ftx.client._tree_put import put_tree
        from ftx.client._tree_put_report import TreePutReport

        report = TreePutReport() if report is None else report
        async with self._lock:
            await self._check_open()
            sent = await put_tree(
                self,
                Path(source),
                path,
                overwrite=overwrite,
                checksum=checksum,
                report=report,
                jobs=jobs,
                connect=connect,
            )
        return report if sent else None

    async def mkdir(self, path: str) -> bool:
        """Create the directory ``path`` on the server (its parent must exist); return whether
        it was created (false: a directory was there already).

        Raises:
            RemoteError: the server refused (``read-only``, ``exists`` when something other than
                a directory has that name, ``not-found``, ...).
            ConnectionLostError, RemoteProtocolError: as for :meth:`get`.
        """
        from ftx.client._upload import make_directory

        async with self._lock:
            await self._check_open()
            return await make_directory(self, path)


@asynccontextmanager
async def connect(
    host: str,
    port: int,
    config: ClientConfig = ClientConfig(),
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    fingerprint: str | None = None,
) -> AsyncIterator[Client]:
    """Connect to the ftx server at ``host``:``port`` over TCP and shake hands; ``config`` says
    how the connection behaves (see :class:`ClientConfig`, checked before this is called).

    IPv4 and IPv6 addresses and host names all work (trio tries every address, Happy Eyeballs
    style). To bound the time spent connecting, wrap the call in :func:`trio.fail_after`.

    TLS is used when ``ssl_context`` or ``fingerprint`` is given. ``ssl_context`` (e.g.
    ``ssl.create_default_context()``) verifies the server's certificate for
    ``server_hostname`` (default: ``host``); ``fingerprint`` (64 hex digits, colons allowed)
    instead pins the server's certificate by its SHA-256 fingerprint, as printed by
    ``ftx serve``. Nothing is sent before the server is verified. With a token in ``config``,
    the client and the server prove to each other that they know it.

    Raises:
        OSError: the connection could not be made (refused, unreachable, unknown host).
        AuthenticationError: the server's certificate did not verify, or is not the pinned one;
            or, with a token, the server did not prove that it knows it.
        RemoteError, RemoteProtocolError, ConnectionLostError: as for :meth:`Client.handshake`
            (a TLS handshake that fails otherwise raises RemoteProtocolError).
        ValueError: ``fingerprint`` is malformed.
    """
    stream: trio.abc.Stream
    if ssl_context is None and fingerprint is None:
        stream = await trio.open_tcp_stream(host, port)
    else:
        stream = await open_tls_stream(
            host, port, ssl_context, server_hostname=server_hostname, fingerprint=fingerprint
        )
    async with Client(stream, config) as client:
        await client.handshake()
        yield client
