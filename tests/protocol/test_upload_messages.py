"""Sans-IO tests of uploads: the PUT, MKDIR, READY and DONE messages, and the client-to-server
DATA and END direction in :class:`ClientProtocol` and :class:`ServerProtocol` (docs/protocol.md,
§18). No sockets: each side's ``send`` feeds the other side's ``receive``; raw payloads show a
peer breaking the rules."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftx.cli import build_parser
from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.framing import Buffer
from ftx.protocol import (
    BLAKE3_FEATURE,
    UPLOAD_FEATURE,
    ClientProtocol,
    ErrorCode,
    ServerProtocol,
)
from ftx.protocol.messages import (
    Data,
    Done,
    Error,
    FileEnd,
    FileHeader,
    Get,
    Hello,
    Kind,
    ListDir,
    MakeDir,
    Message,
    Put,
    Ready,
    decode_message,
    encode_message,
)

CONTENT = b"hello, upload"
DIGEST = hashlib.sha256(CONTENT).hexdigest()
UPLOADS = frozenset({UPLOAD_FEATURE})


def join(parts: tuple[Buffer, ...]) -> bytes:
    return b"".join(bytes(part) for part in parts)


def raw(message: Message) -> bytes:
    return join(encode_message(message))


def handshake(
    client_features: frozenset[str] = UPLOADS, server_features: frozenset[str] = UPLOADS
) -> tuple[ClientProtocol, ServerProtocol]:
    client = ClientProtocol(features=client_features)
    server = ServerProtocol(features=server_features)
    server.receive(join(client.send(client.local_hello)))
    client.receive(join(server.send(server.hello_reply())))
    return client, server


def to_server(client: ClientProtocol, server: ServerProtocol, message: Message) -> Message | None:
    return server.receive(join(client.send(message)))


def to_client(server: ServerProtocol, client: ClientProtocol, message: Message) -> Message | None:
    return client.receive(join(server.send(message)))


def put(request_id: int = 1, size: int = len(CONTENT), **kwargs: object) -> Put:
    return Put(request_id, "dir/file.bin", size, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- messages


def test_upload_messages_round_trip_with_the_documented_bodies() -> None:
    message = Put(7, "a/b.txt", 13, "blake3", "src-token", True, 1_700_000_000_123_456_789)
    payload = raw(message)
    assert payload[0] == Kind.PUT == 0x12
    assert json.loads(payload[1:]) == {
        "id": 7,
        "path": "a/b.txt",
        "size": 13,
        "digest": "blake3",
        "source": "src-token",
        "overwrite": True,
        "mtime_ns": 1_700_000_000_123_456_789,
    }
    assert decode_message(payload) == message
    for message, kind, body in [
        (MakeDir(3, "new"), 0x13, {"id": 3, "path": "new"}),
        (Ready(3, 42), 0x23, {"id": 3, "offset": 42}),
        (Done(3, False), 0x24, {"id": 3, "created": False}),
    ]:
        payload = raw(message)
        assert payload[0] == kind
        assert json.loads(payload[1:]) == body
        assert decode_message(payload) == message


def test_put_defaults_when_optional_members_are_absent() -> None:
    decoded = decode_message(b'\x12{"id":1,"path":"x","size":0}')
    assert decoded == Put(1, "x", 0, "sha256", None, False, None)
    assert decode_message(b'\x24{"id":1}') == Done(1, True)


@pytest.mark.parametrize(
    "body",
    [
        {"id": 1, "path": "x"},  # size missing
        {"id": 1, "path": "x", "size": -1},
        {"id": 1, "path": "x", "size": 1.0},
        {"id": 1, "path": "x", "size": 1, "overwrite": 1},  # not a boolean
        {"id": 1, "path": "x", "size": 1, "overwrite": None},
        {"id": 1, "path": "x", "size": 1, "digest": None},  # uploads are always verified
        {"id": 1, "path": "x", "size": 1, "mtime_ns": "1"},
        {"id": 1, "path": "x" * 4097, "size": 1},
    ],
)
def test_malformed_put_is_a_protocol_error(body: dict[str, object]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(b"\x12" + json.dumps(body).encode())


@pytest.mark.parametrize(
    "payload",
    [b'\x23{"id":1}', b'\x23{"id":1,"offset":-1}', b'\x24{"id":1,"created":"yes"}', b"\x13{}"],
)
def test_malformed_answers_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(payload)


# --------------------------------------------------------------------------- a whole upload


def test_a_whole_upload_in_both_state_machines() -> None:
    client, server = handshake()
    assert UPLOAD_FEATURE in client.features
    request = put(mtime_ns=5)
    assert to_server(client, server, request) == request
    assert server.current_request == request
    assert to_client(server, client, Ready(1, 0)) == Ready(1, 0)
    for chunk in (CONTENT[:4], b"", CONTENT[4:]):  # any split, empty DATA included
        received = to_server(client, server, Data(chunk))
        assert isinstance(received, Data)
        assert bytes(received.data) == chunk
    assert to_server(client, server, FileEnd(1, DIGEST)) == FileEnd(1, DIGEST)
    assert client.pending_requests == 1
    assert to_client(server, client, Done(1, True)) == Done(1, True)
    assert client.pending_requests == 0
    assert server.current_request is None


def test_a_resumed_upload_sends_only_the_rest() -> None:
    client, server = handshake()
    to_server(client, server, put())
    to_client(server, client, Ready(1, 4))
    with pytest.raises(LocalProtocolError, match="remained"):
        client.send(Data(CONTENT))  # 4 bytes too many
    to_server(client, server, Data(CONTENT[4:]))
    to_server(client, server, FileEnd(1, DIGEST))
    to_client(server, client, Done(1, False))
    assert client.pending_requests == 0


def test_ready_at_the_end_means_send_only_end() -> None:
    client, server = handshake()
    to_server(client, server, put())
    to_client(server, client, Ready(1, len(CONTENT)))
    to_server(client, server, FileEnd(1, DIGEST))
    to_client(server, client, Done(1))


def test_a_refused_put_ends_with_its_error() -> None:
    client, server = handshake()
    to_server(client, server, put())
    to_client(server, client, Error(1, ErrorCode.EXISTS, "exists"))
    assert client.pending_requests == 0
    with pytest.raises(LocalProtocolError, match="outside of an upload"):
        client.send(Data(CONTENT))


def test_mkdir_is_answered_by_done_and_may_be_pipelined() -> None:
    client, server = handshake()
    to_server(client, server, MakeDir(1, "a"))
    to_server(client, server, MakeDir(2, "a/b"))
    to_server(client, server, Get(3, "a/b/c"))
    to_client(server, client, Done(1, True))
    to_client(server, client, Error(2, ErrorCode.EXISTS, "not a directory"))
    assert client.pending_requests == 1


def test_requests_may_follow_the_end_of_an_upload_before_its_done() -> None:
    client, server = handshake()
    to_server(client, server, put(1))
    to_client(server, client, Ready(1, 0))
    to_server(client, server, Data(CONTENT))
    to_server(client, server, FileEnd(1, DIGEST))
    to_server(client, server, put(2))  # pipelined behind the first upload's END
    to_client(server, client, Done(1))
    to_client(server, client, Ready(2, 0))
    to_server(client, server, Data(CONTENT))
    to_server(client, server, FileEnd(2, DIGEST))
    to_client(server, client, Done(2))
    assert client.pending_requests == 0


# --------------------------------------------------------------------------- the feature


def test_the_client_sends_no_upload_without_the_feature() -> None:
    for client_features, server_features in [(UPLOADS, frozenset()), (frozenset(), UPLOADS)]:
        client, _ = handshake(client_features, server_features)
        with pytest.raises(LocalProtocolError, match="upload"):
            client.send(put())
        with pytest.raises(LocalProtocolError, match="upload"):
            client.send(MakeDir(1, "d"))
        assert client.pending_requests == 0


def test_a_server_without_the_feature_still_reads_put_to_refuse_it() -> None:
    # A read-only server does not list the feature, but answers a PUT with an ERROR
    # (read-only) instead of closing the connection.
    _, server = handshake(server_features=frozenset({BLAKE3_FEATURE}))
    assert server.receive(raw(put())) == put()
    server.send(Error(1, ErrorCode.READ_ONLY, "read-only"))
    assert server.current_request is None
    with pytest.raises(RemoteProtocolError, match="outside of an upload"):
        server.receive(raw(Data(CONTENT)))


def test_unknown_digest_in_put_is_refused_locally() -> None:
    client, _ = handshake()
    with pytest.raises(LocalProtocolError, match="digest"):
        client.send(put(digest="md5"))


# --------------------------------------------------------------------------- violations


def started_upload(offset: int = 0) -> tuple[ClientProtocol, ServerProtocol]:
    client, server = handshake()
    to_server(client, server, put())
    to_client(server, client, Ready(1, offset))
    return client, server


def test_data_before_ready_is_a_violation() -> None:
    client, server = handshake()
    to_server(client, server, put())
    with pytest.raises(LocalProtocolError, match="outside of an upload"):
        client.send(Data(CONTENT))
    with pytest.raises(RemoteProtocolError, match="outside of an upload"):
        server.receive(raw(Data(CONTENT)))


def test_no_request_between_a_put_and_its_end() -> None:
    client, server = handshake()
    to_server(client, server, put())
    # Before READY: the server would read the request where it expects the upload's data.
    with pytest.raises(LocalProtocolError, match="END of the upload"):
        client.send(ListDir(2, ""))
    with pytest.raises(RemoteProtocolError, match="END of the upload"):
        server.receive(raw(Get(2, "x")))
    client, server = started_upload()
    with pytest.raises(LocalProtocolError, match="END of the upload"):
        client.send(put(2))
    with pytest.raises(RemoteProtocolError, match="END of the upload"):
        server.receive(raw(MakeDir(2, "d")))


def test_upload_data_beyond_the_size_is_a_violation() -> None:
    _, server = started_upload()
    server.receive(raw(Data(CONTENT[:-1])))
    with pytest.raises(RemoteProtocolError, match="remained"):
        server.receive(raw(Data(b"xy")))


def test_end_before_all_the_data_is_a_violation() -> None:
    client, server = started_upload()
    with pytest.raises(LocalProtocolError, match="still due"):
        client.send(FileEnd(1, DIGEST))
    with pytest.raises(RemoteProtocolError, match="still due"):
        server.receive(raw(FileEnd(1, DIGEST)))


def test_end_of_an_upload_needs_the_right_id_and_a_digest() -> None:
    client, server = started_upload(len(CONTENT))
    with pytest.raises(RemoteProtocolError, match="END for request 9"):
        server.receive(raw(FileEnd(9, DIGEST)))
    client, server = started_upload(len(CONTENT))
    with pytest.raises(LocalProtocolError, match="no digest"):
        client.send(FileEnd(1, None))
    with pytest.raises(RemoteProtocolError, match="no digest"):
        server.receive(raw(FileEnd(1, None)))


def test_the_server_answers_an_upload_only_after_its_end() -> None:
    client, server = started_upload()
    with pytest.raises(LocalProtocolError, match="before the upload's END"):
        server.send(Error(1, ErrorCode.NO_SPACE, "full"))
    with pytest.raises(LocalProtocolError):
        server.send(Done(1))
    with pytest.raises(RemoteProtocolError, match="before the upload's END"):
        client.receive(raw(Error(1, ErrorCode.NO_SPACE, "full")))
    # A connection-level ERROR may still come at any time.
    client, server = started_upload()
    assert isinstance(to_client(server, client, Error(None, ErrorCode.TIMEOUT, "slow")), Error)
    assert client.closed


@pytest.mark.parametrize(
    "message",
    [
        Ready(1, len(CONTENT) + 1),  # beyond the size announced
        Done(1),  # DONE before READY, DATA and END
        FileHeader(1, 5, 0, "id"),  # a GET's answer
    ],
)
def test_wrong_answers_to_a_put_are_violations(message: Message) -> None:
    client, server = handshake()
    to_server(client, server, put())
    with pytest.raises(LocalProtocolError):
        server.send(message)
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(message))


def test_answers_to_other_requests_are_not_upload_answers() -> None:
    client, server = handshake()
    to_server(client, server, Get(1, "x"))
    with pytest.raises(LocalProtocolError):
        server.send(Ready(1, 0))
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(Done(1)))
    client, server = handshake()
    to_server(client, server, MakeDir(1, "d"))
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(Ready(1, 0)))


def test_the_server_never_uploads_and_the_client_never_sends_answers() -> None:
    client, server = handshake()
    with pytest.raises(RemoteProtocolError, match="cannot send"):
        server.receive(raw(Ready(1, 0)))
    with pytest.raises(LocalProtocolError, match="cannot send"):
        client.send(Done(1))
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(put()))
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(Hello((1,))))


# --------------------------------------------------------------------------- the documentation

DOCS = Path(__file__).resolve().parents[2] / "docs"
FRAME_LINE = re.compile(r"^[CS]→[CS]  ((?:[0-9a-f]{2} ){3}[0-9a-f]{2}) \| ([0-9a-f]{2}) \| (.*)$")


def test_the_upload_example_in_the_protocol_document_is_what_ftx_encodes() -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    section = text[text.index("### 18.6 Example") :]
    lines = [m for line in section.splitlines() if (m := FRAME_LINE.match(line))]
    assert len(lines) == 7
    for match in lines:
        length, kind = int(match[1].replace(" ", ""), 16), int(match[2], 16)
        text_body = match[3]
        body = bytes.fromhex(text_body.split("(")[0]) if kind == Kind.DATA else text_body.encode()
        payload = bytes([kind]) + body
        assert length == len(payload)
        message = decode_message(payload)
        assert message is not None
        assert raw(message) == payload  # the reference encoding, byte for byte


def test_the_documents_cover_the_upload_messages_codes_and_options() -> None:
    protocol = (DOCS / "protocol.md").read_text(encoding="utf-8")
    guide = (DOCS / "user-guide.md").read_text(encoding="utf-8")
    for kind in (Kind.PUT, Kind.MKDIR, Kind.READY, Kind.DONE):
        assert f"| `0x{kind:02x}` | {kind.name} |" in protocol
    for code in ("read-only", "exists", "too-large", "no-space", "digest-mismatch"):
        assert f"| `{code}` |" in protocol
    assert f"| `{UPLOAD_FEATURE}` |" in protocol
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("put", "serve"):
        for action in commands.choices[command]._actions:
            for option in set(action.option_strings) - {"-h", "--help"}:
                assert option in guide, f"ftx {command} {option} is not in the user guide"


# --------------------------------------------------------------------------- property tests

upload_payloads = st.one_of(
    st.builds(Data, st.binary(max_size=8)).map(raw),
    st.builds(FileEnd, st.sampled_from([1, 2]), st.none() | st.just(DIGEST)).map(raw),
    st.builds(Put, st.sampled_from([1, 2, 3]), st.just("f"), st.integers(0, 20)).map(raw),
    st.builds(MakeDir, st.sampled_from([2, 3]), st.just("d")).map(raw),
    st.builds(Get, st.sampled_from([2, 3]), st.just("f")).map(raw),
    st.builds(Ready, st.just(1), st.integers(0, 20)).map(raw),
    st.binary(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(0, 20), offset=st.integers(0, 20), payloads=st.lists(upload_payloads))
def test_the_server_accepts_exactly_the_announced_upload_and_raises_nothing_else(
    size: int, offset: int, payloads: list[bytes]
) -> None:
    offset = min(offset, size)
    client, server = handshake()
    to_server(client, server, put(1, size))
    server.send(Ready(1, offset))
    remaining: int | None = size - offset  # None once the END has been accepted
    for payload in payloads:
        try:
            message = server.receive(payload)
        except RemoteProtocolError:
            break  # the state machine stays failed (latched): nothing more to learn
        if isinstance(message, Data):
            assert remaining is not None
            remaining -= len(message.data)
            assert remaining >= 0
        elif isinstance(message, FileEnd):
            assert remaining == 0
            assert message.request_id == 1
            assert message.digest is not None
            remaining = None
        elif message is not None:
            assert remaining is None, f"{message!r} accepted before the upload's END"
            assert isinstance(message, Get | ListDir | Put | MakeDir)
