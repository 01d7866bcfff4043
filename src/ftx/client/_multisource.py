"""One file from several servers (or several connections to one) at once: ``ftx get --from``
and ``--segments`` (docs/protocol.md, section 22).

1. Every source is asked for the file's block digests (BLOCKS). The content most of them hold
   (size, block digests, whole-file digest; ties go to the source named first) is the
   reference; a source holding another is dropped and named.
2. The blocks not yet verified are fetched with ranged GETs, one block at a time per
   connection, ``segments`` connections per source, all under one nursery; each block is
   written into ``DEST.part`` where it belongs and checked against its digest as it completes.
   A block that does not match drops its source (named through ``on_dropped``) and goes back to
   the others, as do the blocks of a source whose connection fails.
3. Each verified block is noted in ``DEST.part.blocks``, so that a later run with the same
   reference fetches only the rest.
4. Once every block is verified the part file is read again and its whole-file digest
   compared with the reference's: only a match is published at ``DEST``.

When no source offers the feature ``ranges``, the file comes from the first source alone, as
:meth:`ftx.Client.get` fetches it (``on_fallback`` says so).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from ftx.client._client import Client
from ftx.client._destination import check_destination, local_destination
from ftx.client._multisource_plan import (
    Plan,
    WholeDigest,
    check_whole,
    choose_reference,
    open_part,
    safe_mode,
    save_record,
)
from ftx.client._partfile import DiscardingPart, PartFile, part_for
from ftx.client._ranges import BlockRecord
from ftx.client._receive import Download, ProgressCallback
from ftx.errors import (
    ConnectionLostError,
    FtxError,
    IntegrityError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from ftx.framing import Buffer
from ftx.protocol import RANGES_FEATURE, Hasher, new_hasher
from ftx.protocol.messages import BlockList

__all__ = ["Source", "download_from_sources"]

logger = logging.getLogger("ftx.client")

# What a failing source may raise while it is used: it is dropped, the others go on.
_SOURCE_ERRORS: Final = (
    ConnectionLostError,
    RemoteError,
    RemoteProtocolError,
    LocalProtocolError,
    OSError,
    trio.TooSlowError,
)


@dataclass(frozen=True, slots=True)
class Source:
    """A server to fetch from: its ``name`` (for messages) and how to open a new connection to
    it (handshake done)."""

    name: str
    connect: Callable[[], Awaitable[Client]]


class _BadBlockError(FtxError):
    """A source sent a block that does not match its digest."""


async def download_from_sources(
    sources: Sequence[Source],
    path: str,
    dest: str | Path | None = None,
    *,
    segments: int = 1,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
    preserve_mtime: bool = True,
    preserve_mode: bool = False,
    durable: bool = True,
    resume: bool = True,
    on_dropped: Callable[[str, str], object] = lambda _name, _why: None,
    on_fallback: Callable[[str], object] = lambda _message: None,
) -> Download:
    """Download the file at ``path`` from all ``sources`` at once (``segments`` connections to
    each) to ``dest``, verified block by block and as a whole (see the module's docstring).

    ``on_dropped(name, reason)`` is called for each source given up on (it failed, or served
    other bytes than the reference); ``on_fallback(message)`` when no source offers ranges.

    Raises:
        ConnectionLostError: every source failed before the file was complete (the verified
            blocks are kept for a resume), or none could be reached.
        IntegrityError: the file assembled does not match the whole-file digest (nothing is
            published, nothing kept); or the last source left sent a bad block.
        LocalFileError: ``dest`` exists (without ``overwrite``) or cannot be written.
        RemoteError: every source refused the file (``not-found``, ...).
        ValueError: no sources, or ``segments`` below 1.
    """
    if not sources or segments < 1:
        raise ValueError("give at least one source and one segment")
    target = local_destination(path, dest)
    check_destination(target, overwrite=overwrite)
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[Source, Client] = {}
        failures: list[Exception] = []

        unreachable: dict[Source, Exception] = {}

        async def open_first(source: Source) -> None:
            try:
                clients[source] = await source.connect()
            except (*_SOURCE_ERRORS, FtxError) as exc:
                unreachable[source] = exc

        async with trio.open_nursery() as nursery:
            for source in sources:
                nursery.start_soon(open_first, source)
        for client in clients.values():
            stack.push_async_callback(trio.aclose_forcefully, client)
        usable = [source for source in sources if source in clients]
        if not usable:
            reasons = "; ".join(str(unreachable[source]) for source in sources)
            raise ConnectionLostError(f"no source could be reached: {reasons}")
        for source, exc in unreachable.items():  # (named only when others are left)
            failures.append(exc)
            on_dropped(source.name, f"cannot connect: {exc}")
        ranged = [s for s in usable if RANGES_FEATURE in _features(clients[s])]
        for source in usable:
            if source not in ranged and len(ranged) > 0:
                on_dropped(source.name, "it does not offer ranged downloads")
        if not ranged:
            first = usable[0]
            on_fallback(f"no source offers ranged downloads: fetching from {first.name} alone")
            return await clients[first].get(
                path,
                target,
                progress=progress,
                overwrite=overwrite,
                preserve_mtime=preserve_mtime,
                preserve_mode=preserve_mode,
                durable=durable,
                resume=resume,
            )
        algorithm = clients[ranged[0]].digest_algorithm
        lists = await _block_lists(ranged, clients, path, algorithm, on_dropped, failures)
        if not lists:
            raise _all_failed(failures)
        reference = choose_reference(lists, lambda source: source.name, on_dropped)
        agreeing = [source for source in ranged if source in lists]
        part = part_for(target)
        plan, held = open_part(part, path, reference, resume)
        try:
            whole = await _fetch_blocks(
                plan,
                part,
                agreeing,
                clients,
                path,
                lists,
                segments,
                progress,
                held,
                on_dropped,
                failures,
            )
            if len(plan.done) < len(reference.blocks):
                part.close()  # the verified blocks stay, for a resume
                raise _all_failed(failures)
            if whole is not None:  # (-o /dev/null keeps nothing to read back)
                check_whole(part, reference, whole.digest)
            await trio.to_thread.run_sync(
                lambda: part.publish(
                    overwrite=overwrite,
                    mtime_ns=reference.mtime_ns if preserve_mtime else None,
                    mode=safe_mode(plan.mode) if preserve_mode else None,
                    durable=durable,
                )
            )
            BlockRecord.remove(part.part_path)
        except BaseException:
            part.close()
            raise
    return Download(
        path=path,
        dest=target,
        size=reference.size,
        mtime_ns=reference.mtime_ns,
        digest=reference.file_digest,
        digest_algorithm=reference.digest,
        seconds=time.monotonic() - started,
        offset=held,
    )


def _features(client: Client) -> frozenset[str]:
    hello = client.server_hello
    return hello.features if hello is not None else frozenset()


def _all_failed(failures: Sequence[BaseException]) -> FtxError:
    last = failures[-1] if failures else None
    if isinstance(last, RemoteError):
        return last  # e.g. not-found everywhere: say what the servers said
    if isinstance(last, _BadBlockError):
        return IntegrityError(f"no source left: the last one dropped because {last}")
    return ConnectionLostError(f"every source failed before the file was complete ({last})")


async def _block_lists(
    sources: Sequence[Source],
    clients: dict[Source, Client],
    path: str,
    algorithm: str,
    on_dropped: Callable[[str, str], object],
    failures: list[Exception],
) -> dict[Source, BlockList]:
    """Every source's BLOCK_LIST, asked for at once; a source that fails is dropped."""
    lists: dict[Source, BlockList] = {}
    refused: dict[Source, Exception] = {}

    async def ask(source: Source) -> None:
        try:
            lists[source] = await clients[source].block_list(path, algorithm)
        except _SOURCE_ERRORS as exc:
            refused[source] = exc

    async with trio.open_nursery() as nursery:
        for source in sources:
            nursery.start_soon(ask, source)
    failures.extend(refused[source] for source in sources if source in refused)
    if lists:  # (when every source refused, the error says it: no one is named)
        for source in sources:
            if source in refused:
                on_dropped(source.name, _describe(refused[source]))
    return {source: lists[source] for source in sources if source in lists}


async def _fetch_blocks(
    plan: Plan,
    part: PartFile,
    sources: Sequence[Source],
    clients: dict[Source, Client],
    path: str,
    lists: dict[Source, BlockList],
    segments: int,
    progress: ProgressCallback | None,
    held: int,
    on_dropped: Callable[[str, str], object],
    failures: list[Exception],
) -> WholeDigest | None:
    """Fetch every pending block of ``plan`` with ``segments`` workers per source, and hash
    the part file meanwhile (unless it is the null device): return that hasher, done if every
    block arrived."""
    reference = plan.reference
    dropped: set[Source] = set()
    scopes: dict[Source, trio.CancelScope] = {}

    def report() -> None:
        if progress is not None:
            progress(held + plan.received, reference.size)

    def drop(source: Source, reason: str) -> None:
        if source not in dropped:
            dropped.add(source)
            on_dropped(source.name, reason)
            scopes[source].cancel()

    async def fetch_one(source: Source, client: Client, index: int) -> None:
        start, end = plan.block_range(index)
        hasher: Hasher = new_hasher(reference.digest)
        position = start

        def sink(data: Buffer) -> None:
            nonlocal position
            part.write_at(data, position)
            hasher.update(data)
            count = memoryview(data).nbytes
            position += count
            plan.received += count
            report()

        try:
            header = await client.read_range(
                path, start, end - start, identity=lists[source].identity, sink=sink
            )
        except BaseException:
            plan.received -= position - start
            raise
        if hasher.hexdigest() != reference.blocks[index]:
            plan.received -= position - start
            report()
            raise _BadBlockError(
                f"it sent block {index} (bytes {start}-{end - 1}) not matching its digest"
            )
        plan.mode = header.mode

    async def worker(source: Source, client: Client | None) -> None:
        if client is None:
            client = await source.connect()
        async with client:
            while True:
                if plan.pending:
                    index = plan.pending.popleft()
                elif plan.in_flight:
                    await plan.changed.wait()  # a failing worker may give a block back
                    continue
                else:
                    return
                plan.in_flight += 1
                try:
                    await fetch_one(source, client, index)
                except BaseException:
                    plan.pending.appendleft(index)
                    raise
                else:
                    plan.done.add(index)
                    if not isinstance(part, DiscardingPart):
                        async with plan.saving:  # one writer of the record at a time
                            await trio.to_thread.run_sync(
                                save_record, part, path, reference, frozenset(plan.done)
                            )
                finally:
                    plan.in_flight -= 1
                    plan.wake()

    async def run_source(source: Source) -> None:
        with trio.CancelScope() as scopes[source]:
            try:
                async with trio.open_nursery() as nursery:
                    for segment in range(segments):
                        first = clients.pop(source) if segment == 0 else None
                        nursery.start_soon(worker, source, first)
            except* _BadBlockError as group:
                failures.append(group.exceptions[0])
                drop(source, str(group.exceptions[0]))
            except* _SOURCE_ERRORS as group:
                failures.append(group.exceptions[0])
                drop(source, _describe(group.exceptions[0]))

    report()
    whole = None if isinstance(part, DiscardingPart) else WholeDigest(part, plan)
    try:
        async with trio.open_nursery() as outer:
            if whole is not None:
                outer.start_soon(whole.run)
            async with trio.open_nursery() as nursery:
                for source in sources:
                    nursery.start_soon(run_source, source)
            if len(plan.done) < len(reference.blocks):
                outer.cancel_scope.cancel()  # incomplete: no whole digest to wait for
        return whole
    except BaseExceptionGroup as group:  # e.g. the local disk is full: one error, not a group
        leaf = _first_leaf(group)
        if isinstance(leaf, FtxError):
            raise leaf from None
        raise


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        return f"it refused: {exc}"
    return str(exc) or type(exc).__name__
