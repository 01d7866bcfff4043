"""End-to-end tests of uploads: a real server on 127.0.0.1 (port 0), the library client, a raw
client that speaks frames without the state machine's checks, and ``ftx put`` / ``ftx serve
--writable`` as real programs.

Every test checks what lands on disk: inside the served root only under the final name and only
once verified, and never anything outside the root (``outside/`` next to it is compared before
and after). Every wait is bounded.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import resource
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import blake3
import pytest
import trio
import xxhash

import ftx
from conftest import (
    ENV,
    PYTHON_M_FTX,
    Behaviour,
    FakeConnection,
    FakeServer,
    ServerProcess,
    ServerStarter,
    StartServer,
    kill_mid_run,
)
from ftx.client._upload import Upload
from ftx.framing import FramedChannel
from ftx.protocol import BLAKE3_FEATURE, UPLOAD_FEATURE
from ftx.protocol.messages import (
    Data,
    Done,
    Error,
    FileEnd,
    Hello,
    ListDir,
    ListEnd,
    ListEntries,
    MakeDir,
    Message,
    Put,
    Ready,
    decode_message,
    encode_message,
)

PART = ".ftx-upload-part"
RECORD = PART + ".resume"
SIZE = 3 * 1024 * 1024 + 12345  # several chunks, the last one partial
VICTIM = b"a file outside the served root\n"


def content(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``tmp_path/root``, served, holding ``sub/`` and links that lead out of it; and
    ``tmp_path/outside/victim.txt`` next to it, which nothing may touch."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_bytes(VICTIM)
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "link-out").symlink_to(outside)  # absolute: refused
    (root / "link-up").symlink_to("../outside")  # climbs out: refused
    (root / "link-in").symlink_to("sub")  # stays inside: followed
    return root


def snapshot(directory: Path) -> dict[str, bytes | str]:
    """Every name under ``directory`` with its content (or link target), for before/after."""
    result: dict[str, bytes | str] = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if path.is_symlink():
            result[name] = f"-> {os.readlink(path)}"
        elif path.is_file():
            result[name] = path.read_bytes()
        else:
            result[name] = "dir"
    return result


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if PART in p.name)


async def writable(start_server: StartServer, root: Path, **kwargs: object) -> int:
    _, port = await start_server(root, writable=True, **kwargs)
    return port


class RawClient:
    """Frames on a TCP connection, encoded and decoded with no state machine: a client that
    can break every rule."""

    def __init__(self, channel: FramedChannel) -> None:
        self.channel = channel

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = cls(FramedChannel(stream))
        await client.send(Hello((1,), frozenset({UPLOAD_FEATURE}), 1 << 20, "raw"))
        assert isinstance(await client.receive(), Hello)
        return client

    async def send(self, message: Message) -> None:
        await self.channel.send_parts(*encode_message(message))

    async def receive(self) -> Message:
        with trio.fail_after(10):
            message = decode_message(await self.channel.receive())
        assert message is not None
        return message

    async def aclose(self) -> None:
        await self.channel.aclose()


# --------------------------------------------------------------------------- the happy path


async def test_put_stores_an_identical_file_with_its_mtime(
    start_server: StartServer, root: Path, tmp_path: Path
) -> None:
    data = content(SIZE)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    os.utime(source, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    port = await writable(start_server, root)
    seen: list[tuple[int, int]] = []
    async with ftx.connect("127.0.0.1", port) as client:
        result = await client.put(
            source, "sub/copy.bin", progress=lambda done, total: seen.append((done, total))
        )
        assert await client.put(tmp_path / "source.bin") is not None  # default: its own name
    assert (root / "sub" / "copy.bin").read_bytes() == data
    assert (root / "source.bin").read_bytes() == data
    assert (root / "sub" / "copy.bin").stat().st_mtime_ns == 1_700_000_000_123_456_789
    assert result.path == "sub/copy.bin"
    assert (result.size, result.offset, result.created) == (SIZE, 0, True)
    assert (result.digest_algorithm, result.digest) == (
        "xxh3-128",
        xxhash.xxh3_128(data).hexdigest(),
    )
    assert seen[0] == (0, SIZE)
    assert seen[-1] == (SIZE, SIZE)
    assert leftovers(root) == []


async def test_empty_file_and_directories(
    start_server: StartServer, root: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").write_bytes(b"")
    port = await writable(start_server, root)
    async with ftx.connect("127.0.0.1", port) as client:
        assert await client.mkdir("new") is True
        assert await client.mkdir("new/") is False  # there already: fine
        assert await client.mkdir("link-in/deeper") is True  # a link inside the root
        result = await client.put(tmp_path / "empty", "new/empty")
        assert result.size == 0
        for path, code in [
            ("new/empty", "exists"),  # a file, not a directory
            ("missing/child", "not-found"),
            ("../escape", "outside-root"),
            ("link-out/escape", "outside-root"),
            ("", "bad-request"),
        ]:
            with pytest.raises(ftx.RemoteError) as caught:
                await client.mkdir(path)
            assert caught.value.code == code, path
    assert (root / "new" / "empty").read_bytes() == b""
    assert (root / "sub" / "deeper").is_dir()
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "outside" / "escape").exists()


# --------------------------------------------------------------------------- read-only


async def test_put_with_a_cryptographic_digest(
    start_server: StartServer, root: Path, tmp_path: Path
) -> None:
    data = content(SIZE)
    (tmp_path / "source.bin").write_bytes(data)
    port = await writable(start_server, root)
    async with ftx.connect("127.0.0.1", port, ftx.ClientConfig(digest="cryptographic")) as client:
        result = await client.put(tmp_path / "source.bin")
    assert (result.digest_algorithm, result.digest) == ("blake3", blake3.blake3(data).hexdigest())
    assert (root / "source.bin").read_bytes() == data
    assert leftovers(root) == []


async def test_a_read_only_server_refuses_with_a_typed_error(
    start_server: StartServer, root: Path, tmp_path: Path
) -> None:
    (tmp_path / "file").write_bytes(b"data")
    before = snapshot(root)
    _, port = await start_server(root)  # the default: read-only
    async with ftx.connect("127.0.0.1", port) as client:
        hello = client.server_hello
        assert hello is not None
        assert UPLOAD_FEATURE not in hello.features
        assert BLAKE3_FEATURE in hello.features
        for attempt in (client.put(tmp_path / "file"), client.mkdir("d")):
            with pytest.raises(ftx.RemoteError) as caught:
                await attempt
            assert caught.value.code == "read-only"
        assert await client.list("")  # the connection goes on
    # A client that sends PUT and MKDIR anyway is refused per request, and may go on.
    raw = await RawClient.connect(port)
    await raw.send(Put(1, "file", 4, "sha256"))
    await raw.send(MakeDir(2, "d"))
    await raw.send(ListDir(3, ""))
    for request_id in (1, 2):
        answer = await raw.receive()
        assert isinstance(answer, Error)
        assert (answer.request_id, answer.code) == (request_id, "read-only")
    assert isinstance(await raw.receive(), ListEntries)
    assert isinstance(await raw.receive(), ListEnd)
    await raw.aclose()
    assert snapshot(root) == before


def test_upload_settings_need_writable(root: Path) -> None:
    with pytest.raises(ValueError, match="writable"):
        ftx.ServerConfig(allow_overwrite=True)
    with pytest.raises(ValueError, match="writable"):
        ftx.ServerConfig(max_upload_size=10)


# --------------------------------------------------------------------------- confinement


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("../x", "outside-root"),
        ("/tmp/x", "outside-root"),
        ("sub/../../x", "outside-root"),
        ("link-out/x", "outside-root"),  # an absolute link to a directory outside
        ("link-up/x", "outside-root"),  # a relative link that climbs out
        ("link-out/victim.txt", "outside-root"),
        ("a\\b", "bad-request"),
        ("x\x00y", "bad-request"),
        ("..", "outside-root"),
        ("sub/..", "bad-request"),  # names no file
        ("", "bad-request"),
        ("sub", "not-a-file"),  # a directory is never replaced
        ("nope/x", "not-found"),
        ("x" + PART, "bad-request"),  # reserved names
        ("x" + RECORD, "bad-request"),
    ],
)
async def test_uploads_stay_inside_the_root(
    start_server: StartServer, root: Path, tmp_path: Path, path: str, code: str
) -> None:
    (tmp_path / "source").write_bytes(b"payload")
    before_root, before_outside = snapshot(root), snapshot(tmp_path / "outside")
    port = await writable(start_server, root, allow_overwrite=True)
    async with ftx.connect("127.0.0.1", port) as client:
        with pytest.raises(ftx.RemoteError) as caught:
            await client.put(tmp_path / "source", path, overwrite=True)
        assert caught.value.code == code
    assert snapshot(root) == before_root
    assert snapshot(tmp_path / "outside") == before_outside
    assert not (tmp_path / "x").exists()


async def test_a_link_inside_the_root_is_followed_to_its_directory(
    start_server: StartServer, root: Path, tmp_path: Path
) -> None:
    (tmp_path / "source").write_bytes(b"payload")
    port = await writable(start_server, root)
    async with ftx.connect("127.0.0.1", port) as client:
        await client.put(tmp_path / "source", "link-in/x")
    assert (root / "sub" / "x").read_bytes() == b"payload"


@pytest.mark.parametrize("force", [False, True])
async def test_the_remains_of_a_publish_cut_short_are_cleared(
    start_server: StartServer, root: Path, tmp_path: Path, force: bool
) -> None:
    """A server killed between publishing a file (its part linked at the final name) and
    deleting the part leaves the part, a second name of the published file, and its record.
    The next PUT of that name clears them: refused as existing, or (with overwrite) stored,
    without ever writing into the published file through its second name."""
    (root / "done.bin").write_bytes(b"published")
    os.link(root / "done.bin", root / ("done.bin" + PART))
    (root / ("done.bin" + RECORD)).write_text('{"version": 1, "source": "s", "size": 9}')
    (tmp_path / "done.bin").write_bytes(b"new content")
    port = await writable(start_server, root, allow_overwrite=True)
    async with ftx.connect("127.0.0.1", port) as client:
        if force:
            result = await client.put(tmp_path / "done.bin", overwrite=True)
            assert (result.created, result.offset) == (False, 0)
        else:
            with pytest.raises(ftx.RemoteError) as caught:
                await client.put(tmp_path / "done.bin")
            assert caught.value.code == ftx.ErrorCode.EXISTS
    expected = b"new content" if force else b"published"
    assert (root / "done.bin").read_bytes() == expected
    assert leftovers(root) == []


@pytest.mark.parametrize("what", ["symlink", "hardlink", "fifo", "directory"])
@pytest.mark.parametrize("where", [PART, RECORD])
async def test_something_planted_at_the_part_or_record_name_is_not_written(
    start_server: StartServer, root: Path, tmp_path: Path, what: str, where: str
) -> None:
    victim = tmp_path / "outside" / "victim.txt"
    planted = root / ("x.bin" + where)
    if what == "symlink":
        planted.symlink_to(victim)
    elif what == "hardlink":
        os.link(victim, planted)
    elif what == "fifo":
        os.mkfifo(planted)
    else:
        planted.mkdir()
    # 1 MiB: a smaller file is offered for no resume, and gets no record.
    (tmp_path / "source").write_bytes(b"x" * (1 << 20))
    port = await writable(start_server, root)
    async with ftx.connect("127.0.0.1", port) as client:
        with pytest.raises(ftx.RemoteError) as caught, trio.fail_after(10):
            await client.put(tmp_path / "source", "x.bin")
    assert caught.value.code == "not-a-file"
    assert victim.read_bytes() == VICTIM
    assert not (root / "x.bin").exists()


async def test_a_link_at_the_final_name_is_replaced_never_followed(
    start_server: StartServer, root: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "outside" / "victim.txt"
    (root / "x.bin").symlink_to(victim)
    (tmp_path / "source").write_bytes(b"new content")
    for allow in (False, True):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(
                    ftx.serve,
                    root,
                    "127.0.0.1",
                    0,
                    ftx.ServerConfig(writable=True, allow_overwrite=allow),
                )
            )
            port = listeners[0].socket.getsockname()[1]
            async with ftx.connect("127.0.0.1", port) as client:
                with pytest.raises(ftx.RemoteError, match="exists"):
                    await client.put(tmp_path / "source", "x.bin")  # never without asking
                if not allow:
                    with pytest.raises(ftx.RemoteError, match="does not replace"):
                        await client.put(tmp_path / "source", "x.bin", overwrite=True)
                else:
                    result = await client.put(tmp_path / "source", "x.bin", overwrite=True)
                    assert result.created is False
            nursery.cancel_scope.cancel()
    assert victim.read_bytes() == VICTIM
    assert not (root / "x.bin").is_symlink()
    assert (root / "x.bin").read_bytes() == b"new content"


async def test_a_directory_swapped_for_a_link_mid_upload_does_not_redirect_it(
    start_server: StartServer, root: Path, tmp_path: Path
) -> None:
    """The server writes and publishes relative to the directory it opened when the PUT came:
    replacing that directory's name with a link that leads out changes nothing (rsync's
    CVE-2026-43619 class)."""
    outside = tmp_path / "outside"
    before = snapshot(outside)
    port = await writable(start_server, root)
    raw = await RawClient.connect(port)
    await raw.send(Put(1, "sub/x", 3, "sha256"))
    assert await raw.receive() == Ready(1, 0)  # sub/ is open on the server now
    (root / "sub").rename(root / "moved")
    (root / "sub").symlink_to(outside)
    await raw.send(Data(b"abc"))
    await raw.send(FileEnd(1, hashlib.sha256(b"abc").hexdigest()))
    assert await raw.receive() == Done(1, True)
    await raw.aclose()
    assert (root / "moved" / "x").read_bytes() == b"abc"
    assert snapshot(outside) == before


# --------------------------------------------------------------------------- policies


async def test_overwrite_needs_the_client_to_ask_and_the_server_to_allow(
    start_server: StartServer, root: Path, tmp_path: Path
) -> None:
    (root / "old.txt").write_bytes(b"old")
    (tmp_path / "new.txt").write_bytes(b"new")
    strict = await writable(start_server, root)
    lenient = await writable(start_server, root, allow_overwrite=True)
    async with ftx.connect("127.0.0.1", strict) as client:
        for overwrite in (False, True):
            with pytest.raises(ftx.RemoteError) as caught:
                await client.put(tmp_path / "new.txt", "old.txt", overwrite=overwrite)
            assert caught.value.code == "exists"
    assert (root / "old.txt").read_bytes() == b"old"
    async with ftx.connect("127.0.0.1", lenient) as client:
        with pytest.raises(ftx.RemoteError, match="exists"):
            await client.put(tmp_path / "new.txt", "old.txt")
        result = await client.put(tmp_path / "new.txt", "old.txt", overwrite=True)
    assert result.created is False
    assert (root / "old.txt").read_bytes() == b"new"
    assert leftovers(root) == []


async def test_max_upload_size(start_server: StartServer, root: Path, tmp_path: Path) -> None:
    (tmp_path / "small").write_bytes(b"s" * 1000)
    (tmp_path / "large").write_bytes(b"l" * 1001)
    port = await writable(start_server, root, max_upload_size=1000)
    async with ftx.connect("127.0.0.1", port) as client:
        with pytest.raises(ftx.RemoteError) as caught:
            await client.put(tmp_path / "large")
        assert caught.value.code == "too-large"
        await client.put(tmp_path / "small")
    assert not (root / "large").exists()
    assert (root / "small").stat().st_size == 1000
    assert leftovers(root) == []


async def test_a_second_upload_to_the_same_name_is_told_busy(
    start_server: StartServer, root: Path, tmp_path: Path
) -> None:
    (tmp_path / "source").write_bytes(b"abc")
    port = await writable(start_server, root)
    raw = await RawClient.connect(port)
    await raw.send(Put(1, "x", 3, "sha256"))
    assert await raw.receive() == Ready(1, 0)  # holds the part file, sends nothing yet
    async with ftx.connect("127.0.0.1", port) as client:
        with pytest.raises(ftx.RemoteError) as caught:
            await client.put(tmp_path / "source", "x")
        assert caught.value.code == "busy"
    await raw.send(Data(b"abc"))
    await raw.send(FileEnd(1, hashlib.sha256(b"abc").hexdigest()))
    assert await raw.receive() == Done(1, True)
    await raw.aclose()
    assert (root / "x").read_bytes() == b"abc"


# --------------------------------------------------------------------------- verification


async def test_data_that_does_not_match_the_digest_is_never_published(
    start_server: StartServer, root: Path
) -> None:
    port = await writable(start_server, root)
    raw = await RawClient.connect(port)
    good = b"the content the digest is of"
    await raw.send(Put(1, "x.txt", len(good), "sha256", source="raw"))
    assert await raw.receive() == Ready(1, 0)
    await raw.send(Data(b"X" * len(good)))  # the wrong bytes
    await raw.send(FileEnd(1, hashlib.sha256(good).hexdigest()))
    answer = await raw.receive()
    assert isinstance(answer, Error)
    assert (answer.request_id, answer.code) == (1, "digest-mismatch")
    await raw.send(ListDir(2, ""))  # the connection goes on
    while not isinstance(await raw.receive(), ListEnd):
        pass
    await raw.aclose()
    assert not (root / "x.txt").exists()
    assert leftovers(root) == []


async def test_an_end_digest_in_upper_case_is_a_mismatch_not_a_violation(
    start_server: StartServer, root: Path
) -> None:
    """Section 18.3: a digest not in lowercase hexadecimal never equals the server's."""
    port = await writable(start_server, root)
    raw = await RawClient.connect(port)
    good = b"right bytes, wrong spelling of their digest"
    await raw.send(Put(1, "x.txt", len(good), "sha256", source="raw"))
    assert await raw.receive() == Ready(1, 0)
    await raw.send(Data(good))
    await raw.send(FileEnd(1, hashlib.sha256(good).hexdigest().upper()))
    answer = await raw.receive()
    assert isinstance(answer, Error)
    assert (answer.request_id, answer.code) == (1, "digest-mismatch")
    await raw.send(Put(2, "x.txt", len(good), "sha256"))  # the connection goes on
    assert await raw.receive() == Ready(2, 0)
    await raw.send(Data(good))
    await raw.send(FileEnd(2, hashlib.sha256(good).hexdigest()))
    assert await raw.receive() == Done(2, True)
    await raw.aclose()
    assert (root / "x.txt").read_bytes() == good
    assert leftovers(root) == []


