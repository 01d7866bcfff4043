"""Issue 17, from the client's side of the wire: a hostile client (a raw socket speaking the
frames of docs/protocol.md) against a real server. Each test reproduces one defect or closes
one gap of the spec, and the server keeps serving the next client.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio

import ftx
import ftx.protocol._responses
import ftx.server._downloads
from conftest import serving
from ftx.framing import encode_header
from ftx.protocol import TREE_FEATURE, UPLOAD_FEATURE
from ftx.protocol.messages import (
    Data,
    Done,
    Error,
    FileEnd,
    FileHeader,
    Get,
    HaveRecord,
    Hello,
    Kind,
    ListDir,
    ListEntries,
    MakeDir,
    Put,
    Ready,
    TreeDir,
    TreeEnd,
    TreeFiles,
    TreeGet,
    TreeHave,
    TreeHaveEnd,
)
from hostile_peers import RawClient, hostile_json, json_frame, sha256_hex

UPLOADS = frozenset({UPLOAD_FEATURE})
TIMEOUT = 10


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.access for r in caplog.records if r.name == "ftx.access"]  # type: ignore[attr-defined]


async def wait_for_records(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    while len(records := access_records(caplog)) < count:  # noqa: ASYNC110 - bounded by the caller
        await trio.sleep(0.01)
    return records


async def still_serves(port: int) -> None:
    """The server answers a well-behaved client after whatever the test did."""
    async with ftx.connect("127.0.0.1", port) as client:
        assert [entry.name for entry in await client.list("ok")] == ["fine.txt"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    (root / "ok" / "fine.txt").write_bytes(b"fine\n")
    (root / "hello.txt").write_bytes(b"hello")
    return root


# ------------------------------------------------------- defect 1: MKDIR of a reserved name


@pytest.mark.parametrize(
    "name", ["r.txt.ftx-upload-part", "r.txt.ftx-upload-part.resume", "ok/x.ftx-upload-part"]
)
async def test_mkdir_refuses_the_names_of_part_files(root: Path, tmp_path: Path, name: str) -> None:
    source = tmp_path / "r.txt"
    source.write_bytes(b"the upload that must still work\n")
    async with serving(root, writable=True) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with ftx.connect("127.0.0.1", port) as client:
                with pytest.raises(ftx.RemoteError) as refused:
                    await client.mkdir(name)
                assert refused.value.code == "bad-request"
                assert "reserved" in refused.value.message
                assert not (root / name).exists()
                upload = await client.put(source, "r.txt")
    assert upload.created
    assert (root / "r.txt").read_bytes() == source.read_bytes()


# ------------------------------------------------ defect 2: LIST of an upload in progress


async def test_an_upload_in_progress_is_neither_listed_nor_served_by_its_part_name(
    root: Path,
) -> None:
    async with serving(root, writable=True) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await RawClient.connect(port, features=UPLOADS) as uploader:
                await uploader.send(Put(1, "prog.txt", 1 << 20, "sha256", "source-1", False, None))
                assert await uploader.receive() == Ready(1, 0)
                await uploader.send(Data(b"x" * 1000))  # and then it holds the upload open
                assert (root / "prog.txt.ftx-upload-part").exists()
                assert (root / "prog.txt.ftx-upload-part.resume").exists()
                async with ftx.connect("127.0.0.1", port) as client:
                    for name in ("prog.txt.ftx-upload-part", "prog.txt.ftx-upload-part.resume"):
                        for asked in (name, f"./{name}", f"{name}/"):
                            with pytest.raises(ftx.RemoteError) as listed:
                                await client.list(asked)
                            assert listed.value.code == "not-found"
                            with pytest.raises(ftx.RemoteError) as fetched:
                                await client.get(asked, root.parent / "got")
                            assert fetched.value.code == "not-found"
                    assert sorted(entry.name for entry in await client.list("")) == [
                        "hello.txt",
                        "ok",
                    ]


async def test_a_link_to_a_part_file_is_not_served_either(root: Path) -> None:
    (root / "x.ftx-upload-part").write_bytes(b"half an upload")
    (root / "alias").symlink_to("x.ftx-upload-part")
    async with serving(root) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with ftx.connect("127.0.0.1", port) as client:
                for request in (client.list("alias"), client.get("alias", root.parent / "a")):
                    with pytest.raises(ftx.RemoteError) as refused:
                        await request
                    assert refused.value.code == "not-found"


# --------------------------------------------------- defect 5 and the limits of JSON bodies


GET_BODY = b'{"id":1,"path":"hello.txt",'


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(GET_BODY + b'"zz":"\\udc00"}', id="lone-surrogate-in-unknown-member"),
        pytest.param(GET_BODY + b'"\\ud800":0}', id="lone-surrogate-in-a-member-name"),
        pytest.param(GET_BODY + b'"zz":[{"y":"\\udfff"}]}', id="lone-surrogate-nested"),
        pytest.param(GET_BODY + b'"zz":' + b"[" * 32 + b"]" * 32 + b"}", id="33-levels"),
        pytest.param(GET_BODY + b'"zz":' + b"[" * 200_000 + b"]" * 200_000 + b"}", id="deep"),
        pytest.param(GET_BODY + b'"zz":9223372036854775808}', id="integer-over-64-bits"),
        pytest.param(GET_BODY + b'"zz":' + b"9" * 5000 + b"}", id="5000-digit-integer"),
    ],
)
async def test_a_bad_value_anywhere_in_a_message_is_a_protocol_violation(
    root: Path, body: bytes
) -> None:
    async with serving(root) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await RawClient.connect(port) as client:
                await client.send_raw(json_frame(Kind.GET, body))
                answers = await client.receive_all()
                assert len(answers) == 1, answers  # no FILE: the request was not served
                (error,) = answers
                assert isinstance(error, Error)
                assert (error.request_id, error.code) == (None, "bad-request")
                await still_serves(port)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(b'"zz":' + b"[" * 31 + b"]" * 31, id="32-levels"),
        pytest.param(b'"zz":[9223372036854775807,-9223372036854775808]', id="64-bit-integers"),
        pytest.param(b'"zz":{"\\ud83d\\ude00":"\\ud83d\\ude00"}', id="surrogate-pairs"),
    ],
)
async def test_what_the_limits_allow_in_unknown_members_is_served(root: Path, extra: bytes) -> None:
    async with serving(root) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await RawClient.connect(port) as client:
                await client.send_raw(json_frame(Kind.GET, GET_BODY + extra + b"}"))
                header = await client.receive()
                assert isinstance(header, FileHeader), header
                assert await client.receive() == Data(b"hello")
                assert await client.receive() == FileEnd(1, sha256_hex(b"hello"))


# -------------------------------------------------------- HELLO larger than 64 KiB (gap)


@pytest.mark.parametrize(("size", "accepted"), [(65536, True), (65537, False)])
async def test_a_hello_over_64_kib_is_a_protocol_violation(
    root: Path, size: int, accepted: bool
) -> None:
    prefix = b'{"protocol":"ftx","versions":[1],"max_frame_size":1048576,"pad":"'
    body = prefix + b"x" * (size - 1 - len(prefix) - 2) + b'"}'
    async with serving(root) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with RawClient(await trio.open_tcp_stream("127.0.0.1", port)) as client:
                await client.send_raw(json_frame(Kind.HELLO, body))
                answer = await client.receive()
                if accepted:
                    assert isinstance(answer, Hello)
                else:
                    assert isinstance(answer, Error)
                    assert (answer.request_id, answer.code) == (None, "bad-request")
                    assert "before the handshake" in answer.message
            await still_serves(port)


# ------------------------------------------ PUT from a client without `upload` (gap)


async def test_uploads_from_a_client_that_did_not_list_the_feature_are_read_only(
    root: Path,
) -> None:
    async with serving(root, writable=True) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await RawClient.connect(port) as client:  # lists no features
                await client.send(
                    Put(1, "new.txt", 5, "sha256", None, False, None), MakeDir(2, "newdir")
                )
                for request_id in (1, 2):
                    refused = await client.receive()
                    assert isinstance(refused, Error)
                    assert (refused.request_id, refused.code) == (request_id, "read-only")
                    assert UPLOAD_FEATURE in refused.message
                await client.send(ListDir(3, "ok"))  # the connection goes on
                assert isinstance(await client.receive(), ListEntries)
            # With the feature listed, the same upload is stored.
            async with await RawClient.connect(port, features=UPLOADS) as client:
                await client.send(Put(1, "new.txt", 5, "sha256", None, False, None))
                assert await client.receive() == Ready(1, 0)
                await client.send(Data(b"hello"), FileEnd(1, sha256_hex(b"hello")))
                assert await client.receive() == Done(1, True)
    assert not (root / "newdir").exists()
    assert (root / "new.txt").read_bytes() == b"hello"


# --------------------------------------------------- entries in one listing (gap)


@pytest.mark.parametrize(("files", "too_large"), [(5, False), (6, True)])
async def test_a_listing_holds_at_most_max_list_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: int, too_large: bool
) -> None:
    # The limit is 1,000,000 entries (docs/protocol.md, section 10); lowered here so that the
    # test makes a few files, on both sides of the wire alike.
    assert ftx.protocol.MAX_LIST_ENTRIES == 1_000_000
    monkeypatch.setattr(ftx.protocol._responses, "MAX_LIST_ENTRIES", 5)
    monkeypatch.setattr(ftx.server._downloads, "MAX_LIST_ENTRIES", 5)
    root = tmp_path / "root"
    (root / "many").mkdir(parents=True)
    for index in range(files):
        (root / "many" / f"f{index}").write_bytes(b"")
    async with serving(root) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with ftx.connect("127.0.0.1", port) as client:
                if too_large:
                    with pytest.raises(ftx.RemoteError) as refused:
                        await client.list("many")
                    assert refused.value.code == "too-large"
                    assert "more than 5 entries" in refused.value.message
                    assert len(await client.list("")) == 1  # the connection goes on
                else:
                    assert len(await client.list("many")) == files


# ------------------------------- defect 9 and the end of the stream inside a frame (gap)


async def test_a_client_that_vanishes_mid_upload_is_logged_lost(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ftx")
    async with serving(root, writable=True) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await RawClient.connect(port, features=UPLOADS) as client:
                await client.send(Put(1, "big.bin", 1 << 20, "sha256", "source-1", False, None))
                assert await client.receive() == Ready(1, 0)
                await client.send(Data(b"x" * 4096))
                # Killed in the middle of a DATA frame: its header promised more than comes.
                await client.send_raw(encode_header(65536) + b"\x21" + b"x" * 100)
            (record,) = await wait_for_records(caplog, 1)
            await still_serves(port)
    assert (record["op"], record["path"], record["result"]) == ("PUT", "big.bin", "lost")
    assert record["bytes"] == 4096
    assert (root / "big.bin.ftx-upload-part").stat().st_size == 4096  # kept for a resume
    server_lines = [r.getMessage() for r in caplog.records if r.name == "ftx.server"]
    assert any("connection lost" in line for line in server_lines), server_lines
    assert not any("internal" in line or "protocol error" in line for line in server_lines)


async def test_a_protocol_violation_mid_upload_is_logged_bad_request(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `internal` is for the server's own faults: a client breaking the protocol mid-upload is
    # logged as what it was told, bad-request.
    caplog.set_level(logging.INFO, logger="ftx.access")
    async with serving(root, writable=True) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await RawClient.connect(port, features=UPLOADS) as client:
                await client.send(Put(1, "up.bin", 1000, "sha256", None, False, None))
                assert await client.receive() == Ready(1, 0)
                await client.send(Get(2, "hello.txt"))  # a request between a PUT and its END
                (error,) = await client.receive_all()
                assert isinstance(error, Error)
                assert (error.request_id, error.code) == (None, "bad-request")
                (record,) = await wait_for_records(caplog, 1)
    assert record["result"] == "bad-request"


async def test_a_request_cut_inside_its_frame_gets_no_error_back(root: Path) -> None:
    async with serving(root) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await RawClient.connect(port) as client:
                whole = json_frame(Kind.GET, hostile_json(id=1, path="hello.txt"))
                await client.send_raw(whole[:-3])
                await client.stream.send_eof()  # still reading: an ERROR could still arrive
                assert await client.receive_all() == []
                await still_serves(port)


# ------------------------------------------------------------------ tree streams (section 21)

TREES = frozenset({TREE_FEATURE})


async def test_a_tree_client_that_stalls_in_its_have_list_is_cut_off(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(root, idle_timeout=0.5) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await RawClient.connect(port, features=TREES) as client:
                await client.send(TreeGet(1, "ok", have=True))
                await client.send(TreeHave(1, "", (HaveRecord("fine.txt", 5, 0),)))
                # ... and never TREE_HAVE_END: the server gives up after its idle timeout
                messages = await client.receive_all()
            assert messages[0] == TreeDir(1, "")
            await still_serves(port)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_tree_client_that_leaves_mid_have_list_does_not_disturb_the_server(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(root) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await RawClient.connect(port, features=TREES) as client:
                await client.send(TreeGet(1, "", have=True))
                await client.send(TreeHave(1, "", ()))
            await still_serves(port)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_request_inside_a_have_list_is_a_protocol_violation(root: Path) -> None:
    async with serving(root) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await RawClient.connect(port, features=TREES) as client:
                await client.send(TreeGet(1, "ok", have=True), Get(2, "hello.txt"))
                messages = await client.receive_all()
            assert isinstance(messages[-1], Error)
            assert messages[-1].request_id is None
            assert messages[-1].code == "bad-request"
            await still_serves(port)


async def test_a_tree_of_a_file_is_not_a_directory_and_the_have_list_is_still_read(
    root: Path,
) -> None:
    async with serving(root) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await RawClient.connect(port, features=TREES) as client:
                await client.send(
                    TreeGet(1, "hello.txt", have=True),
                    TreeHave(1, "", (HaveRecord("x", 1, 2),)),
                    TreeHaveEnd(1),
                    TreeGet(2, "ok", digest=None),
                )
                refusal = await client.receive()
                assert isinstance(refusal, Error)
                assert (refusal.request_id, refusal.code) == (1, "not-a-directory")
                answer = [await client.receive() for _ in range(3)]
    assert answer[0] == TreeDir(2, "")
    assert isinstance(answer[1], TreeFiles)
    assert [r.name for r in answer[1].records] == ["fine.txt"]
    assert answer[2] == TreeEnd(2, 1, 0, 0)
