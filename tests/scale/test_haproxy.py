"""Issue 15, items 4 and 7: ftx behind HAProxy, with the configuration docs/deploy.md shows.

Each test starts its own ``haproxy`` (on 127.0.0.1, ports picked here) from that configuration,
with the addresses replaced, and ``ftx serve`` processes behind it; every wait is bounded. They
skip when haproxy is not installed (``.ci/run`` installs it with apt-get).
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

import ftx
from conftest import PYTHON_M_FTX, ServerProcess, ServerStarter

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None,
    reason="haproxy is not installed (apt-get install haproxy; .ci/run installs it)",
)

DEPLOY_GUIDE = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
MARKER = "<!-- tested: tests/scale/test_haproxy.py"
SERVER_OPTIONS = ("--identity", "portable", "--proxy-protocol-from", "127.0.0.1", "--grace", "10")


def guide_config(front: int, backends: tuple[int, int]) -> str:
    """The HAProxy configuration of docs/deploy.md, listening on ``front``, with its two
    servers on ``backends`` (all on 127.0.0.1)."""
    text = DEPLOY_GUIDE.read_text()
    block = re.search(re.escape(MARKER) + r".*?\n```haproxy\n(.*?)```", text, re.DOTALL)
    assert block, "docs/deploy.md lost its tested HAProxy configuration"
    config = block[1]
    replacements = {
        "bind :3890": f"bind 127.0.0.1:{front}",
        "server ftx1 10.0.0.11:3890": f"server ftx1 127.0.0.1:{backends[0]}",
        "server ftx2 10.0.0.12:3890": f"server ftx2 127.0.0.1:{backends[1]}",
    }
    for old, new in replacements.items():
        assert config.count(old) == 1, old
        config = config.replace(old, new)
    return config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HAProxy:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    def said(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")

    async def wait_for(self, text: str, seconds: float = 10) -> None:
        with trio.fail_after(seconds):
            while not self.said(text):  # noqa: ASYNC110 - a bounded poll of a log file
                await trio.sleep(0.05)


@pytest.fixture
def start_haproxy(tmp_path: Path) -> Iterator[object]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(backends: tuple[int, int]) -> HAProxy:
        port = free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(guide_config(port, backends))
        log = tmp_path / "haproxy.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["haproxy", "-f", str(config), "-db"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        processes.append(process)
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return HAProxy(process, port, log)
            except OSError:
                assert time.monotonic() < deadline, "haproxy did not listen within 10 s"
                time.sleep(0.05)

    yield start
    for process in processes:
        process.kill()
        process.wait(timeout=10)


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "small.txt").write_bytes(b"through the balancer\n")
    (root / "f.bin").write_bytes(bytes(range(256)) * (2 << 12))  # 2 MiB
    return root


def access_ports(server: ServerProcess) -> set[int]:
    """The client ports of the access-log lines of ``server``."""
    lines = server.log.read_text().splitlines()
    return {int(m[1]) for line in lines if (m := re.search(r" 127\.0\.0\.1:(\d+) GET ", line))}


async def test_access_logs_carry_the_client_address(
    tmp_path: Path, start_ftx_server: ServerStarter, start_haproxy
) -> None:
    root = make_root(tmp_path)
    servers = [start_ftx_server(root, *SERVER_OPTIONS) for _ in range(2)]
    balancer = start_haproxy((servers[0].port, servers[1].port))
    ports = set()
    with trio.fail_after(30):
        for _ in range(6):
            async with ftx.connect("127.0.0.1", balancer.port) as client:
                stream = client._channel.transport_stream  # type: ignore[attr-defined]
                ports.add(stream.socket.getsockname()[1])
                await client.get("small.txt", tmp_path / "small.txt", overwrite=True)
        while access_ports(servers[0]) | access_ports(servers[1]) != ports:  # noqa: ASYNC110
            await trio.sleep(0.05)
    # Every line names the client's own port (none the balancer's), and both nodes served.
    assert access_ports(servers[0])
    assert access_ports(servers[1])


async def test_the_health_check_takes_out_what_is_not_ftx_or_stopping(
    tmp_path: Path, start_ftx_server: ServerStarter, start_haproxy, nursery: trio.Nursery
) -> None:
    root = make_root(tmp_path)
    server = start_ftx_server(root, *SERVER_OPTIONS)

    async def not_ftx(stream: trio.SocketStream) -> None:
        await stream.send_all(b"220 an FTP server, say\r\n")
        await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, not_ftx, 0)
    other = listeners[0].socket.getsockname()[1]
    balancer = start_haproxy((server.port, other))
    await balancer.wait_for("ftx2 is DOWN")
    assert not balancer.said("ftx1 is DOWN")
    server.process.send_signal(signal.SIGTERM)  # a graceful stop begins: out at once
    await balancer.wait_for("ftx1 is DOWN", seconds=5)


class SlowStream(trio.abc.Stream):
    """A client's stream that reads at most ``rate`` bytes a second: downloads that last."""

    def __init__(self, inner: trio.abc.Stream, rate: float) -> None:
        self.inner, self.rate = inner, rate

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(min(max_bytes or 65536, 65536))
        await trio.sleep(len(data) / self.rate)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_stopping_a_node_during_downloads_fails_none(
    tmp_path: Path, start_ftx_server: ServerStarter, start_haproxy
) -> None:
    root = make_root(tmp_path)
    content = (root / "f.bin").read_bytes()
    servers = [start_ftx_server(root, *SERVER_OPTIONS) for _ in range(2)]
    balancer = start_haproxy((servers[0].port, servers[1].port))
    failures: list[BaseException] = []
    done: list[float] = []
    stop_at = trio.current_time() + 4
    stopped_at = trio.current_time() + 1.5

    async def worker(n: int) -> None:
        dest = tmp_path / f"out{n}.bin"
        while trio.current_time() < stop_at:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", balancer.port)
                async with ftx.Client(SlowStream(stream, 6 << 20)) as client:
                    await client.handshake()
                    await client.get("f.bin", dest, overwrite=True)
                assert dest.read_bytes() == content
                done.append(trio.current_time())
            except Exception as exc:
                failures.append(exc)

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(worker, n)
            await trio.sleep_until(stopped_at)
            servers[0].process.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(servers[0].process.wait, 15)
    assert not failures, failures
    assert code == 0
    assert len([t for t in done if t > stopped_at + 0.5]) >= 8, "nothing served after the stop"
    assert "stopping" in servers[0].log.read_text()


