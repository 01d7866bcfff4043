"""The server's outbox: the answers of a batch of small files (and its refusals) are queued and
sent in one write, at the latest when the batch is answered or 256 KiB wait; their access-log
records are written once the write that carried them succeeded ("lost" if it failed); the queued
data is copied out of the batch buffer, which may go back to the pool (and be reused by another
connection) before the flush.

Real ftx.Server over loopback TCP, driven by the hand-written Peer of test_batching; the server's
writes are seen by wrapping FramedChannel.send_frames. Every wait is bounded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

import ftx.server._downloads
import test_batching
from conftest import serving
from ftx.framing import Buffer, FramedChannel
from ftx.fs import ServedRoot
from ftx.protocol import ErrorCode
from ftx.protocol.messages import Error, FileEnd, FileHeader, Get, ListDir, Message, decode_message
from ftx.server._readahead import BATCH_BUFFER_SIZE, read_small_files
from ftx.server._resources import BufferPool
from test_batching import (
    SMALL_FILES,
    Peer,
    ReadResult,
    batch_buffers_all_free,
    check_file,
    random_bytes,
    wait_until,
)

OUTBOX_BYTES = 256 * 1024  # ftx.server._session._OUTBOX_BYTES: the outbox is sent once this waits
root = test_batching.root  # the fixture: SMALL_FILES, symlinks in and out, a secret outside


@dataclass
class Write:
    """One send_frames call of the server: its payload bytes and the messages it carried."""

    size: int
    messages: list[Message | None]  # (None: an extension this version ignores)

    @property
    def answered(self) -> list[int]:
        """The request ids whose answer this write ended (FILE_END or per-request ERROR)."""
        return [
            m.request_id
            for m in self.messages
            if isinstance(m, FileEnd | Error) and m.request_id is not None
        ]


class Wire:
    """Wraps FramedChannel.send_frames and listens to ``ftx.access``: one ordered list of
    ("write", Write) and ("log", access fields) events. ``fail`` makes the next write raise
    BrokenResourceError; ``hold`` makes it wait for that event (``held`` is set meanwhile)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, Any]] = []
        self.fail = False
        self.hold: trio.Event | None = None
        self.held = trio.Event()
        original = FramedChannel.send_frames

        async def send_frames(channel: FramedChannel, *frames: Iterable[Buffer]) -> None:
            parts = [tuple(frame) for frame in frames]
            if self.fail:
                self.fail = False
                self.events.append(("failed", None))
                await trio.lowlevel.checkpoint()
                raise trio.BrokenResourceError("the test broke this write")
            if self.hold is not None:
                release, self.hold = self.hold, None
                self.held.set()
                await release.wait()
            # Noted as it starts: the peer may read it before this task resumes.
            payloads = [b"".join(bytes(part) for part in frame) for frame in parts]
            write = Write(sum(map(len, payloads)), [decode_message(p) for p in payloads])
            self.events.append(("write", write))
            await original(channel, *parts)

        monkeypatch.setattr(FramedChannel, "send_frames", send_frames)

    @property
    def writes(self) -> list[Write]:
        return [event for kind, event in self.events if kind == "write"]

    @property
    def logs(self) -> list[dict[str, Any]]:
        return [event for kind, event in self.events if kind == "log"]


