"""Processes for the benchmarks: servers started and stopped by PID, timed client runs.

Every process started here is remembered, and :func:`stop_all` (called from a ``finally`` in
``run.py``) stops whatever is still alive, so Ctrl-C or an error never leaves a server behind.

Peak memory (client and server alike) is the largest ``VmHWM`` in ``/proc/PID/status`` over the
process and its descendants, polled every 10 ms while it runs and, for servers, read once more
just before stopping them. ``VmHWM`` belongs to the program's own address space, so it is exact
except for growth in a client's last 10 ms. ``ru_maxrss`` from ``wait4`` is not used: Linux
carries the RSS of the process a child was forked from (here this ~40 MiB runner) into the
child's ``ru_maxrss`` across ``exec``, so every client would show at least that much.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

POLL_SECONDS: Final = 0.01
_OWN_CMDLINE: Final = Path("/proc/self/cmdline").read_bytes()
_live: set[subprocess.Popen[bytes]] = set()


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """How to start one server: ``argv(port)`` (which may write a config file for that port)
    and the signal that stops it cleanly. ``warm_up(port)``, if given, is a client command run
    once the server listens and before the timed client, untimed: a server that has already
    answered once (e.g. whose digest cache holds the file), as a long-running one would."""

    label: str
    argv: Callable[[int], list[str]]
    stop_signal: int = signal.SIGTERM
    cwd: Path | None = None
    warm_up: Callable[[int], list[str]] | None = None


@dataclass(slots=True)
class ClientRun:
    """One finished client process."""

    argv: Sequence[str]
    returncode: int
    wall: float
    maxrss_kib: int
    stdout: str
    stderr: str
    timed_out: bool = False
    cpu: float = 0.0
    """User + system CPU seconds of the client (and the children it waited for), from wait4."""
    server_cpu: float | None = None
    """User + system CPU seconds the server's process tree used while the client ran."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    """Whether something listens on ``port``, read from /proc/net/tcp (no probe connection)."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[1].endswith(wanted) and fields[3] == "0A":
                        return True
        except FileNotFoundError:
            continue
    return False


def vmhwm_kib(pid: int) -> int:
    """``VmHWM`` (peak resident set) of ``pid`` in KiB; 0 if it is gone, or is still a copy of
    this process between fork and exec."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if cmdline.read() == _OWN_CMDLINE:
                return 0
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (through /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


class PeakRss:
    """A thread polling the peak RSS of a process tree until :meth:`stop`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def poll(self) -> int:
        for pid in process_tree(self.pid):
            self.peak_kib = max(self.peak_kib, vmhwm_kib(pid))
        return self.peak_kib

    def _loop(self) -> None:
        while True:
            self.poll()
            if self._stop.wait(POLL_SECONDS):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


@dataclass
class RunningServer:
    """A server process whose peak RSS is being polled."""

    spec: ServerSpec
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    rss: PeakRss

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the server's process tree (its threads
        included; the children it reaped too)."""
        return sum(_cpu_seconds(pid) for pid in process_tree(self.process.pid))

    def stop(self) -> int:
        """Read the peak RSS one last time, stop the server by its PID; return the peak."""
        self.rss.poll()
        peak = self.rss.stop()
        _terminate(self.process, self.spec.stop_signal)
        self.log.close()
        return peak


def start_server(spec: ServerSpec, log_path: Path, *, timeout: float = 15.0) -> RunningServer:
    """Start ``spec`` on a free port of 127.0.0.1, wait until it listens, and run its warm-up
    (if any)."""
    port = free_port()
    log = open(log_path, "ab")  # noqa: SIM115 - closed by RunningServer.stop
    process = _spawn(spec.argv(port), stdout=log, stderr=log, cwd=spec.cwd)
    server = RunningServer(spec, port, process, log, PeakRss(process.pid))
    deadline = time.monotonic() + timeout
    while not _listening(port):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = log_path.read_text(errors="replace")[-800:]
            raise RuntimeError(f"{spec.label} did not start on port {port}: {tail}")
        time.sleep(0.01)
    if spec.warm_up is not None:
        warm_up = run_client(spec.warm_up(port), timeout=timeout)
        if warm_up.returncode != 0:
            server.stop()
            tail = (warm_up.stderr.strip() or warm_up.stdout.strip())[-300:]
            raise RuntimeError(f"{spec.label}: warm-up failed ({warm_up.returncode}): {tail}")
    return server


_TICKS: Final = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` from /proc/PID/stat, in seconds (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0
    return sum(int(value) for value in fields[11:15]) / _TICKS


def run_client(argv: Sequence[str], *, timeout: float, cwd: Path | None = None) -> ClientRun:
    """Run ``argv`` to completion; its wall time, peak RSS and CPU time."""
    expired = threading.Event()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = _spawn(argv, stdout=out, stderr=err, cwd=cwd)

        def expire() -> None:
            expired.set()
            _kill_quietly(process.pid)

        timer = threading.Timer(timeout, expire)
        timer.start()
        rss = PeakRss(process.pid)
        try:
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - started
        finally:
            timer.cancel()
            peak_kib = rss.stop()
        process.returncode = os.waitstatus_to_exitcode(status)
        _live.discard(process)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    cpu = usage.ru_utime + usage.ru_stime
    return ClientRun(
        argv, process.returncode, wall, peak_kib, stdout, stderr, expired.is_set(), cpu
    )


def stop_all() -> None:
    """Stop every process started here that is still running (by PID)."""
    for process in list(_live):
        _terminate(process, signal.SIGTERM)


def _spawn(
    argv: Sequence[str], *, stdout: IO[bytes], stderr: IO[bytes], cwd: Path | None
) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C in the terminal reaches only run.py, which stops the rest.
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        start_new_session=True,
    )
    _live.add(process)
    return process


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _terminate(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        try:
            process.send_signal(sig)
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _live.discard(process)
