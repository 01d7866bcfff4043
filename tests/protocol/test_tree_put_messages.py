"""The messages of tree uploads (docs/protocol.md section 23): encoding and decoding
(hypothesis: round trips, and arbitrary bytes raise only the protocol error), and the order the
client and server state machines accept them in."""

from __future__ import annotations

import contextlib
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.protocol import (
    MAX_TREE_ASKS,
    TREE_PUT_FEATURE,
    UPLOAD_FEATURE,
    ClientProtocol,
    ServerProtocol,
)
from ftx.protocol.messages import (
    Error,
    Get,
    HaveRecord,
    Hello,
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
    decode_message,
    encode_message,
)

FUZZ = settings(max_examples=200, deadline=None)
MAX_INT = (1 << 63) - 1
SHA = hashlib.sha256(b"abc").hexdigest()
FEATURES = frozenset({TREE_PUT_FEATURE, UPLOAD_FEATURE})


def encode(message: Message) -> bytes:
    return b"".join(bytes(part) for part in encode_message(message))


names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\0"), min_size=1
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255)
paths = st.lists(names, max_size=5).map("/".join).filter(lambda p: len(p.encode()) <= 4096)
ids = st.integers(0, (1 << 32) - 1)
counts = st.integers(0, MAX_INT)
messages = st.one_of(
    st.builds(
        TreePut, ids, st.text(max_size=40), st.text(max_size=20), st.booleans(), st.booleans()
    ),
    st.builds(TreeAsk, ids, paths),
    st.builds(TreePutEnd, ids, counts, counts),
    st.builds(TreeStored, ids, paths, st.lists(names, max_size=5).map(tuple)),
)


@FUZZ
@given(messages)
def test_every_tree_upload_message_round_trips(message: Message) -> None:
    assert decode_message(encode(message)) == message


@FUZZ
@given(st.sampled_from(range(0x59, 0x5D)), st.binary(max_size=200))
def test_tree_upload_kinds_on_arbitrary_bytes_raise_only_remote_protocol_errors(
    kind: int, body: bytes
) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_message(bytes([kind]) + body)


@FUZZ
@given(
    st.sampled_from(range(0x59, 0x5D)),
    st.dictionaries(
        st.sampled_from(
            ["id", "path", "digest", "overwrite", "checksum", "dirs", "files", "names"]
        ),
        st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.lists(st.text()),
    ),
)
def test_tree_upload_kinds_on_arbitrary_json_raise_only_remote_protocol_errors(
    kind: int, body: dict[str, object]
) -> None:
    import json

    with contextlib.suppress(RemoteProtocolError):
        decode_message(bytes([kind]) + json.dumps(body).encode())


@pytest.mark.parametrize("path", ["/a", "a//b", "a/../b", "..", "a\\b", "a/\0"])
def test_unsafe_ask_and_stored_paths_are_protocol_violations(path: str) -> None:
    for message in (TreeAsk(1, path), TreeStored(1, path, ("x",))):
        with pytest.raises(LocalProtocolError):
            encode(message)
    with pytest.raises(RemoteProtocolError):
        decode_message(b"\x5a" + json.dumps({"id": 1, "path": path}).encode())


# --------------------------------------------------------------------------- state machines


def client() -> ClientProtocol:
    protocol = ClientProtocol(features=FEATURES)
    protocol.send(protocol.local_hello)
    protocol.receive(encode(Hello((1,), FEATURES, 1 << 20)))
    return protocol


def server() -> ServerProtocol:
    protocol = ServerProtocol(features=FEATURES)
    protocol.receive(encode(Hello((1,), FEATURES, 1 << 20)))
    protocol.send(protocol.hello_reply())
    return protocol


def send_all(protocol: ClientProtocol, messages: list[Message]) -> None:
    for message in messages:
        protocol.send(message)


def receive_all(protocol: ClientProtocol | ServerProtocol, messages: list[Message]) -> None:
    for message in messages:
        protocol.receive(encode(message))


def record(name: str = "a") -> TreeRecord:
    return TreeRecord(name, 3, 0, 0o644, SHA)


