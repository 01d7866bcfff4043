"""Issue 15, item 5: one file from several servers at once (docs/protocol.md, section 22), with
real servers on 127.0.0.1: ranged GETs at their edges, block digests, a replica serving
corrupted bytes or other content (named, dropped, its blocks fetched from the others), a
replica dying mid-transfer, a resume block by block, and an old server without the feature."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ftx
from ftx.client import Source, download_from_sources
from ftx.client._ranges import BlockRecord
from ftx.framing import FrameDecoder, encode_frame
from ftx.protocol import BASE_BLOCK_SIZE, RANGES_FEATURE, block_count, new_hasher
from ftx.protocol.messages import Data, Error, Get, Kind
from ftx.server import _session
from hostile_peers import RawClient
from test_end_to_end import Proxy

SIZE = 5 * BASE_BLOCK_SIZE + 12345  # six blocks, the last one short
Address = tuple[str, int]


@pytest.fixture(scope="module")
def content() -> bytes:
    return random.Random(15).randbytes(SIZE)


def replicas(tmp_path: Path, content: bytes, count: int) -> list[Path]:
    """``count`` roots holding ``f.bin`` with the same path, size and mtime (as cp -p)."""
    roots = [tmp_path / f"r{index}" for index in range(count)]
    for root in roots:
        root.mkdir()
    (roots[0] / "f.bin").write_bytes(content)
    for root in roots[1:]:
        shutil.copy2(roots[0] / "f.bin", root / "f.bin")
    return roots


def source(address: Address, name: str | None = None) -> Source:
    async def connect() -> ftx.Client:
        stream = await trio.open_tcp_stream(*address)
        client = ftx.Client(stream)
        await client.handshake()
        return client

    return Source(name or f"{address[0]}:{address[1]}", connect)


class Drops:
    """Collects ``on_dropped`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, name: str, reason: str) -> None:
        self.calls.append((name, reason))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class CorruptingProxy:
    """A TCP proxy in front of a server that flips one byte in the DATA frames it forwards,
    from the ``after``-th byte of file content on (frames re-encoded: the framing stays
    valid; only the content is wrong). Any number of connections."""

    def __init__(self, target: Address, *, after: int) -> None:
        self.target = target
        self.after = after

    async def run(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        task_status.started(listener.socket.getsockname()[1])
        await trio.serve_listeners(self._handle, [listener])

    async def _handle(self, down: trio.SocketStream) -> None:
        up = await trio.open_tcp_stream(*self.target)
        async with down, up, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_up, down, up)
            await self._pump_down(up, down)
            nursery.cancel_scope.cancel()

    async def _pump_up(self, down: trio.SocketStream, up: trio.SocketStream) -> None:
        try:
            while data := await down.receive_some(65536):
                await up.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _pump_down(self, up: trio.SocketStream, down: trio.SocketStream) -> None:
        decoder = FrameDecoder(max_frame_size=1 << 24)
        seen = 0
        try:
            while data := await up.receive_some(1 << 20):
                decoder.receive_data(data)
                while (frame := decoder.next_frame()) is not None:
                    if frame[0] == Kind.DATA:
                        body = bytearray(frame)
                        if seen + len(body) - 1 > self.after:
                            body[-1] ^= 0xFF
                        seen += len(body) - 1
                        frame = bytes(body)
                    await down.send_all(encode_frame(frame, max_frame_size=1 << 24))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def fetch(
    sources: list[Source], dest: Path, drops: Drops | None = None, **options: object
) -> ftx.Download:
    with trio.fail_after(30):
        return await download_from_sources(
            sources,
            "f.bin",
            dest,
            on_dropped=drops if drops is not None else Drops(),
            **options,  # type: ignore[arg-type]
        )


# --------------------------------------------------------------------------- ranged GET


async def test_ranged_get_edges(start_server, tmp_path, content):
    (root,) = replicas(tmp_path, content, 1)
    async with ftx.connect(*await start_server(root)) as client:
        blocks = await client.block_list("f.bin")
        assert blocks.size == SIZE
        assert len(blocks.blocks) == block_count(SIZE, BASE_BLOCK_SIZE) == 6
        whole = new_hasher(blocks.digest)
        whole.update(content)
        assert blocks.file_digest == whole.hexdigest()
        first = new_hasher(blocks.digest)
        first.update(content[:BASE_BLOCK_SIZE])
        assert blocks.blocks[0] == first.hexdigest()

        async def read(offset: int, length: int) -> bytes:
            got = bytearray()
            await client.read_range(
                "f.bin", offset, length, identity=blocks.identity, sink=got.extend
            )
            return bytes(got)

        assert await read(100, 0) == b""  # length 0: FILE, then END at once
        assert await read(SIZE - 10, 1000) == content[-10:]  # beyond the end: clamped
        assert await read(SIZE, 5) == b""
        assert await read(7, 300) == content[7:307]
        with pytest.raises(ftx.RemoteError) as refused:
            await read(SIZE + 1, 5)  # offset beyond the end: refused, the connection goes on
        assert refused.value.code == "bad-request"
        with pytest.raises(ftx.LocalProtocolError, match="2\\^63"):
            await read(1, (1 << 63) - 1)  # offset + length overflows: never sent
        assert await read(0, 3) == content[:3]
        with pytest.raises(ftx.RemoteError) as changed:
            await client.read_range("f.bin", 0, 3, identity="other", sink=lambda _d: None)
        assert changed.value.code == "changed"


async def test_server_refuses_a_ranged_get_with_a_digest_or_overflowing(start_server, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").write_bytes(b"hello")
    _host, port = await start_server(root)
    requests = [
        Get(1, "a", 0, digest="sha256", length=2),
        Get(2, "a", 5, digest=None, length=(1 << 63) - 1),
        Get(3, "a", 1, digest=None, length=2),
    ]
    async with await RawClient.connect(port, features=frozenset({RANGES_FEATURE})) as raw:
        await raw.send(*requests)
        answers = [await raw.receive() for _ in range(5)]
    assert [type(a).__name__ for a in answers] == [
        "Error",
        "Error",
        "FileHeader",
        "Data",
        "FileEnd",
    ]
    assert [a.code for a in answers[:2] if isinstance(a, Error)] == ["bad-request"] * 2
    assert isinstance(answers[3], Data)
    assert bytes(answers[3].data) == b"el"


# --------------------------------------------------------------------------- several sources


async def test_two_sources_share_the_file(start_server, tmp_path, content):
    roots = replicas(tmp_path, content, 2)
    addresses = [await start_server(root, identity="portable") for root in roots]
    drops = Drops()
    result = await fetch([source(a) for a in addresses], tmp_path / "out.bin", drops, segments=2)
    assert (tmp_path / "out.bin").read_bytes() == content
    assert drops.calls == []
    assert result.size == SIZE
    assert not os.path.exists(BlockRecord.path_for(tmp_path / "out.bin.part"))


async def test_a_replica_sending_corrupted_bytes_is_named_and_dropped(
    start_server, nursery, tmp_path, content
):
    roots = replicas(tmp_path, content, 2)
    good, bad = [await start_server(root) for root in roots]
    proxy_port = await nursery.start(CorruptingProxy(bad, after=BASE_BLOCK_SIZE // 2).run)
    drops = Drops()
    await fetch(
        [source(good, "good"), source(("127.0.0.1", proxy_port), "bad\x1b[2J")],
        tmp_path / "out.bin",
        drops,
    )
    assert (tmp_path / "out.bin").read_bytes() == content
    assert drops.names == ["bad\x1b[2J"]
    assert "not matching its digest" in drops.calls[0][1]


async def test_every_source_sending_bad_bytes_is_an_integrity_error(
    start_server, nursery, tmp_path, content
):
    (root,) = replicas(tmp_path, content, 1)
    address = await start_server(root)
    ports = [await nursery.start(CorruptingProxy(address, after=0).run) for _ in range(2)]
    drops = Drops()
    with pytest.raises(ftx.IntegrityError, match="not matching its digest"):
        await fetch([source(("127.0.0.1", port)) for port in ports], tmp_path / "out", drops)
    assert len(drops.calls) == 2
    assert not (tmp_path / "out").exists()


async def test_a_replica_with_other_content_is_outvoted(start_server, tmp_path, content):
    roots = replicas(tmp_path, content, 3)
    other = bytearray(content)
    other[BASE_BLOCK_SIZE * 3 + 5] ^= 1
    mtime = (roots[0] / "f.bin").stat().st_mtime_ns
    (roots[0] / "f.bin").write_bytes(other)  # the first named: outvoted by the two others
    os.utime(roots[0] / "f.bin", ns=(mtime, mtime))
    addresses = [await start_server(root, identity="portable") for root in roots]
    drops = Drops()
    await fetch([source(a, f"s{i}") for i, a in enumerate(addresses)], tmp_path / "out", drops)
    assert (tmp_path / "out").read_bytes() == content
    assert drops.names == ["s0"]
    assert "1 of 6 blocks differ" in drops.calls[0][1]


async def test_a_replica_killed_mid_transfer_leaves_the_others_to_finish(
    start_server, nursery, tmp_path, content
):
    roots = replicas(tmp_path, content, 2)
    good, doomed = [await start_server(root) for root in roots]
    # One connection through a proxy that dies after 3 MiB (in the middle of a block).
    proxy = Proxy(doomed, limit=3 << 20, mode="abort")
    port = await nursery.start(proxy.run)
    drops = Drops()
    await fetch(
        [source(good, "good"), source(("127.0.0.1", port), "doomed")], tmp_path / "o", drops
    )
    assert (tmp_path / "o").read_bytes() == content
    assert drops.names == ["doomed"]


async def test_every_source_lost_keeps_verified_blocks_for_a_resume(
    start_server, nursery, tmp_path, content
):
    (root,) = replicas(tmp_path, content, 1)
    address = await start_server(root)
    proxy = Proxy(address, limit=2 * BASE_BLOCK_SIZE + (1 << 20), mode="close")
    port = await nursery.start(proxy.run)
    dest = tmp_path / "out.bin"
    with pytest.raises(ftx.ConnectionLostError):
        await fetch([source(("127.0.0.1", port))], dest)
    record = BlockRecord.load(tmp_path / "out.bin.part")
    assert record is not None
    assert record.done == {0, 1}
    progress: list[int] = []
    result = await fetch([source(address)], dest, progress=lambda done, _t: progress.append(done))
    assert dest.read_bytes() == content
    assert result.offset == 2 * BASE_BLOCK_SIZE  # only the rest was fetched
    assert progress[0] == 2 * BASE_BLOCK_SIZE


async def test_a_bad_block_record_is_not_trusted(start_server, tmp_path, content):
    (root,) = replicas(tmp_path, content, 1)
    address = await start_server(root)
    dest = tmp_path / "out.bin"
    part = tmp_path / "out.bin.part"
    part.write_bytes(b"\0" * SIZE)  # "verified" blocks that hold zeros
    async with ftx.connect(*address) as client:
        blocks = await client.block_list("f.bin")
    BlockRecord(
        "f.bin", SIZE, blocks.digest, blocks.file_digest, blocks.block_size, frozenset({0, 1})
    ).save(part)
    with pytest.raises(ftx.IntegrityError):
        await fetch([source(address)], dest)
    assert not dest.exists()
    assert not part.exists()
    await fetch([source(address)], dest)  # a re-run starts from zero, and succeeds
    assert dest.read_bytes() == content


async def test_an_old_server_means_one_source(start_server, tmp_path, content, monkeypatch):
    roots = replicas(tmp_path, content, 2)
    monkeypatch.setattr(_session, "RANGES_FEATURE", "not-ranges")  # servers of before
    addresses = [await start_server(root) for root in roots]
    fallbacks: list[str] = []
    drops = Drops()
    await fetch(
        [source(a, f"s{i}") for i, a in enumerate(addresses)],
        tmp_path / "out.bin",
        drops,
        on_fallback=fallbacks.append,
    )
    assert (tmp_path / "out.bin").read_bytes() == content
    assert fallbacks == ["no source offers ranged downloads: fetching from s0 alone"]


async def test_one_old_server_among_new_ones_is_left_out(start_server, tmp_path, content):
    roots = replicas(tmp_path, content, 2)
    new = await start_server(roots[0])
    drops = Drops()

    async def old_connect() -> ftx.Client:
        client = await source(new).connect()
        hello = client.server_hello
        assert hello is not None
        client._protocol.peer_hello = type(hello)(
            hello.versions, hello.features - {RANGES_FEATURE}, hello.max_frame_size
        )
        return client

    await fetch([source(new, "new"), Source("old", old_connect)], tmp_path / "o", drops)
    assert (tmp_path / "o").read_bytes() == content
    assert drops.calls == [("old", "it does not offer ranged downloads")]


async def test_an_empty_file(start_server, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.bin").write_bytes(b"")
    address = await start_server(root)
    result = await fetch([source(address)], tmp_path / "out.bin", segments=3)
    assert (tmp_path / "out.bin").read_bytes() == b""
    assert result.size == 0


# --------------------------------------------------------------------------- the block record


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.binary(max_size=300)
    | st.dictionaries(
        st.sampled_from(
            ["version", "path", "size", "algorithm", "file_digest", "block_size", "done"]
        ),
        st.none()
        | st.booleans()
        | st.integers(-5, 5)
        | st.text(max_size=5)
        | st.lists(st.integers(-2, 3) | st.text(max_size=2), max_size=3),
    ).map(lambda obj: json.dumps(obj).encode())
)
def test_a_damaged_block_record_is_ignored_not_fatal(tmp_path, raw: bytes) -> None:
    part = tmp_path / "x.part"
    Path(BlockRecord.path_for(part)).write_bytes(raw)
    record = BlockRecord.load(part)
    if record is not None:  # only a well-formed one is taken
        assert isinstance(record.path, str)
        assert all(isinstance(i, int) and i >= 0 for i in record.done)


def test_a_block_record_round_trips(tmp_path) -> None:
    record = BlockRecord("a/b", 10, "sha256", "f" * 64, BASE_BLOCK_SIZE, frozenset({0, 3}))
    record.save(tmp_path / "x.part")
    assert BlockRecord.load(tmp_path / "x.part") == record
    BlockRecord.remove(tmp_path / "x.part")
    assert BlockRecord.load(tmp_path / "x.part") is None
