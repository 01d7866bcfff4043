"""Batching: several frames in one write (FramedChannel.send_frames), the frames a peer pipelined
taken without waiting (FramedChannel.receive_nowait), the server's read-ahead of the small files
a batch of pipelined GETs asks for (ftx.server._readahead), and the client's batched GETs
(Client.fetch).

The framing tests run on memory streams, hand-driven transports and TCP; the server tests on a
real ftx.Server over loopback TCP, driven by a hand-written peer (as RawPeer in test_limits.py)
or by the real client. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import (
    MemoryReceiveStream,
    MemorySendStream,
    assert_checkpoints,
    memory_stream_pair,
    open_stream_to_socket_listener,
    wait_all_tasks_blocked,
)

import ftx
import ftx.server._downloads
from conftest import serving
from ftx.errors import FrameTooLargeError, IncompleteFrameError, LocalProtocolError
from ftx.framing import Buffer, FramedChannel, FrameDecoder, encode_frame, encode_header
from ftx.fs import FsError, FsReason, OpenedFile, ServedRoot, file_identity
from ftx.protocol import BLAKE3_FEATURE, MIN_FRAME_SIZE, UPLOAD_FEATURE, ErrorCode
from ftx.protocol.messages import (
    Data,
    Done,
    Entry,
    Error,
    FileEnd,
    FileHeader,
    Get,
    Hello,
    ListDir,
    ListEnd,
    ListEntries,
    MakeDir,
    Message,
    Put,
    Ready,
    decode_message,
    encode_message,
)
from ftx.server._readahead import (
    BATCH_BUFFER_SIZE,
    MAX_BATCH,
    SMALL_FILE_SIZE,
    SmallFile,
    read_small_files,
)
from ftx.server._resources import BufferPool

LOOPBACK = "127.0.0.1"
JOIN_THRESHOLD = 16 * 1024  # ftx.framing._JOIN_THRESHOLD: parts up to this are copied together
ReadResult = dict[int, SmallFile | OpenedFile | FsError]  # what read_small_files returns

# ------------------------------------------------------------------------------------ helpers


def payload_of(message: Message) -> bytes:
    return b"".join(bytes(part) for part in encode_message(message))


def frame(message: Message) -> bytes:
    return encode_frame(payload_of(message))


def digest_of(algorithm: str | None, content: bytes) -> str | None:
    if algorithm is None:
        return None
    if algorithm == "blake3":
        return str(blake3.blake3(content).hexdigest())
    return hashlib.new(algorithm, content).hexdigest()


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Answer:
    """Everything the server sent for one request (or a connection-level ERROR)."""

    request_id: int | None
    header: FileHeader | None = None
    chunks: list[bytes] = field(default_factory=list)
    end: FileEnd | None = None
    error: Error | None = None
    entries: list[Entry] = field(default_factory=list)
    list_end: ListEnd | None = None

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def code(self) -> str | None:
        return None if self.error is None else self.error.code


class Peer:
    """A hand-driven ftx client on a real socket: what it sends and reads is up to the test."""

    def __init__(self, stream: trio.SocketStream, max_frame_size: int) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_frame_size=max_frame_size)

    @classmethod
    @asynccontextmanager
    async def connected(
        cls, port: int, *, max_frame_size: int = 1 << 20, upload: bool = False
    ) -> AsyncIterator[Peer]:
        """Connected, HELLO exchanged (offering BLAKE3, uploads if asked, and
        ``max_frame_size``); closed after."""
        peer = cls(await trio.open_tcp_stream(LOOPBACK, port), max_frame_size)
        features = {BLAKE3_FEATURE, UPLOAD_FEATURE} if upload else {BLAKE3_FEATURE}
        try:
            hello = Hello((1,), frozenset(features), max_frame_size, "test-batching")
            await peer.stream.send_all(frame(hello))
            assert isinstance(await peer.receive(), Hello)
            yield peer
        finally:
            await trio.aclose_forcefully(peer.stream)

    async def send(self, *messages: Message) -> None:
        """Send the messages in ONE write."""
        await self.stream.send_all(b"".join(frame(message) for message in messages))

    async def receive(self) -> Message | None:
        """The next message, or ``None`` at the end of the stream (clean or reset)."""
        while (payload := self.decoder.next_frame()) is None:
            if self.decoder.eof:
                return None
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            self.decoder.receive_data(data)
        return decode_message(payload)

    async def answer(self) -> Answer:
        """Read one whole answer: FILE, DATA..., END (or ERROR); ENTRIES..., LIST_END; ERROR."""
        message = await self.receive()
        match message:
            case None:
                raise AssertionError("the server closed the connection instead of answering")
            case Error():
                return Answer(message.request_id, error=message)
            case FileHeader():
                answer = Answer(message.request_id, header=message)
                while True:
                    more = await self.receive()
                    if isinstance(more, Data):
                        answer.chunks.append(bytes(more.data))
                    elif isinstance(more, FileEnd):
                        assert more.request_id == message.request_id
                        answer.end = more
                        return answer
                    elif isinstance(more, Error):
                        answer.error = more
                        return answer
                    else:
                        raise AssertionError(f"{more!r} inside the answer to {message!r}")
            case ListEntries() | ListEnd():
                answer = Answer(message.request_id)
                while isinstance(message, ListEntries):
                    assert message.request_id == answer.request_id
                    answer.entries.extend(message.entries)
                    message = await self.receive()
                if isinstance(message, Error):
                    answer.error = message
                else:
                    assert isinstance(message, ListEnd), message
                    assert message.request_id == answer.request_id
                    answer.list_end = message
                return answer
        raise AssertionError(f"unexpected {message!r}")


def check_file(answer: Answer, request: Get, content: bytes, path: Path) -> None:
    """``answer`` is the whole, correct answer to ``request`` for a file holding ``content``."""
    assert answer.error is None, (request, answer.error)
    assert answer.request_id == request.request_id
    header = answer.header
    assert header is not None
    assert header.size == len(content)
    assert header.offset == request.offset
    assert header.digest == request.digest
    assert header.identity == file_identity(os.stat(path))
    assert answer.data == content[request.offset :]
    assert answer.end is not None
    assert answer.end.digest == digest_of(request.digest, content)  # of the WHOLE file


@dataclass
class ReadAhead:
    """One call of read_small_files, seen by the spy."""

    request_ids: list[int]
    buffer_size: int
    batch_buffers_free: int  # free batch buffers while this read-ahead ran
    small: dict[int, bytes]  # what it read, by request id (copied before the buffer is reused)
    errors: dict[int, FsReason]
    kept_open: list[int]  # large files returned open (a lone GET)


class ReadAheadSpy:
    """Wraps ``ftx.server._downloads.read_small_files`` (the name the server calls) and records
    calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[ReadAhead] = []
        self.pool: BufferPool | None = None
        monkeypatch.setattr(ftx.server._downloads, "read_small_files", self)

    def __call__(self, root: ServedRoot, requests: Sequence[Get], buffer: bytearray) -> ReadResult:
        free = self.pool._available.value if self.pool is not None else -1
        results = read_small_files(root, requests, buffer)
        self.calls.append(
            ReadAhead(
                [request.request_id for request in requests],
                len(buffer),
                free,
                {i: bytes(r.content) for i, r in results.items() if isinstance(r, SmallFile)},
                {i: r.reason for i, r in results.items() if isinstance(r, FsError)},
                [i for i, r in results.items() if isinstance(r, OpenedFile)],
            )
        )
        return results

    @property
    def request_ids(self) -> list[int]:
        return [i for call in self.calls for i in call.request_ids]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> ReadAheadSpy:
    return ReadAheadSpy(monkeypatch)


