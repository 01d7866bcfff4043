"""Tree uploads (docs/protocol.md section 23) from a hostile client: a raw socket speaking the
frames by hand against a real writable server. Bad names and paths, content that does not match
its records, frames over the limit, wrong end counts and misplaced messages are protocol
violations; a reserved name, a digest that does not match, a file that exists or a link planted
where a directory should be are per-entry refusals, and the stream goes on. In every case
nothing lands outside the tree, and the server keeps serving others."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import trio

import ftx
from conftest import serving
from ftx.framing import encode_frame
from ftx.protocol import TREE_PUT_FEATURE, UPLOAD_FEATURE
from ftx.protocol.messages import (
    Error,
    HaveRecord,
    Kind,
    ListDir,
    Message,
    TreeAsk,
    TreeDir,
    TreeEnd,
    TreeFiles,
    TreeHave,
    TreeHaveEnd,
    TreePut,
    TreePutEnd,
    TreeRecord,
    TreeSkip,
    TreeStored,
)
from hostile_peers import RawClient

FEATURES = frozenset({UPLOAD_FEATURE, TREE_PUT_FEATURE})
TIMEOUT = 15


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def record(name: str, content: bytes, digest: str | None = None) -> TreeRecord:
    return TreeRecord(name, len(content), 1_700_000_000_000_000_000, 0o644, digest or sha(content))


def files(*pairs: tuple[str, bytes]) -> TreeFiles:
    return TreeFiles(1, tuple(record(n, c) for n, c in pairs), b"".join(c for _, c in pairs))


def raw_tree_files(header: object, content: bytes) -> bytes:
    body = json.dumps(header).encode()
    return encode_frame(bytes([Kind.TREE_FILES]) + len(body).to_bytes(4, "big") + body + content)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    (root / "ok" / "fine.txt").write_bytes(b"fine\n")
    return root


async def still_serves(port: int) -> None:
    async with ftx.connect("127.0.0.1", port) as client:
        assert [entry.name for entry in await client.list("ok")] == ["fine.txt"]


async def run(port: int, *messages: Message, raw: bytes = b"") -> list[Message]:
    async with await RawClient.connect(port, features=FEATURES) as client:
        await client.send(*messages)
        if raw:
            await client.send_raw(raw)
        answers: list[Message] = []
        while (message := await client.receive()) is not None:
            answers.append(message)
            if isinstance(message, TreeEnd | Error):
                break
        return answers


def violation(answers: list[Message]) -> bool:
    last = answers[-1] if answers else None
    return isinstance(last, Error) and last.request_id is None and last.code == "bad-request"


async def test_a_well_formed_stream_is_stored_and_answered(root: Path) -> None:
    async with serving(root, writable=True) as (_, port):
        with trio.fail_after(TIMEOUT):
            answers = await run(
                port,
                TreePut(1, "up"),
                TreeAsk(1, ""),
                TreeDir(1, ""),
                files(("a", b"alpha"), ("b", b"")),
                TreeDir(1, "d/e"),  # its parent was never sent: made on the way
                files(("c", b"gamma")),
                TreePutEnd(1, 2, 3),
            )
    assert answers[0] == TreeHaveEnd(1)  # nothing there yet
    stored = {(m.path, n) for m in answers if isinstance(m, TreeStored) for n in m.names}
    assert stored == {("", "a"), ("", "b"), ("d/e", "c")}
    assert answers[-1] == TreeEnd(1, 3, 0, 0)
    assert (root / "up" / "d" / "e" / "c").read_bytes() == b"gamma"
    assert (root / "up" / "a").stat().st_mtime_ns == 1_700_000_000_000_000_000


async def test_per_entry_refusals_do_not_stop_the_stream(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "up" / "d").mkdir(parents=True)
    (root / "up" / "link").symlink_to(outside)
    (root / "up" / "d" / "taken").write_bytes(b"mine")
    bad = TreeFiles(1, (record("wrong", b"data", sha(b"other")),), b"data")
    async with serving(root, writable=True) as (_, port):
        with trio.fail_after(TIMEOUT):
            answers = await run(
                port,
                TreePut(1, "up"),
                TreeAsk(1, "d"),
                TreeDir(1, "d"),
                files(("taken", b"theirs"), ("x.ftx-upload-part", b"p"), ("new", b"n")),
                bad,
                TreeDir(1, "link"),  # a link where a directory should be
                files(("escape", b"out")),
                TreeDir(1, "link/deeper"),
                files(("deep", b"out")),
                TreeDir(1, "fine"),
                files(("last", b"l")),
                TreePutEnd(1, 4, 7),
            )
            await still_serves(port)
    assert answers[0] == TreeHave(1, "d", (HaveRecord("taken", 4, answers[0].files[0].mtime_ns),))  # type: ignore[union-attr]
    skips = {m.path: m.code for m in answers if isinstance(m, TreeSkip)}
    assert skips == {
        "d/taken": "exists",
        "d/x.ftx-upload-part": "bad-request",
        "d/wrong": "digest-mismatch",
        "link": "exists",
        "link/escape": "not-a-directory",
        "link/deeper/deep": "not-a-directory",
    }
    stored = {(m.path, n) for m in answers if isinstance(m, TreeStored) for n in m.names}
    assert stored == {("d", "new"), ("fine", "last")}
    assert answers[-1] == TreeEnd(1, 2, 6, 0)
    assert list(outside.iterdir()) == []
    assert (root / "up" / "d" / "taken").read_bytes() == b"mine"
    assert not (root / "up" / "d" / "wrong").exists()
    assert not [p for p in root.rglob("*") if "ftx-upload-part" in p.name]


@pytest.mark.parametrize(
    ("label", "messages", "raw"),
    [
        ("files before a directory", [TreePut(1, "up"), files(("a", b"a"))], b""),
        ("wrong end counts", [TreePut(1, "up"), TreeDir(1, ""), TreePutEnd(1, 1, 1)], b""),
        ("a request inside the stream", [TreePut(1, "up"), ListDir(2, "ok")], b""),
        ("a stream message for another id", [TreePut(1, "up"), TreeDir(2, "")], b""),
        ("a stream message with no tree", [TreeDir(1, "")], b""),
        (
            "a name with a separator",
            [TreePut(1, "up"), TreeDir(1, "")],
            raw_tree_files({"id": 1, "files": [["../x", 1, 0, 420, sha(b"x")]]}, b"x"),
        ),
        (
            "a path that climbs",
            [TreePut(1, "up")],
            encode_frame(bytes([Kind.TREE_DIR]) + b'{"id":1,"path":"a/../.."}'),
        ),
        (
            "content shorter than its records",
            [TreePut(1, "up"), TreeDir(1, "")],
            raw_tree_files({"id": 1, "files": [["x", 5, 0, 420, sha(b"xxxxx")]]}, b"xxx"),
        ),
        (
            "content longer than its records",
            [TreePut(1, "up"), TreeDir(1, "")],
            raw_tree_files({"id": 1, "files": [["x", 1, 0, 420, sha(b"x")]]}, b"xyz"),
        ),
        (
            "a record without a digest",
            [TreePut(1, "up"), TreeDir(1, "")],
            raw_tree_files({"id": 1, "files": [["x", 1, 0, 420, None]]}, b"x"),
        ),
        (
            "a frame over the limit",
            [TreePut(1, "up"), TreeDir(1, "")],
            (2 << 20).to_bytes(4, "big") + bytes([Kind.TREE_FILES]),
        ),
    ],
)
async def test_protocol_violations_close_that_connection_only(
    root: Path, label: str, messages: list[Message], raw: bytes
) -> None:
    async with serving(root, writable=True) as (_, port):
        with trio.fail_after(TIMEOUT):
            answers = await run(port, *messages, raw=raw)
            assert violation(answers), (label, answers)
            await still_serves(port)
    assert not (root / ".." / "x").exists()
    assert not [p for p in root.rglob("*") if p.name in ("x", "a") and p.is_file()]


async def test_a_read_only_server_reads_the_stream_and_refuses_it(root: Path) -> None:
    async with serving(root) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await RawClient.connect(port, features=FEATURES) as client:
                await client.send(
                    TreePut(1, "up"), TreeAsk(1, ""), TreeDir(1, ""), files(("a", b"a"))
                )
                assert await client.receive() == TreeHaveEnd(1)
                await client.send(TreePutEnd(1, 1, 1), ListDir(2, "ok"))
                refusal = await client.receive()
                listing = await client.receive()
    assert isinstance(refusal, Error)
    assert (refusal.request_id, refusal.code) == (1, "read-only")
    assert getattr(listing, "request_id", None) == 2
    assert not (root / "up").exists()


async def test_a_client_silent_mid_stream_is_cut_off(root: Path) -> None:
    async with serving(root, writable=True, idle_timeout=0.5) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await RawClient.connect(port, features=FEATURES) as client:
                await client.send(TreePut(1, "up"), TreeDir(1, ""), files(("a", b"a")))
                messages = await client.receive_all()
            assert isinstance(messages[-1], Error)
            assert messages[-1].code == "timeout"
            await still_serves(port)
    # What was written but not committed is no file under its name.
    assert not (root / "up" / "a").exists()
