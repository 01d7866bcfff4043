"""Tests of the ``ftx`` command, run as a real program in subprocesses.

Servers are started with ``ftx serve DIR --host 127.0.0.1 --port 0``; the port the system chose
is read from the first line the server prints. Every subprocess is bounded by a timeout, and
every server process is stopped when its test (or module) ends.

The exit codes are those of the table in docs/user-guide.md.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import blake3
import pytest
import xxhash

import ftx
from cli_helpers import free_port
from cli_helpers import ftx_run as ftx_cli
from cli_helpers import one_error_line as assert_one_line_error
from conftest import (
    ENV,
    PYTHON_M_FTX,
    SAMPLE_FILES,
    FakeConnection,
    FakeServer,
    ServerProcess,
    ServerStarter,
)
from ftx import ErrorCode
from ftx.protocol.messages import Data, Error, FileEnd, FileHeader, Get, Hello

SCRIPT = Path(sys.executable).parent / "ftx"
RUN_TIMEOUT = 30
START_TIMEOUT = 15

# docs/user-guide.md, "Exit codes".
OK, FAILURE, USAGE, NETWORK, NOT_FOUND, PERMISSION, INTEGRITY, PROTOCOL, LOCAL_FILE, BUSY = range(
    10
)
INTERRUPTED = 130


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sample_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One ``ftx serve sample_files/`` for the whole module."""
    starter = ServerStarter(tmp_path_factory.mktemp("sample-server"))
    try:
        yield starter(SAMPLE_FILES)
    finally:
        starter.stop_all()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An empty directory to download into."""
    path = tmp_path / "out"
    path.mkdir()
    return path


# --------------------------------------------------------------------------- version, help, usage


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(PYTHON_M_FTX, id="python-m-ftx"),
        pytest.param([str(SCRIPT)], id="console-script"),
    ],
)
def test_version(command: list[str]) -> None:
    if not SCRIPT.exists() and command[0] == str(SCRIPT):
        pytest.skip("no ftx console script next to this Python")
    result = subprocess.run(
        [*command, "--version"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=ENV,
        check=False,
    )
    assert result.returncode == OK, result.stderr
    assert result.stdout.strip() == f"ftx {ftx.__version__}"


def test_help() -> None:
    result = ftx_cli("--help")
    assert result.returncode == OK
    for word in ("serve", "get", "ls", "--version"):
        assert word in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("serve", ["--host", "--port", "--quiet", "--verbose"]),
        ("get", ["--output", "--force", "--retries", "--no-resume", "--timeout", "--quiet"]),
        ("ls", ["--long", "--timeout"]),
    ],
)
def test_command_help(command: str, options: list[str]) -> None:
    result = ftx_cli(command, "--help")
    assert result.returncode == OK
    for option in options:
        assert option in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["get"], id="get-no-args"),
        pytest.param(["get", "127.0.0.1"], id="get-no-path"),
        pytest.param(["ls"], id="ls-no-address"),
        pytest.param(["serve"], id="serve-no-dir"),
        pytest.param(["get", "127.0.0.1:99999", "x"], id="port-out-of-range"),
        pytest.param(["get", "127.0.0.1:http", "x"], id="port-not-a-number"),
        pytest.param(["get", ":3890", "x"], id="no-host"),
        pytest.param(["ls", "[::1"], id="unclosed-bracket"),
        pytest.param(["get", "127.0.0.1", "x", "--timeout", "0"], id="zero-timeout"),
        pytest.param(["get", "127.0.0.1", "x", "--timeout", "soon"], id="bad-timeout"),
        pytest.param(["get", "-q", "-v", "127.0.0.1", "x"], id="quiet-and-verbose"),
        pytest.param(["get", "127.0.0.1", "x", "--bogus"], id="unknown-option"),
        pytest.param(["get", "127.0.0.1", "x", "--retries", "-1"], id="negative-retries"),
        pytest.param(["get", "127.0.0.1", "x", "--retries", "many"], id="bad-retries"),
    ],
)
def test_bad_usage_exits_2(args: list[str], out: Path) -> None:
    result = ftx_cli(*args, cwd=out)
    assert result.returncode == USAGE, result.stderr
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(out) == []


def test_serve_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = ftx_cli("serve", str(tmp_path / "missing"), "--port", "0")
    line = assert_one_line_error(result, USAGE)
    assert "not a directory" in line


def test_serve_a_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    assert_one_line_error(ftx_cli("serve", str(tmp_path / "file"), "--port", "0"), USAGE)


def test_serve_on_a_port_in_use_is_a_network_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = ftx_cli("serve", str(tmp_path), "--host", "127.0.0.1", "--port", str(port))
    line = assert_one_line_error(result, NETWORK)
    assert "in use" in line


# --------------------------------------------------------------------------- ftx serve


def test_serve_banner_gives_a_working_get_line(
    sample_server: ServerProcess, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = sample_server.banner
    assert first.startswith(f"ftx {ftx.__version__} serving {SAMPLE_FILES} (read-only) on ")
    # "get a file with:  ftx get 127.0.0.1:PORT README.txt": run exactly that.
    prefix = "get a file with:  ftx "
    assert second.startswith(prefix), second
    args = second[len(prefix) :].split()
    assert args == ["get", sample_server.address, "README.txt"]
    result = ftx_cli(*args, cwd=out)
    assert result.returncode == OK, result.stderr
    assert (out / "README.txt").read_bytes() == (SAMPLE_FILES / "README.txt").read_bytes()


def test_serve_stops_with_exit_0_on_ctrl_c(start_ftx_server: ServerStarter, tmp_path) -> None:
    # docs/user-guide.md, exit codes: "130 interrupted: Ctrl-C during get or ls (ftx serve
    # exits 0 on Ctrl-C)". Known bug: it exits 130 with "ftx: interrupted" (see the report).
    served = tmp_path / "served"
    served.mkdir()
    server = start_ftx_server(served)
    assert ftx_cli("ls", server.address).returncode == OK  # it is serving by now
    server.process.send_signal(signal.SIGINT)
    returncode = server.process.wait(timeout=15)
    log = server.log.read_text()
    assert "Traceback" not in log
    assert returncode == OK, log


def test_serve_logs_requests_on_stderr(start_ftx_server: ServerStarter, tmp_path, out) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "a.txt").write_bytes(b"a")
    server = start_ftx_server(served)
    assert ftx_cli("get", server.address, "a.txt", cwd=out).returncode == OK
    assert ftx_cli("get", server.address, "../escape", cwd=out).returncode == NOT_FOUND
    server.process.send_signal(signal.SIGINT)
    server.process.wait(timeout=15)
    log = server.log.read_text()
    assert "a.txt" in log
    assert "../escape" in log
    assert "Traceback" not in log


# --------------------------------------------------------------------------- ftx get


def test_get_hello(sample_server: ServerProcess, out: Path) -> None:
    dest = out / "hello.txt"
    result = ftx_cli("get", sample_server.address, "hello.txt", "-o", str(dest))
    assert result.returncode == OK, result.stderr
    assert dest.read_bytes() == (SAMPLE_FILES / "hello.txt").read_bytes()
    assert "Traceback" not in result.stderr
    saved = [line for line in result.stderr.splitlines() if line.startswith("saved ")]
    assert len(saved) == 1, result.stderr
    assert str(dest) in saved[0]
    assert os.listdir(out) == ["hello.txt"]  # no hello.txt.part left behind
    assert dest.stat().st_mtime_ns == (SAMPLE_FILES / "hello.txt").stat().st_mtime_ns


def test_saved_line_shows_the_digest(sample_server: ServerProcess, out: Path) -> None:
    # docs/user-guide.md: "one line says what was saved and its digest, which you can compare
    # with xxhsum -H2", e.g. "saved big.bin (381.5 MiB in 2.06 s, 185.2 MiB/s), xxh3-128 a1...".
    result = ftx_cli("get", sample_server.address, "random-3MiB.bin", cwd=out)
    assert result.returncode == OK, result.stderr
    saved = [line for line in result.stderr.splitlines() if line.startswith("saved ")]
    assert len(saved) == 1, result.stderr
    assert re.fullmatch(
        r"saved random-3MiB\.bin \(3\.0 MiB in [\d.]+ s, [\d.]+ MiB/s\), xxh3-128 [0-9a-f]{32}",
        saved[0],
    ), saved[0]
    expected = xxhash.xxh3_128((SAMPLE_FILES / "random-3MiB.bin").read_bytes()).hexdigest()
    assert saved[0].endswith(f"xxh3-128 {expected}")


def test_cryptographic_digest_on_request(sample_server: ServerProcess, out: Path) -> None:
    # docs/user-guide.md: "--digest cryptographic ... compare with b3sum".
    result = ftx_cli(
        "get", sample_server.address, "random-3MiB.bin", "--digest", "cryptographic", cwd=out
    )
    assert result.returncode == OK, result.stderr
    expected = blake3.blake3((SAMPLE_FILES / "random-3MiB.bin").read_bytes()).hexdigest()
    assert result.stderr.strip().endswith(f"blake3 {expected}"), result.stderr
    assert sha256(out / "random-3MiB.bin") == sha256(SAMPLE_FILES / "random-3MiB.bin")


def test_digest_by_name(sample_server: ServerProcess, out: Path) -> None:
    # docs/user-guide.md: to compare with a published SHA-256, "--digest sha256".
    result = ftx_cli("get", sample_server.address, "random-3MiB.bin", "--digest", "sha256", cwd=out)
    assert result.returncode == OK, result.stderr
    assert result.stderr.strip().endswith(f"sha256 {sha256(SAMPLE_FILES / 'random-3MiB.bin')}")


def test_digest_by_name_that_the_server_lacks(fake_server, out: Path) -> None:
    def behaviour(conn: FakeConnection) -> None:
        conn.handshake()  # offers no optional digest
        conn.stop.wait(10)

    fake = fake_server(behaviour)
    result = ftx_cli("get", f"127.0.0.1:{fake.port}", "f.txt", "--digest", "blake3", cwd=out)
    assert result.returncode == PROTOCOL, result.stderr
    assert result.stderr.strip() == (
        f"ftx: 127.0.0.1:{fake.port}: the server does not compute blake3 digests; it offers "
        "sha256: choose another --digest"
    )
    assert os.listdir(out) == []


def test_unknown_digest_choice_is_a_usage_error(out: Path) -> None:
    result = ftx_cli("get", "127.0.0.1:1", "x", "--digest", "md5", cwd=out)
    assert result.returncode == USAGE
    assert "invalid choice: 'md5'" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(out) == []


def test_saved_line_says_sha256_with_a_server_without_blake3(fake_server, out: Path) -> None:
    content = b"sha256 only\n"

    def behaviour(conn: FakeConnection) -> None:
        conn.handshake()  # offers no features: no BLAKE3
        get = conn.receive()
        assert isinstance(get, Get)
        conn.send(FileHeader(get.request_id, len(content), 0, "0" * 32, digest=get.digest))
        conn.send(Data(content))
        conn.send(FileEnd(get.request_id, hashlib.sha256(content).hexdigest()))
        conn.stop.wait(10)

    fake = fake_server(behaviour)
    result = ftx_cli("get", f"127.0.0.1:{fake.port}", "f.txt", cwd=out)
    assert result.returncode == OK, result.stderr
    assert result.stderr.strip().endswith(f"sha256 {hashlib.sha256(content).hexdigest()}")
    assert (out / "f.txt").read_bytes() == content


@pytest.mark.parametrize(
    "path",
    ["random-3MiB.bin", "café menu — été.txt", "nested/notes.md", "nested/deeper/bottom.txt"],
)
def test_get_to_the_current_directory(sample_server: ServerProcess, out: Path, path: str) -> None:
    result = ftx_cli("get", sample_server.address, path, cwd=out)
    assert result.returncode == OK, result.stderr
    name = path.rsplit("/", 1)[-1]
    assert os.listdir(out) == [name]
    assert sha256(out / name) == sha256(SAMPLE_FILES / path)


def test_get_into_a_directory(sample_server: ServerProcess, out: Path) -> None:
    result = ftx_cli("get", sample_server.address, "nested/notes.md", "-o", str(out))
    assert result.returncode == OK, result.stderr
    assert (out / "notes.md").read_bytes() == (SAMPLE_FILES / "nested" / "notes.md").read_bytes()


def test_get_quiet_prints_nothing(sample_server: ServerProcess, out: Path) -> None:
    result = ftx_cli("get", "-q", sample_server.address, "hello.txt", cwd=out)
    assert result.returncode == OK
    assert result.stderr == ""
    assert result.stdout == ""
    assert (out / "hello.txt").exists()


def test_get_not_found(sample_server: ServerProcess, out: Path) -> None:
    result = ftx_cli("get", sample_server.address, "missing.txt", cwd=out)
    line = assert_one_line_error(result, NOT_FOUND)
    assert "missing.txt" in line
    assert os.listdir(out) == []


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("../README.md", id="dotdot-existing"),
        pytest.param("../no-such-file", id="dotdot-missing"),
        pytest.param("nested/../../pyproject.toml", id="nested-dotdot"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("nested", id="directory"),
        pytest.param("nested\\notes.md", id="backslash"),
    ],
)
def test_get_refused_paths(sample_server: ServerProcess, out: Path, path: str) -> None:
    dest = out / "dest"
    result = ftx_cli("get", sample_server.address, path, "-o", str(dest))
    assert_one_line_error(result, NOT_FOUND)
    assert os.listdir(out) == []


def test_get_outside_paths_give_the_same_answer_whether_or_not_they_exist(
    sample_server: ServerProcess, out: Path
) -> None:
    existing = ftx_cli("get", sample_server.address, "../README.md", "-o", str(out / "x"))
    missing = ftx_cli("get", sample_server.address, "../NOPE.md", "-o", str(out / "x"))
    assert existing.returncode == missing.returncode == NOT_FOUND
    assert existing.stderr.replace("README", "NOPE") == missing.stderr


def test_get_connection_refused(out: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = ftx_cli("get", address, "hello.txt", "--retries", "0", cwd=out, timeout=20)
    line = assert_one_line_error(result, NETWORK)
    assert "refused" in line
    assert os.listdir(out) == []


def test_get_fails_fast_on_a_refused_first_connection(out: Path) -> None:
    # Issue 16.1: a connection refused on the first attempt is a mistake (wrong port, nothing
    # running), not worth waiting for, whatever --retries says (it used to wait 1, 2, 4 s).
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = ftx_cli("get", address, "hello.txt", "--retries", "3", cwd=out)
    elapsed = time.monotonic() - started
    line = assert_one_line_error(result, NETWORK)
    assert "connection refused" in line
    assert "retrying" not in result.stderr
    assert elapsed < 5  # the interpreter's start-up; no back-off
    assert os.listdir(out) == []


def test_get_quiet_retries_print_only_the_error(out: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = ftx_cli("get", "-q", address, "hello.txt", "--retries", "1", cwd=out)
    assert_one_line_error(result, NETWORK)


def test_get_existing_destination_needs_force(sample_server: ServerProcess, out: Path) -> None:
    dest = out / "hello.txt"
    dest.write_bytes(b"precious")
    result = ftx_cli("get", sample_server.address, "hello.txt", "-o", str(dest))
    line = assert_one_line_error(result, LOCAL_FILE)
    assert "exists" in line
    assert dest.read_bytes() == b"precious"
    # Saving into the directory that holds it is the same destination.
    assert ftx_cli("get", sample_server.address, "hello.txt", cwd=out).returncode == LOCAL_FILE
    assert dest.read_bytes() == b"precious"

    for force in ("-f", "--force"):
        dest.write_bytes(b"precious")
        result = ftx_cli("get", sample_server.address, "hello.txt", "-o", str(dest), force)
        assert result.returncode == OK, result.stderr
        assert dest.read_bytes() == (SAMPLE_FILES / "hello.txt").read_bytes()
    assert sorted(os.listdir(out)) == ["hello.txt"]


def test_get_into_a_missing_directory(sample_server: ServerProcess, out: Path) -> None:
    dest = out / "missing" / "hello.txt"
    result = ftx_cli("get", sample_server.address, "hello.txt", "-o", str(dest))
    assert_one_line_error(result, LOCAL_FILE)
    assert os.listdir(out) == []


def test_get_with_a_timeout_from_a_silent_server(out: Path) -> None:
    # The listener completes TCP handshakes (backlog) but the program never answers.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        started = time.monotonic()
        address = f"127.0.0.1:{port}"
        result = ftx_cli("get", address, "x", "--timeout", "0.5", "--retries", "0", cwd=out)
        elapsed = time.monotonic() - started
    assert_one_line_error(result, NETWORK)
    assert elapsed < 15
    assert os.listdir(out) == []


# --------------------------------------------------------------------------- misbehaving servers

FakeStarter = Callable[[Callable[[FakeConnection], None]], FakeServer]


def _answer_get(respond: Callable[[FakeConnection, Get], None]):
    def behaviour(conn: FakeConnection) -> None:
        conn.handshake()
        get = conn.receive()
        assert isinstance(get, Get)
        respond(conn, get)
        conn.stop.wait(10)

    return behaviour


def _bad_digest(conn: FakeConnection, get: Get) -> None:
    conn.send(FileHeader(get.request_id, 5, 0, "0" * 32, digest=get.digest))
    conn.send(Data(b"hello"))
    conn.send(FileEnd(get.request_id, "0" * 64))


def _changed(conn: FakeConnection, get: Get) -> None:
    conn.send(FileHeader(get.request_id, 5, 0, "0" * 32, digest=get.digest))
    conn.send(Data(b"hel"))
    conn.send(Error(get.request_id, ErrorCode.CHANGED, "it changed"))


def _refuse(code: str) -> Callable[[FakeConnection, Get], None]:
    def respond(conn: FakeConnection, get: Get) -> None:
        conn.send(Error(get.request_id, code, f"refused: {code}"))

    return respond


def _at_hello(message: Error) -> Callable[[FakeConnection], None]:
    def behaviour(conn: FakeConnection) -> None:
        assert isinstance(conn.receive(), Hello)
        conn.send(message)

    return behaviour


def _garbage(conn: FakeConnection) -> None:
    conn.sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def _close_mid_file(conn: FakeConnection) -> None:
    conn.handshake()
    get = conn.receive()
    assert isinstance(get, Get)
    conn.send(FileHeader(get.request_id, 1000, 0, "0" * 32, digest=get.digest))
    conn.send(Data(b"x" * 100))


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        pytest.param(_answer_get(_bad_digest), INTEGRITY, id="digest-mismatch"),
        pytest.param(_answer_get(_changed), INTEGRITY, id="changed"),
        pytest.param(_answer_get(_refuse("permission-denied")), PERMISSION, id="permission"),
        pytest.param(_answer_get(_refuse("not-a-file")), NOT_FOUND, id="not-a-file"),
        pytest.param(_answer_get(_refuse("some-future-code")), FAILURE, id="unknown-code"),
        pytest.param(_at_hello(Error(None, "busy", "later")), BUSY, id="busy"),
        pytest.param(_at_hello(Error(None, "shutting-down", "bye")), BUSY, id="shutting-down"),
        pytest.param(
            _at_hello(Error(None, "unsupported-version", "v9 only")), PROTOCOL, id="version"
        ),
        pytest.param(_answer_get(_refuse("internal")), FAILURE, id="internal"),
        pytest.param(_garbage, PROTOCOL, id="not-ftx"),
        pytest.param(_close_mid_file, NETWORK, id="closed-mid-file"),
    ],
)
def test_get_exit_codes_from_misbehaving_servers(
    fake_server: FakeStarter, out: Path, behaviour, code: int
) -> None:
    fake = fake_server(behaviour)
    dest = out / "file.bin"
    address = f"127.0.0.1:{fake.port}"
    result = ftx_cli("get", address, "file.bin", "-o", str(dest), "--retries", "0")
    assert_one_line_error(result, code)
    assert not dest.exists()
    if code == INTEGRITY:
        assert os.listdir(out) == []  # the part file is deleted too


def test_get_interrupted(fake_server: FakeStarter, out: Path) -> None:
    def behaviour(conn: FakeConnection) -> None:
        conn.handshake()
        assert isinstance(conn.receive(), Get)
        fake.reached.set()  # the client waits for the answer now
        conn.stop.wait(20)

    fake = fake_server(behaviour)
    process = subprocess.Popen(
        [*PYTHON_M_FTX, "get", f"127.0.0.1:{fake.port}", "file.bin"],
        cwd=out,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        assert fake.reached.wait(START_TIMEOUT)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == INTERRUPTED
    assert stderr.decode().strip() == "ftx: interrupted"
    assert not (out / "file.bin").exists()


# --------------------------------------------------------------------------- ftx ls


def _expected_short(directory: Path) -> list[str]:
    return sorted(
        entry.name + ("/" if entry.is_dir(follow_symlinks=False) else "")
        for entry in os.scandir(directory)
    )


def _expected_long(directory: Path) -> list[str]:
    lines = []
    for name in sorted(os.listdir(directory)):
        st = (directory / name).lstat()
        size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime_ns / 1e9))
        suffix = "/" if stat.S_ISDIR(st.st_mode) else ""
        lines.append(f"{stat.filemode(st.st_mode)} {size:>12} {when} {name}{suffix}")
    return lines


def test_ls_root(sample_server: ServerProcess) -> None:
    result = ftx_cli("ls", sample_server.address)
    assert result.returncode == OK, result.stderr
    assert result.stdout.splitlines() == _expected_short(SAMPLE_FILES)
    assert "nested/" in result.stdout.splitlines()
    assert "café menu — été.txt" in result.stdout.splitlines()


def test_ls_long(sample_server: ServerProcess) -> None:
    for path, directory in (("", SAMPLE_FILES), ("nested", SAMPLE_FILES / "nested")):
        result = ftx_cli("ls", "-l", sample_server.address, path)
        assert result.returncode == OK, result.stderr
        assert result.stdout.splitlines() == _expected_long(directory)
    lines = ftx_cli("ls", "--long", sample_server.address, "nested").stdout.splitlines()
    assert lines[0].startswith("d")
    assert lines[0].endswith(" deeper/")
    assert lines[1].startswith("-rw")
    assert lines[1].endswith(" notes.md")


def test_ls_a_single_file(sample_server: ServerProcess) -> None:
    result = ftx_cli("ls", sample_server.address, "nested/notes.md")
    assert result.returncode == OK, result.stderr
    assert result.stdout.splitlines() == ["notes.md"]


@pytest.mark.parametrize("path", ["missing", "../", "/etc", "nested\\deeper"])
def test_ls_refused(sample_server: ServerProcess, path: str) -> None:
    result = ftx_cli("ls", sample_server.address, path)
    assert_one_line_error(result, NOT_FOUND)
    assert result.stdout == ""


def test_ls_connection_refused() -> None:
    assert_one_line_error(ftx_cli("ls", f"127.0.0.1:{free_port()}", timeout=20), NETWORK)


def test_ls_escapes_control_characters(start_ftx_server: ServerStarter, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    hostile = "evil\x1b[2Jname\x07.txt"
    (served / hostile).write_bytes(b"x")
    (served / "plain.txt").write_bytes(b"y")
    server = start_ftx_server(served)
    for args in ((), ("-l",)):
        result = ftx_cli("ls", *args, server.address)
        assert result.returncode == OK, result.stderr
        assert "\x1b" not in result.stdout
        assert "\x07" not in result.stdout
        assert "evil\\x1b[2Jname\\x07.txt" in result.stdout
        assert result.stdout.splitlines()[-1].endswith("plain.txt")


def test_ls_shows_links_as_links(start_ftx_server: ServerStarter, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "target.txt").write_bytes(b"12345")
    (served / "link").symlink_to("target.txt")
    (served / "out").symlink_to("/etc/passwd")
    server = start_ftx_server(served)
    result = ftx_cli("ls", "-l", server.address)
    assert result.returncode == OK, result.stderr
    lines = {line.rsplit(" ", 1)[-1]: line for line in result.stdout.splitlines()}
    assert sorted(lines) == ["link", "out", "target.txt"]
    assert lines["link"].startswith("l")
    assert lines["out"].startswith("l")
    assert lines["target.txt"].startswith("-")
    assert " 5 " in lines["target.txt"]


def _served_copy(tmp_path: Path, names: Sequence[str]) -> Path:
    served = tmp_path / "served"
    served.mkdir()
    for name in names:
        shutil.copy(SAMPLE_FILES / name, served / name)
    return served


def test_get_and_ls_from_a_fresh_server(start_ftx_server: ServerStarter, tmp_path, out) -> None:
    served = _served_copy(tmp_path, ["hello.txt", "random-3MiB.bin"])
    server = start_ftx_server(served, "-q")
    assert ftx_cli("ls", server.address).stdout.splitlines() == ["hello.txt", "random-3MiB.bin"]
    result = ftx_cli("get", server.address, "random-3MiB.bin", cwd=out)
    assert result.returncode == OK, result.stderr
    assert sha256(out / "random-3MiB.bin") == sha256(served / "random-3MiB.bin")
    assert server.log.read_text() == ""  # -q: warnings and errors only


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
def test_get_to_dev_null_verifies_and_keeps_nothing(
    sample_server: ServerProcess, out: Path, force: list[str]
) -> None:
    """`-o /dev/null` (to check a file, or time a transfer) downloads and verifies, and leaves
    the device as it was: never replaced by a file, even with --force (as root it could be),
    and no part file beside it."""
    before = os.stat(os.devnull)
    result = ftx_cli("get", sample_server.address, "random-3MiB.bin", "-o", os.devnull, *force)
    assert result.returncode == OK, result.stderr
    expected = xxhash.xxh3_128((SAMPLE_FILES / "random-3MiB.bin").read_bytes()).hexdigest()
    saved = [line for line in result.stderr.splitlines() if line.startswith("saved ")]
    assert len(saved) == 1, result.stderr
    assert saved[0].startswith(f"saved nothing ({os.devnull}) (3.0 MiB"), saved
    assert saved[0].endswith(f"xxh3-128 {expected}")
    after = os.stat(os.devnull)
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert not os.path.lexists(os.devnull + ".part")


def test_get_force_never_replaces_a_pipe_or_a_directory(
    sample_server: ServerProcess, out: Path
) -> None:
    fifo = out / "pipe"
    os.mkfifo(fifo)
    result = ftx_cli("get", sample_server.address, "hello.txt", "-o", str(fifo), "--force")
    assert "is not a regular file" in assert_one_line_error(result, LOCAL_FILE)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(out)) == ["pipe"]
