"""Server limits: connections served at once, the handshake deadline, idle deadlines on reads and
writes, TCP keepalive, the listen backlog, and running out of file descriptors.

Real servers on 127.0.0.1 with short limits, raw sockets for the misbehaving peers; the write
deadline's exact semantics are checked on an in-memory lockstep stream; the descriptor
exhaustion in a subprocess with a low ``RLIMIT_NOFILE``. Every wait is bounded.
"""

from __future__ import annotations

import logging
import math
import random
import re
import resource
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

import ftx
from ftx._net import set_keepalive
from ftx.framing import FrameDecoder, encode_frame
from ftx.protocol.messages import (
    Data,
    Error,
    FileEnd,
    FileHeader,
    Get,
    Hello,
    Message,
    decode_message,
    encode_message,
)
from ftx.server._listen import FdReserve, accept_loop

LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------------- helpers


def frame(message: Message) -> bytes:
    return encode_frame(b"".join(bytes(part) for part in encode_message(message)))


HELLO = frame(Hello((1,), frozenset(), 1 << 20, "test"))
_OPEN_PEERS: list[RawPeer] = []  # closed when the test's server stops


class RawPeer:
    """A hand-driven client on a real socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    @classmethod
    async def connect(cls, port: int) -> RawPeer:
        peer = cls(await trio.open_tcp_stream(LOOPBACK, port))
        _OPEN_PEERS.append(peer)
        return peer

    async def receive(self) -> Message | None:
        """The next message, or ``None`` at the end of the stream (clean or reset)."""
        while (payload := self.decoder.next_frame()) is None:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self.decoder.receive_data(data)
        return decode_message(payload)

    async def handshake(self) -> None:
        await self.stream.send_all(HELLO)
        assert isinstance(await self.receive(), Hello)


@asynccontextmanager
async def running(server: ftx.Server) -> AsyncIterator[int]:
    """Serve with ``server`` on a loopback port; yield the port."""
    try:
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
            await nursery.start(server.serve_listeners, listeners)
            yield listeners[0].socket.getsockname()[1]
            nursery.cancel_scope.cancel()
    finally:
        server.root.close()
        while _OPEN_PEERS:
            await trio.aclose_forcefully(_OPEN_PEERS.pop().stream)


async def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - polling server state, bounded
            await trio.sleep(0.01)


# ---------------------------------------------------------------------- connection limit


async def test_one_connection_over_the_limit_is_told_busy_and_others_go_on(
    served_root: Path, tmp_path: Path
) -> None:
    server = ftx.Server(served_root, ftx.ServerConfig(max_connections=2))
    async with running(server) as port:
        with trio.fail_after(20):
            async with ftx.connect(LOOPBACK, port) as first, ftx.connect(LOOPBACK, port) as second:
                assert server.connections == 2
                with pytest.raises(ftx.RemoteError) as refused:
                    async with ftx.connect(LOOPBACK, port):
                        pass
                assert refused.value.code == ftx.ErrorCode.BUSY
                # The two served connections are undisturbed, before and after the refusal.
                result = await first.get("medium.bin", tmp_path / "m.bin")
                assert result.size == (served_root / "medium.bin").stat().st_size
                assert (tmp_path / "m.bin").read_bytes() == (
                    served_root / "medium.bin"
                ).read_bytes()
                assert [e.name for e in await second.list("sub")] != []
            # Slots are given back when connections close.
            await wait_until(lambda: server.connections == 0)
            async with ftx.connect(LOOPBACK, port) as again:
                assert await again.list("sub")


async def test_busy_refusal_waits_for_the_hello_then_answers_it(served_root: Path) -> None:
    """The server speaks only after the client's HELLO, even to refuse it."""
    server = ftx.Server(served_root, ftx.ServerConfig(max_connections=1))
    async with running(server) as port:
        with trio.fail_after(10):
            holder = await RawPeer.connect(port)
            await holder.handshake()
            refused = await RawPeer.connect(port)
            with trio.move_on_after(0.3):
                data = await refused.stream.receive_some(100)
                pytest.fail(f"the server spoke before the HELLO: {data!r}")
            await refused.stream.send_all(HELLO)
            answer = await refused.receive()
            assert isinstance(answer, Error)
            assert answer.request_id is None
            assert answer.code == "busy"
            assert await refused.receive() is None  # and closed
            await holder.stream.aclose()