async def test_a_client_that_stops_sending_is_cut_off_and_its_part_kept(root: Path) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(
                ftx.serve, root, "127.0.0.1", 0, ftx.ServerConfig(writable=True, idle_timeout=0.5)
            )
        )
        raw = await RawClient.connect(listeners[0].socket.getsockname()[1])
        await raw.send(Put(1, "slow", 10, "sha256", source="s"))
        assert await raw.receive() == Ready(1, 0)
        await raw.send(Data(b"12345"))
        answer = await raw.receive()  # nothing more: cut off after 0.5 s
        assert isinstance(answer, Error)
        assert (answer.request_id, answer.code) == (None, "timeout")
        with pytest.raises(trio.EndOfChannel), trio.fail_after(10):
            await raw.channel.receive()
        await raw.aclose()
        nursery.cancel_scope.cancel()
    assert (root / ("slow" + PART)).read_bytes() == b"12345"
    assert not (root / "slow").exists()


# --------------------------------------------------------------------------- resume


async def interrupted_upload(port: int, source: Path, path: str, after: int) -> None:
    """Start uploading ``source`` and cut the connection once ``after`` bytes have gone."""
    with trio.CancelScope() as scope:

        def progress(done: int, total: int) -> None:
            if done >= after:
                scope.cancel()

        async with ftx.connect("127.0.0.1", port) as client:
            await client.put(source, path, progress=progress)
    assert scope.cancelled_caught


