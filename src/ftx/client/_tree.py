"""Downloading several files and whole directory trees over several connections at once.

:func:`download` lists what it was asked for, directory by directory, and feeds the files to
``jobs`` connections through one channel as the listings arrive: downloads start before the
whole tree is known. Each connection pipelines its requests (:meth:`ftx.Client.fetch`).

Names that come from the server are checked before they touch the local disk: a name with a
separator, a NUL, ``.`` or ``..`` is refused, local directories are created one by one and a
symbolic link already present in the destination is never followed (nor is one written at a
part file's name). Each file goes to its own path, ``DEST/a/b``: a directory already there is
a conflict (reported), never a place to save the file into. A name that a listing holds more
than once is reported as failed, and none of its entries is fetched. Symbolic links on the
server are not followed by a recursive download: they are reported as skipped.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Final

import trio

from ftx._threads import run_together
from ftx.client._client import Client, Download
from ftx.client._config import DEFAULT_JOBS
from ftx.client._flush import sync_file_systems
from ftx.client._streams import file_digest
from ftx.client._tree_disk import Skipped, TreeProgress
from ftx.client._tree_stream import stream_tree
from ftx.errors import FtxError, LocalFileError, RemoteError, RemoteProtocolError
from ftx.protocol import ErrorCode
from ftx.protocol.messages import Entry, EntryType

__all__ = ["DEFAULT_JOBS", "Skipped", "TreeProgress", "download", "safe_name"]

_QUEUE_SIZE: Final = 256


def safe_name(name: str) -> str:
    """Return ``name`` if it can be used as one local file name, as sent by a server.

    Raises:
        LocalFileError: the name is empty, ``.`` or ``..``, or holds ``/``, ``\\`` or NUL.
    """
    if name in ("", ".", "..") or any(bad in name for bad in ("/", "\\", "\0")):
        raise LocalFileError(f"the server sent an unsafe file name: {name!r}; refused")
    return name


def _make_directory(path: Path) -> None:
    """Create ``path`` (its parent exists and is ours); an existing one must be a real
    directory, not a symbolic link that could lead the download elsewhere."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise LocalFileError(f"{path} exists and is not a directory") from None
    except OSError as exc:
        raise LocalFileError(f"cannot create {path}: {exc.strerror}") from exc


async def _same_digest(client: Client, remote: str, local: Path, entry: Entry) -> bool:
    """Whether the local file has the server's digest of ``remote`` (``checksum``)."""
    try:
        theirs = await client.checksum(remote, entry.size)
        ours = await trio.to_thread.run_sync(file_digest, local, client.digest_algorithm)
    except (RemoteError, OSError):
        return False  # the download then says what is wrong
    return ours == theirs


def _up_to_date(target: Path, entry: Entry) -> bool:
    try:
        st = os.lstat(target)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (
        entry.size,
        entry.mtime_ns,
    )


