"""Shared by the fault tests (tests/test_faults*.py): a TCP relay that can slow down, count,
record and cut a connection, and ``ftx`` programs run as real processes.

Everything listens on and connects to the loopback interface only, and every wait is bounded.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ftx.framing import HEADER_SIZE, FrameDecoder

LOOPBACK = "127.0.0.1"
PYTHON_M_FTX = [sys.executable, "-m", "ftx"]
ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}
START_TIMEOUT = 15.0
RUN_TIMEOUT = 40.0
MiB = 1 << 20

# docs/user-guide.md, "Exit codes".
OK, FAILURE, USAGE, NETWORK, NOT_FOUND, PERMISSION, INTEGRITY, PROTOCOL, LOCAL_FILE, BUSY = range(
    10
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(MiB):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------- the relay


@dataclass(frozen=True)
class Plan:
    """What the relay does to one connection (server-to-client direction)."""

    cut_after: int | None = None
    """Forward this many bytes from the server, then cut the connection (``None``: never)."""
    reset: bool = False
    """Cut with a TCP reset (``SO_LINGER`` 0) instead of a clean close (FIN)."""
    rate: float | None = None
    """Forward at most this many bytes per second (``None``: as fast as they come)."""
    up_rate: float | None = None
    """The same, from the client to the server (an upload kept in the middle of its frames)."""


@dataclass
class Hop:
    """One relayed connection: what went through it, and how it ended."""

    plan: Plan
    down: int = 0  # bytes forwarded from the server to the client
    up: int = 0  # bytes forwarded from the client to the server
    recorded: bytearray = field(default_factory=bytearray)  # server-to-client bytes, if recording
    cut: bool = False  # the relay cut it as planned
    upstream_end: str | None = None  # "eof" or "reset" if the server ended it
    done: trio.Event = field(default_factory=trio.Event)


class Relay:
    """A TCP relay on 127.0.0.1 in front of a real server.

    Connection ``i`` follows ``plans[i]`` (the last plan for any later one; no plan: a plain
    relay). The server closing or resetting its side is passed on to the client the same way.
    ``on_cut(hop)`` is called (in the relay's task) right after a planned cut.
    """

    def __init__(
        self,
        target_port: int,
        plans: Sequence[Plan] = (),
        *,
        record: bool = False,
        on_cut: Callable[[Hop], object] | None = None,
    ) -> None:
        self.target_port = target_port
        self.plans = list(plans) or [Plan()]
        self.record = record
        self.on_cut = on_cut
        self.hops: list[Hop] = []
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> int:
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        await nursery.start(trio.serve_listeners, self._handle, listeners)
        self.port = listeners[0].socket.getsockname()[1]
        return self.port

    async def _handle(self, client: trio.SocketStream) -> None:
        plan = self.plans[min(len(self.hops), len(self.plans) - 1)]
        hop = Hop(plan)
        self.hops.append(hop)
        client_gone = trio.Event()
        try:
            try:
                server = await trio.open_tcp_stream(LOOPBACK, self.target_port)
            except OSError:
                hop.upstream_end = "refused"
                await reset_and_close(client)
                return
            async with server, trio.open_nursery() as nursery:
                nursery.start_soon(self._client_to_server, client, server, hop, client_gone)
                await self._server_to_client(server, client, hop, client_gone)
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(client)
            hop.done.set()

    async def _client_to_server(
        self, client: trio.SocketStream, server: trio.SocketStream, hop: Hop, gone: trio.Event
    ) -> None:
        started = trio.current_time()
        try:
            while data := await client.receive_some(65536):
                hop.up += len(data)
                # If the server is gone, keep draining the client until it closes.
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await server.send_all(data)
                if hop.plan.up_rate is not None:
                    await trio.sleep_until(started + hop.up / hop.plan.up_rate)
            await server.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            gone.set()

    async def _server_to_client(
        self, server: trio.SocketStream, client: trio.SocketStream, hop: Hop, gone: trio.Event
    ) -> None:
        plan = hop.plan
        started = trio.current_time()
        while True:
            try:
                data = await server.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                hop.upstream_end = "reset"
                await reset_and_close(client)
                return
            if not data:
                hop.upstream_end = "eof"
                await close_cleanly(client, gone)
                return
            if plan.cut_after is not None:
                data = data[: max(0, plan.cut_after - hop.down)]
            try:
                if data:
                    await client.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the client is gone
            hop.down += len(data)
            if self.record:
                hop.recorded += data
            if plan.cut_after is not None and hop.down >= plan.cut_after:
                hop.cut = True
                if plan.reset:
                    await reset_and_close(client)
                else:
                    await close_cleanly(client, gone)
                if self.on_cut is not None:
                    self.on_cut(hop)
                return
            if plan.rate is not None:
                await trio.sleep_until(started + hop.down / plan.rate)


def unsent_bytes(stream: trio.SocketStream) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer (Linux ``SIOCOUTQ``)."""
    raw = fcntl.ioctl(stream.socket.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    count: int = struct.unpack("i", raw)[0]
    return count


async def reset_and_close(stream: trio.SocketStream) -> None:
    """Close with a TCP reset, once what was sent has reached the peer (so the cut falls where
    it was planned rather than wherever the send queue happened to be)."""
    with trio.move_on_after(2):
        while True:
            try:
                if unsent_bytes(stream) == 0:
                    break
            except OSError:
                break
            await trio.sleep(0.002)
    with suppress(OSError, trio.ClosedResourceError):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(stream)


async def close_cleanly(stream: trio.SocketStream, peer_gone: trio.Event) -> None:
    """Close with a FIN: end our sending side first, then wait (briefly) for the peer to close
    before closing the socket, so that unread bytes from it do not turn the close into a reset."""
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_eof()
    with trio.move_on_after(5):
        await peer_gone.wait()
    await trio.aclose_forcefully(stream)


# ------------------------------------------------------------------------ recorded sessions


@dataclass(frozen=True)
class FrameSpan:
    """Where one frame lies in a recorded byte stream: ``[start, end)``."""

    start: int
    end: int
    kind: int  # the payload's first byte (ftx.protocol.messages.Kind)

    @property
    def body(self) -> int:
        """Offset of the first payload byte (after the 4-byte length)."""
        return self.start + HEADER_SIZE


def frame_spans(stream: bytes | bytearray) -> list[FrameSpan]:
    """Split a recorded stream into frames, as the protocol lays them out."""
    decoder = FrameDecoder(max_frame_size=(1 << 32) - 1)
    decoder.receive_data(bytes(stream))
    decoder.receive_data(b"")
    spans: list[FrameSpan] = []
    offset = 0
    while (payload := decoder.next_frame()) is not None:
        end = offset + HEADER_SIZE + len(payload)
        spans.append(FrameSpan(offset, end, payload[0] if payload else -1))
        offset = end
    assert decoder.eof, "the recording ends inside a frame"
    return spans


# ------------------------------------------------------------------------------- processes


@dataclass
class ServerProcess:
    process: trio.Process
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"


async def _read_port(process: trio.Process, log: Path) -> int:
    assert process.stdout is not None
    data = b""
    try:
        with trio.fail_after(START_TIMEOUT):
            while (match := re.search(rb" on 127\.0\.0\.1:(\d+)\s*$", data, re.M)) is None:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise AssertionError(f"the server exited early: {data!r}\n{log.read_text()}")
                data += chunk
    except trio.TooSlowError:
        raise AssertionError(f"no banner within {START_TIMEOUT} s: {data!r}") from None
    return int(match[1])


@asynccontextmanager
async def server_process(
    command: Sequence[str], log: Path, preexec_fn: Callable[[], None] | None = None
) -> AsyncIterator[ServerProcess]:
    """Run a server ``command`` that prints ``... on 127.0.0.1:PORT`` on its first lines; kill
    it (SIGKILL) when the block ends, if it still runs."""
    with log.open("wb") as stderr:  # the child keeps its own descriptor
        process = await trio.lowlevel.open_process(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=ENV,
            preexec_fn=preexec_fn,
        )
    try:
        port = await _read_port(process, log)
        yield ServerProcess(process, port, log)
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(process)


async def stop_process(process: trio.Process) -> None:
    """SIGKILL ``process`` if it still runs, and reap it (bounded)."""
    if process.returncode is None:
        process.kill()
    with trio.move_on_after(10):
        await process.wait()
    if process.stdout is not None:
        await process.stdout.aclose()


def ftx_serve(root: Path, *extra: str) -> list[str]:
    return [*PYTHON_M_FTX, "serve", str(root), "--host", LOOPBACK, "--port", "0", *extra]


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def one_line_error(self, code: int) -> str:
        """Check the documented failure: exit ``code``, one ``ftx:`` line, no traceback."""
        assert self.returncode == code, (self.returncode, self.stderr)
        assert "Traceback" not in self.stderr, self.stderr
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("ftx: "), lines[0]
        return lines[0]


async def run_ftx(
    *args: str,
    cwd: Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
    limit: float = RUN_TIMEOUT,
) -> Finished:
    """Run ``python -m ftx ARGS`` to completion (killed after ``limit`` seconds)."""
    with trio.fail_after(limit):
        result = await trio.run_process(
            [*PYTHON_M_FTX, *args],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=cwd,
            env=ENV,
            preexec_fn=preexec_fn,
        )
    return Finished(
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


async def wait_for_size(path: Path, size: int, process: trio.Process, limit: float = 20) -> int:
    """Wait until the file at ``path`` holds at least ``size`` bytes (for at most ``limit``
    seconds, while ``process`` runs); return its size."""
    with trio.fail_after(limit):
        while True:
            try:
                current = path.stat().st_size
            except FileNotFoundError:
                current = 0
            if current >= size:
                return current
            assert process.returncode is None, f"the process ended first ({process.returncode})"
            await trio.sleep(0.005)