def batch_buffers_all_free(server: ftx.Server) -> bool:
    pool = server._resources.batch_buffers
    return pool._available.value == pool.max_buffers and len(pool._free) <= pool.max_buffers


async def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - polling server state, bounded
            await trio.sleep(0.005)


# Files for the end-to-end tests.
SMALL_FILES = {
    "a.txt": b"alpha\n",
    "tiny": b"x",
    "exact64k.bin": random_bytes(SMALL_FILE_SIZE, 1),
    "over64k.bin": random_bytes(SMALL_FILE_SIZE + 1, 2),
    "under64k.bin": random_bytes(SMALL_FILE_SIZE - 1, 3),
    "empty.bin": b"",
    "resume.bin": random_bytes(5000, 4),
    "sub/inner.txt": b"inner\n",
    "mib.bin": random_bytes(1 << 20, 5),
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A served directory with SMALL_FILES, a FIFO, symlinks in and out, and a secret outside."""
    (tmp_path / "secret.txt").write_bytes(b"never served\n")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    for name, content in SMALL_FILES.items():
        (root / name).write_bytes(content)
    os.mkfifo(root / "fifo")
    (root / "link-in").symlink_to("a.txt")
    (root / "link-up").symlink_to("../secret.txt")
    return root


# ------------------------------------------------------------- 1. FramedChannel.send_frames


class RecordingSendStream(trio.abc.Stream):
    """A stream that keeps each ``send_all`` call's bytes separately (and can be read back)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.incoming = MemoryReceiveStream()

    async def send_all(self, data: Buffer) -> None:
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.incoming.receive_some(max_bytes)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def decode_frames(wire: Buffer, max_frame_size: int = 1 << 20) -> list[bytes]:
    """The payloads of the whole frames in ``wire``, which must hold nothing else."""
    decoder = FrameDecoder(max_frame_size=max_frame_size)
    decoder.receive_data(bytes(wire))
    payloads = []
    while (payload := decoder.next_frame()) is not None:
        payloads.append(payload)
    assert decoder.buffered_bytes == 0, "a write ended inside a frame"
    return payloads


BIG = random_bytes(100_000, 10)  # larger than the join threshold: written on its own
FRAMES: list[tuple[Buffer, ...]] = [
    (b"first",),
    (),  # an empty frame, no parts at all
    (b"",),  # an empty frame, one empty part
    (b"sp", bytearray(b"li"), memoryview(b"t")),
    (BIG,),
    (b"head:", memoryview(BIG)[:40_000], b":tail"),
    (b"x" * JOIN_THRESHOLD,),  # at the threshold: still joined
    (b"last",),
]


async def stream_pair(kind: str) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    if kind == "memory":
        return memory_stream_pair()
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    async with listeners[0]:
        client = await open_stream_to_socket_listener(listeners[0])
        server = await listeners[0].accept()
    return client, server


@pytest.mark.parametrize("kind", ["memory", "tcp"])
async def test_send_frames_delivers_every_payload_in_order(kind: str) -> None:
    """Frames sent with one send_frames call (small, empty with and without parts, split in
    parts of every buffer type, and over 16 KiB) arrive as the same payloads, in order, one
    receive each; the channel goes on working after it."""
    left, right = await stream_pair(kind)
    sender, receiver = FramedChannel(left), FramedChannel(right)
    got: list[bytes] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def receive_all() -> None:
                for _ in range(len(FRAMES) + 1):
                    got.append(await receiver.receive())

            nursery.start_soon(receive_all)
            await sender.send_frames(*FRAMES)
            await sender.send(b"after")
    assert got == [b"".join(bytes(part) for part in parts) for parts in FRAMES] + [b"after"]
    await sender.aclose()
    await receiver.aclose()


async def test_send_frames_of_small_frames_is_one_write() -> None:
    """Small frames sent together go out in ONE send_all call (one system call, one segment),
    holding exactly these frames; a frame over 16 KiB is written by itself, uncopied, between
    the joined small ones."""
    stream = RecordingSendStream()
    channel = FramedChannel(stream)
    small = [(b"GET %d" % i,) for i in range(40)] + [(), (b"a", b"b")]
    await channel.send_frames(*small)
    assert len(stream.writes) == 1
    assert decode_frames(stream.writes[0]) == [b"".join(parts) for parts in small]

    stream.writes.clear()
    await channel.send_frames((b"before",), (b"hdr", BIG, b"end"), (b"after",))
    assert [len(write) for write in stream.writes] == [4 + 6 + 4 + 3, len(BIG), 3 + 4 + 5]
    assert stream.writes[1] == BIG
    assert decode_frames(b"".join(stream.writes)) == [b"before", b"hdr" + BIG + b"end", b"after"]

    stream.writes.clear()
    await channel.send_frames()  # nothing to send: no write at all
    assert stream.writes == []


@pytest.mark.parametrize("position", [0, 1, 2])
async def test_send_frames_with_one_frame_too_large_sends_nothing(position: int) -> None:
    """If any one frame is over max_frame_size (counting all its parts), LocalProtocolError is
    raised, NOTHING is written (not even the frames before it), and the channel stays usable."""
    outgoing, incoming = MemorySendStream(), MemoryReceiveStream()
    channel = FramedChannel(trio.StapledStream(outgoing, incoming), max_frame_size=1000)
    frames: list[tuple[Buffer, ...]] = [(b"ok",), (b"fine", b"too")]
    frames.insert(position, (b"x" * 600, b"y" * 401))  # 1001 bytes in two parts
    with pytest.raises(LocalProtocolError):
        await channel.send_frames(*frames)
    with pytest.raises(trio.WouldBlock):  # nothing at all in the transport
        outgoing.get_data_nowait()
    await channel.send_frames((b"z" * 1000,), (b"next",))  # exactly at the limit: fine
    assert decode_frames(outgoing.get_data_nowait()) == [b"z" * 1000, b"next"]


part_sizes = st.sampled_from([0, 1, 7, JOIN_THRESHOLD, JOIN_THRESHOLD + 1, 40_000])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(st.lists(part_sizes, max_size=4), max_size=8), seed=st.integers(0, 99))
async def test_send_frames_wire_is_the_frames_and_small_ones_share_writes(
    frames: list[list[int]], seed: int
) -> None:
    """For any frames made of parts of any size: the bytes written are exactly the frames,
    encoded one after the other; every write ends on a part boundary; a part over 16 KiB is a
    write of its own (never copied) and everything else is joined, so that the number of writes
    is the number of big parts plus the runs of headers and small parts between them."""
    rng = random.Random(seed)
    parts_of = [[rng.randbytes(size) for size in sizes] for sizes in frames]
    stream = RecordingSendStream()
    await FramedChannel(stream).send_frames(*parts_of)
    expected = b"".join(encode_frame(b"".join(parts)) for parts in parts_of)
    assert b"".join(stream.writes) == expected
    writes: list[bytes] = []  # what that rule gives
    pending = b""
    for parts in parts_of:
        pending += encode_header(sum(len(part) for part in parts))
        for part in parts:
            if len(part) <= JOIN_THRESHOLD:
                pending += part
                continue
            if pending:
                writes.append(pending)
                pending = b""
            writes.append(part)
    if pending:
        writes.append(pending)
    assert stream.writes == writes


