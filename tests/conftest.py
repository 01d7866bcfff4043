"""Shared fixtures for the end-to-end tests: a populated directory to serve, and a real server
on the loopback interface, started in the pytest-trio ``nursery`` fixture.

Trio fixtures are function-scoped (pytest-trio runs each test in its own ``trio.run``); only the
64 MiB file, which is plain bytes on disk, is made once per session.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import hypothesis
import pytest
import trio

import ftx
from ftx.framing import FrameDecoder, encode_frame
from ftx.protocol.messages import Hello, Message, decode_message, encode_message

# Property tests check behaviour, not speed: on a loaded machine (CI, or several suites at once)
# an example that touches the disk can take longer than hypothesis's default 200 ms deadline.
hypothesis.settings.register_profile("ftx", deadline=None)
hypothesis.settings.load_profile("ftx")

SAMPLE_FILES = Path(__file__).resolve().parent.parent / "sample_files"

BIG_SIZE = 64 * 1024 * 1024
MEDIUM_SIZE = 2 * 1024 * 1024 + 12345  # not a multiple of the chunk size
SMALL_TEXT = b"hello from the served root\n"
UNICODE_NAME = "name with spaces, caf\u00e9 \u2014 \u65e5\u672c.txt"
UNICODE_TEXT = "r\u00e9sum\u00e9 \u2603\n".encode()
SECRET_TEXT = b"this file is outside the served root\n"


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class BigFile:
    path: Path
    size: int
    sha256: str


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> BigFile:
    """A 64 MiB file of random bytes, made once per session."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    rng = random.Random(20261125)
    digest = hashlib.sha256()
    with path.open("wb") as file:
        for _ in range(BIG_SIZE >> 20):
            block = rng.randbytes(1 << 20)
            digest.update(block)
            file.write(block)
    return BigFile(path, BIG_SIZE, digest.hexdigest())


@pytest.fixture
def served_root(tmp_path: Path, big_file: BigFile) -> Path:
    """A directory to serve (``tmp_path / "root"``), with::

        small.txt             a short text file
        empty.bin             an empty file
        medium.bin            ~2 MiB of random bytes
        big.bin               64 MiB of random bytes (a hard link to the session's file)
        <UNICODE_NAME>        a name with spaces and non-ASCII characters
        sub/inner.txt
        sub/deeper/leaf.txt
        sub/up-link           -> ../small.txt      (relative, stays inside: followed)
        link-in               -> small.txt         (followed)
        link-out              -> /etc/passwd       (absolute: refused)
        link-up               -> ../secret.txt     (climbs out: refused)
        fifo                  a named pipe         (not a regular file: refused)

    ``tmp_path / "secret.txt"``, next to the root, must never be served.
    """
    (tmp_path / "secret.txt").write_bytes(SECRET_TEXT)
    root = tmp_path / "root"
    root.mkdir()
    (root / "small.txt").write_bytes(SMALL_TEXT)
    (root / "empty.bin").write_bytes(b"")
    (root / "medium.bin").write_bytes(random.Random(7).randbytes(MEDIUM_SIZE))
    try:
        os.link(big_file.path, root / "big.bin")
    except OSError:  # no hard links across these directories: copy instead
        shutil.copyfile(big_file.path, root / "big.bin")
    (root / UNICODE_NAME).write_bytes(UNICODE_TEXT)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (root / "sub" / "deeper" / "leaf.txt").write_bytes(b"leaf\n" * 100)
    (root / "sub" / "up-link").symlink_to("../small.txt")
    (root / "link-in").symlink_to("small.txt")
    (root / "link-out").symlink_to("/etc/passwd")
    (root / "link-up").symlink_to("../secret.txt")
    os.mkfifo(root / "fifo")
    return root


StartServer = Callable[..., Awaitable[tuple[str, int]]]


