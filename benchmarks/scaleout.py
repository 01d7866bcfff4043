"""Scale-out benchmark (issue 15, goals s1-s6): ftx servers in network namespaces, each link
limited with tbf so that the link, not the 2 cores, is the limit, HAProxy in front with the
configuration of docs/deploy.md. Prints its own table. Needs root, ``tc`` and ``haproxy``.

    python benchmarks/scaleout.py                 # every goal, 3 interleaved runs
    python benchmarks/scaleout.py --goal s1,s6 --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import netlab
from netlab import FTX, PORT, Lab, Proc, server_address
from procs import free_port

MIB = 1 << 20
GOALS = ("s1", "s2", "s3", "s4", "s5", "s6")
SERVE = ("--identity", "portable", "--grace", "30")  # with the access log (s5 reads it)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_file(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    block = rng.randbytes(MIB)
    with path.open("wb") as out:
        for n in range(size // MIB):
            out.write(block[n % 7 :] + block[: n % 7])  # no two blocks alike
        out.write(block[: size % MIB])


def spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "-"
    middle = fmt.format(statistics.median(values))
    return f"{middle} ({fmt.format(min(values))}-{fmt.format(max(values))})"


@dataclass
class Row:
    goal: str
    what: str
    values: list[float] = field(default_factory=list)
    unit: str = "MiB/s"
    notes: list[str] = field(default_factory=list)


def _get(address: str, path: str, *extra: str, dest: str = "/dev/null") -> list[str]:
    verbosity = [] if "-v" in extra else ["-q"]
    return [
        *FTX,
        "get",
        *verbosity,
        "--retry-delay",
        "0.2",
        address,
        path,
        "-o",
        dest,
        "-f",
        *extra,
    ]


def _forget(dest: Path) -> None:
    """Remove a download and what a cut one leaves beside it (part file, resume record)."""
    for path in dest.parent.glob(f"{dest.name}*"):
        path.unlink(missing_ok=True)


def _run_clients(
    commands: Sequence[Sequence[str]], timeout: float = 600
) -> tuple[float, list[int]]:
    """Run the commands at once; return the wall time until the last ends, and exit codes."""
    started = time.monotonic()
    procs = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands
    ]
    codes = []
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        codes.append(proc.returncode)
    return time.monotonic() - started, codes


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.rows: dict[str, Row] = {}
        self.lab = Lab(2, args.mbit, tmp)
        self.replicas = [tmp / "replica1", tmp / "replica2"]
        for root in self.replicas:
            root.mkdir()
        say(f"making data in {tmp}")
        original = self.replicas[0]
        make_file(original / "s1.bin", args.size, 1)
        make_file(original / "big.bin", args.big_size, 2)
        make_file(original / "s4.bin", 32 * MIB, 3)
        make_file(original / "rate.bin", args.rate_size, 4)
        for path in original.iterdir():  # replicas, as rsync -a or cp -p make them
            shutil.copy2(path, self.replicas[1] / path.name)
        self.warm = False  # s3: whether both servers have computed big.bin's block digests
        self.servers: list[Proc | None] = [None, None]
        for i in (1, 2):
            self.restart(i)
        self.front_two = self.lab.start_haproxy((1, 2), free_port())
        self.front_one = self.lab.start_haproxy((1,), free_port())

    def restart(self, i: int) -> Proc:
        old = self.servers[i - 1]
        if old is not None:
            old.stop()
        proxy = ("--proxy-protocol-from", netlab.balancer_source(i))
        proc = self.lab.start_server(i, self.replicas[i - 1], *SERVE, *proxy)
        self.servers[i - 1] = proc
        self.warm = False
        return proc

    def row(self, goal: str, what: str, unit: str = "MiB/s") -> Row:
        key = f"{goal}/{what}"
        if key not in self.rows:
            self.rows[key] = Row(goal, what, unit=unit)
        return self.rows[key]

    def front(self, proxy: Proc) -> str:
        return f"127.0.0.1:{proxy.name.split(':')[1]}"

    # --- s1: capacity --------------------------------------------------------------------------

    def s1(self) -> None:
        size, clients = self.args.size, 4
        methods: dict[str, str] = {
            "4 clients, 2 servers via HAProxy": self.front(self.front_two),
            "4 clients, 1 server via HAProxy": self.front(self.front_one),
            "4 clients, 1 server direct": f"{server_address(1)}:{PORT}",
        }
        for name, address in methods.items():
            wall, codes = _run_clients([_get(address, "s1.bin")] * clients)
            row = self.row("s1", name)
            if any(codes):
                row.notes.append(f"exit codes {codes}")
            else:
                row.values.append(clients * size / MIB / wall)

    # --- s2: a server killed mid-download, replicas -------------------------------------------

    def s2(self) -> None:
        size = self.args.big_size
        address = self.front(self.front_two)
        dest = self.tmp / "s2.bin"
        # A clean download through the balancer: the bytes on the links per byte of file.
        before = [self.lab.received_bytes(i) for i in (1, 2)]
        wall, codes = _run_clients([_get(address, "big.bin", dest=str(dest))])
        clean = sum(self.lab.received_bytes(i) for i in (1, 2)) - sum(before)
        overhead = clean / size
        if any(codes):
            self.row("s2", "clean download via HAProxy").notes.append(f"exit codes {codes}")
            return
        self.row("s2", "clean download via HAProxy").values.append(size / MIB / wall)
        dest.unlink(missing_ok=True)
        # The same, with the serving server killed at about 40 %.
        before = [self.lab.received_bytes(i) for i in (1, 2)]
        _forget(dest)
        cmd = [*_get(address, "big.bin", "-v", "--retries", "5", dest=str(dest))]
        started = time.monotonic()
        errors = (self.tmp / "s2.err").open("w+b")
        client = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors)
        part = Path(f"{dest}.part")
        killed = None
        deadline = started + 300
        while client.poll() is None and time.monotonic() < deadline:
            if killed is None and part.exists() and part.stat().st_size > 0.4 * size:
                received = [self.lab.received_bytes(i) - before[i - 1] for i in (1, 2)]
                killed = 1 if received[0] >= received[1] else 2
                proc = self.servers[killed - 1]
                assert proc is not None
                proc.signal(signal.SIGKILL)
            time.sleep(0.02)
        if client.poll() is None:
            client.kill()
        client.wait()
        errors.seek(0)
        stderr = errors.read()
        errors.close()
        wall = time.monotonic() - started
        total = sum(self.lab.received_bytes(i) for i in (1, 2)) - sum(before)
        resent = max(0.0, total / overhead - size)
        good = client.returncode == 0 and _same(dest, self.replicas[0] / "big.bin")
        row = self.row("s2", "SIGKILL of the serving server: MiB resent", unit="MiB")
        if killed is None:
            row.notes.append("the download ended before the kill")
        elif not good:
            tail = stderr.decode(errors="replace").strip().splitlines()[-1:]
            row.notes.append(f"exit {client.returncode}, verified {good}: {tail}")
        else:
            row.values.append(resent / MIB)
            resumed = re.findall(rb"resuming at byte (\d+)", stderr)
            row.notes.append(f"resumed at byte {resumed[-1].decode() if resumed else '?'}")
            self.row("s2", "download with the kill").values.append(size / MIB / wall)
        dest.unlink(missing_ok=True)
        if killed is not None:
            self.restart(killed)
            time.sleep(2.5)  # back in HAProxy (rise 2)

    # --- s3: one file from two replicas (ftx get --from) --------------------------------------

    def s3(self) -> None:
        help_text = subprocess.run([*FTX, "get", "--help"], capture_output=True, text=True).stdout
        if "--from" not in help_text:
            self.row("s3", "ftx get --from").notes.append("this ftx has no get --from: skipped")
            return
        slow = self.args.mbit // 2
        for i in (1, 2):
            self.lab.set_rate(i, slow)
        try:
            size = self.args.big_size
            one = f"{server_address(1)}:{PORT}"
            both = f"{one},{server_address(2)}:{PORT}"
            multi = [*FTX, "get", "-q", "--from", both, "big.bin", "-o", "/dev/null", "-f"]
            if not self.warm:  # as running servers are: they know the file's digests
                _run_clients([multi])
                self.warm = True
            wall, codes = _run_clients([_get(one, "big.bin")])
            if not any(codes):
                self.row("s3", f"one replica, {slow} Mbit/s link").values.append(size / MIB / wall)
            wall, codes = _run_clients([multi])
            row = self.row("s3", f"--from two replicas, {slow} Mbit/s each")
            if any(codes):
                row.notes.append(f"exit codes {codes}")
            else:
                row.values.append(size / MIB / wall)
            self._s3_corrupt(both)
        finally:
            for i in (1, 2):
                self.lab.set_rate(i, self.args.mbit)

    def _s3_corrupt(self, both: str) -> None:
        bad_root = self.tmp / "corrupt"
        if not bad_root.exists():
            bad_root.mkdir()
            source = self.replicas[1] / "big.bin"
            target = bad_root / "big.bin"
            shutil.copy2(source, target)
            with target.open("r+b") as file:  # same size and time, other bytes
                for offset in range(3 * MIB, source.stat().st_size, 97 * MIB):
                    file.seek(offset)
                    file.write(b"\xff" * 4096)
            stat = source.stat()
            os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        bad = self.lab.start_server(2, bad_root, *SERVE, port=PORT + 1)
        dest = self.tmp / "s3.bin"
        try:
            sources = f"{server_address(1)}:{PORT},{server_address(2)}:{PORT + 1}"
            cmd = [*FTX, "get", "-q", "--from", sources, "big.bin", "-o", str(dest), "-f"]
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            good = run.returncode == 0 and _same(dest, self.replicas[0] / "big.bin")
            named = f"{server_address(2)}:{PORT + 1}" in run.stderr
            row = self.row("s3", "one replica corrupted: correct file, bad one named", unit="ok")
            row.values.append(1.0 if good and named else 0.0)
            if not (good and named):
                row.notes.append(
                    f"exit {run.returncode}, correct {good}: {run.stderr.strip()[-300:]}"
                )
        finally:
            bad.stop()
            dest.unlink(missing_ok=True)

    # --- s4: SIGTERM during 50 downloads ------------------------------------------------------

    def s4(self) -> None:
        address = self.front(self.front_two)
        command = _get(address, "s4.bin", "--retries", "5")
        pending, running, codes = 50, [], []
        stopped = False
        deadline = time.monotonic() + 600
        while (pending or running) and time.monotonic() < deadline:
            while pending and len(running) < 10:
                running.append(
                    subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                )
                pending -= 1
            for proc in [p for p in running if p.poll() is not None]:
                running.remove(proc)
                codes.append(proc.returncode)
            if not stopped and len(codes) >= 15:
                server = self.servers[0]
                assert server is not None
                server.signal(signal.SIGTERM)
                stopped = True
            time.sleep(0.02)
        for proc in running:
            proc.kill()
            codes.append(-9)
        failed = sum(1 for code in codes if code != 0)
        self.row("s4", "SIGTERM to 1 of 2 during 50 downloads: failed", unit="of 50").values.append(
            failed
        )
        server = self.servers[0]
        if server is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(timeout=40)
        self.restart(1)
        time.sleep(2.5)

    # --- s5: the real client address behind HAProxy -------------------------------------------

    def s5(self) -> None:
        lines = [
            line
            for proc in self.lab.procs
            if proc.name.startswith("ftx")
            for line in _access_lines(proc)
        ]
        balancer = tuple(f"{netlab.balancer_source(i)}:" for i in (1, 2))
        via_balancer = [line for line in lines if line.startswith(("127.0.0.1:", *balancer))]
        real = [line for line in via_balancer if line.startswith("127.0.0.1:")]
        row = self.row("s5", "access-log lines through HAProxy with the client's address", unit="%")
        if via_balancer:
            row.values.append(100.0 * len(real) / len(via_balancer))
            row.notes.append(f"{len(real)} of {len(via_balancer)} lines")
        refused = _proxy_header_refused(server_address(1), PORT)
        self.row("s5", "PROXY header from a disallowed address refused", unit="ok").values.append(
            1.0 if refused else 0.0
        )

    # --- s6: --limit-rate --------------------------------------------------------------------

    def s6(self) -> None:
        rate = 50 * MIB
        limited = self.lab.start_server(
            2, self.replicas[1], *SERVE, "--limit-rate", "50M", port=PORT + 2
        )
        try:
            cases = {
                "ftx get --limit-rate 50M": (
                    f"{server_address(1)}:{PORT}",
                    ("--limit-rate", "50M"),
                ),
                "ftx serve --limit-rate 50M": (f"{server_address(2)}:{PORT + 2}", ()),
            }
            for name, (address, extra) in cases.items():
                dest = self.tmp / "rate.out"
                _forget(dest)
                command = _get(address, "rate.bin", "--no-resume", *extra, dest=str(dest))
                got = _windowed_rate(command, dest.with_name("rate.out.part"))
                row = self.row("s6", f"{name}: rate over 10 s vs 50 MiB/s", unit="x")
                if got is None:
                    row.notes.append("the transfer did not last 11 s")
                else:
                    row.values.append(got / rate)
                _forget(dest)
        finally:
            limited.stop()


def _windowed_rate(command: list[str], part: Path) -> float | None:
    """Run ``command`` (a download to ``part``'s file) and return its rate between 1 s and 11 s
    after the first byte arrived, from the part file's size."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = start_size = None
    result = None
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        size = part.stat().st_size if part.exists() else 0
        now = time.monotonic()
        if first is None and size > 0:
            first = now
        elif first is not None and start_size is None and now >= first + 1:
            start_size, start = size, now
        elif start_size is not None and now >= start + 10:
            result = (size - start_size) / (now - start)
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    return result


def _access_lines(proc: Proc) -> list[str]:
    """The peers of the access-log lines in a server's log (``HOST:PORT GET ...``)."""
    out = []
    for line in proc.text().splitlines():
        match = re.match(r"\d\d:\d\d:\d\d (\S+) (GET|LIST|PUT|MKDIR) ", line)
        if match:
            out.append(line[9:])
    return out


def _proxy_header_refused(host: str, port: int) -> bool:
    """Send a PROXY v1 header, then a client HELLO, from an address the server does not allow:
    refused means no HELLO comes back."""
    hello = b'{"protocol":"ftx","versions":[1],"features":[],"max_frame_size":65536,"agent":"s5"}'
    frame = struct.pack(">I", len(hello) + 1) + b"\x01" + hello
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"PROXY TCP4 192.0.2.1 10.210.1.2 1234 3890\r\n" + frame)
        try:
            answer = sock.recv(5)
        except (TimeoutError, ConnectionResetError):
            answer = b""
    return not (len(answer) >= 5 and answer[4] == 0x01)