# -------------------------------------------------------------------------------- deadlines


async def test_a_silent_connection_is_closed_at_the_handshake_deadline(served_root: Path) -> None:
    server = ftx.Server(served_root, ftx.ServerConfig(handshake_timeout=0.5))
    async with running(server) as port:
        peer = await RawPeer.connect(port)
        start = trio.current_time()
        with trio.fail_after(5):
            assert await peer.receive() is None  # closed without a word: no HELLO was heard
        assert 0.4 < trio.current_time() - start < 3
        await wait_until(lambda: server.connections == 0)


async def test_a_trickled_hello_is_cut_off_at_the_handshake_deadline(served_root: Path) -> None:
    server = ftx.Server(served_root, ftx.ServerConfig(handshake_timeout=1.0))
    async with running(server) as port:
        peer = await RawPeer.connect(port)
        start = trio.current_time()
        with trio.fail_after(10):
            for byte in HELLO:  # one byte every 0.1 s: the HELLO would take over 10 s
                try:
                    await peer.stream.send_all(bytes([byte]))
                except trio.BrokenResourceError:
                    break
                if server.connections == 0:
                    break
                await trio.sleep(0.1)
            await wait_until(lambda: server.connections == 0)
        assert trio.current_time() - start < 3


async def test_a_request_trickled_slower_than_the_idle_deadline_is_cut_off(
    served_root: Path,
) -> None:
    server = ftx.Server(served_root, ftx.ServerConfig(idle_timeout=1.0))
    async with running(server) as port:
        peer = await RawPeer.connect(port)
        await peer.handshake()
        request = frame(Get(1, "small.txt"))
        start = trio.current_time()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def trickle() -> None:
                    for byte in request:  # one byte every 0.25 s: never idle for 1 s
                        await peer.stream.send_all(bytes([byte]))
                        await trio.sleep(0.25)

                nursery.start_soon(trickle)
                answer = await peer.receive()
                nursery.cancel_scope.cancel()
        assert isinstance(answer, Error), answer
        assert (answer.request_id, answer.code) == (None, "timeout")
        assert trio.current_time() - start < 3
        assert await peer.receive() is None


async def test_an_idle_client_is_told_timeout(served_root: Path) -> None:
    server = ftx.Server(served_root, ftx.ServerConfig(idle_timeout=0.5))
    async with running(server) as port:
        with trio.fail_after(10):
            async with ftx.connect(LOOPBACK, port) as client:
                assert await client.list("sub")  # active: not cut
                await trio.sleep(1.0)
                with pytest.raises(ftx.RemoteError) as closed:
                    await client.list("sub")
        assert closed.value.code == "timeout"


