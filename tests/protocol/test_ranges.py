"""Ranged GETs and block digests (docs/protocol.md, section 22): the new members and kinds,
their decoders, the block size rule, and the state machines' checks of them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.framing import Buffer
from ftx.protocol import (
    BASE_BLOCK_SIZE,
    BLOCK_PROGRESS_FEATURE,
    MAX_BLOCKS,
    MIN_FRAME_SIZE,
    RANGES_FEATURE,
    ClientProtocol,
    ServerProtocol,
    block_count,
    block_size_for,
)
from ftx.protocol.messages import (
    BlockList,
    BlockProgress,
    Blocks,
    Data,
    FileEnd,
    FileHeader,
    Get,
    Hello,
    Kind,
    decode_message,
    encode_message,
)

MAX_INT = (1 << 63) - 1


def join(parts: tuple[Buffer, ...]) -> bytes:
    return b"".join(bytes(part) for part in parts)


def payload(kind: int, body: dict[str, Any]) -> bytes:
    return bytes([kind]) + json.dumps(body).encode()


hex32 = st.text("0123456789abcdef", min_size=32, max_size=32)
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)


@st.composite
def block_lists(draw: st.DrawFn) -> BlockList:
    algorithm = draw(st.sampled_from(["xxh3-128", "sha256", "blake3"]))
    digits = hex32 if algorithm == "xxh3-128" else hex64
    return BlockList(
        request_id=draw(st.integers(0, (1 << 32) - 1)),
        size=draw(st.integers(0, MAX_INT)),
        mtime_ns=draw(st.integers(-MAX_INT, MAX_INT)),
        identity=draw(st.text(max_size=40)),
        digest=algorithm,
        block_size=draw(st.integers(1, MAX_INT)),
        blocks=tuple(draw(st.lists(digits, max_size=8))),
        file_digest=draw(digits),
    )


@given(
    st.builds(
        Get,
        request_id=st.integers(0, (1 << 32) - 1),
        path=st.text(max_size=30),
        offset=st.integers(0, MAX_INT),
        identity=st.none() | st.text(max_size=30),
        digest=st.none() | st.sampled_from(["sha256", "xxh3-128"]),
        length=st.none() | st.integers(0, MAX_INT),
    )
    | st.builds(
        Blocks,
        request_id=st.integers(0, (1 << 32) - 1),
        path=st.text(max_size=30),
        digest=st.sampled_from(["sha256", "xxh3-128", "blake3"]),
        identity=st.none() | st.text(max_size=30),
    )
    | block_lists()
)
def test_round_trip(message: Get | Blocks | BlockList) -> None:
    assert decode_message(join(encode_message(message))) == message


def test_get_without_length_is_encoded_as_version_1_wrote_it() -> None:
    body = json.loads(join(encode_message(Get(1, "a")))[1:])
    assert "length" not in body
    ranged = json.loads(join(encode_message(Get(1, "a", 8, digest=None, length=5)))[1:])
    assert ranged["length"] == 5


@pytest.mark.parametrize("length", [-1, True, "5", 1.5, MAX_INT + 1])
def test_get_bad_length_is_rejected(length: object) -> None:
    body = {"id": 1, "path": "a", "length": length}
    with pytest.raises(RemoteProtocolError):
        decode_message(payload(Kind.GET, body))


def test_get_null_length_means_to_the_end() -> None:
    message = decode_message(payload(Kind.GET, {"id": 1, "path": "a", "length": None}))
    assert isinstance(message, Get)
    assert message.length is None


_GOOD_LIST: dict[str, Any] = {
    "id": 3,
    "size": 10,
    "mtime_ns": 0,
    "identity": "i",
    "digest": "xxh3-128",
    "block_size": BASE_BLOCK_SIZE,
    "blocks": ["0" * 32],
    "file_digest": "f" * 32,
}


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("digest", "md5"),
        ("blocks", ["0" * 31]),
        ("blocks", ["A" * 32]),
        ("blocks", "00"),
        ("blocks", ["0" * 32] * (MAX_BLOCKS + 1)),
        ("file_digest", "0" * 64),
        ("block_size", 0),
        ("size", -1),
    ],
)
def test_block_list_bad_members_are_rejected(member: str, value: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(payload(Kind.BLOCK_LIST, {**_GOOD_LIST, member: value}))


@given(st.integers(0, MAX_INT))
def test_block_size_keeps_every_file_within_max_blocks(size: int) -> None:
    block = block_size_for(size)
    assert block >= BASE_BLOCK_SIZE
    assert block_count(size, block) <= MAX_BLOCKS
    # The smallest such size: half of it would need more blocks.
    assert block == BASE_BLOCK_SIZE or block_count(size, block // 2) > MAX_BLOCKS


def test_block_size_examples() -> None:
    assert block_size_for(0) == BASE_BLOCK_SIZE
    assert block_count(0, BASE_BLOCK_SIZE) == 0
    assert block_count(1 << 30, block_size_for(1 << 30)) == 128  # 1 GiB: 8 MiB blocks
    assert block_size_for(1 << 40) == 2 << 30  # 1 TiB: 512 blocks of 2 GiB


def test_largest_block_list_fits_the_smallest_frame() -> None:
    message = BlockList(
        1,
        MAX_INT,
        MAX_INT,
        "x" * 256,
        "sha256",
        block_size_for(MAX_INT),
        ("f" * 64,) * 512,
        "f" * 64,
    )
    assert len(join(encode_message(message))) < MIN_FRAME_SIZE


def connected(client_features: frozenset[str], server_features: frozenset[str]) -> ClientProtocol:
    client = ClientProtocol(features=client_features)
    client.send(client.local_hello)
    client.receive(join(encode_message(Hello((1,), server_features))))
    return client


def test_client_sends_ranged_get_and_blocks_only_with_the_feature() -> None:
    old = connected(frozenset({RANGES_FEATURE}), frozenset())
    with pytest.raises(LocalProtocolError, match="ranges"):
        old.send(Get(1, "a", 0, digest=None, length=4))
    with pytest.raises(LocalProtocolError, match="ranges"):
        old.send(Blocks(2, "a", "sha256"))
    both = connected(frozenset({RANGES_FEATURE}), frozenset({RANGES_FEATURE}))
    with pytest.raises(LocalProtocolError, match="no digest"):
        both.send(Get(3, "a", 0, digest="sha256", length=4))
    with pytest.raises(LocalProtocolError, match="2\\^63"):
        both.send(Get(4, "a", MAX_INT, digest=None, length=1))
    assert both.pending_requests == 0
    both.send(Get(5, "a", 0, digest=None, length=0))
    both.send(Blocks(6, "a", "sha256"))
    assert both.pending_requests == 2


def test_client_counts_a_ranged_answer_to_the_range_clamped_at_the_end() -> None:
    client = connected(frozenset({RANGES_FEATURE}), frozenset({RANGES_FEATURE}))
    client.send(Get(1, "a", 6, digest=None, length=100))
    client.receive(join(encode_message(FileHeader(1, 10, 0, "i", offset=6, digest=None))))
    client.receive(join(encode_message(Data(b"abcd"))))
    with pytest.raises(RemoteProtocolError, match="bytes of data"):
        client.receive(join(encode_message(Data(b"e"))))
    client = connected(frozenset({RANGES_FEATURE}), frozenset({RANGES_FEATURE}))
    client.send(Get(1, "a", 2, digest=None, length=3))
    client.receive(join(encode_message(FileHeader(1, 10, 0, "i", offset=2, digest=None))))
    with pytest.raises(RemoteProtocolError, match="still due"):
        client.receive(join(encode_message(FileEnd(1, None))))


def test_client_checks_block_list_against_its_request() -> None:
    good = BlockList(1, 10, 0, "i", "xxh3-128", BASE_BLOCK_SIZE, ("0" * 32,), "1" * 32)
    cases = [
        (good, None),
        (BlockList(1, 10, 0, "i", "sha256", BASE_BLOCK_SIZE, ("0" * 64,), "1" * 64), "uses"),
        (BlockList(1, 10, 0, "j", "xxh3-128", BASE_BLOCK_SIZE, ("0" * 32,), "1" * 32), "identity"),
        (BlockList(1, 10, 0, "i", "xxh3-128", 1 << 20, ("0" * 32,), "1" * 32), "blocks of"),
        (BlockList(1, 10, 0, "i", "xxh3-128", BASE_BLOCK_SIZE, (), "1" * 32), "digests for"),
    ]
    for answer, error in cases:
        client = connected(frozenset({RANGES_FEATURE}), frozenset({RANGES_FEATURE}))
        client.send(Blocks(1, "a", "xxh3-128", identity="i"))
        if error is None:
            assert client.receive(join(encode_message(answer))) == answer
            assert client.pending_requests == 0
        else:
            with pytest.raises(RemoteProtocolError, match=error):
                client.receive(join(encode_message(answer)))


def test_server_accepts_blocks_and_checks_its_own_answer() -> None:
    server = ServerProtocol(features=frozenset({RANGES_FEATURE}))
    server.receive(join(encode_message(Hello((1,), frozenset({RANGES_FEATURE})))))
    server.send(server.hello_reply())
    assert server.receive(join(encode_message(Blocks(1, "a", "sha256")))) == Blocks(
        1, "a", "sha256"
    )
    with pytest.raises(LocalProtocolError):
        server.send(BlockList(1, 10, 0, "i", "xxh3-128", BASE_BLOCK_SIZE, ("0" * 32,), "1" * 32))
    server.send(BlockList(1, 10, 0, "i", "sha256", BASE_BLOCK_SIZE, ("0" * 64,), "1" * 64))
    assert server.current_request is None


# --------------------------------------------------------------------------- BLOCK_PROGRESS

PROGRESSING = frozenset({RANGES_FEATURE, BLOCK_PROGRESS_FEATURE})
LIST_OF_20 = BlockList(1, 20, 0, "i", "xxh3-128", BASE_BLOCK_SIZE, ("0" * 32,), "1" * 32)


@given(st.integers(0, 2**32 - 1), st.integers(0, MAX_INT), st.integers(0, MAX_INT))
def test_block_progress_round_trip(request_id: int, size: int, hashed: int) -> None:
    message = BlockProgress(request_id, size, hashed)
    assert decode_message(join(encode_message(message))) == message


@pytest.mark.parametrize(
    ("member", "value"), [("size", -1), ("hashed", -1), ("hashed", 1.5), ("size", None)]
)
def test_block_progress_bad_members_are_rejected(member: str, value: object) -> None:
    body: dict[str, Any] = {"id": 1, "size": 10, "hashed": 5, member: value}
    with pytest.raises(RemoteProtocolError):
        decode_message(payload(Kind.BLOCK_PROGRESS, body))


def test_client_accepts_growing_progress_then_the_list() -> None:
    client = connected(PROGRESSING, PROGRESSING)
    client.send(Blocks(1, "a", "xxh3-128"))
    for hashed in (0, 4, 19):
        client.receive(join(encode_message(BlockProgress(1, 20, hashed))))
    assert client.pending_requests == 1
    assert client.receive(join(encode_message(LIST_OF_20))) == LIST_OF_20
    assert client.pending_requests == 0


@pytest.mark.parametrize(
    ("progress", "error"),
    [
        ([(20, 5), (20, 5)], "must grow"),  # no growth
        ([(20, 5), (20, 4)], "must grow"),  # going back
        ([(20, 20)], "below the size"),  # the last byte comes with the list
        ([(0, 0)], "below the size"),  # an empty file has nothing to report
        ([(20, 5), (30, 6)], "size of 30 after 20"),
        ([(30, 5), None], "BLOCK_LIST gives a size of 20 after BLOCK_PROGRESS gave 30"),
    ],
)
def test_client_refuses_progress_that_does_not_progress(
    progress: list[tuple[int, int] | None], error: str
) -> None:
    """Every frame but the last is accepted; the last (``None``: the BLOCK_LIST) is refused."""
    client = connected(PROGRESSING, PROGRESSING)
    client.send(Blocks(1, "a", "xxh3-128"))
    frames = [
        join(encode_message(LIST_OF_20 if p is None else BlockProgress(1, *p))) for p in progress
    ]
    for frame in frames[:-1]:
        client.receive(frame)
    with pytest.raises(RemoteProtocolError, match=error):
        client.receive(frames[-1])


def test_progress_needs_the_feature_and_a_blocks_request() -> None:
    without = connected(frozenset({RANGES_FEATURE}), PROGRESSING)  # the client does not list it
    without.send(Blocks(1, "a", "xxh3-128"))
    with pytest.raises(RemoteProtocolError, match="block-progress"):
        without.receive(join(encode_message(BlockProgress(1, 20, 1))))
    client = connected(PROGRESSING, PROGRESSING)
    client.send(Get(1, "a", 0, digest=None, length=4))
    with pytest.raises(RemoteProtocolError, match="unexpected BlockProgress"):
        client.receive(join(encode_message(BlockProgress(1, 20, 1))))
    server = ServerProtocol(features=frozenset({RANGES_FEATURE}))  # the server does not list it
    server.receive(join(encode_message(Hello((1,), PROGRESSING))))
    server.send(server.hello_reply())
    server.receive(join(encode_message(Blocks(1, "a", "xxh3-128"))))
    with pytest.raises(LocalProtocolError, match="block-progress"):
        server.send(BlockProgress(1, 20, 1))