# ----------------------------------------------------------- 2. FramedChannel.receive_nowait


def hand_driven(
    max_frame_size: int = 1 << 20,
) -> tuple[FramedChannel, MemorySendStream, MemoryReceiveStream, list[int]]:
    """A channel over a transport the test feeds by hand, counting its receive_some calls."""
    reads: list[int] = []

    async def count() -> None:
        reads.append(1)

    outgoing, incoming = MemorySendStream(), MemoryReceiveStream(receive_some_hook=count)
    channel = FramedChannel(trio.StapledStream(outgoing, incoming), max_frame_size=max_frame_size)
    return channel, outgoing, incoming, reads


async def test_receive_nowait_never_reads_from_the_transport() -> None:
    """With no whole frame buffered, receive_nowait raises WouldBlock, even when whole frames
    are waiting in the transport: it does not read (the next receive() gets them)."""
    channel, _, incoming, reads = hand_driven()
    with pytest.raises(trio.WouldBlock):
        channel.receive_nowait()
    incoming.put_data(encode_frame(b"one") + encode_frame(b"two"))
    with pytest.raises(trio.WouldBlock):
        channel.receive_nowait()
    assert reads == []
    assert await channel.receive() == b"one"
    assert len(reads) == 1
    assert channel.receive_nowait() == b"two"
    assert len(reads) == 1


async def test_receive_nowait_returns_the_frames_a_receive_pulled_in() -> None:
    """After one receive() pulled in several frames at once, receive_nowait returns the others,
    in order (empty and large ones too), then WouldBlock while only part of the next frame is
    there; the rest of that frame arrives whole with the next receive()."""
    channel, _, incoming, reads = hand_driven()
    frames = [b"first", b"", b"third", random_bytes(20_000, 11), b"fifth"]
    last = encode_frame(b"sixth, cut in two")
    incoming.put_data(b"".join(encode_frame(f) for f in frames) + last[:7])
    assert await channel.receive() == frames[0]
    assert [channel.receive_nowait() for _ in frames[1:]] == frames[1:]
    assert len(reads) == 1
    with pytest.raises(trio.WouldBlock):
        channel.receive_nowait()
    incoming.put_data(last[7:])
    with pytest.raises(trio.WouldBlock):  # in the transport, not in the channel
        channel.receive_nowait()
    assert await channel.receive() == b"sixth, cut in two"
    with pytest.raises(trio.WouldBlock):
        channel.receive_nowait()


async def test_receive_nowait_at_a_clean_end_of_stream_would_block() -> None:
    """At a clean end of stream receive_nowait raises WouldBlock (never EndOfChannel and never a
    lost frame), while receive() raises EndOfChannel, again and again."""
    left, right = memory_stream_pair()
    sender, receiver = FramedChannel(left), FramedChannel(right)
    await sender.send_frames((b"A",), (b"B",))
    await sender.aclose()
    with trio.fail_after(5):
        assert await receiver.receive() == b"A"
        assert receiver.receive_nowait() == b"B"
        with pytest.raises(trio.WouldBlock):
            receiver.receive_nowait()
        with pytest.raises(trio.EndOfChannel):
            await receiver.receive()
        with pytest.raises(trio.WouldBlock):
            receiver.receive_nowait()
        with pytest.raises(trio.EndOfChannel):
            await receiver.receive()


async def test_receive_nowait_at_an_end_of_stream_inside_a_frame() -> None:
    """A stream that ends inside a frame: receive_nowait cannot know before a receive() saw the
    end (WouldBlock); receive() raises IncompleteFrameError; then both are broken."""
    channel, _, incoming, _ = hand_driven()
    incoming.put_data(encode_frame(b"whole") + encode_frame(b"cut short")[:6])
    incoming.put_eof()
    assert await channel.receive() == b"whole"
    with pytest.raises(trio.WouldBlock):
        channel.receive_nowait()
    with pytest.raises(IncompleteFrameError):
        await channel.receive()
    with pytest.raises(trio.BrokenResourceError):
        channel.receive_nowait()
    with pytest.raises(trio.BrokenResourceError):
        await channel.receive()


async def test_receive_nowait_on_an_oversized_header_breaks_receiving_only() -> None:
    """A buffered header announcing more than max_frame_size makes receive_nowait raise
    FrameTooLargeError; later receives (either kind) raise BrokenResourceError, while sending
    still works (to tell the peer why)."""
    channel, outgoing, incoming, _ = hand_driven(max_frame_size=100)
    incoming.put_data(encode_frame(b"fine") + encode_header(101) + b"zz")
    assert await channel.receive() == b"fine"
    with pytest.raises(FrameTooLargeError):
        channel.receive_nowait()
    with pytest.raises(trio.BrokenResourceError):
        channel.receive_nowait()
    with pytest.raises(trio.BrokenResourceError):
        await channel.receive()
    await channel.send(b"bye")
    assert outgoing.get_data_nowait() == encode_frame(b"bye")