async def test_a_client_that_stops_reading_is_cut_off(
    served_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ftx.Server(served_root, ftx.ServerConfig(idle_timeout=0.5))
    caplog.set_level(logging.INFO, logger="ftx.server")
    async with running(server) as port:
        peer = await RawPeer.connect(port)
        await peer.handshake()
        await peer.stream.send_all(frame(Get(1, "big.bin")))
        with trio.fail_after(10):
            header = await peer.receive()
            assert isinstance(header, FileHeader)
            # Read nothing more: the server fills the socket buffers, then stalls.
            await wait_until(lambda: server.connections == 0, 10)
            received = 0
            while (data := await _receive_or_none(peer.stream)) is not None:
                received += len(data)
        assert received < header.size  # cut off, not finished
    assert any("cut off" in record.getMessage() for record in caplog.records)


async def _receive_or_none(stream: trio.SocketStream) -> bytes | None:
    try:
        data = await stream.receive_some(1 << 20)
    except trio.BrokenResourceError:
        return None
    return bytes(data) or None


@pytest.mark.parametrize(
    ("read_size", "cut_off"),
    [(1, True), (256 * 1024, False)],
    ids=["trickling reader", "slow but steady reader"],
)
async def test_the_write_deadline_is_per_frame_not_per_answer(
    tmp_path: Path, read_size: int, cut_off: bool
) -> None:
    """Each frame must be taken within the idle period, however long the whole answer takes: a
    reader taking a byte every 0.1 s is cut off; one taking a 128 KiB frame every 0.1 s never
    is, though the answer takes far longer than the deadline. A lockstep stream (no buffering
    at all) makes the reader's pace the server's."""
    root = tmp_path / "root"
    root.mkdir()
    content = random.Random(7).randbytes(16 * 128 * 1024)
    (root / "file.bin").write_bytes(content)
    server = ftx.Server(root, ftx.ServerConfig(idle_timeout=0.4, chunk_size=128 * 1024))
    client_side, server_side = trio.testing.lockstep_stream_pair()
    decoder = FrameDecoder()
    messages: list[Message] = []

    async def read() -> None:
        while True:
            data = await client_side.receive_some(read_size)
            if not data:
                return
            decoder.receive_data(data)
            while (payload := decoder.next_frame()) is not None:
                messages.append(decoded(payload))
            await trio.sleep(0.1)

    start = trio.current_time()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_side)
            nursery.start_soon(read)
            await client_side.send_all(HELLO + frame(Get(1, "file.bin")))
            await wait_until(lambda: server.connections == 0, 14)
            nursery.cancel_scope.cancel()
    elapsed = trio.current_time() - start
    data = b"".join(bytes(m.data) for m in messages if isinstance(m, Data))
    if cut_off:
        assert len(data) < len(content)
        assert elapsed < 3
    else:
        assert data == content
        assert any(isinstance(m, FileEnd) for m in messages)
        assert elapsed > 1.5  # 16 frames, one per 0.1 s: several times the deadline


def decoded(payload: bytes) -> Message:
    message = decode_message(payload)
    assert message is not None
    return message


@pytest.mark.parametrize(
    "limits",
    [
        {"max_connections": 0},
        {"handshake_timeout": 0},
        {"idle_timeout": -1},
        {"idle_timeout": math.nan},
    ],
)
def test_limits_are_checked(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ftx.ServerConfig(**limits)  # type: ignore[arg-type]


def test_infinite_deadlines_are_allowed() -> None:
    config = ftx.ServerConfig(idle_timeout=math.inf, handshake_timeout=math.inf)
    assert config.idle_timeout == math.inf


# ------------------------------------------------------------------------------ TCP options


async def test_accepted_sockets_have_keepalive_and_nodelay() -> None:
    seen: list[tuple[int, int]] = []
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    port = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.abc.Stream) -> None:
        assert isinstance(stream, trio.SocketStream)
        keepalive = stream.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        nodelay = stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        seen.append((keepalive, nodelay))
        await stream.aclose()

    async def refuse(stream: trio.abc.Stream) -> None:
        raise AssertionError("nothing to refuse")

    reserve = FdReserve()
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_loop, listeners[0], handle, refuse, nursery, reserve)
                client = await trio.open_tcp_stream(LOOPBACK, port)
                await wait_until(lambda: bool(seen))
                await client.aclose()
                nursery.cancel_scope.cancel()
    finally:
        reserve.close()
        await listeners[0].aclose()
    assert seen == [(1, 1)]


def test_keepalive_ignores_streams_that_are_not_tcp() -> None:
    set_keepalive(trio.testing.memory_stream_pair()[0])  # no socket: nothing to do, no error


# ------------------------------------------------------------------ command-line options


def run_ftx(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftx", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    "option",
    [
        ["--max-connections", "0"],
        ["--idle-timeout", "0"],
        ["--handshake-timeout", "nan"],
        ["--backlog", "-3"],
    ],
)
def test_serve_refuses_bad_limits(tmp_path: Path, option: list[str]) -> None:
    result = run_ftx("serve", str(tmp_path), *option)
    assert result.returncode == 2, result.stderr
    assert option[0] in result.stderr