def _same(a: Path, b: Path) -> bool:
    if not a.exists() or a.stat().st_size != b.stat().st_size:
        return False
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def report(bench: Bench, args: argparse.Namespace, seconds: float) -> None:
    rows = bench.rows
    print(
        f"ftx scale-out benchmark, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"links {args.mbit} Mbit/s (tbf), {args.runs} interleaved rounds, {seconds:.0f} s; "
        f"load average at the end {os.getloadavg()[0]:.2f}"
    )
    print(f"{'goal':5} {'measure':62} {'median (min-max)':>26}  notes")
    for row in rows.values():
        fmt = {"of 50": "{:.0f}", "x": "{:.2f}", "ok": "{:.2f}"}.get(row.unit, "{:.1f}")
        notes = "; ".join(dict.fromkeys(row.notes))
        print(f"{row.goal:5} {row.what:62} {spread(row.values, fmt) + ' ' + row.unit:>26}  {notes}")

    def med(key: str) -> float | None:
        row = rows.get(key)
        return statistics.median(row.values) if row and row.values else None

    two = med("s1/4 clients, 2 servers via HAProxy")
    one = med("s1/4 clients, 1 server via HAProxy")
    direct = med("s1/4 clients, 1 server direct")
    print()
    if two and one:
        print(f"s1: 2 servers vs 1 through HAProxy: {two / one:.2f}x (goal >= 1.8x)")
    if one and direct:
        lost = 100 * (1 - one / direct)
        print(f"s1: through HAProxy vs direct, one server: {lost:+.1f}% lost (goal <= 5%)")
    resent = med("s2/SIGKILL of the serving server: MiB resent")
    if resent is not None:
        print(f"s2: resent after SIGKILL, replicas: {resent:.1f} MiB (goal <= 8 MiB)")
    slow = args.mbit // 2
    single = med(f"s3/one replica, {slow} Mbit/s link")
    multi = med(f"s3/--from two replicas, {slow} Mbit/s each")
    if single and multi:
        print(f"s3: --from two replicas vs one: {multi / single:.2f}x (goal >= 1.8x)")
    failed = rows.get("s4/SIGTERM to 1 of 2 during 50 downloads: failed")
    if failed and failed.values:
        print(f"s4: failed downloads per run: {failed.values} (goal 0)")
    for key, row in rows.items():
        if key.startswith("s6/") and row.values:
            worst = max(abs(v - 1) for v in row.values)
            print(f"s6: {row.what}: worst deviation {100 * worst:.1f}% (goal within 10%)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--goal", default=",".join(GOALS), help="which goals (default: all)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mbit", type=int, default=800, help="each link's rate (default 800)")
    parser.add_argument("--size", type=int, default=256 * MIB, help="s1: bytes per client")
    parser.add_argument("--big-size", type=int, default=1024 * MIB, help="s2, s3: the file's size")
    parser.add_argument("--rate-size", type=int, default=800 * MIB, help="s6: the file's size")
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args(argv)
    goals = [g for g in args.goal.split(",") if g]
    if unknown := set(goals) - set(GOALS):
        parser.error(f"unknown goals: {sorted(unknown)}")
    if missing := netlab.missing_tools():
        say(f"scale-out benchmark skipped: missing {', '.join(missing)}")
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ftx-scale-", dir=args.tmpdir) as name:
        bench = Bench(args, Path(name))
        try:
            order = [g for g in goals if g != "s5"]
            for n in range(args.runs):
                if n:
                    random.Random(n).shuffle(order)
                for goal in order:
                    say(f"round {n + 1}: {goal}")
                    getattr(bench, goal)()
            if "s5" in goals:
                bench.s5()
        finally:
            bench.lab.close()
        report(bench, args, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