async def serve_until_idle(
    nursery: trio.Nursery, root: Path, **kwargs: object
) -> tuple[ftx.Server, int]:
    server = ftx.Server(root, ftx.ServerConfig(writable=True, **kwargs))  # type: ignore[arg-type]
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(server.serve_listeners, listeners)
    return server, listeners[0].socket.getsockname()[1]


async def wait_for_no_connections(server: ftx.Server) -> None:
    with trio.fail_after(10):
        while server.connections:  # noqa: ASYNC110 - the server has no event to wait on
            await trio.sleep(0.01)


async def test_an_interrupted_upload_resumes_to_an_identical_file(
    root: Path, tmp_path: Path
) -> None:
    data = content(8 * 1024 * 1024 + 7)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    async with trio.open_nursery() as nursery:
        server, port = await serve_until_idle(nursery, root)
        await interrupted_upload(port, source, "big.bin", after=2 * 1024 * 1024)
        await wait_for_no_connections(server)
        held = (root / ("big.bin" + PART)).stat().st_size
        assert 0 < held < len(data)
        assert not (root / "big.bin").exists()
        seen: list[int] = []
        async with ftx.connect("127.0.0.1", port) as client:
            result = await client.put(source, progress=lambda done, total: seen.append(done))
        nursery.cancel_scope.cancel()
    assert result.offset == held
    assert seen[0] == held  # the progress starts where the server's part ends
    assert (root / "big.bin").read_bytes() == data
    assert leftovers(root) == []


