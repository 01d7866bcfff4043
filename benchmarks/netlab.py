"""A small network lab for the scale-out benchmark: ``ftx serve`` processes in network namespaces,
each behind its own veth "link" limited with ``tc ... tbf``, and HAProxy in front with the
configuration of docs/deploy.md. Needs root (``ip netns``), ``tc`` and ``haproxy``.

Link ``i`` (1, 2, ...) joins this namespace (``10.210.i.1``, and ``10.210.i.3``, the address
HAProxy connects from, so that servers can tell its connections from direct ones) to namespace
``ftxlab-i`` (``10.210.i.2``, where the servers listen).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPLOY_GUIDE = REPO / "docs" / "deploy.md"
MARKER = "<!-- tested: tests/scale/test_haproxy.py"
FTX = [sys.executable, "-m", "ftx"]
PORT = 3890


def missing_tools() -> list[str]:
    """What the lab needs and this machine lacks (root included)."""
    missing = [tool for tool in ("ip", "tc", "haproxy") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (for network namespaces)")
    return missing


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def namespace(i: int) -> str:
    return f"ftxlab-{i}"


def server_address(i: int) -> str:
    return f"10.210.{i}.2"


def balancer_source(i: int) -> str:
    return f"10.210.{i}.3"


def link_device(i: int) -> str:
    return f"ftxlab{i}"


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    log: Path
    name: str

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self) -> None:
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


class Lab:
    """``links`` namespaces with their links; :meth:`close` removes them and stops every
    process started here."""

    def __init__(self, links: int, mbit: int, workdir: Path) -> None:
        self.links = links
        self.workdir = workdir
        self.procs: list[Proc] = []
        for i in range(1, links + 1):
            subprocess.run(["ip", "netns", "del", namespace(i)], capture_output=True)
            subprocess.run(["ip", "link", "del", link_device(i)], capture_output=True)
            ns, dev, peer = namespace(i), link_device(i), f"ftxlabp{i}"
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", dev, "type", "veth", "peer", "name", peer)
            _run("ip", "link", "set", peer, "netns", ns)
            _run("ip", "addr", "add", f"10.210.{i}.1/24", "dev", dev)
            _run("ip", "addr", "add", f"{balancer_source(i)}/24", "dev", dev)
            _run("ip", "link", "set", dev, "up")
            _run("ip", "-n", ns, "addr", "add", f"{server_address(i)}/24", "dev", peer)
            _run("ip", "-n", ns, "link", "set", peer, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            self.set_rate(i, mbit, add=True)

    def set_rate(self, i: int, mbit: int, *, add: bool = False) -> None:
        """Limit link ``i`` to ``mbit`` Mbit/s each way (tbf on both ends of the veth)."""
        verb = "add" if add else "change"
        tbf = ["root", "tbf", "rate", f"{mbit}mbit", "burst", "256kb", "latency", "50ms"]
        _run("tc", "qdisc", verb, "dev", link_device(i), *tbf)
        _run("ip", "netns", "exec", namespace(i), "tc", "qdisc", verb, "dev", f"ftxlabp{i}", *tbf)

    def received_bytes(self, i: int) -> int:
        """Bytes this namespace has received over link ``i`` (IP packets, headers included)."""
        path = Path(f"/sys/class/net/{link_device(i)}/statistics/rx_bytes")
        return int(path.read_text())

    def start_server(self, i: int, root: Path, *options: str, port: int = PORT) -> Proc:
        """``ftx serve root`` in namespace ``i`` on ``server_address(i):port``, once it listens."""
        log = self.workdir / f"server-{i}-{port}-{len(self.procs)}.log"
        argv = ["ip", "netns", "exec", namespace(i), *FTX, "serve", str(root)]
        argv += ["--host", server_address(i), "--port", str(port), *options]
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=out)
        proc = Proc(process, log, f"ftx{i}")
        self.procs.append(proc)
        _wait_listening(server_address(i), port, proc)
        return proc

    def start_haproxy(self, backends: Sequence[int], port: int) -> Proc:
        """HAProxy on 127.0.0.1:``port`` with docs/deploy.md's configuration, its servers the
        ftx servers of links ``backends`` (1 or 2 of them), connecting from their
        :func:`balancer_source` addresses."""
        config = guide_config(port, backends)
        path = self.workdir / f"haproxy-{port}.cfg"
        path.write_text(config)
        log = self.workdir / f"haproxy-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["haproxy", "-db", "-f", str(path)], stdout=out, stderr=subprocess.STDOUT
            )
        proc = Proc(process, log, f"haproxy:{port}")
        self.procs.append(proc)
        _wait_listening("127.0.0.1", port, proc)
        time.sleep(2.5)  # two good health checks (rise 2, inter 1s) before a server is up
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        for i in range(1, self.links + 1):
            subprocess.run(["ip", "netns", "del", namespace(i)], capture_output=True)
            subprocess.run(["ip", "link", "del", link_device(i)], capture_output=True)


def guide_config(front: int, backends: Sequence[int]) -> str:
    """docs/deploy.md's HAProxy configuration, listening on 127.0.0.1:``front``, with the lab's
    servers in place of the guide's two."""
    block = re.search(
        re.escape(MARKER) + r".*?\n```haproxy\n(.*?)```", DEPLOY_GUIDE.read_text(), re.S
    )
    if block is None:
        raise RuntimeError("docs/deploy.md lost its tested HAProxy configuration")
    config = block[1].replace("bind :3890", f"bind 127.0.0.1:{front}")
    lines = []
    for line in config.splitlines():
        match = re.fullmatch(r"(\s*)server ftx(\d) \S+", line)
        if match is None:
            lines.append(line)
            continue
        i = int(match[2])
        if i in backends:
            address = f"{server_address(i)}:{PORT}"
            lines.append(f"{match[1]}server ftx{i} {address} source {balancer_source(i)}")
    return "\n".join(lines) + "\n"


def _wait_listening(host: str, port: int, proc: Proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited: {proc.text()[-500:]}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on {host}:{port} within {timeout} s")
