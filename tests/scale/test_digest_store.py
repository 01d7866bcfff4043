"""Issue 15, item 2: digests that outlive the process (``--state-dir``, docs/protocol.md §9.4)."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
import trio

import ftx
from conftest import ENV, PYTHON_M_FTX, serving
from ftx.server import _downloads
from ftx.server._digest_store import DIGEST_STORE_NAME, DigestStore

SIZE = 1 << 20  # past the read-ahead of small files: streamed, hashed, remembered


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The algorithms the server started hashing a file with, in order."""
    calls: list[str] = []
    real = _downloads.new_hasher

    def counting(algorithm: str):  # type: ignore[no-untyped-def]
        calls.append(algorithm)
        return real(algorithm)

    monkeypatch.setattr(_downloads, "new_hasher", counting)
    return calls


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.bin").write_bytes(random.Random(5).randbytes(SIZE))
    return root


async def download(root: Path, state: Path, dest: Path) -> ftx.Download:
    async with serving(root, state_dir=state) as (_server, port):
        with trio.fail_after(20):
            async with ftx.connect("127.0.0.1", port) as client:
                return await client.get("f.bin", dest, overwrite=True)


async def test_a_restarted_server_does_not_hash_again(tmp_path, hashed):
    root, state = make_root(tmp_path), tmp_path / "state"
    first = await download(root, state, tmp_path / "1.bin")
    assert len(hashed) == 1
    assert (state / DIGEST_STORE_NAME).exists()
    second = await download(root, state, tmp_path / "2.bin")  # a new Server: memory is empty
    assert len(hashed) == 1, "the stored digest was not used"
    assert second.digest == first.digest
    assert (tmp_path / "2.bin").read_bytes() == (root / "f.bin").read_bytes()


async def test_a_stale_entry_is_never_used(tmp_path, hashed):
    root, state = make_root(tmp_path), tmp_path / "state"
    await download(root, state, tmp_path / "1.bin")
    path = root / "f.bin"
    mtime = path.stat().st_mtime_ns
    await trio.sleep(0.05)  # past the clock granularity: the change time moves
    new = random.Random(6).randbytes(SIZE)  # same size, same mtime
    path.write_bytes(new)
    os.utime(path, ns=(mtime, mtime))
    await download(root, state, tmp_path / "2.bin")
    assert len(hashed) == 2
    assert (tmp_path / "2.bin").read_bytes() == new


def test_the_state_dir_must_be_outside_the_served_tree(tmp_path):
    root = make_root(tmp_path)
    for inside in (root, root / "sub"):
        with pytest.raises(ValueError, match="outside the served directory"):
            ftx.Server(root, ftx.ServerConfig(state_dir=inside))
    result = subprocess.run(
        [*PYTHON_M_FTX, "serve", str(root), "--port", "0", "--state-dir", str(root / "s")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result
    assert "must be outside the served directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_damaged_database_is_refused_at_start(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / DIGEST_STORE_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match=r"cannot use .* as the digest store"):
        DigestStore(state)


def test_servers_sharing_the_store_write_at_once(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    stores = [DigestStore(state) for _ in range(2)]  # as two processes would
    errors: list[BaseException] = []

    def write(store: DigestStore, name: str) -> None:
        try:
            for i in range(150):
                store.put(f"sha256:{name}{i}", f"{i:064x}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, str(n))) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert stores[1].get("sha256:0149") == f"{149:064x}"
    assert stores[0].get("sha256:1149") == f"{149:064x}"
    with sqlite3.connect(state / DIGEST_STORE_NAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT count(*) FROM digests").fetchone()[0] == 300
    db.close()


def test_a_state_dir_that_cannot_be_made_is_one_line(tmp_path):
    root = make_root(tmp_path)
    (tmp_path / "file").write_text("")
    result = subprocess.run(
        [*PYTHON_M_FTX, "serve", str(root), "--port", "0", "--state-dir", str(tmp_path / "file")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result
    assert "cannot make the state directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
