"""What the command-line tests share: running ``ftx`` as a program (in a pipe, or in a
pseudo-terminal of a given size, read back as a person would see it), and holding a
connection to a server so that it has no room for another."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyte

from conftest import ENV, PYTHON_M_FTX

RUN_TIMEOUT = 30

# docs/user-guide.md, "Exit codes".
OK, FAILURE, USAGE, NETWORK, NOT_FOUND, PERMISSION, INTEGRITY, PROTOCOL, LOCAL_FILE, BUSY = range(
    10
)


def ftx_run(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = RUN_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ftx ARGS`` to the end, its output captured as text."""
    return subprocess.run(
        [*PYTHON_M_FTX, *args],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        cwd=cwd,
        env={**ENV, **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The documented failure: exit ``code``, one ``ftx:`` line on stderr, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ftx: "), lines[0]
    return lines[0]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound and released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def held_connection(port: int) -> Iterator[socket.socket]:
    """A silent TCP connection to the server at ``port``: with ``--max-connections 1`` every
    other client is told ``busy`` while it is held (until its handshake deadline)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        time.sleep(0.2)  # accepted and counted by the server
        yield sock
    finally:
        sock.close()


def in_terminal(
    args: list[str], *, columns: int, rows: int = 30, cwd: Path | None = None, timeout: float = 30
) -> tuple[int, list[str]]:
    """Run ``ftx ARGS`` with its standard output and error on a pseudo-terminal of
    ``columns`` x ``rows``; return its exit code and the screen it left, line by line (trailing
    spaces removed), as a terminal (pyte's emulator) shows it."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {**ENV, "COLUMNS": str(columns), "LINES": str(rows), "TERM": "xterm"}
    process = subprocess.Popen(
        [*PYTHON_M_FTX, *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    screen = pyte.Screen(columns, rows)
    stream = pyte.ByteStream(screen)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the program ended and the terminal closed
                    break
                if not data:
                    break
                stream.feed(data)
            elif process.poll() is not None:
                break
        code = process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return code, lines