async def test_a_changed_local_file_starts_again_from_zero(root: Path, tmp_path: Path) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(content(4 * 1024 * 1024, seed=1))
    async with trio.open_nursery() as nursery:
        server, port = await serve_until_idle(nursery, root)
        await interrupted_upload(port, source, "f.bin", after=1024 * 1024)
        await wait_for_no_connections(server)
        assert (root / ("f.bin" + PART)).stat().st_size > 0
        new = content(4 * 1024 * 1024, seed=2)  # same size, other bytes, other identity
        source.write_bytes(new)
        async with ftx.connect("127.0.0.1", port) as client:
            result = await client.put(source)
        nursery.cancel_scope.cancel()
    assert result.offset == 0
    assert (root / "f.bin").read_bytes() == new


async def test_a_damaged_part_fails_verification_then_goes_again_from_zero(
    root: Path, tmp_path: Path
) -> None:
    data = content(4 * 1024 * 1024)
    source = tmp_path / "f.bin"
    source.write_bytes(data)
    async with trio.open_nursery() as nursery:
        server, port = await serve_until_idle(nursery, root)
        await interrupted_upload(port, source, "f.bin", after=1024 * 1024)
        await wait_for_no_connections(server)
        part = root / ("f.bin" + PART)
        with part.open("r+b") as file:  # the server's disk damaged the part
            file.write(b"\xff" * 16)
        async with ftx.connect("127.0.0.1", port) as client:
            result = await client.put(source)
        nursery.cancel_scope.cancel()
    assert result.offset == 0  # the resumed attempt did not verify: sent whole again
    assert (root / "f.bin").read_bytes() == data