async def download(
    connect: Callable[[], AbstractAsyncContextManager[Client]],
    paths: Sequence[str],
    dest: str | os.PathLike[str] | None,
    *,
    recursive: bool = False,
    jobs: int = DEFAULT_JOBS,
    overwrite: bool = False,
    verify: bool = True,
    preserve_mode: bool = False,
    on_done: Callable[[str, Download | FtxError | Skipped], object] | None = None,
    progress: TreeProgress | None = None,
    checksum: bool = False,
    keep_results: bool = True,
) -> list[tuple[str, Download | FtxError | Skipped]]:
    """Download the files (and, with ``recursive``, the directory trees) at ``paths`` into the
    directory ``dest`` (the current directory when ``None``), over ``jobs`` connections.

    A directory ``a/b`` is saved as ``dest/b``, created if needed, like ``cp -r``. A file that
    is already present with the server's size and modification time is skipped as up to date,
    so running the same command again after an interruption finishes the job (interrupted
    files of 1 MiB or more resume from their part files).

    Args:
        connect: opens one connection (e.g. ``lambda: ftx.connect(host, port)``).
        preserve_mode: give files the server's permission bits (see :meth:`ftx.Client.get`).
        on_done: called with ``(remote path, result)`` for every file found, as it ends.
        progress: updated in place as files are found and data arrives.
        checksum: a file present with the server's size and time is up to date only if its
            digest is the server's too (one more request, and a read of the local file).
        keep_results: with False, nothing is returned (``on_done`` sees every result): the
            memory a run takes does not grow with the number of files.

    Returns:
        every ``(remote path, result)``, in the order the files finished.

    Raises:
        LocalFileError: ``dest`` is not a directory, or the final flush to disk failed (an
            I/O error: the files are in place, but may not survive a power cut).
        ConnectionLostError, RemoteProtocolError, OSError: a connection failed; files already
            saved stay saved, interrupted ones keep their parts.
    """
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    root = Path(dest) if dest is not None else Path()
    if not root.is_dir():
        raise LocalFileError(f"{root} is not a directory: give an existing one with -o")
    totals = progress if progress is not None else TreeProgress()
    results: list[tuple[str, Download | FtxError | Skipped]] = []

    def finish(path: str, result: Download | FtxError | Skipped, *, counted: bool = True) -> None:
        totals.in_flight.discard(path)
        totals.files_done += counted
        if keep_results:
            results.append((path, result))
        if on_done is not None:
            on_done(path, result)

    # Flushed at the end: the file systems of every directory a file went to (and of the
    # root, for files an interrupted run saved but never flushed, now skipped as up to date).
    directories = {os.fspath(root)}
    if recursive:
        # Directories go as one stream each, when the server offers it; the rest (files, and
        # everything when it does not) file by file below.
        paths = await _stream_directories(
            connect,
            paths,
            root,
            directories,
            overwrite=overwrite,
            verify=verify,
            preserve_mode=preserve_mode,
            checksum=checksum,
            finish=lambda path, result: finish(path, result, counted=False),
            totals=totals,
        )
        if not paths:
            totals.listing_done = True
            await trio.to_thread.run_sync(sync_file_systems, directories)
            return results

    send_work, receive_work = trio.open_memory_channel[tuple[str, Path]](_QUEUE_SIZE)

    # The lister connects first: a server that takes few connections must not give them all
    # to workers that would then wait for work that nobody lists.
    lister_connected = trio.Event()

    async def list_everything() -> None:
        async with send_work, connect() as lister:
            lister_connected.set()
            walk = _walk(lister, paths, root, recursive)
            async for remote, local, entry in walk:
                if isinstance(entry, Skipped | FtxError):
                    # Not a file to fetch (a link, a pipe, a refused name): not in the totals.
                    finish(remote, entry, counted=False)
                    continue
                totals.files_found += 1
                totals.bytes_found += entry.size
                if (
                    not overwrite
                    and _up_to_date(local, entry)
                    and (not checksum or await _same_digest(lister, remote, local, entry))
                ):
                    totals.bytes_done += entry.size
                    finish(remote, Skipped(remote, "up to date"))
                    continue
                directories.add(os.path.dirname(local))
                try:
                    # Without yielding while there is room: the workers then find a directory's
                    # files queued together, and send their requests in batches.
                    send_work.send_nowait((remote, local))
                except trio.WouldBlock:
                    await send_work.send((remote, local))
        totals.listing_done = True

    attempts = _Attempts(jobs)

    async def work() -> None:
        await lister_connected.wait()
        async with contextlib.AsyncExitStack() as stack:
            try:
                client = await stack.enter_async_context(connect())
            except RemoteError as exc:
                # A server that takes fewer connections than -j: the ones it took do the work.
                if exc.code != ErrorCode.BUSY or not await attempts.refused():
                    raise
                return
            attempts.connected()
            work_items = await stack.enter_async_context(receive_work.clone())
            counting = _CountingBytes(totals, finish)
            await client.fetch(
                _MarkingInFlight(work_items, totals),
                on_done=counting.file_done,
                progress=counting.progress,
                overwrite=overwrite,
                verify=verify,
                preserve_mode=preserve_mode,
                sync=False,
                into_directories=False,  # DEST/a/b is b's own path, never a place to save into
            )

    workers = [work] * jobs
    async with receive_work:
        await run_together(list_everything, *workers)
    await trio.to_thread.run_sync(sync_file_systems, directories)  # one flush for the batch
    return results