async def test_receive_nowait_while_a_receive_waits_is_busy_and_after_close_is_closed() -> None:
    """receive_nowait is a receive: while another task waits in receive() it raises
    BusyResourceError (and takes nothing); on a closed channel, ClosedResourceError."""
    channel, _, incoming, _ = hand_driven()
    got: list[bytes] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def receive_one() -> None:
                got.append(await channel.receive())

            nursery.start_soon(receive_one)
            await wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                channel.receive_nowait()
            incoming.put_data(encode_frame(b"mine"))
    assert got == [b"mine"]
    await channel.aclose()
    with pytest.raises(trio.ClosedResourceError):
        channel.receive_nowait()


# ------------------------------------------------------------ 3. server batching, end to end


async def test_a_batch_of_mixed_gets_is_answered_in_order_and_whole(
    root: Path, spy: ReadAheadSpy
) -> None:
    """22 GETs in ONE write (small files at and around 64 KiB, empty, missing, a directory, the
    root, a FIFO, paths escaping the root, an unknown digest, resumes with the right and a wrong
    identity and past the end, a 1 MiB file, symlinks, no digest, a file asked for twice): the
    answers come in request order, each file whole with the digest of the WHOLE file in the
    algorithm asked for, each refusal with its code; the small files were read ahead together."""
    identity = file_identity(os.stat(root / "resume.bin"))
    requests: list[tuple[Get, str | None]] = [
        (Get(1, "a.txt"), None),
        (Get(2, "tiny", digest="blake3"), None),
        (Get(3, "exact64k.bin", digest="blake3"), None),
        (Get(4, "over64k.bin"), None),
        (Get(5, "under64k.bin"), None),
        (Get(6, "empty.bin", digest="blake3"), None),
        (Get(7, "missing.txt"), ErrorCode.NOT_FOUND),
        (Get(8, "sub"), ErrorCode.NOT_A_FILE),
        (Get(9, ""), ErrorCode.NOT_A_FILE),
        (Get(10, "mib.bin", digest="blake3"), None),
        (Get(11, "../x"), ErrorCode.OUTSIDE_ROOT),
        (Get(12, "/etc/passwd"), ErrorCode.OUTSIDE_ROOT),
        (Get(13, "a.txt", digest="md5"), ErrorCode.BAD_REQUEST),
        (Get(14, "resume.bin", offset=1000, identity=identity), None),
        (Get(15, "resume.bin", offset=1000, identity="0" * 32), ErrorCode.CHANGED),
        (Get(16, "resume.bin", offset=5001), ErrorCode.BAD_REQUEST),
        (Get(17, "resume.bin", offset=5000, digest="blake3"), None),  # nothing left to send
        (Get(18, "fifo"), ErrorCode.NOT_A_FILE),
        (Get(19, "link-in"), None),
        (Get(20, "link-up"), ErrorCode.OUTSIDE_ROOT),
        (Get(21, "sub/inner.txt", digest=None), None),
        (Get(22, "tiny"), None),
    ]
    async with serving(root) as (server, port):
        spy.pool = server._resources.batch_buffers
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                await peer.send(*(request for request, _ in requests))
                answers = [await peer.answer() for _ in requests]
        await wait_until(lambda: server.connections == 0)
        assert batch_buffers_all_free(server)
    assert [a.request_id for a in answers] == [r.request_id for r, _ in requests]
    for (request, code), answer in zip(requests, answers, strict=True):
        if code is not None:
            assert answer.header is None, request
            assert answer.code == code, (request, answer.error)
            continue
        target = "a.txt" if request.path == "link-in" else request.path
        check_file(answer, request, SMALL_FILES[target], root / target)
        if request.offset == len(SMALL_FILES[target]):
            assert answer.chunks == []  # FILE then END, no DATA
    assert all(len(chunk) < 1 << 20 for a in answers for chunk in a.chunks)
    # The batch really was taken together and its small files read ahead in one go.
    assert spy.request_ids == [r.request_id for r, _ in requests]
    assert max(len(call.request_ids) for call in spy.calls) > 1
    read_ahead = {i: data for call in spy.calls for i, data in call.small.items()}
    for request, _ in requests:
        if request.request_id in read_ahead:
            assert (
                read_ahead[request.request_id]
                == SMALL_FILES["a.txt" if request.path == "link-in" else request.path]
            )
    assert {1, 2, 3, 5, 6, 22} <= set(read_ahead)
    assert 4 not in read_ahead  # 64 KiB + 1: the usual path
    assert 10 not in read_ahead
    assert {c for call in spy.calls for c in call.errors.values()} >= {
        FsReason.NOT_FOUND,
        FsReason.NOT_A_FILE,
        FsReason.OUTSIDE_ROOT,
    }