async def put_when_free(client: ftx.Client, source: Path) -> Upload:
    """``client.put(source)``, again while the server says another upload of it is still in
    progress (the one whose connection was just closed, until the server notices)."""
    with trio.fail_after(10):
        while True:
            try:
                return await client.put(source)
            except ftx.RemoteError as exc:
                if exc.code != "busy":
                    raise
            await trio.sleep(0.05)


async def test_a_file_that_changes_while_being_sent_is_not_published(
    start_server: StartServer, root: Path, tmp_path: Path
) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(content(2 * 1024 * 1024))
    port = await writable(start_server, root)

    def touch(done: int, total: int) -> None:
        if done > 0:
            os.utime(source, ns=(1, 1))

    async with ftx.connect("127.0.0.1", port) as client:
        with pytest.raises(ftx.LocalFileError, match="changed"):
            await client.put(source, progress=touch)
    assert not (root / "f.bin").exists()
    async with ftx.connect("127.0.0.1", port) as client:
        result = await put_when_free(client, source)
    assert result.offset == 0
    assert (root / "f.bin").read_bytes() == source.read_bytes()


# --------------------------------------------------------------------------- ftx put


ServeCli = Callable[..., str]


def ftx_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYTHON_M_FTX, *args],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=30,
        cwd=cwd,
        env=ENV,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ftx: ")
    return lines[0]