async def _stream_directories(
    connect: Callable[[], AbstractAsyncContextManager[Client]],
    paths: Sequence[str],
    root: Path,
    directories: set[str],
    *,
    overwrite: bool,
    verify: bool,
    preserve_mode: bool,
    checksum: bool,
    finish: Callable[[str, Download | FtxError | Skipped], object],
    totals: TreeProgress,
) -> list[str]:
    """Fetch each of ``paths`` that is a directory as one tree stream, on one connection;
    return the paths left to fetch file by file (all of them if the server does not offer
    tree streams)."""
    rest: list[str] = []
    async with connect() as client:
        for path in paths:
            remote = path.strip("/")
            local = root / posixpath.basename(remote) if remote else root
            try:
                streamed = await stream_tree(
                    client,
                    remote,
                    local,
                    overwrite=overwrite,
                    verify=verify,
                    preserve_mode=preserve_mode,
                    checksum=checksum,
                    finish=finish,
                    totals=totals,
                    directories=directories,
                )
            except RemoteError as exc:
                _raise_if_transient(exc)
                finish(path, exc)
                continue
            except LocalFileError as exc:
                finish(path, exc)
                continue
            if not streamed:
                rest.append(path)
    return rest


class _CountingBytes:
    """Adds one connection's progress to the totals: the bytes of its file in progress, as they
    arrive (a resumed file's first report counts the bytes it already had)."""

    def __init__(
        self, totals: TreeProgress, finish: Callable[[str, Download | FtxError], object]
    ) -> None:
        self._totals = totals
        self._finish = finish
        self._counted = 0  # of the file in progress

    def progress(self, done: int, total: int) -> None:
        """Count what arrived since the last report (:data:`ftx.ProgressCallback`)."""
        counted = self._counted
        self._totals.bytes_done += done - counted if done >= counted else done
        self._counted = done if done < total else 0

    def file_done(self, path: str, result: Download | FtxError) -> None:
        """The file ended (its result goes to ``finish``): the next one starts from zero."""
        self._counted = 0
        self._finish(path, result)


class _Attempts:
    """The workers' connection attempts: whether a worker the server refused as busy can leave
    the work to another one that got a connection."""

    def __init__(self, count: int) -> None:
        self._pending = count
        self._connected = False
        self._settled = trio.Event()  # a worker is connected, or every one was refused

    def connected(self) -> None:
        self._pending -= 1
        self._connected = True
        self._settled.set()

    async def refused(self) -> bool:
        """Note a refusal; return whether another worker is connected (once that is known)."""
        self._pending -= 1
        if self._pending == 0:
            self._settled.set()
        await self._settled.wait()
        return self._connected


