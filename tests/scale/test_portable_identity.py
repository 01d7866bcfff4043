"""Issue 15, item 1: identities that survive replicas (docs/protocol.md, section 9.4).

Two servers whose roots hold copies of the same file (same path, size and mtime) give it the
same portable identity, so a download cut on one resumes on the other; copies that differ only
in content are still caught by the whole-file digest, and never spliced.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
import trio

import ftx
from ftx.protocol import PORTABLE_IDENTITY_FEATURE
from test_end_to_end import Progress, Proxy, fetch, kept_bytes

SIZE = 6 << 20


def make_replicas(tmp_path: Path, *, same_content: bool = True) -> tuple[Path, Path, bytes]:
    """Two roots holding ``f.bin`` with the same path, size and mtime; return them and the
    content of the second one."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    content = random.Random(1).randbytes(SIZE)
    (a / "f.bin").write_bytes(content)
    if same_content:
        shutil.copy2(a / "f.bin", b / "f.bin")  # as cp -p or rsync -a would
        return a, b, content
    other = random.Random(2).randbytes(SIZE)
    (b / "f.bin").write_bytes(other)
    mtime = (a / "f.bin").stat().st_mtime_ns
    os.utime(b / "f.bin", ns=(mtime, mtime))
    return a, b, other


async def cut_download(address: tuple[str, int], nursery: trio.Nursery, dest: Path) -> int:
    """A download of f.bin from ``address`` cut after 2 MiB; return the bytes kept."""
    proxy = Proxy(address, limit=2 << 20, mode="close")
    port = await nursery.start(proxy.run)
    with pytest.raises((ftx.ConnectionLostError, ftx.ProtocolError)):
        await fetch(("127.0.0.1", port), "f.bin", dest)
    return kept_bytes(dest)


async def test_a_resume_moves_to_a_replica(start_server, nursery, tmp_path):
    a, b, content = make_replicas(tmp_path)
    first = await start_server(a, identity="portable")
    second = await start_server(b, identity="portable")
    dest = tmp_path / "out.bin"
    kept = await cut_download(first, nursery, dest)
    progress = Progress()
    await fetch(second, "f.bin", dest, progress=progress)
    assert progress.calls[0][0] == kept > 0, "the replica did not continue the download"
    assert dest.read_bytes() == content


async def test_a_replica_with_other_content_is_caught(start_server, nursery, tmp_path):
    a, b, content_b = make_replicas(tmp_path, same_content=False)
    first = await start_server(a, identity="portable")
    second = await start_server(b, identity="portable")
    dest = tmp_path / "out.bin"
    kept = await cut_download(first, nursery, dest)
    progress = Progress()
    await fetch(second, "f.bin", dest, progress=progress)
    # Same identity, so the resume began where the part ended; the whole-file digest failed,
    # and the client fetched the whole file again from zero: nothing of A's spliced.
    assert progress.calls[0][0] == kept > 0
    assert 0 in [done for done, _ in progress.calls[1:]]
    assert dest.read_bytes() == content_b


async def test_local_identities_do_not_move(start_server, nursery, tmp_path):
    a, b, content = make_replicas(tmp_path)
    first = await start_server(a)
    second = await start_server(b)
    dest = tmp_path / "out.bin"
    await cut_download(first, nursery, dest)
    progress = Progress()
    await fetch(second, "f.bin", dest, progress=progress)
    assert progress.calls[0][0] == 0  # the default is unchanged: another copy is another file
    assert dest.read_bytes() == content


async def test_a_portable_server_says_so(start_server, tmp_path):
    a, _, _ = make_replicas(tmp_path)
    for mode, listed in (("portable", True), ("local", False)):
        address = await start_server(a, identity=mode)
        with trio.fail_after(10):
            async with ftx.connect(*address) as client:
                hello = client.server_hello
                assert hello is not None
                assert (PORTABLE_IDENTITY_FEATURE in hello.features) is listed


async def test_a_changed_replica_file_is_refused_as_changed(start_server, nursery, tmp_path):
    a, b, _ = make_replicas(tmp_path)
    first = await start_server(a, identity="portable")
    second = await start_server(b, identity="portable")
    dest = tmp_path / "out.bin"
    await cut_download(first, nursery, dest)
    (b / "f.bin").write_bytes(b"shorter now")  # size and mtime move: a new identity
    progress = Progress()
    await fetch(second, "f.bin", dest, progress=progress)
    assert progress.calls[0][0] == 0
    assert dest.read_bytes() == b"shorter now"


def test_unknown_identity_modes_are_refused():
    with pytest.raises(ValueError, match="identity"):
        ftx.ServerConfig(identity="inode")  # type: ignore[arg-type]