async def test_serve_passes_its_limits_and_backlog_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ftx.cli import _serve as _cli_serve
    from ftx.cli import build_parser

    backlogs: list[int | None] = []
    original = trio.open_tcp_listeners

    async def open_tcp_listeners(
        port: int, *, host: str | None = None, backlog: int | None = None
    ) -> list[trio.SocketListener]:
        backlogs.append(backlog)
        return await original(port, host=host, backlog=backlog)

    monkeypatch.setattr(trio, "open_tcp_listeners", open_tcp_listeners)
    args = build_parser().parse_args(
        [
            *("serve", str(tmp_path), "--host", LOOPBACK, "--port", "0", "--backlog", "7"),
            *("--max-connections", "3", "--handshake-timeout", "4", "--idle-timeout", "5"),
        ]
    )
    server, _root = _cli_serve.open_server(args)
    server.root.close()
    assert server.config == ftx.ServerConfig(
        max_connections=3, handshake_timeout=4.0, idle_timeout=5.0
    )
    with trio.move_on_after(0.5):
        await _cli_serve.serve_command(args)
    assert backlogs == [7]


def test_serve_help_documents_the_defaults() -> None:
    result = run_ftx("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option, default in [
        ("--max-connections", "default: 100"),
        ("--handshake-timeout", "default: 10"),
        ("--idle-timeout", "default: 60"),
        ("--backlog", "default: the system's maximum"),
    ]:
        assert option in text
        assert default in text


# --------------------------------------------------------------- out of file descriptors

SERVE_SCRIPT = """
import json, logging, resource, sys
import trio, ftx
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
async def main():
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            ftx.serve, sys.argv[1], "127.0.0.1", 0,
        )
        print(listeners[0].socket.getsockname()[1], flush=True)
trio.run(main)
"""
DESCRIPTORS = 48
CONNECTIONS = 80  # more than the server has descriptors for


async def test_running_out_of_descriptors_refuses_connections_and_the_server_goes_on(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "file.txt").write_bytes(b"still served\n")
    log = tmp_path / "server.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
            [sys.executable, "-c", SERVE_SCRIPT, str(root), str(DESCRIPTORS)],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    try:
        with trio.fail_after(15):
            assert process.stdout is not None
            line = await trio.to_thread.run_sync(process.stdout.readline)
        port = int(line)
        outcomes: list[str] = []

        async def one() -> None:
            peer = await RawPeer.connect(port)
            await peer.stream.send_all(HELLO)
            answer = await peer.receive()
            match answer:
                case Hello():
                    outcomes.append("served")
                case Error(code="busy"):
                    outcomes.append("busy")
                case _:
                    outcomes.append(repr(answer))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(CONNECTIONS):
                    nursery.start_soon(one)
        assert process.poll() is None, log.read_text()
        assert set(outcomes) == {"served", "busy"}, (outcomes, log.read_text()[-2000:])
        assert len(outcomes) == CONNECTIONS
        while _OPEN_PEERS:
            await trio.aclose_forcefully(_OPEN_PEERS.pop().stream)
        # Descriptors come back: a real download succeeds.
        refusals: list[str] = []
        with trio.fail_after(20):
            while True:
                try:
                    async with ftx.connect(LOOPBACK, port) as client:
                        result = await client.get("file.txt", tmp_path / "file.txt")
                    break
                except ftx.RemoteError as exc:
                    refusals.append(exc.code)
                    await trio.sleep(0.2)
        assert set(refusals) <= {"busy"}
        assert result.size == len(b"still served\n")
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    text = log.read_text()
    assert "Traceback" not in text, text
    assert re.search(r"accept\(\) failed: Too many open files", text), text
    assert text.count("accept() failed") < 5  # logged once per episode, not per attempt


def test_the_descriptor_limit_warning(caplog: pytest.LogCaptureFixture) -> None:
    from ftx.cli._serve import _check_descriptor_limit

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with caplog.at_level(logging.WARNING, logger="ftx.server"):
        _check_descriptor_limit(1)
        assert not caplog.records
        if soft != resource.RLIM_INFINITY:
            _check_descriptor_limit(soft)
            assert "ulimit -n" in caplog.text


async def test_client_sockets_have_keepalive(server: tuple[str, int]) -> None:
    with trio.fail_after(10):
        async with ftx.connect(*server) as client:
            stream = client._channel.transport_stream
            assert isinstance(stream, trio.SocketStream)
            assert stream.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
