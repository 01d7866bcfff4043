"""Graceful shutdown: ``Server.shutdown(grace)`` and SIGINT/SIGTERM to ``ftx serve``.

Accepting stops at once; transfers in progress may finish within the grace period, and are then
stopped at a frame boundary with a connection-level ``shutting-down`` ERROR; the client can resume
later. Real servers on 127.0.0.1 (in this process, or ``ftx serve`` in a subprocess for the
signals), hand-driven readers that read as slowly as a test needs; every wait bounded.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import ftx
from conftest import BigFile, serving
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
)
from ftx.protocol.messages import encode_message as _encode

LOOPBACK = "127.0.0.1"
MiB = 1 << 20


def frame(message: Message) -> bytes:
    return encode_frame(b"".join(bytes(part) for part in _encode(message)))


class Download:
    """A hand-driven GET on a raw socket, read at whatever pace the test chooses."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.sha256 = hashlib.sha256()
        self.received = 0
        self.header: FileHeader | None = None
        self.end: FileEnd | None = None
        self.error: Error | None = None
        self.closed = False

    @classmethod
    async def start(cls, port: int, path: str) -> Download:
        stream = await trio.open_tcp_stream(LOOPBACK, port)
        download = cls(stream)
        await stream.send_all(frame(Hello((1,))) + frame(Get(1, path)))
        assert isinstance(await download.next_message(), Hello)
        return download

    async def next_message(self, max_bytes: int = 1 << 20) -> Message | None:
        """Read (at most ``max_bytes`` per read) until a whole message; ``None`` at the end."""
        while (payload := self.decoder.next_frame()) is None:
            try:
                data = await self.stream.receive_some(max_bytes)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                self.closed = True
                return None
            self.decoder.receive_data(data)
        message = decode_message(payload)
        match message:
            case Data():
                self.sha256.update(message.data)
                self.received += len(message.data)
            case FileHeader():
                self.header = message
            case FileEnd():
                self.end = message
            case Error():
                self.error = message
        return message

    async def read(self, *, pause: float = 0.0, until: float = float("inf")) -> None:
        """Read messages, sleeping ``pause`` after each, until the stream ends or the clock
        passes ``until``."""
        while trio.current_time() < until:
            if await self.next_message(256 * 1024) is None:
                return
            await trio.sleep(pause)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


# ------------------------------------------------------------------------- the library


async def test_a_transfer_in_progress_finishes_within_the_grace(
    served_root: Path, big_file: BigFile
) -> None:
    async with serving(served_root) as (server, port):
        download = await Download.start(port, "big.bin")
        try:
            with trio.fail_after(30):
                await download.read(until=trio.current_time() + 0.1, pause=0.01)
                assert download.header is not None
                assert download.end is None
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(server.shutdown, 20.0)
                    await trio.sleep(0.2)
                    # Accepting stopped at once: a new connection is refused by the system.
                    with pytest.raises(OSError, match="failed"):
                        await trio.open_tcp_stream(LOOPBACK, port)
                    await download.read(pause=0.002)  # slowly to the end
            assert download.end is not None, download.error
            assert download.received == big_file.size
            assert download.sha256.hexdigest() == big_file.sha256
            # The answer was complete; then the connection was closed with the reason.
            assert download.error is not None
            assert (download.error.request_id, download.error.code) == (None, "shutting-down")
            assert server.connections == 0
        finally:
            await download.aclose()


async def test_after_the_grace_a_transfer_is_stopped_at_a_frame_boundary(
    served_root: Path, big_file: BigFile
) -> None:
    async with serving(served_root) as (server, port):
        download = await Download.start(port, "big.bin")
        try:
            with trio.fail_after(30):
                await download.read(until=trio.current_time() + 0.1, pause=0.01)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(server.shutdown, 0.5)
                    # Too slow to finish 64 MiB in the grace period...
                    await download.read(until=trio.current_time() + 0.7, pause=0.01)
                    # ...then read at full speed what is left: frames up to the boundary, then
                    # the reason, then the end of the stream.
                    await download.read()
            assert download.end is None
            assert 0 < download.received < big_file.size
            assert download.error is not None
            assert (download.error.request_id, download.error.code) == (None, "shutting-down")
            assert download.closed
            assert download.decoder.buffered_bytes == 0  # nothing after the ERROR, no torn frame
        finally:
            await download.aclose()


async def test_a_stopped_download_resumes_from_its_part_file(
    served_root: Path, big_file: BigFile, tmp_path: Path
) -> None:
    dest = tmp_path / "big.bin"
    async with serving(served_root) as (server, port):
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery, ftx.connect(LOOPBACK, port) as client:

                def progress(done: int, total: int) -> None:
                    if done >= 8 * MiB and not server.closing:
                        nursery.start_soon(server.shutdown, 0.0)

                with pytest.raises(ftx.RemoteError) as stopped:
                    await client.get("big.bin", dest, progress=progress)
    assert stopped.value.code == "shutting-down"
    assert not dest.exists()
    kept = dest.with_name(dest.name + ".part").stat().st_size
    assert kept >= 8 * MiB
    # Later, a server is back: the download continues from the part.
    first: list[int] = []
    async with serving(served_root) as (_server, port):
        with trio.fail_after(30):
            async with ftx.connect(LOOPBACK, port) as client:
                result = await client.get(
                    "big.bin", dest, progress=lambda done, total: first.append(done)
                )
    assert first[0] >= kept
    assert result.size == big_file.size
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == big_file.sha256


