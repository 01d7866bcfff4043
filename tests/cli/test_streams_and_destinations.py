"""Where ``ftx get`` writes: ``-o -`` streams to standard output (verified at the end), a
destination that is not a regular file is refused with ``-f`` or without, ``-o DIR`` is made
for several files; and one rule for the paths ``""``, ``.`` and ``/`` on every command
(issue 16.8, 16.9 and 16.10)."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from cli_helpers import (
    INTEGRITY,
    LOCAL_FILE,
    NETWORK,
    OK,
    USAGE,
    free_port,
    ftx_run,
    one_error_line,
)
from conftest import ENV, PYTHON_M_FTX, SAMPLE_FILES, FakeConnection, ServerStarter
from ftx.protocol.messages import Data, FileEnd, FileHeader, Get

HELLO = (SAMPLE_FILES / "hello.txt").read_bytes()


@pytest.fixture
def server_address(start_ftx_server: ServerStarter) -> str:
    return start_ftx_server(SAMPLE_FILES).address


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """An empty directory to work in (the server's log is in ``tmp_path``)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_stream_to_stdout(work: Path, server_address: str) -> None:
    result = subprocess.run(
        [*PYTHON_M_FTX, "get", server_address, "random-3MiB.bin", "-o", "-"],
        capture_output=True,
        env=ENV,
        cwd=work,
        timeout=30,
        check=False,
    )
    assert result.returncode == OK, result.stderr
    assert result.stdout == (SAMPLE_FILES / "random-3MiB.bin").read_bytes()
    assert result.stderr.decode().startswith("wrote random-3MiB.bin to standard output (3.0 MiB")
    assert os.listdir(work) == []  # no file named "-", no part file


def test_stream_that_does_not_verify_exits_6(work: Path, fake_server) -> None:
    def behaviour(conn: FakeConnection) -> None:
        conn.handshake()
        request = conn.receive()
        assert isinstance(request, Get)
        conn.send(FileHeader(request.request_id, len(HELLO), 0, "i" * 32, digest="sha256"))
        conn.send(Data(HELLO))
        conn.send(FileEnd(request.request_id, hashlib.sha256(b"other").hexdigest()))
        conn.receive()

    server = fake_server(behaviour)
    result = subprocess.run(
        [*PYTHON_M_FTX, "get", f"127.0.0.1:{server.port}", "hello.txt", "-o", "-"],
        capture_output=True,
        env=ENV,
        cwd=work,
        timeout=30,
        check=False,
    )
    assert result.returncode == INTEGRITY, result.stderr
    assert result.stdout == HELLO  # out before the digest could be checked: said, not hidden
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "does not match" in lines[0]


@pytest.mark.parametrize("extra", [["-r"], ["nested/notes.md"], ["--json"]])
def test_stream_takes_one_file_and_no_json(server_address: str, extra: list[str]) -> None:
    result = ftx_run("get", server_address, "hello.txt", "-o", "-", *extra)
    one_error_line(result, USAGE)


@pytest.mark.parametrize("force", [[], ["-f"]], ids=["plain", "force"])
def test_never_replaces_nor_writes_through_a_non_file(
    work: Path, server_address: str, force: list[str]
) -> None:
    """`-o /dev/stdout` said it existed; with -f, a symbolic link to /proc/self/fd/1 was
    replaced by a regular file (as root, /dev/stdout itself would have been)."""
    fifo = work / "pipe"
    os.mkfifo(fifo)
    to_stdout = work / "out-link"
    to_stdout.symlink_to("/proc/self/fd/1")
    to_fifo = work / "fifo-link"
    to_fifo.symlink_to(fifo)
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(work / "sock"))
        for dest in (fifo, to_stdout, to_fifo, work / "sock", Path("/dev/stdout")):
            result = ftx_run("get", server_address, "hello.txt", "-o", str(dest), *force)
            line = one_error_line(result, LOCAL_FILE)
            assert "is not a regular file" in line, line
            assert "(-o - for stdout)" in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.readlink(to_stdout) == "/proc/self/fd/1"
    assert os.readlink(to_fifo) == str(fifo)
    assert sorted(os.listdir(work)) == ["fifo-link", "out-link", "pipe", "sock"]


def test_a_link_to_a_file_is_replaced_with_force(work: Path, server_address: str) -> None:
    (work / "old.txt").write_bytes(b"old")
    (work / "link").symlink_to("old.txt")
    result = ftx_run("get", server_address, "hello.txt", "-o", str(work / "link"), "-f")
    assert result.returncode == OK, result.stderr
    assert not (work / "link").is_symlink()  # the link itself, never written through
    assert (work / "link").read_bytes() == HELLO
    assert (work / "old.txt").read_bytes() == b"old"


def test_output_directory_is_made(work: Path, server_address: str) -> None:
    result = ftx_run("get", "-r", server_address, "nested", "-o", str(work / "new"))
    assert result.returncode == OK, result.stderr
    assert (work / "new" / "nested" / "notes.md").is_file()
    several = ftx_run("get", server_address, "hello.txt", "README.txt", "-o", "two", cwd=work)
    assert several.returncode == OK, several.stderr
    assert sorted(os.listdir(work / "two")) == ["README.txt", "hello.txt"]
    # Its parent must exist, as for cp -r and scp -r.
    line = one_error_line(
        ftx_run("get", "-r", server_address, "nested", "-o", str(work / "a" / "b")),
        LOCAL_FILE,
    )
    assert "is not a directory" in line
    # A run that fails before saving anything leaves no empty directory behind.
    nobody = f"127.0.0.1:{free_port()}"
    one_error_line(ftx_run("get", "-r", nobody, "nested", "-o", "gone", cwd=work), NETWORK)
    assert not (work / "gone").exists()


@pytest.mark.parametrize("root", ["", ".", "/", "./", "//"])
def test_one_rule_for_the_served_directory(work: Path, server_address: str, root: str) -> None:
    """`get -r HOST .` said "no such file" while `ls HOST .` worked; `ls HOST /` was refused
    as outside the root while `get -r HOST /` fetched everything."""
    listed = ftx_run("ls", server_address, root)
    assert listed.returncode == OK, listed.stderr
    assert "hello.txt" in listed.stdout.splitlines()
    out = work / "all"
    got = ftx_run("get", "-r", server_address, root, "-o", str(out))
    assert got.returncode == OK, got.stderr
    assert (out / "nested" / "deeper" / "bottom.txt").is_file()
    assert (out / "hello.txt").read_bytes() == HELLO
    one_error_line(ftx_run("get", server_address, root, cwd=work), USAGE)  # (needs -r)


def test_a_leading_slash_is_the_served_directory(work: Path, server_address: str) -> None:
    assert ftx_run("ls", server_address, "/nested").stdout.splitlines() == ["deeper/", "notes.md"]
    got = ftx_run("get", server_address, "/nested/notes.md", cwd=work)
    assert got.returncode == OK, got.stderr
    assert (work / "notes.md").is_file()