class _MarkingInFlight(trio.abc.ReceiveChannel[tuple[str, Path]]):
    """Passes work items through, noting which remote paths are being downloaded."""

    def __init__(
        self, inner: trio.MemoryReceiveChannel[tuple[str, Path]], totals: TreeProgress
    ) -> None:
        self._inner = inner
        self._totals = totals

    def statistics(self) -> trio.MemoryChannelStatistics:
        """The inner channel's: :meth:`Client.fetch` batches requests by what is waiting."""
        return self._inner.statistics()

    async def receive(self) -> tuple[str, Path]:
        item = await self._inner.receive()
        self._totals.in_flight.add(item[0])
        return item

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _walk(
    client: Client, paths: Sequence[str], root: Path, recursive: bool
) -> AsyncIterator[tuple[str, Path, Entry | Skipped | FtxError]]:
    """Yield ``(remote path, local path, entry)`` for every file to fetch, directory by
    directory, creating the local directories on the way; problems are yielded in place of an
    entry."""
    pending: list[tuple[str, Path]] = []
    # Each parent is listed once, however many of its children are asked for (`a/*`).
    listings: dict[str, dict[str, Entry | FtxError] | RemoteError] = {}
    for path in paths:
        parent, name = posixpath.split(path.strip("/"))
        if parent not in listings:
            try:
                listings[parent] = _by_name(await client.list(parent), parent)
            except RemoteError as exc:
                _raise_if_transient(exc)
                listings[parent] = exc
        listing = listings[parent]
        if isinstance(listing, RemoteError):
            yield path, root, listing
            continue
        found = [listing[name]] if name in listing else []
        if not name or not found:
            if not name and recursive:  # the served root itself
                pending.append(("", root))
                continue
            yield path, root, RemoteError(ErrorCode.NOT_FOUND, f"no such file: {path!r}")
            continue
        entry = found[0]
        if isinstance(entry, FtxError):
            yield path, root, entry
            continue
        local = root / safe_name(entry.name)
        if entry.type is EntryType.DIRECTORY:
            if not recursive:
                yield path, local, Skipped(path, "a directory (use -r to fetch it)")
                continue
            try:
                _make_directory(local)
            except LocalFileError as exc:
                yield path, local, exc  # reported; the rest goes on without this directory
                continue
            pending.append((path.strip("/"), local))
        else:
            yield path, local, _fetchable(path, entry)
    while pending:
        directory, local_directory = pending.pop()
        try:
            entries = _by_name(await client.list(directory), directory)
        except RemoteError as exc:
            _raise_if_transient(exc)
            yield directory, local_directory, exc
            continue
        for name, entry in sorted(entries.items()):
            remote = posixpath.join(directory, name) if directory else name
            if isinstance(entry, FtxError):
                yield remote, local_directory, entry
                continue
            try:
                local = local_directory / safe_name(entry.name)
            except LocalFileError as exc:
                yield remote, local_directory, exc
                continue
            if entry.type is EntryType.DIRECTORY:
                try:
                    _make_directory(local)
                except LocalFileError as exc:
                    yield remote, local, exc
                    continue
                pending.append((remote, local))
            else:
                yield remote, local, _fetchable(remote, entry)


def _by_name(entries: list[Entry], directory: str) -> dict[str, Entry | FtxError]:
    """The entries of one listing by name. A name listed more than once (the server broke the
    protocol: names in a listing are unique) stands for none of its entries, but for the error
    to report in their place: which one is right cannot be known, and saving several would
    put them at one local path."""
    by_name: dict[str, Entry | FtxError] = {}
    repeated: Counter[str] = Counter()
    for entry in entries:
        if entry.name in by_name:
            repeated[entry.name] += 1
        by_name[entry.name] = entry
    for name, extra in repeated.items():
        by_name[name] = RemoteProtocolError(
            f"the server listed {name!r} {extra + 1} times in {directory or '/'!r}; "
            "none of them was fetched"
        )
    return by_name


def _raise_if_transient(exc: RemoteError) -> None:
    """A listing refused as ``busy`` or ``shutting-down`` concerns the connection, not the
    directory: raise it, so that the caller can try the whole run again (not report the
    directory as failed)."""
    if exc.code in (ErrorCode.BUSY, ErrorCode.SHUTTING_DOWN):
        raise exc


def _fetchable(remote: str, entry: Entry) -> Entry | Skipped:
    if entry.type is EntryType.FILE:
        return entry
    if entry.type is EntryType.SYMLINK:
        return Skipped(remote, "a symbolic link (not followed; fetch its target by name)")
    return Skipped(remote, "not a regular file")
