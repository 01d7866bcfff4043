#!/usr/bin/env python3
"""``ftx get --segments N`` against one connection, on loopback (no link limit): wall time and
CPU seconds (client + server) per GiB, methods interleaved, medians with min-max.

::

    python benchmarks/multisource_bench.py --size 1G --runs 5 --segments 2
    python benchmarks/multisource_bench.py --size 256M --runs 3 --link 40

With ``--link MBPS`` the comparison is instead ``ftx get --from P1,P2`` against ``ftx get P1``,
where P1 and P2 are two throttling TCP relays in front of the server, each a "link" of MBPS
MB/s shared by all its connections (a token bucket; a stand-in for two replicas on two
limited links, which tc would need root and the whole machine for).

One ``ftx serve`` process serves a file of random bytes (made once) from a temporary directory;
each run is one ``ftx get`` process saving into ``/dev/shm`` (tmpfs: the disk is not measured).
Before the timed runs each method runs once untimed, so the server has read the file and knows
its digests (whole-file and block digests are remembered per file identity): what is measured
is the transfer, not the first hash. Client CPU is the ``ftx get`` process's user+sys
(``RUSAGE_CHILDREN``); server CPU is the server's user+sys from ``/proc/PID/stat`` over the
same run.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FTX = [sys.executable, "-m", "ftx"]
TICKS = os.sysconf("SC_CLK_TCK")


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, limit: float = 15) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the server did not listen on {port}")


def one_run(command: list[str], dest: Path, server_pid: int) -> tuple[float, float, float]:
    """(wall seconds, client CPU seconds, server CPU seconds) of one ``ftx get``."""
    dest.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = server_cpu(server_pid)
    started = time.perf_counter()
    done = subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode:
        raise SystemExit(f"{command}: {done.stderr.decode()}")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, client, server_cpu(server_pid) - server_before


def relay(listen_port: int, target_port: int, rate: float) -> None:
    """A TCP relay to 127.0.0.1:``target_port``; server-to-client bytes limited to ``rate``
    bytes per second over all its connections (``--relay``, run as its own process)."""
    import trio

    budget = {"free_at": 0.0}

    async def pump(source: trio.SocketStream, sink: trio.SocketStream, limit: bool) -> None:
        try:
            while data := await source.receive_some(65536):
                if limit:
                    start = max(trio.current_time(), budget["free_at"])
                    budget["free_at"] = start + len(data) / rate
                    await trio.sleep_until(budget["free_at"])
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(sink)

    async def handle(down: trio.SocketStream) -> None:
        up = await trio.open_tcp_stream("127.0.0.1", target_port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, down, up, False)
            nursery.start_soon(pump, up, down, True)

    async def main() -> None:
        await trio.serve_tcp(handle, listen_port, host="127.0.0.1")

    trio.run(main)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=1 << 30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--link", type=float, default=0.0, metavar="MBPS")
    parser.add_argument("--relay", nargs=3, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        relay(int(args.relay[0]), int(args.relay[1]), args.relay[2])
        return
    work = Path(tempfile.mkdtemp(prefix="ftx-multi-"))
    out_dir = Path(tempfile.mkdtemp(prefix="ftx-multi-", dir="/dev/shm"))
    served = work / "served"
    served.mkdir()
    rng = random.Random(22)
    with (served / "f.bin").open("wb") as file:
        for _ in range(args.size >> 20):
            file.write(rng.randbytes(1 << 20))
    port = free_port()
    server = subprocess.Popen(
        [*FTX, "serve", str(served), "--host", "127.0.0.1", "--port", str(port), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    relays: list[subprocess.Popen[bytes]] = []
    try:
        wait_listening(port)
        address = f"127.0.0.1:{port}"
        dest = out_dir / "f.bin"
        get = [*FTX, "get", "f.bin", "-o", str(dest), "-q"]
        methods = {
            "one connection": [*FTX, "get", address, "f.bin", "-o", str(dest), "-q"],
            f"--segments {args.segments}": [
                *get,
                "--from",
                address,
                "--segments",
                str(args.segments),
            ],
        }
        if args.link:  # two throttled relays to the server: two "links"
            links = []
            for _ in range(2):
                link = free_port()
                relays.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            __file__,
                            "--relay",
                            str(link),
                            str(port),
                            str(args.link * 1e6),
                        ]
                    )
                )
                wait_listening(link)
                links.append(f"127.0.0.1:{link}")
            methods = {
                f"one {args.link:g} MB/s link": [
                    *FTX,
                    "get",
                    links[0],
                    "f.bin",
                    "-o",
                    str(dest),
                    "-q",
                ],
                "--from 2 links": [*get, "--from", ",".join(links)],
            }
        for command in methods.values():  # untimed: the server reads the file, learns digests
            one_run(command, dest, server.pid)
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in methods}
        order = list(methods)
        shuffle = random.Random(7)
        for _ in range(args.runs):
            for name in order:
                results[name].append(one_run(methods[name], dest, server.pid))
            shuffle.shuffle(order)
        gib = args.size / (1 << 30)
        after = Path("/proc/loadavg").read_text().split()[:3]
        print(
            f"{args.size >> 20} MiB on loopback, {args.runs} runs interleaved; "
            f"load average before/after: {load} / {after}"
        )
        print(
            f"{'method':<16} {'wall s':>22} {'client CPU s/GiB':>24} {'server CPU s/GiB':>24} "
            f"{'total CPU s/GiB':>24}"
        )
        for name, runs in results.items():
            walls = [run[0] for run in runs]
            client = [run[1] / gib for run in runs]
            served_cpu = [run[2] / gib for run in runs]
            total = [(run[1] + run[2]) / gib for run in runs]
            print(
                f"{name:<16} {summary(walls):>22} {summary(client):>24} "
                f"{summary(served_cpu):>24} {summary(total):>24}"
            )
    finally:
        for process in relays:
            process.terminate()
            process.wait(timeout=15)
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)


load = Path("/proc/loadavg").read_text().split()[:3]

if __name__ == "__main__":
    main()