@pytest.fixture
def serve_cli(start_ftx_server: ServerStarter) -> ServeCli:
    """``serve_cli(directory, *options)`` runs ``ftx serve`` and returns ``HOST:PORT``."""
    return lambda directory, *options: start_ftx_server(directory, *options).address


@pytest.mark.parametrize("how", [[], ["--per-file"]], ids=["tree-stream", "per-file"])
def test_ftx_put_r_sends_a_tree(
    serve_cli: ServeCli, root: Path, tmp_path: Path, how: list[str]
) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "top.txt").write_bytes(b"top\n")
    (tree / "a" / "mid.bin").write_bytes(content(700_000))
    (tree / "a" / "b" / "leaf.txt").write_bytes(b"leaf\n")
    (tree / "a" / "empty").mkdir()
    (tree / "a" / "link").symlink_to("mid.bin")
    address = serve_cli(root, "--writable")
    result = ftx_cli("put", address, str(tree), "-r", "--to", "sub", *how)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr
    assert "symbolic link" in result.stderr
    copied = root / "sub" / "tree"
    expected = {k: v for k, v in snapshot(tree).items() if k != "a/link"}
    assert snapshot(copied) == expected
    # Again, unchanged (as after an interrupted run): the files already there, with the same
    # size and modification time, are skipped as up to date, as `ftx get -r` does.
    again = ftx_cli("put", address, str(tree), "-r", "--to", "sub", *how)
    assert again.returncode == 0, again.stderr
    assert "0 file(s) sent (0 B in" in again.stderr
    assert ", 3 already up to date" in again.stderr
    # A file changed here is not replaced there without --force; the others are up to date.
    (tree / "a" / "b" / "leaf.txt").write_bytes(b"leaf, longer\n")
    changed = ftx_cli("put", address, str(tree), "-r", "--to", "sub", *how)
    line = changed.stderr.strip().splitlines()[-1]
    assert changed.returncode == 8, changed.stderr
    assert ", 2 already up to date, 1 failed" in changed.stderr
    assert line.startswith("ftx: 'sub/tree/a/b/leaf.txt' already exists")
    assert "--force" in line
    assert (copied / "a" / "b" / "leaf.txt").read_bytes() == b"leaf\n"


def put_log(server: ServerProcess, count: int) -> list[tuple[str, str]]:
    """(client address, request kind) of the PUTs and MKDIRs in the server's access log, once
    there are ``count`` (a request is logged just after its answer is sent: wait a little)."""
    deadline = time.monotonic() + 10
    while True:
        found = []
        for line in server.log.read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[2] in ("PUT", "MKDIR"):
                found.append((fields[1], fields[2]))
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def small_tree(tmp_path: Path, directories: int, files: int) -> Path:
    tree = tmp_path / "tree"
    for d in range(directories):
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(files):
            (tree / f"d{d}" / f"f{f}.txt").write_bytes(f"{d}/{f}\n".encode() * (f + 1))
    return tree