async def test_idle_and_handshaking_connections_are_closed_at_once(served_root: Path) -> None:
    async with serving(served_root) as (server, port):
        with trio.fail_after(10):
            async with ftx.connect(LOOPBACK, port) as idle:
                silent = await trio.open_tcp_stream(LOOPBACK, port)  # no HELLO yet
                try:
                    start = trio.current_time()
                    await server.shutdown(30.0)
                    assert trio.current_time() - start < 2  # no transfer to wait for
                    with pytest.raises(ftx.RemoteError) as closed:
                        await idle.list("")
                    assert closed.value.code == "shutting-down"
                    assert await silent.receive_some(100) == b""  # closed without a word
                finally:
                    await silent.aclose()


async def test_shutdown_is_bounded_even_with_a_client_that_stopped_reading(
    served_root: Path,
) -> None:
    async with serving(served_root) as (server, port):
        download = await Download.start(port, "big.bin")
        try:
            assert isinstance(await download.next_message(), FileHeader)
            # Then read nothing: the server's send blocks on full socket buffers.
            start = trio.current_time()
            with trio.fail_after(10):
                await server.shutdown(0.3)
            assert trio.current_time() - start < 0.3 + 2 + 1
            assert server.connections == 0
        finally:
            await download.aclose()


async def test_serve_listeners_returns_after_shutdown(served_root: Path) -> None:
    server = ftx.Server(served_root)
    try:
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_listeners, listeners)
                await server.shutdown()
            # serve_listeners returned on its own: the nursery could close.
        assert listeners[0].socket.fileno() == -1  # closed
        # Shutting down before serving: serve_listeners returns at once.
        again = await trio.open_tcp_listeners(0, host=LOOPBACK)
        with trio.fail_after(5):
            await server.serve_listeners(again)
    finally:
        server.root.close()


async def test_a_connection_accepted_during_shutdown_is_told_shutting_down(
    served_root: Path,
) -> None:
    server = ftx.Server(served_root)
    try:
        await server.shutdown()
        left, right = trio.testing.memory_stream_pair()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.handle_stream, right)
                await left.send_all(frame(Hello((1,))))
                decoder = FrameDecoder()
                while (payload := decoder.next_frame()) is None:
                    decoder.receive_data(await left.receive_some())
        answer = decode_message(payload)
        assert isinstance(answer, Error)
        assert (answer.request_id, answer.code) == (None, "shutting-down")
    finally:
        server.root.close()


# ---------------------------------------------------------------------- ftx serve, signals


class ServeProcess:
    def __init__(self, root: Path, log: Path, *options: str) -> None:
        self.log = log
        with log.open("w") as stderr:
            command = [sys.executable, "-m", "ftx", "serve", str(root), "--host", LOOPBACK]
            self.process = subprocess.Popen(
                [*command, "--port", "0", *options],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    async def port(self) -> int:
        assert self.process.stdout is not None
        with trio.fail_after(15):
            banner = await trio.to_thread.run_sync(self.process.stdout.readline)
        return int(banner.rsplit(":", 1)[1])

    async def wait(self, seconds: float) -> int:
        with trio.fail_after(seconds):
            return await trio.to_thread.run_sync(self.process.wait)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_lets_the_transfer_finish_then_serve_exits_0(
    served_root: Path, big_file: BigFile, tmp_path: Path, signum: signal.Signals
) -> None:
    server = ServeProcess(served_root, tmp_path / "serve.log", "--grace", "30")
    try:
        port = await server.port()
        download = await Download.start(port, "big.bin")
        try:
            with trio.fail_after(40):
                await download.read(until=trio.current_time() + 0.2, pause=0.01)
                server.process.send_signal(signum)
                await trio.sleep(0.3)
                assert server.process.poll() is None  # still sending
                await download.read(pause=0.001)
        finally:
            await download.aclose()
        assert download.received == big_file.size
        assert download.sha256.hexdigest() == big_file.sha256
        assert await server.wait(10) == 0
    finally:
        server.close()
    log = server.log.read_text()
    assert f"{signum.name}: stopping" in log
    assert "ftx: stopped" in log
    assert "Traceback" not in log


async def test_a_second_signal_stops_transfers_at_once(
    served_root: Path, big_file: BigFile, tmp_path: Path
) -> None:
    server = ServeProcess(served_root, tmp_path / "serve.log", "--grace", "60")
    try:
        port = await server.port()
        download = await Download.start(port, "big.bin")
        try:
            with trio.fail_after(30):
                assert isinstance(await download.next_message(), FileHeader)
                server.process.send_signal(signal.SIGINT)
                await trio.sleep(0.3)
                server.process.send_signal(signal.SIGINT)
                await trio.sleep(0.3)
                await download.read()
        finally:
            await download.aclose()
        assert download.received < big_file.size
        assert download.error is not None
        assert download.error.code == "shutting-down"
        assert await server.wait(10) == 0
    finally:
        server.close()
    log = server.log.read_text()
    assert "stopping transfers in progress now" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("grace", ["-1", "nan", "inf", "soon"])
def test_grace_must_be_a_finite_number_of_seconds(tmp_path: Path, grace: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ftx", "serve", str(tmp_path), "--grace", grace],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert "--grace" in result.stderr
