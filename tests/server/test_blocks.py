"""The server's answers to BLOCKS (docs/protocol.md, section 22.2): the refusals, a file
changing while it is read, and block lists remembered in memory and in the --state-dir store."""

from __future__ import annotations

import random

import pytest

from ftx.protocol import BASE_BLOCK_SIZE, BLOCK_PROGRESS_FEATURE, RANGES_FEATURE, new_hasher
from ftx.protocol.messages import BlockList, BlockProgress, Blocks, Error
from ftx.server import _blocks
from hostile_peers import RawClient


async def ask(port: int, *requests: Blocks) -> list[object]:
    async with await RawClient.connect(port, features=frozenset({RANGES_FEATURE})) as raw:
        await raw.send(*requests)
        return [await raw.receive() for _ in requests]


async def test_refusals(start_server, tmp_path):
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "a").write_bytes(b"abc")
    _host, port = await start_server(root)
    answers = await ask(
        port,
        Blocks(1, "dir", "sha256"),
        Blocks(2, "missing", "sha256"),
        Blocks(3, "a", "md5"),
        Blocks(4, "a", "sha256", identity="not-its-identity"),
        Blocks(5, "../a", "sha256"),
        Blocks(6, "a", "sha256"),
    )
    codes = [answer.code if isinstance(answer, Error) else "ok" for answer in answers]
    assert codes == ["not-a-file", "not-found", "bad-request", "changed", "outside-root", "ok"]
    last = answers[-1]
    assert isinstance(last, BlockList)
    hasher = new_hasher("sha256")
    hasher.update(b"abc")
    assert last.blocks == (hasher.hexdigest(),)
    assert last.file_digest == hasher.hexdigest()
    assert last.block_size == BASE_BLOCK_SIZE


async def test_block_lists_outlive_the_server_with_a_state_dir(start_server, tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(random.Random(3).randbytes(BASE_BLOCK_SIZE + 5))
    state = tmp_path / "state"
    _host, port = await start_server(root, state_dir=state)
    (first,) = await ask(port, Blocks(1, "f", "xxh3-128"))
    assert isinstance(first, BlockList)
    assert len(first.blocks) == 2

    def no_reading(*_args: object) -> bool:
        raise AssertionError("the block digests were computed again")

    monkeypatch.setattr(_blocks.BlockHashing, "advance", no_reading)
    # Another server on the same store (as one restarted): nothing in its memory.
    _host, port = await start_server(root, state_dir=state)
    (second,) = await ask(port, Blocks(1, "f", "xxh3-128"))
    assert second == first


@pytest.mark.parametrize("algorithm", ["sha256", "blake3", "xxh3-128"])
def test_hash_blocks_matches_a_plain_hash(tmp_path, algorithm):
    import threading

    from ftx.fs import ServedRoot

    content = random.Random(4).randbytes(2 * BASE_BLOCK_SIZE + 3)
    (tmp_path / "f").write_bytes(content)
    with ServedRoot(tmp_path) as root, root.open_file("f") as opened:
        hashing = _blocks.BlockHashing(opened, algorithm, threading.Event())
        calls = 0
        while not hashing.done:  # piece by piece: each call reads at least once (1 MiB)
            assert hashing.advance(0.0)
            calls += 1
            assert calls <= 20
    assert calls == 17  # 2 blocks of 8 MiB + 3 bytes, in reads of at most 1 MiB
    block, digests, whole = hashing.block_size, hashing.digests, hashing.whole_digest()
    expected = []
    for start in range(0, len(content), block):
        hasher = new_hasher(algorithm)
        hasher.update(content[start : start + block])
        expected.append(hasher.hexdigest())
    whole_hasher = new_hasher(algorithm)
    whole_hasher.update(content)
    assert digests == expected
    assert whole == whole_hasher.hexdigest()


def test_a_file_truncated_while_it_is_hashed_is_reported(tmp_path):
    import os
    import threading

    from ftx.fs import ServedRoot

    (tmp_path / "f").write_bytes(b"x" * (3 << 20))
    with ServedRoot(tmp_path) as root, root.open_file("f") as opened:
        hashing = _blocks.BlockHashing(opened, "xxh3-128", threading.Event())
        assert hashing.advance(0.0)  # 1 MiB read
        os.truncate(tmp_path / "f", 1 << 20)
        assert hashing.advance(0.0) is False


async def test_block_progress_comes_while_a_file_is_read(start_server, tmp_path, monkeypatch):
    """With block-progress in use, a BLOCK_PROGRESS follows each piece of reading (here each
    1 MiB read: the interval is 0), with the same size and a growing count below it."""
    monkeypatch.setattr(_blocks, "PROGRESS_INTERVAL", 0.0)
    root = tmp_path / "root"
    root.mkdir()
    content = random.Random(5).randbytes(BASE_BLOCK_SIZE + (3 << 20) + 7)
    (root / "f").write_bytes(content)
    _host, port = await start_server(root)
    features = frozenset({RANGES_FEATURE, BLOCK_PROGRESS_FEATURE})
    async with await RawClient.connect(port, features=features) as raw:
        await raw.send(Blocks(1, "f", "xxh3-128"))
        answers = []
        for _ in range(30):
            answer = await raw.receive()
            answers.append(answer)
            if not isinstance(answer, BlockProgress):
                break
    *progress, last = answers
    assert isinstance(last, BlockList)
    assert [p.hashed for p in progress] == [(i + 1) << 20 for i in range(11)]
    assert all(p.size == len(content) and p.request_id == 1 for p in progress)
    hasher = new_hasher("xxh3-128")
    hasher.update(content)
    assert last.file_digest == hasher.hexdigest()


async def test_no_block_progress_to_a_client_without_the_feature(
    start_server, tmp_path, monkeypatch
):
    monkeypatch.setattr(_blocks, "PROGRESS_INTERVAL", 0.0)
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"y" * (5 << 20))
    _host, port = await start_server(root)
    answers = await ask(port, Blocks(1, "f", "sha256"), Blocks(2, "f", "sha256"))
    assert [type(answer) for answer in answers] == [BlockList, BlockList]