@pytest.mark.parametrize("jobs", [1, 4])
def test_ftx_put_r_sends_files_over_jobs_connections(
    start_ftx_server: ServerStarter, root: Path, tmp_path: Path, jobs: int
) -> None:
    tree = small_tree(tmp_path, 3, 20)
    server = start_ftx_server(root, "--writable")
    result = ftx_cli("put", server.address, str(tree), "-r", "-j", str(jobs), "--per-file")
    assert result.returncode == 0, result.stderr
    assert "60 file(s) sent" in result.stderr
    assert snapshot(root / "tree") == snapshot(tree)
    assert leftovers(root) == []
    log = put_log(server, 64)
    kinds = [kind for _, kind in log]
    assert kinds == ["MKDIR"] * 4 + ["PUT"] * 60, "every directory is made before any file"
    senders = {address for address, kind in log if kind == "PUT"}
    if jobs == 1:
        assert len(senders) == 1, senders
    else:  # (each connection takes files as it comes: a slow one may find none left)
        assert 2 <= len(senders) <= jobs, senders


def test_ftx_put_j_with_a_server_that_takes_one_connection(
    start_ftx_server: ServerStarter, root: Path, tmp_path: Path
) -> None:
    # The connections the server refuses as busy leave their files to the one it took.
    tree = small_tree(tmp_path, 2, 10)
    server = start_ftx_server(root, "--writable", "--max-connections", "1")
    result = ftx_cli("put", server.address, str(tree), "-r", "-j", "4", "--per-file")
    assert result.returncode == 0, result.stderr
    assert "20 file(s) sent" in result.stderr
    assert "busy" not in result.stderr
    assert snapshot(root / "tree") == snapshot(tree)
    assert leftovers(root) == []


def test_ftx_put_j_survives_a_killed_server(
    start_ftx_server: ServerStarter, root: Path, tmp_path: Path
) -> None:
    """The server is killed (SIGKILL) while four connections send files, and started again on
    the same port: `ftx put` reconnects by itself, resumes what was cut, and every file arrives
    whole, with no part file left on the server."""
    tree = tmp_path / "tree"
    for d in range(4):
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(50):
            (tree / f"d{d}" / f"f{f}.bin").write_bytes(content(512 * 1024, seed=d * 100 + f))
    first = start_ftx_server(root, "--writable")
    code, _, stderr = kill_mid_run(
        [
            *PYTHON_M_FTX,
            "put",
            first.address,
            str(tree),
            "-r",
            "-j",
            "4",
            "--retries",
            "5",
            "--per-file",
        ],
        first,
        lambda: len(list(root.rglob("f*.bin"))) >= 10,
        lambda: start_ftx_server(root, "--writable", "--port", str(first.port)),
    )
    assert code == 0, stderr
    assert "retrying" in stderr
    # A file the server stored just before it died, its answer lost, is found stored on retry.
    summary = re.search(r"(\d+) file\(s\) sent .*?(?:, (\d+) already up to date)?$", stderr, re.M)
    assert summary, stderr
    sent, stored = int(summary[1]), int(summary[2] or 0)
    assert sent + stored == 200, stderr
    assert stderr.count("stored before the connection broke") == stored, stderr
    assert snapshot(root / "tree") == snapshot(tree)
    assert leftovers(root) == []


@pytest.mark.parametrize(
    ("options", "algorithm"), [((), "xxh3-128"), (("--digest", "cryptographic"), "blake3")]
)
def test_ftx_put_digest_choice(
    serve_cli: ServeCli, root: Path, tmp_path: Path, options: tuple[str, ...], algorithm: str
) -> None:
    data = content(100_000)
    (tmp_path / "f.bin").write_bytes(data)
    result = ftx_cli("put", serve_cli(root, "--writable"), str(tmp_path / "f.bin"), *options)
    assert result.returncode == 0, result.stderr
    expected = (xxhash.xxh3_128 if algorithm == "xxh3-128" else blake3.blake3)(data).hexdigest()
    assert result.stderr.strip().endswith(f"{algorithm} {expected}"), result.stderr
    assert (root / "f.bin").read_bytes() == data