def test_a_whole_tree_upload_goes_both_ways() -> None:
    c, s = client(), server()
    stream = [
        TreePut(1, "up"),
        TreeAsk(1, ""),
        TreeDir(1, ""),
        TreeFiles(1, (record(),), b"abc"),
        TreeAsk(1, "d"),
        TreeDir(1, "d"),
        TreeFiles(1, (record("b"),), b"abc"),
        TreePutEnd(1, 2, 2),
    ]
    for message in stream:
        assert s.receive(b"".join(bytes(p) for p in c.send(message))) == message
    answers = [
        TreeHave(1, "", (HaveRecord("z", 1, 2),)),
        TreeHaveEnd(1),
        TreeStored(1, "", ("a",)),
        TreeHaveEnd(1),
        TreeSkip(1, "d/b", "exists", "there"),
        TreeEnd(1, 1, 1, 0),
    ]
    for message in answers:
        assert c.receive(b"".join(bytes(p) for p in s.send(message))) == message
    assert c.pending_requests == 0


def test_the_client_may_not_send_a_tree_upload_without_the_feature() -> None:
    protocol = ClientProtocol(features=FEATURES)
    protocol.send(protocol.local_hello)
    protocol.receive(encode(Hello((1,), frozenset({UPLOAD_FEATURE}), 1 << 20)))
    with pytest.raises(LocalProtocolError):
        protocol.send(TreePut(1, "up"))


@pytest.mark.parametrize(
    "stream",
    [
        [TreePut(1, "up"), TreeFiles(1, (record(),), b"abc")],  # files before a directory
        [TreePut(1, "up"), TreeDir(1, ""), TreePutEnd(1, 1, 1)],  # wrong counts
        [TreePut(1, "up"), Get(2, "x")],  # a request inside the stream
        [TreePut(1, "up"), TreeDir(2, "")],  # another request's
        [TreeDir(1, "")],  # no tree upload at all
        [TreePut(1, "up"), TreeDir(1, ""), TreeFiles(1, (TreeRecord("a", 3, 0, 0, None),), b"abc")],
        [TreePut(1, "up", "xxh3-128"), TreeDir(1, ""), TreeFiles(1, (record(),), b"abc")],
        [TreePut(1, "up"), *[TreeAsk(1, "") for _ in range(MAX_TREE_ASKS + 1)]],
    ],
)
def test_a_bad_stream_is_refused_by_both_sides(stream: list[Message]) -> None:
    c, s = client(), server()
    with pytest.raises(LocalProtocolError):
        send_all(c, stream)
    with pytest.raises(RemoteProtocolError):
        receive_all(s, stream)


@pytest.mark.parametrize(
    "answers",
    [
        [TreeHave(1, "other", ())],  # not the path asked
        [TreeHaveEnd(1), TreeHaveEnd(1)],  # more answers than asks
        [Error(1, "read-only", "no")],  # before the client's end
        [TreeEnd(1, 0, 0, 0)],  # before the client's end
    ],
)
def test_the_client_refuses_answers_out_of_order(answers: list[Message]) -> None:
    c = client()
    for message in (TreePut(1, "up"), TreeAsk(1, "d")):
        c.send(message)
    with pytest.raises(RemoteProtocolError):
        receive_all(c, answers)


@pytest.mark.parametrize(
    "answers",
    [
        [TreeStored(1, "", ("a",)), TreeEnd(1, 0, 0, 0)],  # a stored file not counted
        [TreeSkip(1, "a", "exists"), TreeEnd(1, 0, 0, 0)],  # a skip not counted
        [TreeEnd(1, 0, 0, 1)],  # unchanged is always 0
    ],
)
def test_tree_end_counts_must_match(answers: list[Message]) -> None:
    c = client()
    for message in (TreePut(1, "up"), TreeDir(1, ""), TreePutEnd(1, 1, 0)):
        c.send(message)
    with pytest.raises(RemoteProtocolError):
        receive_all(c, answers)


def test_an_error_after_the_end_refuses_the_tree_and_frees_the_connection() -> None:
    c = client()
    for message in (TreePut(1, "up"), TreePutEnd(1, 0, 0)):
        c.send(message)
    c.receive(encode(Error(1, "not-found", "no parent")))
    assert c.pending_requests == 0
    c.send(Get(2, "x"))
