"""The messages of tree streams (docs/protocol.md section 21): encoding, decoding (hypothesis),
the name rules, and the order the state machines accept them in."""

from __future__ import annotations

import contextlib
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.protocol import TREE_FEATURE, ClientProtocol, ServerProtocol
from ftx.protocol.messages import (
    Data,
    Error,
    FileEnd,
    FileHeader,
    Get,
    HaveRecord,
    Hello,
    Kind,
    Message,
    TreeDir,
    TreeEnd,
    TreeFile,
    TreeFiles,
    TreeGet,
    TreeHave,
    TreeHaveEnd,
    TreeRecord,
    TreeSame,
    TreeSkip,
    decode_message,
    encode_message,
)

FUZZ = settings(max_examples=200, deadline=None)
MAX_INT = (1 << 63) - 1
SHA = hashlib.sha256(b"abc").hexdigest()


def encode(message: Message) -> bytes:
    return b"".join(bytes(part) for part in encode_message(message))


names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\0"), min_size=1
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255)
paths = st.lists(names, max_size=5).map("/".join).filter(lambda p: len(p.encode()) <= 4096)
ids = st.integers(0, (1 << 32) - 1)
digests = st.none() | st.sampled_from([SHA, "0" * 32])
records = st.builds(
    TreeRecord,
    names,
    st.integers(0, 64),
    st.integers(-MAX_INT, MAX_INT),
    st.integers(0, 0o7777),
    digests,
)


@st.composite
def tree_files(draw: st.DrawFn) -> TreeFiles:
    chosen = tuple(draw(st.lists(records, max_size=6)))
    content = draw(
        st.binary(min_size=sum(r.size for r in chosen), max_size=sum(r.size for r in chosen))
    )
    return TreeFiles(draw(ids), chosen, content)


have_records = st.builds(
    HaveRecord, names, st.integers(0, MAX_INT), st.integers(-MAX_INT, MAX_INT), digests
)
counts = st.integers(0, MAX_INT)
tree_messages = st.one_of(
    st.builds(
        TreeGet,
        ids,
        st.text(max_size=40),
        digests.map(lambda d: d and "sha256"),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(TreeDir, ids, paths),
    tree_files(),
    st.builds(TreeFile, ids, names),
    st.builds(TreeSkip, ids, paths, st.sampled_from(["symlink", "changed"]), st.text(max_size=30)),
    st.builds(TreeEnd, ids, counts, counts, counts),
    st.builds(TreeHave, ids, paths, st.lists(have_records, max_size=4).map(tuple)),
    st.builds(TreeHaveEnd, ids),
    st.builds(TreeSame, ids, st.lists(names, max_size=5).map(tuple)),
)


@FUZZ
@given(tree_messages)
def test_every_tree_message_round_trips(message: Message) -> None:
    try:
        payload = encode(message)
    except LocalProtocolError:
        return  # e.g. free text with a lone surrogate: refused before sending, never sent
    assert decode_message(payload) == message


@FUZZ
@given(st.sampled_from(range(0x50, 0x60)), st.binary(max_size=200))
def test_tree_kinds_on_arbitrary_bytes_raise_only_remote_protocol_errors(
    kind: int, body: bytes
) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_message(bytes([kind]) + body)


@FUZZ
@given(tree_files(), st.integers(0, 300), st.binary(min_size=1, max_size=8))
def test_tree_files_damaged_lengths_are_refused(message: TreeFiles, cut: int, extra: bytes) -> None:
    payload = encode(message)
    with pytest.raises(RemoteProtocolError):
        decode_message(payload + extra)  # content longer than the records say
    if cut < len(payload) - 1 and (cut < 5 or memoryview(message.content).nbytes):
        try:
            decoded = decode_message(payload[: len(payload) - 1 - cut])
        except RemoteProtocolError:
            return
        raise AssertionError(f"a cut TREE_FILES was accepted: {decoded!r}")


@pytest.mark.parametrize(
    "path",
    ["..", "../x", "a/../b", ".", "/etc", "a/", "a//b", "a\\b", "a\0b", "x" * 256, "\ud800"],
)
def test_unsafe_tree_paths_are_protocol_violations(path: str) -> None:
    body = json.dumps({"id": 1, "path": path}).encode()
    with pytest.raises(RemoteProtocolError):
        decode_message(bytes([Kind.TREE_DIR]) + body)
    with pytest.raises(LocalProtocolError):
        encode(TreeDir(1, path))


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "\0", "é" * 128])
def test_unsafe_record_names_are_protocol_violations(name: str) -> None:
    header = json.dumps({"id": 1, "files": [[name, 0, 0, 420, None]]}).encode()
    payload = bytes([Kind.TREE_FILES]) + len(header).to_bytes(4, "big") + header
    with pytest.raises(RemoteProtocolError):
        decode_message(payload)
    for message in (TreeFile(1, name), TreeSame(1, (name,))):
        with pytest.raises(LocalProtocolError):
            encode(message)


