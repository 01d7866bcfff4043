"""Issue 17, from the server's side of the wire: a scripted hostile server (frames written by
hand from docs/protocol.md) against the real client library. Each test reproduces one defect or
closes one gap of the spec: the client never presents a partial or spliced file as complete,
and fails with the documented error.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import ftx
import ftx.protocol._responses
from ftx.client._tree import Skipped, download
from ftx.framing import encode_frame, encode_header
from ftx.protocol.messages import (
    Data,
    Entry,
    EntryType,
    FileEnd,
    FileHeader,
    Get,
    Hello,
    Kind,
    ListDir,
    ListEnd,
    ListEntries,
    TreeDir,
    TreeEnd,
    TreeFiles,
    TreeRecord,
    encode_message,
)
from hostile_peers import (
    LOOPBACK,
    ScriptedConnection,
    ScriptedServer,
    TreeScript,
    TreeStreamScript,
    frame,
    json_frame,
    sha256_hex,
)

TIMEOUT = 15
CHUNK = 256 * 1024


async def start(nursery: trio.Nursery, script: Callable[[ScriptedConnection], object]) -> int:
    server = await ScriptedServer(script).start(nursery)  # type: ignore[arg-type]
    return server.port


def connect(port: int, **config: object):  # type: ignore[no-untyped-def]
    return ftx.connect(LOOPBACK, port, ftx.ClientConfig(**config))  # type: ignore[arg-type]


async def next_get(conn: ScriptedConnection) -> Get:
    request = await conn.receive()
    assert isinstance(request, Get), request
    return request


async def send_file(
    conn: ScriptedConnection, get: Get, content: bytes, identity: str, digest: str | None = None
) -> None:
    """Answer ``get`` from its offset, in chunks, with ``digest`` (default: the right one)."""
    size = len(content)
    await conn.send(FileHeader(get.request_id, size, 0, identity, get.offset, 0o644, get.digest))
    for start in range(get.offset, size, CHUNK):
        await conn.send(Data(content[start : start + CHUNK]))
    await conn.send(FileEnd(get.request_id, sha256_hex(content) if digest is None else digest))


# ------------------------------------------------- defect 3: END's digest is lowercase hex


@pytest.mark.parametrize(
    ("verify", "digest"),
    [
        pytest.param(True, "\x1b]0;pwned\x07\x1b[2J" + "0" * 54, id="terminal-escapes"),
        pytest.param(
            True, "2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824", id="upper"
        ),
        pytest.param(True, "2cf24dba", id="too-short"),
        pytest.param(
            True, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b982g", id="not-hex"
        ),
        pytest.param(
            False, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", id="unasked"
        ),
    ],
)
async def test_an_end_digest_that_is_not_lowercase_hex_is_a_protocol_violation(
    nursery: trio.Nursery, tmp_path: Path, verify: bool, digest: str
) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.handshake()
        await send_file(conn, await next_get(conn), b"hello", "1" * 32, digest)
        await conn.receive()

    port = await start(nursery, script)
    dest = tmp_path / "hello.txt"
    with trio.fail_after(TIMEOUT):
        async with connect(port) as client:
            with pytest.raises(ftx.RemoteProtocolError, match="END") as caught:
                await client.get("hello.txt", dest, verify=verify)
    assert "\x1b" not in str(caught.value)  # the server's text is not repeated
    assert not dest.exists()


# ----------------------------- resume answered under another identity (gap): from zero


def resumable(tmp_path: Path, content: bytes, kept: int, identity: str) -> Path:
    """A download of ``data.bin`` interrupted after ``kept`` bytes, as the client leaves it."""
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(content[:kept])
    record = {"version": 1, "path": "data.bin", "identity": identity, "size": len(content)}
    (tmp_path / "data.bin.part.resume").write_text(json.dumps({**record, "digest": "sha256"}))
    return dest


@pytest.mark.parametrize("pipelined", [False, True])
async def test_a_resume_answered_with_another_identity_starts_again_from_zero(
    nursery: trio.Nursery, tmp_path: Path, pipelined: bool
) -> None:
    old = random.Random(1).randbytes(2 << 20)
    new = old[: 1 << 20] + random.Random(2).randbytes(1 << 20)  # same start, other end
    requested: list[tuple[int, str | None]] = []

    async def script(conn: ScriptedConnection) -> None:
        await conn.handshake()
        while True:
            get = await next_get(conn)
            requested.append((get.offset, get.identity))
            # A server that ignores the identity asked for and answers with its own file.
            await send_file(conn, get, new, "2" * 32)

    port = await start(nursery, script)
    dest = resumable(tmp_path, old, 1 << 20, "1" * 32)
    with trio.fail_after(TIMEOUT):
        async with connect(port) as client:
            if pipelined:
                (result,) = await client.get_many([("data.bin", dest)])
                assert isinstance(result, ftx.Download), result
            else:
                await client.get("data.bin", dest)
    assert requested == [(1 << 20, "1" * 32), (0, None)]
    # The part's bytes are the new file's start too, so appending to them would verify: only
    # the second request shows that the client started again rather than splice.
    assert dest.read_bytes() == new
    assert not (tmp_path / "data.bin.part").exists()


# --------------------------------------------- the client's read-progress deadline (gap)


async def trickle_file(conn: ScriptedConnection, frame: bytes) -> None:
    """Announce a file, then send ``frame`` every 50 ms until the client gives up."""
    await conn.handshake()
    get = await next_get(conn)
    await conn.send(FileHeader(get.request_id, 1 << 20, 0, "1" * 32, 0, 0o644, get.digest))
    while True:
        await conn.send_raw(frame)
        await trio.sleep(0.05)


async def trickle_listing(conn: ScriptedConnection, frame: bytes) -> None:
    await conn.handshake()
    request = await conn.receive()
    assert isinstance(request, ListDir)
    while True:
        await conn.send_raw(frame)
        await trio.sleep(0.05)


@pytest.mark.parametrize(
    ("script", "frame"),
    [
        pytest.param(trickle_file, json_frame(Kind.DATA, b""), id="empty-data"),
        pytest.param(trickle_file, json_frame(Kind.DATA, b"x"), id="a-byte-at-a-time"),
        pytest.param(trickle_file, json_frame(0x80, b"ext"), id="extension-frames"),
        pytest.param(
            trickle_listing,
            json_frame(Kind.ENTRIES, b'{"id":1,"entries":[]}'),
            id="empty-entries-pages",
        ),
    ],
)
async def test_frames_without_progress_do_not_hold_the_client(
    nursery: trio.Nursery, tmp_path: Path, script, frame: bytes
) -> None:
    async def run(conn: ScriptedConnection) -> None:
        await script(conn, frame)

    port = await start(nursery, run)
    started = trio.current_time()
    with trio.fail_after(TIMEOUT):
        async with connect(port, idle_timeout=0.5) as client:
            request = (
                client.list("")
                if script is trickle_listing
                else client.get("slow.bin", tmp_path / "slow.bin")
            )
            with pytest.raises(ftx.ConnectionLostError, match=r"no progress for 0\.5 seconds"):
                await request
    assert trio.current_time() - started < 5
    assert not (tmp_path / "slow.bin").exists()


async def test_a_slow_server_that_makes_progress_is_not_cut_off(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # 64 KiB every 0.15 s with a 0.4 s deadline: slow, but each period brings 64 KiB or more.
    content = random.Random(3).randbytes(8 * 65536)

    async def script(conn: ScriptedConnection) -> None:
        await conn.handshake()
        get = await next_get(conn)
        await conn.send(FileHeader(get.request_id, len(content), 0, "1" * 32, 0, 0o644, get.digest))
        for start in range(0, len(content), 65536):
            await trio.sleep(0.15)
            await conn.send(Data(b""))  # empty frames between do not count, nor hurt
            await conn.send(Data(content[start : start + 65536]))
        await conn.send(FileEnd(get.request_id, sha256_hex(content)))
        await conn.receive()

    port = await start(nursery, script)
    with trio.fail_after(TIMEOUT):
        async with connect(port, idle_timeout=0.4) as client:
            await client.get("slow.bin", tmp_path / "slow.bin")
    assert (tmp_path / "slow.bin").read_bytes() == content


# ------------------------------------- a connection that ends inside a frame (gap): lost


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(encode_header(1000) + b"\x21" + b"x" * 10, id="inside-a-payload"),
        pytest.param(b"\x00\x00", id="inside-a-length"),
    ],
)
async def test_a_server_that_vanishes_inside_a_frame_is_a_lost_connection(
    nursery: trio.Nursery, tmp_path: Path, tail: bytes
) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.handshake()
        get = await next_get(conn)
        await conn.send(FileHeader(get.request_id, 5000, 0, "1" * 32, 0, 0o644, get.digest))
        await conn.send_raw(tail)

    port = await start(nursery, script)
    with trio.fail_after(TIMEOUT):
        async with connect(port) as client:
            with pytest.raises(ftx.ConnectionLostError, match="inside a frame"):
                await client.get("x.bin", tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()


# -------------------------------------------------------- limits the spec states (gap)


async def test_a_server_hello_over_64_kib_is_a_protocol_violation(nursery: trio.Nursery) -> None:
    async def script(conn: ScriptedConnection) -> None:
        assert isinstance(await conn.receive(), Hello)
        body = b'{"protocol":"ftx","versions":[1],"max_frame_size":1048576,"pad":"'
        await conn.send_raw(json_frame(Kind.HELLO, body + b"x" * 65536 + b'"}'))
        await conn.receive()

    port = await start(nursery, script)
    with trio.fail_after(TIMEOUT), pytest.raises(ftx.RemoteProtocolError, match="handshake"):
        async with connect(port):
            pass


async def test_a_listing_longer_than_the_limit_is_a_protocol_violation(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ftx.protocol._responses, "MAX_LIST_ENTRIES", 5)
    entries = tuple(Entry(f"f{i}", EntryType.FILE, 0, 0, 0o644) for i in range(4))

    async def script(conn: ScriptedConnection) -> None:
        await conn.handshake()
        request = await conn.receive()
        assert isinstance(request, ListDir)
        await conn.send(ListEntries(request.request_id, entries))
        await conn.send(ListEntries(request.request_id, entries))  # 8 > 5
        await conn.send(ListEnd(request.request_id, 8))
        await conn.receive()

    port = await start(nursery, script)
    with trio.fail_after(TIMEOUT):
        async with connect(port) as client:
            with pytest.raises(ftx.RemoteProtocolError, match="more than 5 entries"):
                await client.list("")


# ---------------------------------------------------- get -r: defect 4 and duplicate names


def tree_connector(port: int):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def connect_one() -> AsyncIterator[ftx.Client]:
        async with ftx.connect(LOOPBACK, port) as client:
            yield client

    return connect_one


DIRECTORY = Entry("d", EntryType.DIRECTORY, 0, 0, 0o755)
FILE = Entry("d", EntryType.FILE, 4, 0, 0o644)


@pytest.mark.parametrize(
    "listing",
    [[DIRECTORY, FILE], [FILE, DIRECTORY], [FILE, FILE]],
    ids=["dir-file", "file-dir", "file-file"],
)
async def test_a_name_listed_twice_is_reported_once_and_none_of_its_entries_fetched(
    nursery: trio.Nursery, tmp_path: Path, listing: list[Entry]
) -> None:
    ok = Entry("ok.txt", EntryType.FILE, 2, 0, 0o644)
    script = TreeScript(
        {"": [Entry("top", EntryType.DIRECTORY, 0, 0, 0o755)], "top": [*listing, ok], "top/d": []},
        {"top/d": b"file", "top/ok.txt": b"ok"},
    )
    port = await start(nursery, script)
    dest = tmp_path / "dest"
    dest.mkdir()
    with trio.fail_after(TIMEOUT):
        results = await download(tree_connector(port), ["top"], dest, recursive=True, jobs=2)
    by_path: dict[str, list[object]] = {}
    for path, result in results:
        by_path.setdefault(path, []).append(result)
    assert sorted(by_path) == ["top/d", "top/ok.txt"]
    (duplicate,) = by_path["top/d"]
    assert isinstance(duplicate, ftx.RemoteProtocolError)
    assert "listed 'd' 2 times" in str(duplicate)
    assert isinstance(by_path["top/ok.txt"][0], ftx.Download)
    assert not (dest / "top" / "d").exists()
    assert "GET top/d" not in script.requested
    assert sorted(p.name for p in (dest / "top").iterdir()) == ["ok.txt"]


@pytest.mark.parametrize("overwrite", [False, True])
async def test_a_file_whose_local_path_is_a_directory_is_a_conflict(
    tmp_path: Path, start_server: object, overwrite: bool
) -> None:
    served = tmp_path / "served"
    (served / "top").mkdir(parents=True)
    (served / "top" / "d").write_bytes(b"remote file")
    (served / "top" / "e").write_bytes(b"another")
    _, port = await start_server(served)  # type: ignore[operator]
    dest = tmp_path / "dest"
    (dest / "top" / "d").mkdir(parents=True)  # a local directory where the file would go
    with trio.fail_after(TIMEOUT):
        results = dict(
            await download(tree_connector(port), ["top"], dest, recursive=True, overwrite=overwrite)
        )
    conflict = results["top/d"]
    assert isinstance(conflict, ftx.LocalFileError)
    assert "is a directory" in str(conflict)
    assert isinstance(results["top/e"], ftx.Download)
    assert list((dest / "top" / "d").iterdir()) == []  # nothing saved inside it
    assert (dest / "top" / "e").read_bytes() == b"another"
    assert not isinstance(results.get("top/e"), Skipped)


# --------------------------------------------------------------------------- tree streams


def _tree_frames(*messages: object) -> list[bytes]:
    return [frame(message) for message in messages]  # type: ignore[arg-type]


def _records(*files: tuple[str, bytes]) -> TreeFiles:
    records = tuple(TreeRecord(name, len(data), 0, 0o644, sha256_hex(data)) for name, data in files)
    return TreeFiles(1, records, b"".join(data for _, data in files))


async def _get_tree(port: int, dest: Path) -> list[tuple[str, object]]:
    @asynccontextmanager
    async def connect_sha256() -> AsyncIterator[ftx.Client]:
        async with connect(port, digest="sha256") as client:
            yield client

    with trio.fail_after(TIMEOUT):
        return await download(connect_sha256, ["top"], dest, recursive=True)  # type: ignore[return-value]


@pytest.mark.parametrize(
    "hostile",
    [
        json_frame(Kind.TREE_DIR, b'{"id":1,"path":"../escaped"}'),
        json_frame(Kind.TREE_DIR, b'{"id":1,"path":"/etc"}'),
        json_frame(Kind.TREE_DIR, b'{"id":1,"path":"a\\\\..\\\\b"}'),
        json_frame(Kind.TREE_FILE, b'{"id":1,"name":".."}'),
        json_frame(Kind.TREE_SAME, b'{"id":1,"names":["a/b"]}'),
        json_frame(Kind.TREE_DIR, b'{"id":1,"path":"a//b"}'),
        json_frame(Kind.TREE_DIR, ('{"id":1,"path":"' + "n" * 256 + '"}').encode()),
    ],
)
async def test_a_tree_name_that_could_leave_dest_is_a_protocol_violation(
    nursery: trio.Nursery, tmp_path: Path, hostile: bytes
) -> None:
    """Names are checked by the decoder, before anything touches the disk: nothing is written
    anywhere, in DEST or outside it."""
    script = TreeStreamScript([frame(TreeDir(1, "")), hostile])
    port = await start(nursery, script)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ftx.RemoteProtocolError):
        await _get_tree(port, dest)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dest", "top"]


async def test_a_record_named_dot_dot_is_refused_and_nothing_is_written(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    good = _records(("ok.txt", b"fine"))
    payload = b"".join(bytes(part) for part in encode_message(good))
    evil = payload.replace(b'"ok.txt"', b'"..\\/x"')  # a JSON escape for the slash
    script = TreeStreamScript([frame(TreeDir(1, "")), encode_frame(evil)])
    port = await start(nursery, script)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ftx.RemoteProtocolError):
        await _get_tree(port, dest)
    assert not (tmp_path / "x").exists()
    assert not [p for p in dest.rglob("*") if p.is_file()]


async def test_a_symlink_where_a_directory_should_be_is_never_followed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """DEST/top/sub is a link to a directory outside DEST: the tree's files for `sub` are not
    written through it; the rest of the tree is saved, and the refusal reported."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    (dest / "top").mkdir(parents=True)
    (dest / "top" / "sub").symlink_to(outside)
    frames = _tree_frames(
        TreeDir(1, ""),
        _records(("a.txt", b"a")),
        TreeDir(1, "sub"),
        _records(("evil.txt", b"evil")),
        TreeDir(1, "sub/deeper"),
        _records(("evil2.txt", b"evil")),
        TreeDir(1, "z"),
        _records(("z.txt", b"z")),
        TreeEnd(1, 4, 0, 0),
    )
    port = await start(nursery, TreeStreamScript(frames))
    results = dict(await _get_tree(port, dest))
    assert list(outside.iterdir()) == []
    assert (dest / "top" / "a.txt").read_bytes() == b"a"
    assert (dest / "top" / "z" / "z.txt").read_bytes() == b"z"
    assert isinstance(results["top/sub"], ftx.LocalFileError), results
    assert "not a directory" in str(results["top/sub"])
    assert "top/sub/evil.txt" not in results


