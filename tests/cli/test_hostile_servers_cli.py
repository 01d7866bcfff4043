"""Issue 17 through the real ``ftx`` command: what a hostile server says never reaches the
terminal unescaped (defect 3), ``get -r`` never saves a file inside a same-named directory and
reports every name it could not fetch (defect 4), and a server that sends frames without
progress does not hold ``--timeout`` off.

Scripted servers (tests/hostile_peers.py) run in the test's nursery; ``ftx`` runs as a
subprocess (``trio.run_process``), so that both go on at once.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import trio

from conftest import ENV, PYTHON_M_FTX
from ftx.protocol.messages import Data, Entry, EntryType, Error, FileEnd, FileHeader, Get
from hostile_peers import ScriptedConnection, ScriptedServer, TreeScript, sha256_hex

NETWORK, PROTOCOL, LOCAL_FILE, BUSY = 3, 7, 8, 9
ESCAPES = "\x1b]0;pwned\x07\x1b[2J"
TIMEOUT = 30


async def ftx(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            [*PYTHON_M_FTX, *args],
            cwd=cwd,
            env=ENV,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def assert_nothing_raw(result: subprocess.CompletedProcess[bytes]) -> str:
    """No control character reached the terminal (stdout or stderr) but line ends; return
    standard error as text."""
    for stream in (result.stdout, result.stderr):
        assert not {byte for byte in stream if byte < 0x20 and byte != 0x0A}, stream
        assert 0x7F not in stream
    text = result.stderr.decode()
    assert "Traceback" not in text
    return text


async def serve(nursery: trio.Nursery, script) -> str:  # type: ignore[no-untyped-def]
    server = await ScriptedServer(script).start(nursery)
    return f"127.0.0.1:{server.port}"


async def test_escapes_in_an_end_digest_never_reach_the_terminal(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.handshake()
        get = await conn.receive()
        assert isinstance(get, Get)
        header = FileHeader(get.request_id, 5, 0, "1" * 32, 0, 0o644, get.digest)
        await conn.send(header, Data(b"hello"), FileEnd(get.request_id, ESCAPES + "0" * 56))
        await conn.receive()

    address = await serve(nursery, script)
    result = await ftx("get", address, "hello.txt", "--retries", "0", cwd=tmp_path)
    stderr = assert_nothing_raw(result)
    assert result.returncode == PROTOCOL, stderr
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("ftx: "), stderr
    assert "END's digest is not a sha256 digest" in stderr
    assert not (tmp_path / "hello.txt").exists()


async def test_escapes_in_a_refusal_being_retried_never_reach_the_terminal(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.receive()
        await conn.send(Error(None, "busy", f"later {ESCAPES} please"))

    address = await serve(nursery, script)
    result = await ftx("get", address, "x.txt", "--retries", "1", cwd=tmp_path)
    stderr = assert_nothing_raw(result)
    assert result.returncode == BUSY, stderr
    lines = stderr.splitlines()
    assert "retrying" in lines[0], lines
    assert "\\x1b]0;pwned\\x07" in lines[0], lines
    assert lines[-1].startswith("ftx: later \\x1b"), lines


async def test_escapes_in_a_name_that_cannot_be_saved_never_reach_the_terminal(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    name = f"evil{ESCAPES}.txt"
    script = TreeScript(
        {
            "": [Entry("top", EntryType.DIRECTORY, 0, 0, 0o755)],
            "top": [Entry(name, EntryType.FILE, 4, 0, 0o644)],
        },
        {f"top/{name}": b"evil"},
    )
    address = await serve(nursery, script)
    (tmp_path / "top" / name).mkdir(parents=True)  # its local path is taken: a conflict
    result = await ftx("get", "-r", address, "top", "-j", "1", "--retries", "0", cwd=tmp_path)
    stderr = assert_nothing_raw(result)
    assert result.returncode == LOCAL_FILE, stderr
    assert "is a directory" in stderr
    assert list((tmp_path / "top" / name).iterdir()) == []


async def test_get_r_reports_a_duplicate_name_and_saves_nothing_inside_a_directory(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    top = [
        Entry("d", EntryType.DIRECTORY, 0, 0, 0o755),
        Entry("d", EntryType.FILE, 4, 0, 0o644),
        Entry("ok.txt", EntryType.FILE, 2, 0, 0o644),
    ]
    script = TreeScript(
        {"": [Entry("top", EntryType.DIRECTORY, 0, 0, 0o755)], "top": top, "top/d": []},
        {"top/d": b"file", "top/ok.txt": b"ok"},
    )
    address = await serve(nursery, script)
    result = await ftx("get", "-r", address, "top", "--retries", "0", cwd=tmp_path)
    stderr = assert_nothing_raw(result)
    assert result.returncode == PROTOCOL, stderr
    assert "top/d: " in stderr
    assert "listed 'd' 2 times" in stderr
    assert "1 file(s) saved" in stderr
    assert "1 failed" in stderr
    assert not (tmp_path / "top" / "d").exists()
    assert (tmp_path / "top" / "ok.txt").read_bytes() == b"ok"


async def test_get_r_never_saves_a_file_inside_a_same_named_local_directory(
    tmp_path: Path, start_server: object
) -> None:
    served = tmp_path / "served"
    (served / "top").mkdir(parents=True)
    (served / "top" / "d").write_bytes(b"remote file")
    host, port = await start_server(served)  # type: ignore[operator]
    out = tmp_path / "out"
    (out / "top" / "d").mkdir(parents=True)
    for force in ([], ["--force"]):
        result = await ftx("get", "-r", f"{host}:{port}", "top", *force, cwd=out)
        stderr = assert_nothing_raw(result)
        assert result.returncode == LOCAL_FILE, stderr
        assert "top/d is a directory" in stderr
        assert list((out / "top" / "d").iterdir()) == []


async def test_empty_frames_do_not_hold_off_the_timeout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.handshake()
        get = await conn.receive()
        assert isinstance(get, Get)
        content = b"x" * 1000
        await conn.send(FileHeader(get.request_id, 1000, 0, "1" * 32, 0, 0o644, get.digest))
        for _ in range(200):  # 20 s of empty DATA, unless the client gives up first
            await conn.send(Data(b""))
            await trio.sleep(0.1)
        await conn.send(Data(content), FileEnd(get.request_id, sha256_hex(content)))

    address = await serve(nursery, script)
    started = trio.current_time()
    result = await ftx("get", address, "slow.bin", "--timeout", "1", "--retries", "0", cwd=tmp_path)
    stderr = assert_nothing_raw(result)
    assert result.returncode == NETWORK, stderr
    assert "no progress for 1 seconds" in stderr
    assert trio.current_time() - started < 15
    assert not (tmp_path / "slow.bin").exists()