def throttled_relay(upstream: int, rate: float) -> tuple[int, Callable[[], None]]:
    """A TCP relay on 127.0.0.1 to ``upstream`` that passes at most ``rate`` bytes a second
    towards the client (a slow link); returns its port and a function that stops it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    sockets: list[socket.socket] = []

    def pump(source: socket.socket, sink: socket.socket, slow: bool) -> None:
        try:
            while not stop.is_set() and (data := source.recv(16384)):
                sink.sendall(data)
                if slow:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        with listener:
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                sockets.append(client)
                server = socket.create_connection(("127.0.0.1", upstream), timeout=5)
                sockets.append(server)
                server.settimeout(None)
                for args in ((client, server, False), (server, client, True)):
                    threads.append(threading.Thread(target=pump, args=args, daemon=True))
                    threads[-1].start()

    threads.append(threading.Thread(target=serve, daemon=True))
    threads[-1].start()
    port = listener.getsockname()[1]

    def close() -> None:
        stop.set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)
        for sock in sockets:
            sock.close()

    return port, close


def established(port: int) -> int:
    """How many established TCP connections have the local port ``port`` (IPv4)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(
        1 for row in rows if (f := row.split())[3] == "01" and int(f[1].split(":")[1], 16) == port
    )


def test_a_killed_replica_hands_the_download_to_the_other(
    tmp_path: Path, start_ftx_server: ServerStarter, start_haproxy
) -> None:
    """A small s2: replicas (copies, not a shared directory), the serving node killed with
    SIGKILL mid-download through HAProxy: ftx get resumes on the other, exit 0, verified."""
    size = 12 << 20
    content = random.Random(7).randbytes(size)
    roots = [tmp_path / "node1", tmp_path / "node2"]
    roots[0].mkdir()
    (roots[0] / "big.bin").write_bytes(content)
    shutil.copytree(roots[0], roots[1])  # copy2: the times kept, as rsync -a would
    servers = [start_ftx_server(root, *SERVER_OPTIONS) for root in roots]
    balancer = start_haproxy((servers[0].port, servers[1].port))
    relay, close_relay = throttled_relay(balancer.port, 3 << 20)
    dest = tmp_path / "big.bin"
    part = tmp_path / "big.bin.part"
    command = [*PYTHON_M_FTX, "get", f"127.0.0.1:{relay}", "big.bin", "-o", str(dest)]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (part.exists() and part.stat().st_size >= 2 << 20):
            assert time.monotonic() < deadline, "the download did not start"
            time.sleep(0.02)
        serving = [s for s in servers if established(s.port)]
        assert len(serving) == 1, "cannot tell which node serves"
        serving[0].process.kill()
        serving[0].process.wait(timeout=10)
        kept = part.stat().st_size
        _, stderr = run.communicate(timeout=60)
    finally:
        close_relay()
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr
    assert "retrying" in stderr
    assert dest.read_bytes() == content
    other = next(s for s in servers if s is not serving[0])
    resumed = re.search(r" GET 'big\.bin' from byte (\d+) (\d+) bytes", other.log.read_text())
    assert resumed, other.log.read_text()  # not from zero: the identity matched
    offset, sent = int(resumed[1]), int(resumed[2])
    assert offset >= kept >= 2 << 20  # nothing the client had kept was sent again
    assert offset + sent == size