async def test_a_tree_record_with_a_wrong_digest_fails_alone(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    bad = TreeFiles(
        1,
        (
            TreeRecord("good", 4, 0, 0o644, sha256_hex(b"good")),
            TreeRecord("bad", 3, 0, 0o644, sha256_hex(b"not it")),
        ),
        b"goodbad",
    )
    frames = _tree_frames(TreeDir(1, ""), bad, TreeEnd(1, 2, 0, 0))
    port = await start(nursery, TreeStreamScript(frames))
    dest = tmp_path / "dest"
    dest.mkdir()
    results = dict(await _get_tree(port, dest))
    assert (dest / "top" / "good").read_bytes() == b"good"
    assert not (dest / "top" / "bad").exists()
    assert isinstance(results["top/bad"], ftx.IntegrityError), results
    assert not list(dest.rglob("*.part"))


async def test_a_tree_end_with_wrong_counts_is_a_protocol_violation(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    frames = _tree_frames(TreeDir(1, ""), _records(("a", b"a")), TreeEnd(1, 5, 0, 0))
    port = await start(nursery, TreeStreamScript(frames))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ftx.RemoteProtocolError, match="counts"):
        await _get_tree(port, dest)
    assert (dest / "top" / "a").read_bytes() == b"a"  # saved before the lie: it was whole


async def test_tree_content_longer_than_its_records_is_a_protocol_violation(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    payload = b"".join(bytes(part) for part in encode_message(_records(("a", b"abc"))))
    frames = [frame(TreeDir(1, "")), encode_frame(payload + b"extra")]
    port = await start(nursery, TreeStreamScript(frames))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ftx.RemoteProtocolError, match="content"):
        await _get_tree(port, dest)
    assert not (dest / "top" / "a").exists()