@pytest.fixture
def start_server(nursery: trio.Nursery) -> StartServer:
    """``await start_server(root, host="127.0.0.1", **options)`` runs :func:`ftx.serve` on port 0
    with ``ftx.ServerConfig(**options)`` in the test's nursery (cancelled when the test ends) and
    returns ``(host, port)``."""

    async def start(
        root: str | os.PathLike[str], host: str = "127.0.0.1", **options: object
    ) -> tuple[str, int]:
        config = ftx.ServerConfig(**options)  # type: ignore[arg-type]

        async def run(task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
            await ftx.serve(root, host, 0, config, task_status=task_status)

        with trio.fail_after(10):
            listeners: list[trio.SocketListener] = await nursery.start(run)
        assert listeners, "ftx.serve started without listeners"
        address = listeners[0].socket.getsockname()
        return address[0], address[1]

    return start


@pytest.fixture
async def server(nursery: trio.Nursery, served_root: Path) -> tuple[str, int]:
    """A real ftx server for ``served_root`` on 127.0.0.1, port 0: yields ``(host, port)``."""
    with trio.fail_after(10):
        listeners = await nursery.start(ftx.serve, served_root, "127.0.0.1", 0)
    host, port = listeners[0].socket.getsockname()[:2]
    assert host == "127.0.0.1"
    assert port != 0
    return host, port


# --- Added for test_end_to_end.py and test_cli.py: a scripted fake server. ---------------------


class FakeConnection:
    """One accepted connection of a :class:`FakeServer`, with blocking helpers to speak (or
    break) the ftx protocol from the server's side."""

    def __init__(self, sock: socket.socket, stop: threading.Event) -> None:
        self.sock = sock
        self.stop = stop  # set when the test ends: a behaviour that waits should wait on it
        self._decoder = FrameDecoder()

    def receive(self) -> Message | None:
        while (payload := self._decoder.next_frame()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the client closed the connection")
            self._decoder.receive_data(data)
        return decode_message(payload)

    def send(self, message: Message) -> None:
        payload = b"".join(bytes(part) for part in encode_message(message))
        self.sock.sendall(encode_frame(payload))

    def handshake(self, features: frozenset[str] = frozenset()) -> Hello:
        """Answer the client's HELLO with version 1 and no optional features (so SHA-256)."""
        hello = self.receive()
        assert isinstance(hello, Hello), hello
        self.send(Hello((1,), features, 1 << 20, "fake"))
        return hello


Behaviour = Callable[[FakeConnection], None]


class FakeServer:
    """A TCP server on 127.0.0.1 that runs ``behaviour`` on each connection in a thread."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.accepted = threading.Event()
        self.reached = threading.Event()  # a behaviour may set it at an interesting point
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.set()
            with conn:
                conn.settimeout(20)
                try:
                    self.behaviour(FakeConnection(conn, self.stop))
                except Exception as exc:  # the client may go away early: recorded only
                    self.errors.append(exc)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=25)
        self.sock.close()


@pytest.fixture
def fake_server() -> Iterator[Callable[[Behaviour], FakeServer]]:
    """``fake_server(behaviour)`` starts a :class:`FakeServer`; all are stopped at the end."""
    servers: list[FakeServer] = []

    def start(behaviour: Behaviour) -> FakeServer:
        server = FakeServer(behaviour)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.close()


@asynccontextmanager
async def serving(root: Path, **options: object) -> AsyncIterator[tuple[ftx.Server, int]]:
    """An ``ftx.Server(root, ftx.ServerConfig(**options))`` on 127.0.0.1, port 0, for the block:
    yields the server (to shut it down or inspect it) and the port."""
    server = ftx.Server(root, ftx.ServerConfig(**options))  # type: ignore[arg-type]
    try:
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            await nursery.start(server.serve_listeners, listeners)
            yield server, listeners[0].socket.getsockname()[1]
            nursery.cancel_scope.cancel()
    finally:
        server.root.close()


PYTHON_M_FTX = [sys.executable, "-m", "ftx"]
ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}
START_TIMEOUT = 15


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    address: str  # HOST:PORT, as ftx get takes it
    banner: list[str]
    log: Path


def _read_lines(process: subprocess.Popen[bytes], count: int, timeout: float) -> list[str]:
    """Read ``count`` lines from the process's stdout, failing after ``timeout`` seconds."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while data.count(b"\n") < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no banner from the server within {timeout} s: {data!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the server exited ({process.poll()}): {data!r}")
            data += chunk
    return data.decode().splitlines()[:count]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


class ServerStarter:
    """Starts ``ftx serve`` processes and stops them all in :meth:`stop_all`."""

    def __init__(self, logs: Path) -> None:
        self._logs = logs
        self._processes: list[subprocess.Popen[bytes]] = []

    def __call__(
        self, directory: Path, *extra: str, preexec_fn: Callable[[], None] | None = None
    ) -> ServerProcess:
        log = self._logs / f"server-{len(self._processes)}.log"
        with log.open("wb") as stderr:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [
                    *PYTHON_M_FTX,
                    "serve",
                    str(directory),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    *extra,
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=ENV,
                preexec_fn=preexec_fn,  # e.g. resource limits for the server alone
            )
        self._processes.append(process)
        try:
            banner = _read_lines(process, 2, START_TIMEOUT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nserver log:\n{log.read_text()}") from None
        match = re.search(r" on 127\.0\.0\.1:(\d+)$", banner[0])
        assert match, banner
        port = int(match[1])
        assert port != 0
        return ServerProcess(process, port, f"127.0.0.1:{port}", banner, log)

    def stop_all(self) -> None:
        for process in self._processes:
            _stop(process)


def kill_mid_run(
    command: list[str],
    server: ServerProcess,
    progressed: Callable[[], bool],
    restart: Callable[[], object] | None = None,
) -> tuple[int, str, str]:
    """Run the ftx ``command``; once ``progressed()`` (polled, for 20 s at most), kill the
    ``server`` (SIGKILL: its connections cut mid-transfer), call ``restart`` if given; return
    the command's exit code, standard output and standard error (it must end within 60 s)."""
    run = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=ENV,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not progressed() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert run.poll() is None, "the command ended before the server could be killed"
        server.process.kill()
        server.process.wait(timeout=10)
        if restart is not None:
            restart()
        stdout, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    return run.returncode, stdout, stderr


@pytest.fixture
def start_ftx_server(tmp_path: Path) -> Iterator[ServerStarter]:
    """``start_ftx_server(directory, *options)`` runs ``ftx serve`` on 127.0.0.1, port 0, and
    returns a :class:`ServerProcess`; every server is stopped when the test ends."""
    starter = ServerStarter(tmp_path)
    try:
        yield starter
    finally:
        starter.stop_all()