async def test_a_list_between_gets_is_answered_in_order(root: Path) -> None:
    """GET, GET, LIST, GET, LIST of a file, LIST of a missing directory, GET in one write: the
    answers keep the request order (the LIST ends one batch, the GETs after it form the next)."""
    requests: list[Get | ListDir] = [
        Get(1, "a.txt"),
        Get(2, "exact64k.bin"),
        ListDir(3, "sub"),
        Get(4, "tiny"),
        ListDir(5, "a.txt"),
        ListDir(6, "nowhere"),
        Get(7, "mib.bin"),
        Get(8, "a.txt"),
    ]
    async with serving(root) as (_server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                await peer.send(*requests)
                answers = [await peer.answer() for _ in requests]
    assert [a.request_id for a in answers] == list(range(1, 9))
    for request, answer in zip(requests, answers, strict=True):
        if isinstance(request, Get):
            check_file(answer, request, SMALL_FILES[request.path], root / request.path)
    assert [e.name for e in answers[2].entries] == ["inner.txt"]
    assert answers[2].list_end is not None
    assert answers[2].list_end.count == 1
    assert [(e.name, e.size) for e in answers[4].entries] == [("a.txt", len(SMALL_FILES["a.txt"]))]
    assert answers[5].code == ErrorCode.NOT_FOUND


async def test_gets_pipelined_before_a_half_close_are_all_answered(
    root: Path, spy: ReadAheadSpy
) -> None:
    """A client may pipeline its GETs and half-close at once: every GET (more than two batches'
    worth) is still answered, in order, and then the server closes its side cleanly."""
    names = ["a.txt", "tiny", "empty.bin", "exact64k.bin", "resume.bin"]
    requests = [Get(i, names[i % len(names)]) for i in range(1, 2 * MAX_BATCH + 6)]
    async with serving(root) as (_server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                await peer.send(*requests)
                await peer.stream.send_eof()
                answers = [await peer.answer() for _ in requests]
                assert await peer.receive() is None
    for request, answer in zip(requests, answers, strict=True):
        check_file(answer, request, SMALL_FILES[request.path], root / request.path)
    assert spy.request_ids == [r.request_id for r in requests]


async def test_small_files_around_the_size_limit_fit_the_client_frame_limit(
    root: Path,
) -> None:
    """A client with the smallest frame limit the protocol allows (64 KiB) gets files of 64 KiB
    - 1 and 64 KiB + 1 whole, each DATA frame within its limit."""
    requests = [Get(1, "under64k.bin"), Get(2, "over64k.bin"), Get(3, "tiny")]
    async with serving(root) as (_server, port):
        with trio.fail_after(10):
            async with Peer.connected(port, max_frame_size=MIN_FRAME_SIZE) as peer:
                await peer.send(*requests)
                answers = [await peer.answer() for _ in requests]
    for request, answer in zip(requests, answers, strict=True):
        check_file(answer, request, SMALL_FILES[request.path], root / request.path)
        assert all(len(chunk) < MIN_FRAME_SIZE for chunk in answer.chunks)


async def test_a_64_kib_file_reaches_a_client_with_a_64_kib_frame_limit(
    root: Path, tmp_path: Path
) -> None:
    """A file of exactly SMALL_FILE_SIZE (64 KiB, read ahead) to a client whose frame limit is
    64 KiB (the protocol's minimum): the data must be split to fit, and arrive intact."""
    async with serving(root) as (_server, port):
        with trio.fail_after(10):
            async with ftx.connect(
                LOOPBACK, port, ftx.ClientConfig(max_frame_size=MIN_FRAME_SIZE)
            ) as client:
                result = await client.get("exact64k.bin", tmp_path / "got.bin")
    assert result.size == SMALL_FILE_SIZE
    assert (tmp_path / "got.bin").read_bytes() == SMALL_FILES["exact64k.bin"]


async def test_a_batch_may_end_with_an_upload_or_a_mkdir(root: Path) -> None:
    """On a writable server, GETs pipelined with a MKDIR and a PUT behind them: the answers keep
    the request order, and the PUT (the last of its batch) gets READY, then its DATA and END are
    read from the same connection and the file is stored; the GET after it serves it."""
    content = random_bytes(3000, 42)
    big = SMALL_FILES["exact64k.bin"]
    async with serving(root, writable=True) as (_server, port):
        with trio.fail_after(10):
            async with Peer.connected(port, upload=True) as peer:
                await peer.send(Get(1, "a.txt"), MakeDir(2, "new"), Get(3, "tiny"))
                check_file(await peer.answer(), Get(1, "a.txt"), b"alpha\n", root / "a.txt")
                assert await peer.receive() == Done(2, created=True)
                check_file(await peer.answer(), Get(3, "tiny"), b"x", root / "tiny")

                await peer.send(Get(4, "exact64k.bin"), Put(5, "new/up.bin", len(content)))
                check_file(await peer.answer(), Get(4, "exact64k.bin"), big, root / "exact64k.bin")
                assert await peer.receive() == Ready(5, 0)
                await peer.send(Data(content), FileEnd(5, digest_of("sha256", content)))
                assert await peer.receive() == Done(5, created=True)
                await peer.send(Get(6, "new/up.bin"))
                check_file(await peer.answer(), Get(6, "new/up.bin"), content, root / "new/up.bin")
    assert (root / "new" / "up.bin").read_bytes() == content


@pytest.mark.parametrize("bad", ["not-json", "too-large"])
async def test_gets_before_a_bad_pipelined_frame_are_answered_first(root: Path, bad: str) -> None:
    """Valid GETs, then a malformed frame, all in one write: the GETs read before the violation
    are answered, in order, then the connection ends with a connection-level bad-request."""
    bad_frame = {
        "not-json": encode_frame(b"\x10{not json"),
        "too-large": encode_header(2 << 20) + b"zzzz",
    }[bad]
    requests = [Get(1, "a.txt"), Get(2, "tiny")]
    async with serving(root) as (_server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                await peer.stream.send_all(b"".join(frame(r) for r in requests) + bad_frame)
                answers = [await peer.answer() for _ in range(len(requests) + 1)]
    for request, answer in zip(requests, answers, strict=False):
        check_file(answer, request, SMALL_FILES[request.path], root / request.path)
    assert answers[-1].request_id is None
    assert answers[-1].code == ErrorCode.BAD_REQUEST


# ---------------------------------------------------- 4. files that change around the read-ahead


def rewrite(path: Path, content: bytes, mtime_ns: int) -> None:
    """Replace the content in place (same inode) and set an mtime that differs for sure."""
    with path.open("r+b") as file:
        file.truncate(0)
        file.write(content)
    os.utime(path, ns=(mtime_ns, mtime_ns))


@dataclass
class Versions:
    old: bytes
    old_identity: str
    new: bytes = b""
    new_identity: str = ""


@pytest.fixture
def changed_after_read_ahead(
    root: Path, spy: ReadAheadSpy, monkeypatch: pytest.MonkeyPatch
) -> Versions:
    """After each read-ahead, ``a.txt`` is rewritten (new content, size and mtime): the files
    read ahead for the batch are then stale by the time they are answered."""
    path = root / "a.txt"
    versions = Versions(path.read_bytes(), file_identity(path.stat()))

    def then_change(served: ServedRoot, requests: Sequence[Get], buffer: bytearray) -> ReadResult:
        results = spy(served, requests, buffer)
        rewrite(path, b"the new content, longer than before\n", 1_234_567_890_123_456_789)
        versions.new = path.read_bytes()
        versions.new_identity = file_identity(path.stat())
        return results

    monkeypatch.setattr(ftx.server._downloads, "read_small_files", then_change)
    return versions


async def fetch_changed(root: Path) -> Answer:
    async with serving(root) as (_server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                await peer.send(Get(1, "a.txt"), Get(2, "tiny"))
                answer = await peer.answer()
                check_file(await peer.answer(), Get(2, "tiny"), b"x", root / "tiny")
    return answer


async def test_a_file_changed_after_the_read_ahead_is_never_a_mix(
    root: Path, spy: ReadAheadSpy, changed_after_read_ahead: Versions
) -> None:
    """A small file modified between the batch's read-ahead and its answer: the answer is ONE
    version, whole, described by its header (size, identity) and with its digest; or ERROR
    changed. Never a mix of versions, never a digest of other bytes."""
    answer = await fetch_changed(root)
    versions = changed_after_read_ahead
    assert spy.calls
    assert spy.calls[0].small.get(1) == versions.old  # read ahead before the change
    if answer.error is not None:
        assert answer.code == ErrorCode.CHANGED
        return
    assert answer.header is not None
    assert answer.end is not None
    identities = {versions.old: versions.old_identity, versions.new: versions.new_identity}
    assert answer.data in identities
    assert answer.header.identity == identities[answer.data]
    assert answer.header.size == len(answer.data)
    assert answer.end.digest == digest_of("sha256", answer.data)


async def test_a_file_changed_after_the_read_ahead_is_not_served_stale(
    root: Path, changed_after_read_ahead: Versions
) -> None:
    """A small file modified between the batch's read-ahead and its answer is answered with the
    new content (consistent header and digest), or with ERROR changed: not with the content
    from before the change, as if it were still current."""
    answer = await fetch_changed(root)
    versions = changed_after_read_ahead
    if answer.error is not None:
        assert answer.code == ErrorCode.CHANGED
        return
    assert answer.data == versions.new
    assert answer.header is not None
    assert answer.header.identity == versions.new_identity
    assert answer.end is not None
    assert answer.end.digest == digest_of("sha256", versions.new)


@pytest.mark.parametrize("change", ["grows", "shrinks", "rewritten", "changed-reported"])
async def test_a_file_changing_during_the_read_ahead_falls_back_and_is_served_right(
    root: Path, spy: ReadAheadSpy, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """A small file that changes while the read-ahead reads it (after it was opened: grows,
    shrinks, is rewritten at the same size; or OpenedFile.changed() just says so) is left out
    of the read-ahead and answered the usual way: whole, in its new version, with its digest."""
    path = root / "resume.bin"
    old = path.read_bytes()
    new = {
        "grows": old + b"appended",
        "shrinks": old[:1234],
        "rewritten": bytes(255 - b for b in old),
        "changed-reported": old,
    }[change]
    target_inode = path.stat().st_ino
    original_open = ServedRoot.open_file
    original_changed = OpenedFile.changed
    reading_ahead = threading.Event()
    done = threading.Event()

    def open_then_change(served: ServedRoot, request_path: str) -> OpenedFile:
        opened = original_open(served, request_path)
        if request_path == "resume.bin" and reading_ahead.is_set() and not done.is_set():
            done.set()
            if change != "changed-reported":
                rewrite(path, new, 987_654_321_000_000_000)
        return opened

    def changed(opened: OpenedFile) -> bool:
        if change == "changed-reported" and reading_ahead.is_set():
            return opened.stat.st_ino == target_inode or original_changed(opened)
        return original_changed(opened)

    def read_ahead(served: ServedRoot, requests: Sequence[Get], buffer: bytearray) -> ReadResult:
        reading_ahead.set()
        try:
            return spy(served, requests, buffer)
        finally:
            reading_ahead.clear()

    monkeypatch.setattr(ServedRoot, "open_file", open_then_change)
    monkeypatch.setattr(OpenedFile, "changed", changed)
    monkeypatch.setattr(ftx.server._downloads, "read_small_files", read_ahead)
    requests = [Get(1, "a.txt"), Get(2, "resume.bin", digest="blake3"), Get(3, "tiny")]
    async with serving(root) as (server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                await peer.send(*requests)
                answers = [await peer.answer() for _ in requests]
        await wait_until(lambda: server.connections == 0)
        assert batch_buffers_all_free(server)
    assert done.is_set()
    assert spy.request_ids == [1, 2, 3]
    assert 2 not in spy.calls[0].small  # not read ahead: it changed meanwhile
    assert {1, 3} <= set(spy.calls[0].small)  # its neighbours were
    check_file(answers[0], requests[0], SMALL_FILES["a.txt"], root / "a.txt")
    check_file(answers[1], requests[1], new, path)
    check_file(answers[2], requests[2], b"x", root / "tiny")


# ------------------------------------------------------------------- 5. memory and bounds


async def test_read_ahead_batches_are_bounded_and_their_buffer_released(
    tmp_path: Path, spy: ReadAheadSpy
) -> None:
    """100 GETs pipelined in one write: the server reads ahead for at most MAX_BATCH of them at
    once, every GET exactly once and in order, into one BATCH_BUFFER_SIZE buffer from the pool,
    holding one buffer at a time (released after each batch) and none once the connection
    ends; every file arrives whole."""
    root = tmp_path / "many"
    root.mkdir()
    contents = {f"f{i:03}": random_bytes(i * 37 % 3000, i) for i in range(100)}
    for name, content in contents.items():
        (root / name).write_bytes(content)
    requests = [Get(i + 1, name) for i, name in enumerate(contents)]
    async with serving(root) as (server, port):
        spy.pool = server._resources.batch_buffers
        pool = server._resources.batch_buffers
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                await peer.send(*requests)
                answers = [await peer.answer() for _ in requests]
        await wait_until(lambda: server.connections == 0)
        assert pool._available.value == pool.max_buffers
        assert len(pool._free) == 1  # one buffer, reused for every batch
    for request, answer in zip(requests, answers, strict=True):
        check_file(answer, request, contents[request.path], root / request.path)
    sizes = [len(call.request_ids) for call in spy.calls]
    assert max(sizes) <= MAX_BATCH
    assert max(sizes) > 1
    assert spy.request_ids == [r.request_id for r in requests]
    assert all(call.buffer_size == BATCH_BUFFER_SIZE for call in spy.calls)
    assert all(call.batch_buffers_free == pool.max_buffers - 1 for call in spy.calls)
    read_ahead = {i: data for call in spy.calls for i, data in call.small.items()}
    assert read_ahead == {r.request_id: contents[r.path] for r in requests}


async def test_a_batch_reads_ahead_only_what_fits_its_buffer(
    tmp_path: Path, spy: ReadAheadSpy
) -> None:
    """A batch of 60 KB files, far more than the batch buffer holds: only as many as fit are
    read ahead (without overlapping in the buffer: each read-ahead copy is still the file's
    content once the read-ahead is done), the others are served the usual way, all intact."""
    root = tmp_path / "fat"
    root.mkdir()
    contents = {f"g{i:02}": random_bytes(60_000, 100 + i) for i in range(MAX_BATCH)}
    for name, content in contents.items():
        (root / name).write_bytes(content)
    requests = [Get(i + 1, name, digest="blake3") for i, name in enumerate(contents)]
    async with serving(root) as (server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                await peer.send(*requests)
                answers = [await peer.answer() for _ in requests]
        await wait_until(lambda: server.connections == 0)
        assert batch_buffers_all_free(server)
    for request, answer in zip(requests, answers, strict=True):
        check_file(answer, request, contents[request.path], root / request.path)
    first = spy.calls[0]
    assert len(first.request_ids) > 1
    assert 1 <= len(first.small) <= BATCH_BUFFER_SIZE // 60_000
    assert len(first.small) < len(first.request_ids)
    by_id = {r.request_id: r.path for r in requests}
    for call in spy.calls:
        assert sum(len(data) for data in call.small.values()) <= BATCH_BUFFER_SIZE
        for request_id, data in call.small.items():
            assert data == contents[by_id[request_id]]


def descriptors_on(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    target = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own descriptor)
            count += os.readlink(f"/proc/self/fd/{fd}") == target
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_a_lone_get_keeps_its_large_file_open_and_every_descriptor_is_closed(
    root: Path, spy: ReadAheadSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GET alone in its batch for a large file has the file kept open by the read-ahead and
    served from it; whatever becomes of the answer (refused for its digest before the file is
    looked at, for its identity or offset after, served whole, cut by the client, or never
    started because the server shut down), no descriptor on the file outlives it."""
    mib = root / "mib.bin"
    content = SMALL_FILES["mib.bin"]
    hold = threading.Event()
    held = trio.Event()
    release = threading.Event()

    def read_ahead(served: ServedRoot, requests: Sequence[Get], buffer: bytearray) -> ReadResult:
        results = spy(served, requests, buffer)
        if hold.is_set():
            trio.from_thread.run_sync(held.set)
            assert release.wait(10)
        return results

    monkeypatch.setattr(ftx.server._downloads, "read_small_files", read_ahead)
    lone = [
        (Get(1, "mib.bin", digest="md5"), ErrorCode.BAD_REQUEST),
        (Get(2, "mib.bin", identity="0" * 32), ErrorCode.CHANGED),
        (Get(3, "mib.bin", offset=len(content) + 1), ErrorCode.BAD_REQUEST),
        (Get(4, "mib.bin", offset=10, digest="blake3"), None),
        (Get(5, "mib.bin"), None),
    ]
    async with serving(root) as (server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                for request, code in lone:  # one at a time: each is a batch of its own
                    await peer.send(request)
                    answer = await peer.answer()
                    if code is None:
                        check_file(answer, request, content, mib)
                    else:
                        assert answer.code == code
                    # (the server closes the file just after its last write: give it a moment)
                    await wait_until(lambda: descriptors_on(mib) == 0, 2)
            assert [call.kept_open for call in spy.calls] == [[i] for i in range(1, 6)]

            async with Peer.connected(port) as peer:  # the client goes away mid-file
                await peer.send(Get(6, "mib.bin"))
                assert isinstance(await peer.receive(), FileHeader)
            await wait_until(lambda: server.connections == 0)
            await wait_until(lambda: descriptors_on(mib) == 0, 2)

            hold.set()
            async with Peer.connected(port) as peer, trio.open_nursery() as nursery:
                await peer.send(Get(7, "mib.bin"))
                await held.wait()
                assert descriptors_on(mib) == 1  # held open by the read-ahead
                nursery.start_soon(server.shutdown, 0.0)
                await wait_until(lambda: server.closing)
                release.set()
                messages = []
                while (message := await peer.receive()) is not None:
                    messages.append(message)
            farewell = messages[-1]
            assert isinstance(farewell, Error)
            assert (farewell.request_id, farewell.code) == (None, ErrorCode.SHUTTING_DOWN)
            assert not any(isinstance(m, FileEnd) for m in messages)
        assert server.connections == 0
        assert descriptors_on(mib) == 0
        assert batch_buffers_all_free(server)


# --------------------------------------------------------------------- 6. the client's batches


class RecordingClientStream(trio.abc.Stream):
    """Passes a client's traffic through, noting the GETs in each write and, at that moment,
    how many answers had already come in."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.gets_per_write: list[int] = []
        self.outstanding_after_write: list[int] = []
        self._sent = 0
        self._answered = 0
        self._incoming = FrameDecoder()

    async def send_all(self, data: Buffer) -> None:
        messages = [decode_message(payload) for payload in decode_frames(bytes(data))]
        gets = sum(isinstance(message, Get) for message in messages)
        if gets:
            self.gets_per_write.append(gets)
            self._sent += gets
            # A lower bound of the client's count: answers are seen here before it reads them.
            self.outstanding_after_write.append(self._sent - self._answered)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self._incoming.receive_data(data)
        while (payload := self._incoming.next_frame()) is not None:
            message = decode_message(payload)
            if isinstance(message, FileEnd) or (
                isinstance(message, Error) and message.request_id is not None
            ):
                self._answered += 1
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("window", [64, 7, 1])
async def test_the_client_sends_its_gets_in_batches(
    tmp_path: Path, spy: ReadAheadSpy, window: int
) -> None:
    """Client.fetch of 200 small files over one connection: its GETs go out in batches, one
    write each, never more than ``window`` of them outstanding; with a window over 1 some write
    carries several GETs (and the server reads ahead for several at once); with window=1 every
    write carries exactly one. Either way every file arrives intact, in order."""
    served, dest = tmp_path / "served", tmp_path / "dest"
    served.mkdir()
    dest.mkdir()
    contents = {f"c{i:03}.bin": random_bytes(i * 53 % 4000, 1000 + i) for i in range(200)}
    for name, content in contents.items():
        (served / name).write_bytes(content)
    results: list[tuple[str, ftx.Download | ftx.FtxError]] = []
    async with serving(served) as (_server, port):
        with trio.fail_after(12):
            stream = RecordingClientStream(await trio.open_tcp_stream(LOOPBACK, port))
            async with ftx.Client(stream) as client:
                await client.handshake()
                send, receive = trio.open_memory_channel[tuple[str, str | os.PathLike[str]]](
                    math.inf
                )
                for name in contents:
                    send.send_nowait((name, dest / name))
                send.close()
                await client.fetch(
                    receive,
                    on_done=lambda path, result: results.append((path, result)),
                    window=window,
                    sync=False,
                )
    assert [path for path, _ in results] == list(contents)
    for path, result in results:
        assert isinstance(result, ftx.Download), (path, result)
        assert (dest / path).read_bytes() == contents[path]
    assert not list(dest.glob("*.part"))
    assert sum(stream.gets_per_write) == len(contents)
    assert max(stream.gets_per_write) <= window
    assert max(stream.outstanding_after_write) <= window
    if window == 1:
        assert stream.gets_per_write == [1] * len(contents)
    else:
        assert max(stream.gets_per_write) > 1
        assert len(stream.gets_per_write) < len(contents)
        assert max(len(call.request_ids) for call in spy.calls) > 1


# ------------------------------------------------------------------- 7. shutdown mid-batch


@pytest.mark.parametrize(("grace", "answered"), [(10.0, 1), (0.0, 0)])
async def test_shutdown_during_a_batch_ends_after_the_answer_in_progress(
    root: Path, monkeypatch: pytest.MonkeyPatch, grace: float, answered: int
) -> None:
    """Server.shutdown while a batch is being read ahead: with a grace period, the answer in
    progress (the batch's first) is finished whole, then the connection ends with a
    connection-level ``shutting-down`` ERROR, the rest of the batch unanswered; with no grace
    it stops before the first answer. Either way the batch buffer is given back."""
    entered = trio.Event()
    release = threading.Event()

    def blocked(served: ServedRoot, requests: Sequence[Get], buffer: bytearray) -> ReadResult:
        trio.from_thread.run_sync(entered.set)
        assert release.wait(10)
        return read_small_files(served, requests, buffer)

    monkeypatch.setattr(ftx.server._downloads, "read_small_files", blocked)
    requests = [Get(1, "a.txt"), Get(2, "tiny"), Get(3, "exact64k.bin"), Get(4, "a.txt")]
    async with serving(root) as (server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer, trio.open_nursery() as nursery:
                await peer.send(*requests)
                await entered.wait()
                pool = server._resources.batch_buffers
                assert pool._available.value == pool.max_buffers - 1
                nursery.start_soon(server.shutdown, grace)
                await wait_until(lambda: server.closing)
                await wait_all_tasks_blocked()
                release.set()
                answers = [await peer.answer() for _ in range(answered + 1)]
                assert await peer.receive() is None  # then closed
        assert server.connections == 0
        assert batch_buffers_all_free(server)
    for request, answer in zip(requests, answers[:answered], strict=False):
        check_file(answer, request, SMALL_FILES[request.path], root / request.path)
    farewell = answers[answered]
    assert farewell.request_id is None
    assert farewell.code == ErrorCode.SHUTTING_DOWN


async def test_shutdown_without_grace_cuts_a_large_answer_at_a_frame_boundary(
    root: Path,
) -> None:
    """shutdown(grace=0) while a batch's large file is being sent: the answer stops at a frame
    boundary (whole DATA frames of a prefix of the file, no END), the connection ends with a
    ``shutting-down`` ERROR, the small files after it in the batch are not answered, and the
    batch buffer is given back."""
    head = random_bytes(1 << 20, 77)
    big = root / "big.bin"
    with big.open("wb") as file:
        file.write(head)
        file.truncate(128 << 20)  # sparse: more than any socket buffer holds
    async with serving(root, chunk_size=256 * 1024) as (server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer, trio.open_nursery() as nursery:
                await peer.send(Get(1, "big.bin"), Get(2, "a.txt"), Get(3, "tiny"))
                header = await peer.receive()
                assert isinstance(header, FileHeader)
                assert header.request_id == 1
                nursery.start_soon(server.shutdown, 0.0)
                await wait_until(lambda: server.closing)
                chunks: list[bytes] = []
                while isinstance(message := await peer.receive(), Data):
                    chunks.append(bytes(message.data))
                assert isinstance(message, Error), message
                assert message.request_id is None
                assert message.code == ErrorCode.SHUTTING_DOWN
                assert await peer.receive() is None
        assert server.connections == 0
        assert batch_buffers_all_free(server)
    data = b"".join(chunks)
    assert len(data) < header.size
    assert all(len(chunk) == 256 * 1024 for chunk in chunks)
    assert data[: len(head)] == head[: len(data)]
    assert data[len(head) :] == bytes(max(0, len(data) - len(head)))


async def test_send_frames_takes_frames_as_any_iterable_of_parts_and_refuses_a_bare_buffer() -> (
    None
):
    """A frame given as a generator of parts is sent whole (not consumed by the size check and
    sent empty); a frame given as a bare buffer instead of a sequence of parts is refused before
    anything is sent; an empty call is still a checkpoint."""
    sender, receiver = memory_stream_pair()
    channel = FramedChannel(sender)
    await channel.send_frames((part for part in (b"ab", b"cd")), [b"e"])
    with pytest.raises(TypeError):
        await channel.send_frames(b"ab")  # type: ignore[arg-type]
    with assert_checkpoints():
        await channel.send_frames()
    await channel.send(b"after")
    await sender.aclose()
    decoder = FrameDecoder()
    while data := await receiver.receive_some():
        decoder.receive_data(data)
    frames = []
    while (payload := decoder.next_frame()) is not None:
        frames.append(payload)
    assert frames == [b"abcd", b"e", b"after"]


async def test_a_large_file_does_not_hold_a_batch_buffer_while_it_is_sent(root: Path) -> None:
    """The batch buffer is given back as soon as no file read into it waits to be sent: a
    client reading a large file slowly (here: not at all, after the header) must not keep a
    buffer of the pool, or a few such clients would make every other batch wait."""
    (root / "large.bin").write_bytes(random_bytes(32 << 20, 11))
    async with serving(root) as (server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                # A small file first, then the large one, in one batch: the small one's answer
                # needs the buffer, the large one's does not.
                await peer.send(Get(1, "a.txt"), Get(2, "large.bin"))
                first = await peer.answer()
                assert first.error is None
                header = await peer.receive()
                assert isinstance(header, FileHeader)
                assert header.size == 32 << 20
                # The server is now stuck sending large.bin to a client that does not read.
                await wait_until(lambda: batch_buffers_all_free(server))


def chunk_buffers_all_free(server: ftx.Server) -> bool:
    return server._resources.buffers._available.value == server._resources.buffers.max_buffers


async def test_a_slow_client_does_not_hold_a_chunk_buffer_once_the_file_is_hashed(
    root: Path,
) -> None:
    """On plain TCP the file goes with sendfile while a worker thread hashes it (its digest is
    not known yet) into a buffer of the pool; the hashing runs far ahead of a client that reads
    slowly (here: not at all after the header), and its buffer must go back to the pool as soon
    as it is done, not when the whole transfer is."""
    (root / "large.bin").write_bytes(random_bytes(32 << 20, 12))
    async with serving(root) as (server, port):
        with trio.fail_after(10):
            async with Peer.connected(port) as peer:
                await peer.send(Get(1, "large.bin", digest="blake3"))
                header = await peer.receive()
                assert isinstance(header, FileHeader)
                await wait_until(lambda: chunk_buffers_all_free(server))
                # ... and the digest is right once the client does read everything.
                data = bytearray()
                while not isinstance(message := await peer.receive(), FileEnd):
                    assert isinstance(message, Data)
                    data += message.data
                assert message.digest == blake3.blake3(data).hexdigest()
                assert len(data) == 32 << 20