def test_ftx_put_exit_codes(serve_cli: ServeCli, root: Path, tmp_path: Path) -> None:
    small, large = tmp_path / "small.txt", tmp_path / "large.bin"
    small.write_bytes(b"small\n")
    large.write_bytes(content(2 * 1024 * 1024))
    read_only = serve_cli(root)
    writable = serve_cli(root, "--writable", "--allow-overwrite", "--max-upload-size", "1M")
    # read-only server: 5, and the advice to use --writable
    assert "--writable" in one_line_error(ftx_cli("put", read_only, str(small)), 5)
    # the first upload works; the same again is up to date (0); a different file under that
    # name exists (8) until --force
    assert ftx_cli("put", writable, str(small), "-q").returncode == 0
    assert ftx_cli("put", writable, str(small), "-q").returncode == 0
    small.write_bytes(b"small, changed\n")
    assert "--force" in one_line_error(ftx_cli("put", writable, str(small)), 8)
    small.write_bytes(b"small\n")
    assert ftx_cli("put", writable, str(small), "--force", "-q").returncode == 0
    # too large for the server: 8
    assert "too-large" in one_line_error(ftx_cli("put", writable, str(large)), 8)
    # the remote directory does not exist: 4; a path that leads out: 4
    one_line_error(ftx_cli("put", writable, str(small), "--to", "nope"), 4)
    assert "outside-root" in one_line_error(ftx_cli("put", writable, str(small), "--to", ".."), 4)
    # local problems: 8, before connecting
    one_line_error(ftx_cli("put", writable, str(tmp_path / "missing")), 8)
    assert "-r" in one_line_error(ftx_cli("put", writable, str(tmp_path)), 8)
    # usage: 2; nobody listening: 3
    assert ftx_cli("serve", str(root), "--allow-overwrite").returncode == 2
    assert ftx_cli("serve", str(root), "--writable", "--max-upload-size", "lots").returncode == 2
    refused = ftx_cli("put", "127.0.0.1:1", str(small), "--retries", "0")
    assert "connection refused" in one_line_error(refused, 3)
    assert (root / "small.txt").read_bytes() == b"small\n"
    assert not (root / "large.bin").exists()
    assert leftovers(root) == []


def test_ftx_put_reconnects_and_resumes_after_a_lost_connection(
    fake_server: Callable[[Behaviour], FakeServer], tmp_path: Path
) -> None:
    """A scripted server takes the first 100,000 bytes and drops the connection; ``ftx put``
    reconnects by itself (``--retries``) and sends only the rest, with the same source (a
    file under 1 MiB would be sent whole again)."""
    data = content(1_500_000)
    source = tmp_path / "f.bin"
    source.write_bytes(data)
    held = bytearray()
    puts: list[Put] = []

    def behaviour(conn: FakeConnection) -> None:
        conn.handshake(frozenset({UPLOAD_FEATURE}))
        put = conn.receive()
        assert isinstance(put, Put)
        puts.append(put)
        if len(puts) == 1:
            conn.send(Ready(put.request_id, 0))
            while len(held) < 100_000:
                message = conn.receive()
                assert isinstance(message, Data)
                held.extend(message.data)
            del held[100_000:]
            return  # the connection closes
        conn.send(Ready(put.request_id, len(held)))
        while not isinstance(message := conn.receive(), FileEnd):
            assert isinstance(message, Data)
            held.extend(message.data)
        assert message.digest == hashlib.sha256(held).hexdigest()
        conn.send(Done(put.request_id, True))

    fake = fake_server(behaviour)
    result = ftx_cli("put", f"127.0.0.1:{fake.port}", str(source), "--retries", "2")
    assert result.returncode == 0, result.stderr
    assert "retrying" in result.stderr
    assert "resumed at 97.7 KiB" in result.stderr
    assert bytes(held) == data
    assert len(puts) == 2
    assert puts[0].source is not None
    assert puts[0].source == puts[1].source
    assert puts[0].digest == "sha256"  # the fake offers no BLAKE3


def test_a_server_that_cannot_store_a_file_drains_it_and_goes_on(
    root: Path, tmp_path: Path, start_ftx_server: ServerStarter
) -> None:
    """``ftx serve`` limited to 1 MiB files (RLIMIT_FSIZE: EFBIG, as a full disk would give
    ENOSPC) fails while writing a 2 MiB upload: it reads the rest, answers ``no-space`` after
    the END, keeps the part, and the next file on the same connection is stored."""
    (tmp_path / "big.bin").write_bytes(content(2 * 1024 * 1024))
    (tmp_path / "small.txt").write_bytes(b"small\n")

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    address = start_ftx_server(root, "--writable", preexec_fn=limit_file_size).address
    big, small = str(tmp_path / "big.bin"), str(tmp_path / "small.txt")
    result = ftx_cli("put", address, big, small)
    assert result.returncode == 8, result.stderr
    assert "no-space" in result.stderr
    assert "1 file(s) sent" in result.stderr
    assert (root / "small.txt").read_bytes() == b"small\n"
    assert not (root / "big.bin").exists()
    assert (root / ("big.bin" + PART)).stat().st_size == 1 << 20
