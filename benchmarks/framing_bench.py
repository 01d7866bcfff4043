"""Scenario e: the framing layer alone, small and 4 KiB frames, against baselines in the same run.

    python benchmarks/framing_bench.py                 # 5 interleaved runs of every method
    python benchmarks/framing_bench.py --runs 7 --frames 200000 --method ftx
    python benchmarks/run.py --scenario e              # the same, from the main runner

One process per run: a sender task and a receiver task in one event loop, over a socket pair
(AF_UNIX by default, ``--transport tcp`` for loopback TCP), ``--frames`` frames of 64 bytes
(and a quarter as many of 4 KiB). Each run prints frames/s and CPU microseconds per frame
(``time.process_time``, both tasks). Methods run interleaved, in a shuffled order per round;
the table gives medians and min-max, then the goals' ratios computed from the medians.

Methods: ``ftx`` (``FramedChannel.send`` / ``receive``, one frame per call), ``ftx before``
(the same, on the framing code of ``--before``, default the commit this work started from,
extracted with ``git archive``), ``naive trio`` (``send_all(header + payload)``, parse what
``receive_some`` returns), ``ftx batch`` (``send_frames`` of 100, ``receive`` then
``receive_nowait``), ``ftx nowait`` (``send_nowait`` then ``flush`` every 100 frames,
``receive`` one at a time), ``asyncio`` (``write`` + ``drain``, ``readexactly(4)`` +
``readexactly(n)``). And e4: ``python -c "import ftx.framing"`` against ``import trio``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BEFORE = "5a68de1"  # main when issue 18 was taken up
HEADER = struct.Struct(">I")
BATCH = 100
METHODS = ["ftx", "ftx before", "naive trio", "ftx batch", "ftx nowait", "asyncio"]


def socket_pair(transport: str) -> tuple[socket.socket, socket.socket]:
    if transport == "unix":
        return socket.socketpair()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for sock in (a, b):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


# --- the workers: one method, one run, in this process -----------------------------------------


async def trio_run(method: str, a: socket.socket, b: socket.socket, size: int, count: int) -> None:
    import trio

    payload = bytes(size)
    left = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    right = trio.SocketStream(trio.socket.from_stdlib_socket(b))

    async def naive_send() -> None:
        frame = HEADER.pack(size) + payload
        for _ in range(count):
            await left.send_all(frame)

    async def naive_receive() -> None:
        buffer = b""
        got = 0
        while got < count:
            buffer += await right.receive_some(65536)
            pos = 0
            while len(buffer) - pos >= 4:
                (length,) = HEADER.unpack_from(buffer, pos)
                if len(buffer) - pos - 4 < length:
                    break
                _ = buffer[pos + 4 : pos + 4 + length]
                pos += 4 + length
                got += 1
            buffer = buffer[pos:]

    if method == "naive trio":
        async with trio.open_nursery() as nursery:
            nursery.start_soon(naive_send)
            await naive_receive()
        return

    from ftx.framing import FramedChannel

    sender, receiver = FramedChannel(left), FramedChannel(right)

    async def send() -> None:
        if method == "ftx batch":
            frames = [(payload,)] * BATCH
            for _ in range(count // BATCH):
                await sender.send_frames(*frames)
        elif method == "ftx nowait":
            for index in range(count):
                sender.send_nowait(payload)
                if index % BATCH == BATCH - 1:
                    await sender.flush()
            await sender.flush()
        else:
            for _ in range(count):
                await sender.send(payload)

    async def receive() -> None:
        got = 0
        if method == "ftx batch":
            while got < count:
                await receiver.receive()
                got += 1
                while True:
                    try:
                        receiver.receive_nowait()
                    except trio.WouldBlock:
                        break
                    got += 1
        else:
            for _ in range(count):
                await receiver.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await receive()


async def asyncio_run(a: socket.socket, b: socket.socket, size: int, count: int) -> None:
    _, writer = (
        await asyncio.open_connection(sock=a)
        if a.family != socket.AF_UNIX
        else (await asyncio.open_unix_connection(sock=a))
    )
    reader, _ = (
        await asyncio.open_connection(sock=b)
        if b.family != socket.AF_UNIX
        else (await asyncio.open_unix_connection(sock=b))
    )
    payload = bytes(size)
    header = HEADER.pack(size)

    async def send() -> None:
        for _ in range(count):
            writer.write(header + payload)
            await writer.drain()

    async def receive() -> None:
        for _ in range(count):
            (length,) = HEADER.unpack(await reader.readexactly(4))
            await reader.readexactly(length)

    sending = asyncio.ensure_future(send())
    await receive()
    await sending


def worker(method: str, size: int, count: int, transport: str) -> None:
    a, b = socket_pair(transport)
    started, cpu = time.perf_counter(), time.process_time()
    if method == "asyncio":
        asyncio.run(asyncio_run(a, b, size, count))
    else:
        import trio

        trio.run(trio_run, method, a, b, size, count)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    module = sys.modules.get("ftx.framing")
    where = getattr(module, "__file__", None)
    print(json.dumps({"wall": wall, "cpu": cpu, "frames": count, "ftx": where}))


# --- the runner ---------------------------------------------------------------------------------


def before_tree(ref: str, into: Path) -> Path:
    """The ``src`` directory of ``ref``, extracted with git archive."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run_one(
    method: str, size: int, count: int, args: argparse.Namespace, old: Path
) -> dict[str, Any]:
    env = dict(os.environ)
    if method == "ftx before":
        env["PYTHONPATH"] = str(old)
    argv = [sys.executable, __file__, "--worker", method, str(size), str(count), args.transport]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    if done.returncode:
        raise RuntimeError(f"{method} {size} B failed: {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if method == "ftx before" and not str(result["ftx"]).startswith(str(old)):
        raise RuntimeError(f"'ftx before' imported {result['ftx']}, not the old tree")
    return result


def startup(argv: Sequence[str]) -> float:
    # With bytecode written and used, as an installed package has it (pip compiles at install;
    # a checkout under PYTHONDONTWRITEBYTECODE would compile ftx from source at every import,
    # and not trio).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    started = time.perf_counter()
    subprocess.run(argv, check=True, env=env)
    return time.perf_counter() - started


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def med(values: Sequence[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--runs", type=int, default=5, help="interleaved runs of each method (default 5)")
    add("--frames", type=int, default=200_000, help="64-byte frames per run (4 KiB: a quarter)")
    add("--method", action="append", default=[], help="only methods whose name contains this")
    add("--transport", choices=["unix", "tcp"], default="unix")
    add("--before", default=BEFORE, help=f"the commit 'ftx before' runs (default {BEFORE})")
    add("--startup-runs", type=int, default=20, help="runs of each import for e4 (default 20)")
    add("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        method, size, count, transport = args.worker
        worker(method, int(size), int(count), transport)
        return 0
    methods = [m for m in METHODS if not args.method or any(p in m for p in args.method)]
    cases = [(m, s) for s in (64, 4096) for m in methods if not (s == 4096 and m == "ftx nowait")]
    rates: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    cpus: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    imports: dict[str, list[float]] = {"import ftx.framing": [], "import trio": []}
    with tempfile.TemporaryDirectory(prefix="ftx-bench-e-") as tmp:
        old = before_tree(args.before, Path(tmp))
        for index in range(args.runs):
            order = list(cases)
            if index:
                random.Random(index).shuffle(order)
            for method, size in order:
                count = args.frames if size == 64 else args.frames // 4
                result = run_one(method, size, count, args, old)
                rates[method, size].append(count / result["wall"])
                cpus[method, size].append(result["cpu"] / count * 1e6)
                rate = count / result["wall"]
                say(f"  [e {index + 1}/{args.runs}] {method}, {size} B: {rate:,.0f} frames/s")
        for name in imports:
            startup([sys.executable, "-c", name])  # untimed: writes the bytecode if need be
        for _ in range(args.startup_runs):
            for name in random.sample(sorted(imports), 2):
                imports[name].append(startup([sys.executable, "-c", name]))
    print(f"scenario e: {args.runs} runs, {args.frames:,} frames of 64 B and "
          f"{args.frames // 4:,} of 4 KiB per run, over {args.transport} sockets; "
          f"load average {os.getloadavg()[0]:.2f} at the end")  # fmt: skip
    print(f"{'method':<12} {'size':>6}  {'frames/s median (min-max)':>32}  {'MiB/s':>7}  "
          f"{'CPU us/frame median (min-max)':>30}")  # fmt: skip
    for method, size in cases:
        mib = statistics.median(rates[method, size]) * size / (1 << 20)
        spread = cpus[method, size]
        cpu = f"{statistics.median(spread):.2f} ({min(spread):.2f}-{max(spread):.2f})"
        print(f"{method:<12} {size:>6}  {med(rates[method, size]):>32}  {mib:>7.1f}  {cpu:>30}")
    for name, walls in imports.items():
        print(f"python -c {name!r}: median {statistics.median(walls) * 1000:.1f} ms "
              f"({min(walls) * 1000:.1f}-{max(walls) * 1000:.1f})")  # fmt: skip
    print_goals(rates, cpus, imports)
    return 0


def print_goals(
    rates: dict[tuple[str, int], list[float]],
    cpus: dict[tuple[str, int], list[float]],
    imports: dict[str, list[float]],
) -> None:
    def ratio(a: tuple[str, int], b: tuple[str, int], source: dict[Any, list[float]]) -> str:
        if a not in source or b not in source:
            return "-"
        value = statistics.median(source[a]) / statistics.median(source[b])
        return f"{value:.2f}x"

    def paired(a: tuple[str, int], b: tuple[str, int], source: dict[Any, list[float]]) -> str:
        """The median (min-max) of the ratios within each round: both ran minutes apart at
        most, so drift in the machine's load between rounds cancels out."""
        if a not in source or b not in source:
            return "-"
        ratios = [x / y for x, y in zip(source[a], source[b], strict=True)]
        return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"

    per_frame = {key: [1 / v for v in values] for key, values in cpus.items()}
    print("goals: ratio of medians, wall and CPU ('CPU' = the same in frames per CPU second);")
    print("       then the median (min-max) of the ratios within each round, wall and CPU:")
    for goal, a, b, want in [
        ("e1 vs before", ("ftx", 64), ("ftx before", 64), 2.5),
        ("e1 vs naive trio", ("ftx", 64), ("naive trio", 64), 1.5),
        ("e2 batch vs asyncio", ("ftx batch", 64), ("asyncio", 64), 0.9),
        ("e2 4 KiB batch", ("ftx batch", 4096), ("asyncio", 4096), 0.9),
        ("e3 4 KiB vs asyncio", ("ftx", 4096), ("asyncio", 4096), 0.9),
    ]:
        medians = f"{ratio(a, b, rates):>6} {ratio(a, b, per_frame):>6}"
        rounds = f"{paired(a, b, rates):>20} {paired(a, b, per_frame):>20}"
        print(f"  {goal:<20} {medians}  |  {rounds}  (goal >= {want}x)")
    ftx, trio_ = (statistics.median(imports[k]) for k in ("import ftx.framing", "import trio"))
    print(f"  {'e4 import time':<22} {ftx / trio_:.2f}x of import trio  (goal <= 1.1x)")


if __name__ == "__main__":
    sys.exit(main())