def test_the_tree_files_layout_is_the_documented_one() -> None:
    payload = encode(TreeFiles(7, (TreeRecord("a", 3, 5, 0o644, None),), b"abc"))
    assert payload[0] == Kind.TREE_FILES == 0x52
    length = int.from_bytes(payload[1:5], "big")
    assert json.loads(payload[5 : 5 + length]) == {"id": 7, "files": [["a", 3, 5, 420, None]]}
    assert payload[5 + length :] == b"abc"


# --------------------------------------------------------------------------- state machines


def connected(features: frozenset[str] = frozenset({TREE_FEATURE})) -> ClientProtocol:
    client = ClientProtocol(features=frozenset({TREE_FEATURE}))
    client.send(client.local_hello)
    client.receive(encode(Hello((1,), features, 1 << 20)))
    return client


def answer(client: ClientProtocol, *messages: Message) -> None:
    for message in messages:
        client.receive(encode(message))


def test_a_whole_tree_answer_is_accepted_and_ends_the_request() -> None:
    client = connected()
    client.send(TreeGet(1, "d", digest="sha256"))
    client.send(Get(2, "x", digest=None))  # pipelined after it
    answer(
        client,
        TreeDir(1, ""),
        TreeFiles(1, (TreeRecord("a", 3, 0, 0o644, SHA),), b"abc"),
        TreeSame(1, ("b",)),
        TreeFile(1, "big"),
        FileHeader(1, 3, 0, "id", digest="sha256"),
        Data(b"abc"),
        FileEnd(1, SHA),
        TreeFile(1, "cut"),
        FileHeader(1, 3, 0, "id", digest="sha256"),
        Data(b"a"),
        TreeSkip(1, "cut", "changed"),
        TreeSkip(1, "link", "symlink"),
        TreeEnd(1, 2, 2, 1),
    )
    assert client.pending_requests == 1
    answer(client, Error(2, "not-found", ""))
    assert client.pending_requests == 0


@pytest.mark.parametrize(
    "wrong",
    [
        [TreeEnd(1, 1, 0, 0)],  # counts
        [TreeFiles(1, (TreeRecord("a", 3, 0, 0o644, None),), b"abc")],  # no digest, one asked
        [TreeFiles(1, (TreeRecord("a", 3, 0, 0o644, "ABC"),), b"abc")],  # not lowercase hex
        [TreeFile(1, "f"), TreeDir(1, "x")],  # FILE due
        [TreeFile(1, "f"), FileHeader(1, 3, 0, "i", offset=1, digest="sha256")],
        [TreeFile(1, "f"), FileHeader(1, 3, 0, "i", digest=None)],
        [TreeFile(1, "f"), FileHeader(1, 3, 0, "i", digest="sha256"), FileEnd(1, SHA)],
        [FileHeader(1, 3, 0, "i", digest="sha256")],  # without TREE_FILE
        [TreeDir(2, "")],  # another id
        [Data(b"x")],
    ],
)
def test_a_tree_answer_out_of_order_is_a_protocol_violation(wrong: list[Message]) -> None:
    client = connected()
    client.send(TreeGet(1, "d", digest="sha256"))
    with pytest.raises(RemoteProtocolError):
        answer(client, *wrong)


def test_a_tree_is_sent_only_to_a_server_that_offers_it() -> None:
    client = connected(features=frozenset())
    with pytest.raises(LocalProtocolError, match="tree"):
        client.send(TreeGet(1, "d"))


def test_the_have_list_comes_right_after_its_tree_and_nothing_before_its_end() -> None:
    server = ServerProtocol(features=frozenset({TREE_FEATURE}))
    server.receive(encode(Hello((1,), frozenset({TREE_FEATURE}), 1 << 20)))
    server.send(server.hello_reply())
    server.receive(encode(TreeGet(1, "d", have=True)))
    server.receive(encode(TreeHave(1, "", (HaveRecord("a", 1, 2),))))
    with pytest.raises(RemoteProtocolError, match="TREE_HAVE_END"):
        server.receive(encode(Get(2, "x")))

    server = ServerProtocol(features=frozenset({TREE_FEATURE}))
    server.receive(encode(Hello((1,), frozenset({TREE_FEATURE}), 1 << 20)))
    server.send(server.hello_reply())
    server.receive(encode(TreeGet(1, "d", have=True)))
    server.receive(encode(TreeHaveEnd(1)))
    server.receive(encode(Get(2, "x")))  # now it may
    with pytest.raises(RemoteProtocolError):
        server.receive(encode(TreeHave(1, "", ())))  # after its end