class _ToEvents(logging.Handler):
    def __init__(self, events: list[tuple[str, Any]]) -> None:
        super().__init__(logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(("log", record.access))  # type: ignore[attr-defined]


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[Wire]:
    wire = Wire(monkeypatch)
    logger = logging.getLogger("ftx.access")
    handler, level = _ToEvents(wire.events), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield wire
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def make_files(directory: Path, prefix: str, count: int, size: int, seed: int) -> dict[str, bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {f"{prefix}{i:02}.bin": random_bytes(size, seed + i) for i in range(count)}
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return files


async def fetch_all(peer: Peer, files: dict[str, bytes], directory: Path, first: int = 1) -> None:
    """Ask for every file in ONE write; check every answer, whole and in order."""
    requests = [Get(first + i, name, digest="blake3") for i, name in enumerate(files)]
    await peer.send(*requests)
    for request in requests:
        check_file(await peer.answer(), request, files[request.path], directory / request.path)


# ------------------------------------------------------------------------------------ tests


async def test_a_batch_of_small_files_is_answered_in_one_or_two_writes(
    tmp_path: Path, wire: Wire
) -> None:
    """20 GETs of 4 KiB files in one write: answered whole and in order, with at most two
    send_frames calls for the 20 answers (the handshake's HELLO not counted)."""
    files = make_files(tmp_path, "f", 20, 4096, 100)
    async with serving(tmp_path) as (_server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                wire.events.clear()
                await fetch_all(peer, files, tmp_path)
    assert 1 <= len(wire.writes) <= 2
    assert [i for write in wire.writes for i in write.answered] == list(range(1, 21))


@pytest.mark.parametrize("buffer_size", [BATCH_BUFFER_SIZE, 4 << 20])
async def test_the_outbox_goes_out_once_256_kib_wait(
    tmp_path: Path, wire: Wire, monkeypatch: pytest.MonkeyPatch, buffer_size: int
) -> None:
    """32 files of 60 KiB (1.9 MiB) in one batch: all answered correctly, in order, in several
    writes, none much over 256 KiB + one answer. With batch buffers large enough to read them
    all ahead (so every answer is queued), each write but a batch's last is flushed because
    256 KiB waited: never sooner."""
    size = 60 * 1024
    files = make_files(tmp_path, "m", 32, size, 200)
    calls: list[int] = []

    def read_ahead(served: ServedRoot, requests: Sequence[Get], buffer: bytearray) -> ReadResult:
        calls.append(len(requests))
        return read_small_files(served, requests, buffer)

    monkeypatch.setattr(ftx.server._downloads, "read_small_files", read_ahead)
    async with serving(tmp_path) as (server, port):
        server._resources.batch_buffers = BufferPool(buffer_size, 4)  # type: ignore[misc]
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                wire.events.clear()
                await fetch_all(peer, files, tmp_path)
        assert batch_buffers_all_free(server)
    writes = wire.writes
    assert [i for write in writes for i in write.answered] == list(range(1, 33))
    assert max(write.size for write in writes) <= OUTBOX_BYTES + size + 1024
    if buffer_size > BATCH_BUFFER_SIZE:
        assert len(writes) >= 32 * size // (OUTBOX_BYTES + size + 1024)
        assert sum(write.size < OUTBOX_BYTES for write in writes) <= len(calls)
        assert all(len(write.answered) <= OUTBOX_BYTES // size + 1 for write in writes)


async def test_refusals_are_queued_and_answered_in_order_between_the_files(
    root: Path, wire: Wire
) -> None:
    """A batch mixing small files and refusals (missing, outside the root by path and by
    symlink, unknown digest, offset beyond the end, wrong identity) is answered in order, and
    the refusals are queued with the files: two writes at most, not one per refusal."""
    asked: list[tuple[Get, ErrorCode | None]] = [
        (Get(1, "a.txt"), None),
        (Get(2, "missing.txt"), ErrorCode.NOT_FOUND),
        (Get(3, "tiny"), None),
        (Get(4, "../secret.txt"), ErrorCode.OUTSIDE_ROOT),
        (Get(5, "link-up"), ErrorCode.OUTSIDE_ROOT),
        (Get(6, "under64k.bin", digest="md5"), ErrorCode.BAD_REQUEST),
        (Get(7, "sub/inner.txt", offset=100), ErrorCode.BAD_REQUEST),
        (Get(8, "resume.bin", identity="0" * 32), ErrorCode.CHANGED),
        (Get(9, "exact64k.bin", offset=10), None),
    ]
    async with serving(root) as (_server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                wire.events.clear()
                await peer.send(*(request for request, _ in asked))
                answers = [await peer.answer() for _ in asked]
    for (request, code), answer in zip(asked, answers, strict=True):
        assert answer.request_id == request.request_id
        if code is None:
            check_file(answer, request, SMALL_FILES[request.path], root / request.path)
        else:
            assert answer.header is None
            assert answer.code == code, (request, answer.error)
    assert 1 <= len(wire.writes) <= 2
    assert [i for write in wire.writes for i in write.answered] == list(range(1, 10))


async def test_each_answer_is_logged_once_after_the_write_that_carried_it(
    tmp_path: Path, wire: Wire
) -> None:
    """Small files, a large one (streamed: its header flushes the queue), more small files and
    a missing one, in one batch: each request is logged once, with its result and bytes, after
    the write that ended its answer and before any later write."""
    files = make_files(tmp_path, "s", 12, 4096, 300)
    large = random_bytes(200_000, 399)
    (tmp_path / "large.bin").write_bytes(large)
    names = [*list(files)[:6], "large.bin", *list(files)[6:]]
    requests = [Get(i + 1, name) for i, name in enumerate(names)] + [Get(14, "missing")]
    async with serving(tmp_path) as (_server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                wire.events.clear()
                await peer.send(*requests)
                for request in requests[:-1]:
                    content = files.get(request.path, large)
                    check_file(await peer.answer(), request, content, tmp_path / request.path)
                assert (await peer.answer()).code == ErrorCode.NOT_FOUND
                await wait_until(lambda: len(wire.logs) == len(requests))
    assert len(wire.writes) >= 3  # the large file's header and end are written apart
    ended_in = {
        i: n for n, (kind, e) in enumerate(wire.events) if kind == "write" for i in e.answered
    }
    by_path = {request.path: request.request_id for request in requests}
    for n, (kind, fields) in enumerate(wire.events):
        if kind != "log":
            continue
        write = ended_in[by_path[fields["path"]]]
        assert write < n, f"{fields['path']} logged before the write that carried its answer"
        assert all(kind == "log" for kind, _ in wire.events[write + 1 : n]), fields["path"]
    logged = {fields["path"]: fields for fields in wire.logs}
    assert sorted(logged) == sorted(by_path)  # each exactly once (len(logs) == len(requests))
    for name, content in [*files.items(), ("large.bin", large)]:
        assert (logged[name]["result"], logged[name]["bytes"]) == ("ok", len(content))
    assert (logged["missing"]["result"], logged["missing"]["bytes"]) == ("not-found", 0)


async def test_a_failed_flush_logs_its_answers_lost_and_the_server_goes_on(
    tmp_path: Path, wire: Wire
) -> None:
    """The write carrying a batch's answers fails: the connection ends with nothing sent,
    every request of the batch is logged once as "lost" (none "ok"), the batch buffer is back
    in the pool, and a new connection is served normally."""
    files = make_files(tmp_path, "l", 10, 4096, 400)
    async with serving(tmp_path) as (server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                wire.events.clear()
                wire.fail = True
                await peer.send(*(Get(i, name) for i, name in enumerate(files, 1)))
                assert await peer.receive() is None  # closed, no answer
            await wait_until(lambda: server.connections == 0)
            assert [kind for kind, _ in wire.events] == ["failed"] + ["log"] * len(files)
            assert sorted(fields["path"] for fields in wire.logs) == sorted(files)
            assert {fields["result"] for fields in wire.logs} == {"lost"}
            assert batch_buffers_all_free(server)

            wire.events.clear()
            async with Peer.connected(port) as peer:
                await fetch_all(peer, files, tmp_path)
            await wait_until(lambda: len(wire.logs) == len(files))
            assert {fields["result"] for fields in wire.logs} == {"ok"}
            assert batch_buffers_all_free(server)


async def test_queued_answers_do_not_change_when_the_batch_buffer_is_reused(
    tmp_path: Path, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ONE batch buffer in the pool: connection A's small files are queued, its buffer
    goes back to the pool, and A's flush is held while connection B's batch is read ahead into
    that same buffer and answered; A's answers, sent after, still carry A's bytes."""
    a_files = make_files(tmp_path, "a", 8, 20_000, 500)
    b_files = make_files(tmp_path, "b", 8, 20_000, 600)
    buffers: list[bytearray] = []

    def read_ahead(served: ServedRoot, requests: Sequence[Get], buffer: bytearray) -> ReadResult:
        buffers.append(buffer)
        return read_small_files(served, requests, buffer)

    monkeypatch.setattr(ftx.server._downloads, "read_small_files", read_ahead)
    async with serving(tmp_path) as (server, port):
        server._resources.batch_buffers = BufferPool(BATCH_BUFFER_SIZE, 1)  # type: ignore[misc]
        with trio.fail_after(10):
            async with Peer.connected(port) as a, Peer.connected(port) as b:
                release = wire.hold = trio.Event()
                a_requests = [Get(i, name) for i, name in enumerate(a_files, 1)]
                await a.send(*a_requests)
                await wire.held.wait()  # A's answers are queued, its flush waits
                assert batch_buffers_all_free(server)  # ... and its buffer is back
                await fetch_all(b, b_files, tmp_path, first=101)  # read into the same buffer
                assert len(buffers) == 2
                assert buffers[0] is buffers[1]
                release.set()
                for request in a_requests:
                    content = a_files[request.path]
                    check_file(await a.answer(), request, content, tmp_path / request.path)
        assert batch_buffers_all_free(server)


@pytest.mark.parametrize("third", ["refused", "streamed", "listed"])
async def test_shutdown_mid_batch_sends_the_queued_answers_whole_before_the_error(
    tmp_path: Path, wire: Wire, monkeypatch: pytest.MonkeyPatch, third: str
) -> None:
    """shutdown(grace=0) while a batch is answered: two small answers are queued when the third
    request (a large file, not read ahead, or a directory) is held in its worker thread. The
    queued answers reach the client whole, then the third's answer as far as it got (its
    refusal, queued too; its header alone, cut at a frame boundary; nothing of the listing),
    then the connection-level ``shutting-down`` ERROR; the rest of the batch goes unanswered.
    Each request answered is logged once (ok, its refusal, or shutting-down), no other."""
    files = make_files(tmp_path, "q", 4, 4096, 700)
    (tmp_path / "large.bin").write_bytes(random_bytes(300_000, 799))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x").write_bytes(b"x")
    held = trio.Event()
    release = threading.Event()
    calls: list[str] = []

    def gate(method: str, path: str, nth: int) -> None:
        original = getattr(ServedRoot, method)

        def gated(served: ServedRoot, asked: str) -> object:
            calls.append(asked)
            if asked == path and calls.count(path) == nth:
                trio.from_thread.run_sync(held.set)
                assert release.wait(10)
            return original(served, asked)

        monkeypatch.setattr(ServedRoot, method, gated)

    names = list(files)
    if third == "listed":
        gate("list_directory", "sub", 1)
        request: Get | ListDir = ListDir(3, "sub")
    else:  # opened once by the read-ahead (too large to keep), then held on the second open
        gate("open_file", "large.bin", 2)
        request = Get(3, "large.bin", offset=300_001 if third == "refused" else 0)
    first = [Get(1, names[0]), Get(2, names[1])]
    requests = [*first, request, Get(4, names[2]), Get(5, names[3])]
    async with serving(tmp_path) as (server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer, trio.open_nursery() as nursery:
                wire.events.clear()
                await peer.send(*requests)
                await held.wait()
                assert wire.writes == []  # the first two answers wait in the outbox
                nursery.start_soon(server.shutdown, 0.0)
                await wait_until(lambda: server.closing)
                await wait_all_tasks_blocked()
                release.set()
                answers = [await peer.answer() for _ in range(2)]
                rest = []
                while (message := await peer.receive()) is not None:
                    rest.append(message)
        assert batch_buffers_all_free(server)
    for asked, answer in zip(first, answers, strict=True):
        check_file(answer, asked, files[asked.path], tmp_path / asked.path)
    *cut, farewell = rest
    assert isinstance(farewell, Error)
    assert (farewell.request_id, farewell.code) == (None, ErrorCode.SHUTTING_DOWN)
    if third == "refused":
        assert len(cut) == 1
        assert isinstance(cut[0], Error)
        assert (cut[0].request_id, cut[0].code) == (3, ErrorCode.BAD_REQUEST)
    elif third == "streamed":
        assert len(cut) == 1
        assert isinstance(cut[0], FileHeader)
        assert cut[0].request_id == 3
    else:
        assert cut == []
    results = {fields["path"]: fields["result"] for fields in wire.logs}
    expected = {names[0]: "ok", names[1]: "ok"}
    expected[request.path] = "bad-request" if third == "refused" else "shutting-down"
    assert results == expected
    assert len(wire.logs) == len(expected)


async def test_a_client_that_stops_reading_holds_no_batch_buffer(root: Path, wire: Wire) -> None:
    """A batch [small, large, small]: the first small answer goes out before the large file's
    header. While that write cannot finish (a client that stopped reading), no buffer of the
    pool is held: the read-ahead was copied out and the buffer given back before anything was
    sent, so slow clients cannot starve every other connection's batches."""
    requests = [Get(1, "a.txt"), Get(2, "mib.bin"), Get(3, "tiny")]
    async with serving(root) as (server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                release = trio.Event()
                wire.hold = release
                await peer.send(*requests)
                await wire.held.wait()
                assert batch_buffers_all_free(server)
                release.set()
                answers = [await peer.answer() for _ in requests]
    for request, answer in zip(requests, answers, strict=True):
        check_file(answer, request, SMALL_FILES[request.path], root / request.path)
