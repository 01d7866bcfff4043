"""Tests of the sans-IO state machines (ftx.protocol), driven with payload bytes.

Every exchange goes through real bytes: what one side's ``send`` returns is joined and handed to
the other side's ``receive``. To show a peer misbehaving, raw payloads made with
``encode_message`` are fed to ``receive`` directly, bypassing the sender's checks.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.framing import Buffer
from ftx.protocol import (
    BLAKE3_FEATURE,
    DIGEST_ALGORITHMS,
    DIGEST_FEATURES,
    MAX_PENDING_REQUESTS,
    MIN_FRAME_SIZE,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    XXH3_FEATURE,
    ClientProtocol,
    ErrorCode,
    ServerProtocol,
    choose_digest,
    new_hasher,
)
from ftx.protocol.messages import (
    Data,
    Entry,
    EntryType,
    Error,
    FileEnd,
    FileHeader,
    Get,
    Hello,
    ListDir,
    ListEnd,
    ListEntries,
    MakeDir,
    Message,
    Put,
    decode_message,
    encode_message,
)

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CONTENT = b"hello"
SHA = hashlib.sha256(CONTENT).hexdigest()
IDENTITY = "0123456789abcdef0123456789abcdef"


# --------------------------------------------------------------------------- helpers


def join(parts: tuple[Buffer, ...]) -> bytes:
    return b"".join(bytes(part) for part in parts)


def raw(message: Message) -> bytes:
    """The payload of ``message``, made without any state machine's checks."""
    return join(encode_message(message))


def handshake(
    client: ClientProtocol | None = None, server: ServerProtocol | None = None
) -> tuple[ClientProtocol, ServerProtocol]:
    client = ClientProtocol() if client is None else client
    server = ServerProtocol() if server is None else server
    assert server.receive(join(client.send(client.local_hello))) == client.local_hello
    reply = server.hello_reply()
    assert client.receive(join(server.send(reply))) == reply
    return client, server


def request(client: ClientProtocol, server: ServerProtocol, message: Get | ListDir) -> None:
    assert server.receive(join(client.send(message))) == message


def answer(server: ServerProtocol, client: ClientProtocol, message: Message) -> Message | None:
    received = client.receive(join(server.send(message)))
    if isinstance(message, Data):
        assert isinstance(received, Data)
        assert bytes(received.data) == bytes(message.data)
    else:
        assert received == message
    return received


def header(request_id: int = 1, size: int = len(CONTENT), offset: int = 0) -> FileHeader:
    return FileHeader(request_id, size, 1_700_000_000_000_000_000, IDENTITY, offset, 0o644)


def serve_file(
    server: ServerProtocol, client: ClientProtocol, request_id: int, content: bytes, offset: int = 0
) -> None:
    answer(server, client, header(request_id, len(content), offset))
    if offset < len(content):
        answer(server, client, Data(content[offset:]))
    answer(server, client, FileEnd(request_id, hashlib.sha256(content).hexdigest()))


def client_hello(versions: tuple[int, ...] = (1,), max_frame_size: int = 1 << 20) -> bytes:
    return raw(Hello(versions, max_frame_size=max_frame_size))


def server_hello(versions: tuple[int, ...] = (1,), max_frame_size: int = 1 << 20) -> bytes:
    return raw(Hello(versions, max_frame_size=max_frame_size))


def client_waiting_for_hello(**kwargs: object) -> ClientProtocol:
    client = ClientProtocol(**kwargs)  # type: ignore[arg-type]
    client.send(client.local_hello)
    return client


# --------------------------------------------------------------------------- digests

# The test vectors of docs/protocol.md §9.4: the digests of the empty file and of b"abc".
DIGEST_VECTORS = {
    "sha256": (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    ),
    "blake3": (
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85",
    ),
    "xxh3-128": ("99aa06d3014798d86001c324468d497f", "06b05ab6733a618578af5f94892f3950"),
}


@pytest.mark.parametrize("algorithm", sorted(DIGEST_ALGORITHMS))
def test_digest_test_vectors(algorithm: str) -> None:
    empty, abc = DIGEST_VECTORS[algorithm]
    assert new_hasher(algorithm).hexdigest() == empty
    hasher = new_hasher(algorithm)
    hasher.update(b"a")
    hasher.update(memoryview(b"bc"))  # in pieces, and from a buffer, as transfers feed it
    assert hasher.hexdigest() == abc


def test_unknown_digest_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown digest algorithm 'md5'"):
        new_hasher("md5")


@pytest.mark.parametrize(
    ("features", "fast", "cryptographic"),
    [
        (DIGEST_FEATURES, "xxh3-128", "blake3"),
        (frozenset({BLAKE3_FEATURE}), "blake3", "blake3"),
        (frozenset({XXH3_FEATURE}), "xxh3-128", "sha256"),
        (frozenset(), "sha256", "sha256"),
    ],
)
def test_choose_digest(features: frozenset[str], fast: str, cryptographic: str) -> None:
    assert choose_digest(features) == choose_digest(features, "fast") == fast
    assert choose_digest(features, "cryptographic") == cryptographic


def test_choose_digest_refuses_unknown_choices() -> None:
    with pytest.raises(ValueError, match="not 'secure'"):
        choose_digest(DIGEST_FEATURES, "secure")  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", sorted(DIGEST_ALGORITHMS))
def test_choose_digest_by_name(algorithm: str) -> None:
    assert choose_digest(DIGEST_FEATURES, algorithm) == algorithm  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("features", "algorithm", "offered"),
    [
        (frozenset(), "xxh3-128", "sha256"),
        (frozenset({BLAKE3_FEATURE}), "xxh3-128", "blake3, sha256"),
        (frozenset({XXH3_FEATURE}), "blake3", "xxh3-128, sha256"),
    ],
)
def test_a_digest_by_name_the_server_lacks_is_refused(
    features: frozenset[str], algorithm: str, offered: str
) -> None:
    message = f"the server does not compute {algorithm} digests; it offers {offered}"
    with pytest.raises(LocalProtocolError, match=message):
        choose_digest(features, algorithm)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- handshake


def test_constants() -> None:
    assert PROTOCOL_VERSION == 1
    assert SUPPORTED_VERSIONS == (1,)
    assert MIN_FRAME_SIZE == 64 * 1024
    assert MAX_PENDING_REQUESTS == 1024
    assert "sha256" in DIGEST_ALGORITHMS
    assert {code.value for code in ErrorCode} == {
        "not-found",
        "not-a-file",
        "not-a-directory",
        "permission-denied",
        "outside-root",
        "bad-request",
        "busy",
        "changed",
        "internal",
        "unsupported-version",
        "shutting-down",
        "timeout",
        "tls-required",
        "unauthorized",
        "read-only",
        "exists",
        "too-large",
        "no-space",
        "digest-mismatch",
    }


def test_handshake() -> None:
    client = ClientProtocol(agent="client/1", max_frame_size=MIN_FRAME_SIZE)
    server = ServerProtocol(agent="server/1", max_frame_size=2 * MIN_FRAME_SIZE)
    assert client.version is None
    assert server.version is None
    assert client.features == server.features == frozenset()
    assert client.local_hello.versions == SUPPORTED_VERSIONS
    handshake(client, server)
    assert client.version == server.version == 1
    assert client.peer_hello is not None
    assert client.peer_hello.agent == "server/1"
    assert server.peer_hello is not None
    assert server.peer_hello.agent == "client/1"
    assert client.peer_max_frame_size == 2 * MIN_FRAME_SIZE
    assert server.peer_max_frame_size == MIN_FRAME_SIZE
    assert client.pending_requests == 0
    assert server.current_request is None
    assert not client.closed
    assert not server.closed


def test_peer_max_frame_size_before_handshake_is_the_minimum() -> None:
    assert ClientProtocol().peer_max_frame_size == MIN_FRAME_SIZE
    assert ServerProtocol().peer_max_frame_size == MIN_FRAME_SIZE


def test_features_are_the_intersection() -> None:
    client = ClientProtocol(features=frozenset({"resume", "upload", "zstd"}))
    server = ServerProtocol(features=frozenset({"zstd", "auth", "upload"}))
    handshake(client, server)
    assert client.features == server.features == frozenset({"upload", "zstd"})
    # The server announces all of its own features; the client computes the intersection.
    assert client.peer_hello is not None
    assert client.peer_hello.features == frozenset({"zstd", "auth", "upload"})


def test_server_picks_the_highest_common_version() -> None:
    server = ServerProtocol()
    assert isinstance(server.receive(client_hello((99, 1, 0))), Hello)
    assert server.version == 1
    assert server.hello_reply().versions == (1,)
    assert decode_message(join(server.send(server.hello_reply()))) == server.hello_reply()


def test_server_picks_the_highest_of_several_common_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("ftx.protocol._server_side.SUPPORTED_VERSIONS", (1, 2, 3))
    server = ServerProtocol()
    server.receive(client_hello((2, 7, 3, 1)))
    assert server.version == 3
    assert server.hello_reply().versions == (3,)


def test_client_offering_only_an_unknown_version() -> None:
    client = client_waiting_for_hello()
    server = ServerProtocol()
    assert isinstance(server.receive(client_hello((99,))), Hello)
    assert server.version is None
    with pytest.raises(LocalProtocolError):
        server.hello_reply()
    with pytest.raises(LocalProtocolError):
        server.send(Hello((1,)))
    refusal = Error(None, ErrorCode.UNSUPPORTED_VERSION, "this server speaks version 1")
    received = client.receive(join(server.send(refusal)))
    assert received == refusal
    assert server.closed
    assert client.closed
    assert client.version is None
    with pytest.raises(LocalProtocolError):
        client.send(Get(1, "f"))
    with pytest.raises(RemoteProtocolError):
        client.receive(server_hello())


def test_server_without_version_rejects_requests() -> None:
    server = ServerProtocol()
    server.receive(client_hello((99,)))
    with pytest.raises(RemoteProtocolError):
        server.receive(raw(Get(1, "f")))


@pytest.mark.parametrize("versions", [(2,), (99,), (0,), (1, 2), (2, 1)])
def test_server_choosing_an_unknown_version(versions: tuple[int, ...]) -> None:
    client = client_waiting_for_hello()
    with pytest.raises(RemoteProtocolError, match="version"):
        client.receive(server_hello(versions))
    assert client.version is None


def test_peer_frame_limit_below_minimum_is_rejected_by_the_server() -> None:
    server = ServerProtocol()
    with pytest.raises(RemoteProtocolError, match="minimum"):
        server.receive(client_hello(max_frame_size=MIN_FRAME_SIZE - 1))
    assert server.peer_hello is None
    server = ServerProtocol()
    server.receive(client_hello(max_frame_size=MIN_FRAME_SIZE))
    assert server.peer_max_frame_size == MIN_FRAME_SIZE


def test_peer_frame_limit_below_minimum_is_rejected_by_the_client() -> None:
    client = client_waiting_for_hello()
    with pytest.raises(RemoteProtocolError, match="minimum"):
        client.receive(server_hello(max_frame_size=0))
    assert client.version is None
    client = client_waiting_for_hello()
    client.receive(server_hello(max_frame_size=MIN_FRAME_SIZE))
    assert client.peer_max_frame_size == MIN_FRAME_SIZE


def test_client_must_send_its_own_hello_first() -> None:
    client = ClientProtocol()
    with pytest.raises(LocalProtocolError):
        client.send(Get(1, "f"))
    with pytest.raises(LocalProtocolError):
        client.send(Hello((1,), agent="not the local hello"))
    client.send(client.local_hello)
    with pytest.raises(LocalProtocolError):
        client.send(client.local_hello)


def test_client_expects_hello_first() -> None:
    client = client_waiting_for_hello()
    for message in (header(), Data(b"x"), FileEnd(1, None), ListEnd(1, 0), Error(1, "busy", "")):
        with pytest.raises(RemoteProtocolError, match="HELLO"):
            client.receive(raw(message))


def test_request_before_handshake_is_rejected() -> None:
    server = ServerProtocol()
    with pytest.raises(RemoteProtocolError, match="HELLO"):
        server.receive(raw(Get(1, "f")))
    # After the client's HELLO but before ours went out, a request is still too early.
    server = ServerProtocol()
    server.receive(client_hello())
    with pytest.raises(RemoteProtocolError, match="handshake"):
        server.receive(raw(ListDir(1, "")))


def test_server_must_send_hello_before_answers() -> None:
    server = ServerProtocol()
    server.receive(client_hello())
    with pytest.raises(LocalProtocolError):
        server.send(header())
    reply = server.hello_reply()
    server.send(reply)
    with pytest.raises(LocalProtocolError):
        server.send(reply)
    with pytest.raises(LocalProtocolError):
        server.send(Hello((1,), agent="another"))


def test_connection_error_before_handshake_from_server() -> None:
    server = ServerProtocol()
    client = client_waiting_for_hello()
    busy = Error(None, ErrorCode.BUSY, "too many connections")
    assert client.receive(join(server.send(busy))) == busy
    assert client.closed
    assert server.closed


def test_second_hello_is_rejected() -> None:
    client, server = handshake()
    with pytest.raises(RemoteProtocolError):
        server.receive(client_hello())
    with pytest.raises(RemoteProtocolError):
        client.receive(server_hello())


# --------------------------------------------------------------------------- GET


def test_full_get_exchange() -> None:
    client, server = handshake()
    get = Get(client.new_request_id(), "dir/hello.txt")
    request(client, server, get)
    assert client.pending_requests == 1
    assert server.current_request == get
    answer(server, client, header(get.request_id))
    answer(server, client, Data(b"he"))
    answer(server, client, Data(b""))
    answer(server, client, Data(b"llo"))
    assert client.pending_requests == 1
    assert server.current_request == get
    end = answer(server, client, FileEnd(get.request_id, SHA))
    assert end == FileEnd(get.request_id, SHA)
    assert client.pending_requests == 0
    assert server.current_request is None
    assert not client.closed


def test_get_with_offset() -> None:
    client, server = handshake()
    get = Get(1, "hello", offset=3, identity=IDENTITY)
    request(client, server, get)
    answer(server, client, header(1, size=5, offset=3))
    with pytest.raises(LocalProtocolError):
        server.send(Data(b"llo"))  # only 2 bytes remain from offset 3
    answer(server, client, Data(b"lo"))
    answer(server, client, FileEnd(1, SHA))  # the digest of the whole file
    assert client.pending_requests == 0


def test_get_with_offset_at_the_end() -> None:
    client, server = handshake()
    request(client, server, Get(1, "hello", offset=5))
    answer(server, client, header(1, size=5, offset=5))
    answer(server, client, FileEnd(1, SHA))
    assert client.pending_requests == 0


def test_empty_file() -> None:
    client, server = handshake()
    request(client, server, Get(1, "empty", digest=None))
    answer(server, client, FileHeader(1, 0, 0, IDENTITY, digest=None))
    answer(server, client, FileEnd(1, None))
    assert client.pending_requests == 0


@pytest.mark.parametrize(("requested", "announced", "size"), [(0, 3, 5), (3, 0, 5), (6, 6, 5)])
def test_file_header_offset_must_match_the_request(
    requested: int, announced: int, size: int
) -> None:
    client, server = handshake()
    request(client, server, Get(1, "f", offset=requested))
    bad = header(1, size=size, offset=announced)
    with pytest.raises(LocalProtocolError, match="offset"):
        server.send(bad)
    with pytest.raises(RemoteProtocolError, match="offset"):
        client.receive(raw(bad))


def test_get_answered_by_error_then_the_connection_goes_on() -> None:
    client, server = handshake()
    request(client, server, Get(1, "missing"))
    answer(server, client, Error(1, ErrorCode.NOT_FOUND, "no such file: 'missing'"))
    assert client.pending_requests == 0
    assert server.current_request is None
    assert not client.closed
    assert not server.closed
    request(client, server, Get(2, "hello"))
    serve_file(server, client, 2, CONTENT)
    assert client.pending_requests == 0


def test_error_mid_data() -> None:
    client, server = handshake()
    request(client, server, Get(1, "growing"))
    answer(server, client, header(1, size=100))
    answer(server, client, Data(b"x" * 40))
    answer(server, client, Error(1, ErrorCode.CHANGED, "the file changed while being sent"))
    assert client.pending_requests == 0
    assert server.current_request is None
    # The rest of the data would now be out of place.
    with pytest.raises(LocalProtocolError):
        server.send(Data(b"x" * 60))
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(Data(b"x" * 60)))


def test_error_after_header_with_no_data() -> None:
    client, server = handshake()
    request(client, server, Get(1, "f"))
    answer(server, client, header(1, size=10))
    answer(server, client, Error(1, ErrorCode.INTERNAL, "read error"))
    assert client.pending_requests == 0


def test_data_exceeding_the_announced_size() -> None:
    client, server = handshake()
    request(client, server, Get(1, "hello"))
    answer(server, client, header(1, size=5))
    answer(server, client, Data(b"hell"))
    with pytest.raises(LocalProtocolError, match="remained"):
        server.send(Data(b"o!"))
    with pytest.raises(RemoteProtocolError, match="remained"):
        client.receive(raw(Data(b"o!")))


def test_data_exceeding_the_announced_size_in_one_frame() -> None:
    client, server = handshake()
    request(client, server, Get(1, "hello"))
    answer(server, client, header(1, size=5))
    with pytest.raises(LocalProtocolError):
        server.send(Data(b"hello!"))
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(Data(b"hello!")))


def test_file_end_before_all_data() -> None:
    client, server = handshake()
    request(client, server, Get(1, "hello"))
    answer(server, client, header(1, size=5))
    answer(server, client, Data(b"hel"))
    with pytest.raises(LocalProtocolError, match="2 bytes still due"):
        server.send(FileEnd(1, SHA))
    with pytest.raises(RemoteProtocolError, match="2 bytes still due"):
        client.receive(raw(FileEnd(1, SHA)))


def test_data_or_end_before_the_file_header() -> None:
    client, server = handshake()
    request(client, server, Get(1, "hello"))
    for message in (Data(b"x"), FileEnd(1, SHA)):
        with pytest.raises(LocalProtocolError):
            server.send(message)
        with pytest.raises(RemoteProtocolError):
            client.receive(raw(message))


def test_second_file_header_is_rejected() -> None:
    client, server = handshake()
    request(client, server, Get(1, "hello"))
    answer(server, client, header(1))
    with pytest.raises(LocalProtocolError):
        server.send(header(1))
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(header(1)))


def test_unknown_digest_algorithm_cannot_be_requested() -> None:
    client, _ = handshake()
    with pytest.raises(LocalProtocolError, match="digest"):
        client.send(Get(1, "f", digest="md5"))
    assert client.pending_requests == 0
    client.send(Get(1, "f", digest=None))
    client.send(Get(2, "f", digest="sha256"))
    assert client.pending_requests == 2


def test_server_accepts_unknown_digest_in_a_request() -> None:
    # It answers ERROR bad-request; the state machine lets the request through to be answered.
    _, server = handshake()
    assert server.receive(raw(Get(1, "f", digest="blake3"))) == Get(1, "f", digest="blake3")
    refusal = Error(1, ErrorCode.BAD_REQUEST, "unknown digest 'blake3'")
    assert decode_message(join(server.send(refusal))) == refusal
    assert server.current_request is None


# --------------------------------------------------------------------------- LIST


def entry(name: str, kind: EntryType = EntryType.FILE) -> Entry:
    return Entry(name, kind, 10, 1_700_000_000_000_000_000, 0o644)


def test_list_with_several_pages() -> None:
    client, server = handshake()
    request(client, server, ListDir(7, ""))
    pages = [
        ListEntries(7, tuple(entry(f"f{i}") for i in range(256))),
        ListEntries(7, (entry("sub", EntryType.DIRECTORY), entry("link", EntryType.SYMLINK))),
        ListEntries(7, (entry("fifo", EntryType.OTHER),)),
    ]
    for page in pages:
        answer(server, client, page)
        assert client.pending_requests == 1
        assert server.current_request == ListDir(7, "")
    answer(server, client, ListEnd(7, 259))
    assert client.pending_requests == 0
    assert server.current_request is None


def test_empty_listing() -> None:
    client, server = handshake()
    request(client, server, ListDir(1, "empty"))
    answer(server, client, ListEnd(1, 0))
    assert client.pending_requests == 0


@pytest.mark.parametrize(
    "message", [header(1), Data(b"x"), FileEnd(1, None)], ids=["FILE", "DATA", "END"]
)
def test_file_messages_do_not_answer_a_list(message: Message) -> None:
    client, server = handshake()
    request(client, server, ListDir(1, ""))
    with pytest.raises(LocalProtocolError):
        server.send(message)
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(message))


@pytest.mark.parametrize("message", [ListEntries(1, ()), ListEnd(1, 0)], ids=["ENTRIES", "END"])
def test_list_messages_do_not_answer_a_get(message: Message) -> None:
    client, server = handshake()
    request(client, server, Get(1, "f"))
    with pytest.raises(LocalProtocolError):
        server.send(message)
    with pytest.raises(RemoteProtocolError):
        probe(client).receive(raw(message))
    answer(server, client, header(1))
    with pytest.raises(LocalProtocolError):
        server.send(message)
    with pytest.raises(RemoteProtocolError):
        probe(client).receive(raw(message))


def probe(side: ClientProtocol | ServerProtocol) -> ClientProtocol | ServerProtocol:
    """A copy to feed a violation to: a state machine that rejected something stays failed
    (test_fuzz checks that), and these tests go on with the original."""
    return copy.deepcopy(side)


# --------------------------------------------------------------------------- pipelining


def test_pipelined_requests_answered_in_order() -> None:
    client, server = handshake()
    requests: list[Get | ListDir] = [Get(1, "a"), ListDir(2, "d"), Get(3, "b", offset=2)]
    for message in requests:
        request(client, server, message)
    assert client.pending_requests == 3
    assert server.current_request == requests[0]
    serve_file(server, client, 1, CONTENT)
    assert server.current_request == requests[1]
    assert client.pending_requests == 2
    answer(server, client, ListEntries(2, (entry("x"),)))
    answer(server, client, ListEnd(2, 1))
    assert server.current_request == requests[2]
    serve_file(server, client, 3, CONTENT, offset=2)
    assert client.pending_requests == 0
    assert server.current_request is None


def test_pipelining_continues_while_answers_flow() -> None:
    client, server = handshake()
    request(client, server, Get(1, "a"))
    answer(server, client, header(1))
    request(client, server, Get(2, "b"))  # sent while the first file is still arriving
    answer(server, client, Data(CONTENT))
    answer(server, client, FileEnd(1, SHA))
    assert server.current_request == Get(2, "b")
    serve_file(server, client, 2, CONTENT)
    assert client.pending_requests == 0


@pytest.mark.parametrize(
    "message",
    [
        header(2),
        Error(2, ErrorCode.NOT_FOUND, "x"),
        ListEntries(2),
        ListEnd(2, 0),
        FileEnd(2, None),
    ],
    ids=["FILE", "ERROR", "ENTRIES", "LIST_END", "END"],
)
def test_out_of_order_answers_are_rejected(message: Message) -> None:
    client, server = handshake()
    request(client, server, Get(1, "a"))
    request(client, server, ListDir(2, "d"))
    with pytest.raises(LocalProtocolError, match="request 1"):
        server.send(message)
    with pytest.raises(RemoteProtocolError, match="request 1"):
        probe(client).receive(raw(message))
    # Nothing was consumed: request 1 can still be answered.
    serve_file(server, client, 1, CONTENT)
    assert client.pending_requests == 1


@pytest.mark.parametrize(
    "message", [header(9), Error(9, "busy", ""), ListEnd(9, 0), Data(b"x"), FileEnd(9, None)]
)
def test_answers_without_a_request_are_rejected(message: Message) -> None:
    client, server = handshake()
    with pytest.raises(LocalProtocolError):
        server.send(message)
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(message))


def test_duplicate_request_id() -> None:
    client, server = handshake()
    request(client, server, Get(5, "a"))
    with pytest.raises(LocalProtocolError, match="already in use"):
        client.send(ListDir(5, ""))
    assert client.pending_requests == 1
    with pytest.raises(RemoteProtocolError, match="already in use"):
        probe(server).receive(raw(ListDir(5, "")))
    # Once answered, an id may be used again.
    serve_file(server, client, 5, CONTENT)
    request(client, server, ListDir(5, ""))
    assert server.current_request == ListDir(5, "")


def test_request_id_bounds() -> None:
    client, server = handshake()
    request(client, server, Get(0, "a"))
    request(client, server, Get((1 << 32) - 1, "b"))
    assert client.pending_requests == 2


def test_new_request_id_is_fresh_and_in_range() -> None:
    client = ClientProtocol()
    ids = [client.new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(0 <= i < 1 << 32 for i in ids)


def test_too_many_outstanding_requests() -> None:
    client, server = handshake()
    for i in range(MAX_PENDING_REQUESTS):
        request(client, server, Get(i, "f"))
    with pytest.raises(LocalProtocolError, match="outstanding"):
        client.send(Get(MAX_PENDING_REQUESTS, "f"))
    with pytest.raises(RemoteProtocolError, match="outstanding"):
        probe(server).receive(raw(Get(MAX_PENDING_REQUESTS, "f")))
    answer(server, client, Error(0, ErrorCode.NOT_FOUND, ""))
    request(client, server, Get(MAX_PENDING_REQUESTS, "f"))
    assert client.pending_requests == MAX_PENDING_REQUESTS


# --------------------------------------------------------------------------- roles


@pytest.mark.parametrize("message", [Get(1, "f"), ListDir(1, "")], ids=["GET", "LIST"])
def test_server_may_not_send_requests(message: Get | ListDir) -> None:
    client, server = handshake()
    with pytest.raises(LocalProtocolError):
        server.send(message)
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(message))
    # Not even when a request with that id is outstanding.
    request(client, server, Get(1, "f"))
    with pytest.raises(LocalProtocolError):
        server.send(message)
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(message))


RESPONSES: list[Message] = [
    header(1),
    Data(b"x"),
    FileEnd(1, SHA),
    ListEntries(1, (entry("a"),)),
    ListEnd(1, 1),
    Error(1, ErrorCode.NOT_FOUND, ""),
    Error(None, ErrorCode.INTERNAL, ""),
    Hello((1,)),
]


@pytest.mark.parametrize("message", RESPONSES, ids=lambda m: type(m).__name__)
def test_client_may_not_send_responses(message: Message) -> None:
    client, server = handshake()
    request(client, server, Get(1, "f"))
    with pytest.raises(LocalProtocolError):
        client.send(message)
    with pytest.raises(RemoteProtocolError):
        server.receive(raw(message))
    assert client.pending_requests == 1


# --------------------------------------------------------------------------- closing


def test_connection_level_error_closes_the_protocol() -> None:
    client, server = handshake()
    request(client, server, Get(1, "f"))
    answer(server, client, header(1, size=100))
    answer(server, client, Data(b"x" * 10))
    shutdown = Error(None, ErrorCode.SHUTTING_DOWN, "the server is shutting down")
    assert answer(server, client, shutdown) == shutdown
    assert server.closed
    assert client.closed
    with pytest.raises(LocalProtocolError):
        server.send(Data(b"x"))
    with pytest.raises(LocalProtocolError):
        server.send(Error(None, ErrorCode.INTERNAL, "again"))
    with pytest.raises(LocalProtocolError):
        client.send(Get(2, "f"))
    for payload in (raw(Data(b"x")), raw(header(1)), raw(shutdown), b"\x99extension"):
        with pytest.raises(RemoteProtocolError):
            client.receive(payload)
    with pytest.raises(RemoteProtocolError):
        server.receive(raw(Get(3, "f")))


def test_connection_level_error_with_nothing_outstanding() -> None:
    client, server = handshake()
    error = Error(None, ErrorCode.BAD_REQUEST, "protocol violation")
    assert answer(server, client, error) == error
    assert client.closed
    assert server.closed


def test_client_protocol_error_code() -> None:
    # What a server answers a protocol violation with: ERROR id null bad-request.
    server = ServerProtocol()
    with pytest.raises(RemoteProtocolError) as info:
        server.receive(b"\x10not json")
    assert info.value.error_code == ErrorCode.BAD_REQUEST
    assert decode_message(join(server.send(Error(None, info.value.error_code, "bad")))) == Error(
        None, "bad-request", "bad"
    )


# --------------------------------------------------------------------------- frame sizes


def test_frame_size_above_the_peers_limit() -> None:
    client = ClientProtocol(max_frame_size=MIN_FRAME_SIZE)
    client, server = handshake(client)
    request(client, server, Get(1, "big"))
    answer(server, client, header(1, size=10 * MIN_FRAME_SIZE))
    # The payload is the kind byte plus the data: MIN_FRAME_SIZE - 1 bytes of data fit exactly.
    with pytest.raises(LocalProtocolError, match="frame limit"):
        server.send(Data(bytes(MIN_FRAME_SIZE)))
    parts = server.send(Data(bytes(MIN_FRAME_SIZE - 1)))
    assert sum(memoryview(part).nbytes for part in parts) == MIN_FRAME_SIZE


def test_entries_page_above_the_peers_limit() -> None:
    client = ClientProtocol(max_frame_size=MIN_FRAME_SIZE)
    client, server = handshake(client)
    request(client, server, ListDir(1, ""))
    page = ListEntries(1, tuple(entry("n" * 1000 + str(i)) for i in range(100)))
    with pytest.raises(LocalProtocolError, match="frame limit"):
        server.send(page)


def test_request_too_big_to_send_is_refused_locally() -> None:
    client, _ = handshake(server=ServerProtocol(max_frame_size=MIN_FRAME_SIZE))
    with pytest.raises(LocalProtocolError):
        client.send(ListDir(1, "a" * MIN_FRAME_SIZE))


def test_the_client_may_send_bigger_frames_to_a_bigger_server() -> None:
    client = ClientProtocol(max_frame_size=MIN_FRAME_SIZE)
    server = ServerProtocol(max_frame_size=4 * MIN_FRAME_SIZE)
    client, server = handshake(client, server)
    assert client.peer_max_frame_size == 4 * MIN_FRAME_SIZE
    assert server.peer_max_frame_size == MIN_FRAME_SIZE


# --------------------------------------------------------------------------- extensions


def test_extension_kinds_are_ignored_without_changing_state() -> None:
    client, server = handshake()
    request(client, server, Get(1, "hello"))
    assert server.receive(b"\x80{}") is None
    answer(server, client, header(1))
    answer(server, client, Data(b"hel"))
    assert client.receive(b"\xfe arbitrary bytes") is None
    assert client.receive(b"\x80") is None
    answer(server, client, Data(b"lo"))
    answer(server, client, FileEnd(1, SHA))
    assert client.pending_requests == 0


def test_extension_kind_before_hello_is_ignored() -> None:
    client = client_waiting_for_hello()
    server = ServerProtocol()
    assert server.receive(b"\x81{}") is None
    assert client.receive(b"\x81{}") is None
    assert server.receive(client_hello()) is not None
    assert client.receive(join(server.send(server.hello_reply()))) is not None
    assert client.version == server.version == 1


def test_unknown_kind_below_0x80_is_an_error() -> None:
    client, server = handshake()
    with pytest.raises(RemoteProtocolError, match="kind"):
        client.receive(b"\x7f{}")
    with pytest.raises(RemoteProtocolError, match="kind"):
        server.receive(b"\x40{}")


# --------------------------------------------------------------------------- property tests


@FUZZ
@given(size=st.integers(0, 3000), data=st.data())
def test_any_valid_transfer_is_accepted(size: int, data: st.DataObject) -> None:
    content = bytes(i % 251 for i in range(size))
    offset = data.draw(st.integers(0, size))
    cuts = sorted(data.draw(st.lists(st.integers(offset, size), max_size=12)))
    bounds = [offset, *cuts, size]
    client, server = handshake()
    request(client, server, Get(1, "f", offset=offset))
    answer(server, client, header(1, size=size, offset=offset))
    received = bytearray()
    for start, stop in itertools.pairwise(bounds):
        got = client.receive(join(server.send(Data(content[start:stop]))))
        assert isinstance(got, Data)
        received += got.data
    answer(server, client, FileEnd(1, hashlib.sha256(content).hexdigest()))
    assert bytes(received) == content[offset:]
    assert client.pending_requests == 0
    assert server.current_request is None


request_ids = st.sampled_from([1, 2, 7]) | st.integers(0, (1 << 32) - 1)
server_messages = st.one_of(
    st.builds(
        FileHeader,
        request_id=request_ids,
        size=st.integers(0, 20) | st.integers(0, (1 << 63) - 1),
        mtime_ns=st.integers(-(1 << 40), 1 << 40),
        identity=st.just(IDENTITY),
        offset=st.sampled_from([0, 0, 0, 2, 5]),
        mode=st.integers(0, 0o7777),
        digest=st.none() | st.just("sha256"),
    ),
    st.builds(Data, st.binary(max_size=12)),
    st.builds(FileEnd, request_ids, st.none() | st.just(SHA)),
    st.builds(
        Error,
        st.none() | request_ids,
        st.sampled_from([code.value for code in ErrorCode] + ["future-code"]),
        st.text(max_size=10),
    ),
    st.builds(ListEntries, request_ids, st.lists(st.just(entry("a")), max_size=2).map(tuple)),
    st.builds(ListEnd, request_ids, st.integers(0, 10)),
    st.builds(Hello, st.just((1,)), max_frame_size=st.just(1 << 20)),
    st.builds(Get, request_ids, st.just("f")),
    st.builds(ListDir, request_ids, st.just("")),
)
payloads_from = st.one_of(
    server_messages.map(raw),
    st.binary(max_size=30),
    st.sampled_from([b"", b"\x80", b"\x21", b"\x20{}", b"\x10" + b"[" * 5000]),
)


@st.composite
def mangled_answers(draw: st.DrawFn) -> list[bytes]:
    """The valid answers to GET 1 and LIST 2, then randomly edited: payloads inserted, dropped,
    repeated, swapped; so that the sequences reach deep into the state machine."""
    size = draw(st.integers(0, 12))
    chunks = draw(st.lists(st.integers(0, 12), max_size=4))
    payloads = [raw(header(1, size=size))]
    sent = 0
    for chunk in chunks:
        chunk = min(chunk, size - sent)
        payloads.append(raw(Data(bytes(chunk))))
        sent += chunk
    if sent < size:
        payloads.append(raw(Data(bytes(size - sent))))
    payloads.append(raw(FileEnd(1, SHA)))
    payloads += [raw(ListEntries(2, (entry("a"),))), raw(ListEnd(2, 1))]
    for _ in range(draw(st.integers(0, 4))):
        operation = draw(st.sampled_from(["insert", "drop", "repeat", "swap"]))
        index = draw(st.integers(0, len(payloads)))
        if operation == "insert":
            payloads.insert(index, draw(payloads_from))
        elif payloads and index < len(payloads):
            if operation == "drop":
                del payloads[index]
            elif operation == "repeat":
                payloads.insert(index, payloads[index])
            elif index + 1 < len(payloads):
                payloads[index], payloads[index + 1] = payloads[index + 1], payloads[index]
    return payloads


@FUZZ
@given(st.lists(payloads_from, max_size=25) | mangled_answers())
def test_client_receive_raises_only_remote_protocol_errors(payloads: list[bytes]) -> None:
    client, server = handshake()
    request(client, server, Get(1, "f"))
    request(client, server, ListDir(2, ""))
    # A model of what a correct client may accept, checked against what it does accept.
    remaining: int | None = None
    for payload in payloads:
        pending = client.pending_requests
        try:
            message = client.receive(payload)
        except RemoteProtocolError:
            continue
        if message is None:
            assert payload[0] >= 0x80
            assert client.pending_requests == pending
            continue
        assert not isinstance(message, Hello | Get | ListDir)
        if isinstance(message, FileHeader):
            assert message.offset <= message.size
            remaining = message.size - message.offset
        elif isinstance(message, Data):
            assert remaining is not None
            remaining -= len(message.data)
            assert remaining >= 0
        elif isinstance(message, FileEnd):
            assert remaining == 0
            remaining = None
        elif isinstance(message, Error) and message.request_id is None:
            assert client.closed
        if isinstance(message, FileEnd | ListEnd | Error):
            assert client.pending_requests == pending - (message.request_id is not None)
            remaining = None
        else:
            assert client.pending_requests == pending


client_messages = st.one_of(
    st.builds(Get, request_ids, st.sampled_from(["f", "", "../x"]), st.integers(0, 10)),
    st.builds(ListDir, request_ids, st.just("")),
    server_messages,
)


@FUZZ
@given(st.lists(client_messages.map(raw) | st.binary(max_size=30), max_size=25))
def test_server_receive_raises_only_remote_protocol_errors(payloads: list[bytes]) -> None:
    _, server = handshake()
    for payload in payloads:
        try:
            message = server.receive(payload)
        except RemoteProtocolError:
            continue
        assert message is None or isinstance(message, Get | ListDir | Put | MakeDir)


@FUZZ
@given(st.lists(st.binary(max_size=40), max_size=10))
def test_receive_before_handshake_raises_only_remote_protocol_errors(payloads: list[bytes]) -> None:
    client = client_waiting_for_hello()
    server = ServerProtocol()
    for payload in payloads:
        for side in (client, server):
            with contextlib.suppress(RemoteProtocolError):
                side.receive(payload)


# ------------------------------------------------------------------- refusals leave no trace


# A message refused by send (LocalProtocolError: "nothing was sent") must not change the state:
# refused DATA is not counted as sent, so an END that follows without it is refused too.
def test_oversized_data_that_was_refused_is_not_counted_as_sent() -> None:
    client = ClientProtocol(max_frame_size=MIN_FRAME_SIZE)
    client, server = handshake(client)
    request(client, server, Get(1, "f"))
    answer(server, client, header(1, size=MIN_FRAME_SIZE))
    with pytest.raises(LocalProtocolError, match="frame limit"):
        server.send(Data(bytes(MIN_FRAME_SIZE)))  # one byte over the frame limit: not sent
    # No data went out, so the file cannot end yet.
    with pytest.raises(LocalProtocolError):
        server.send(FileEnd(1, None))


# The same on the client: a request refused for its size is not recorded as outstanding.
def test_oversized_request_that_was_refused_is_not_outstanding() -> None:
    client, _ = handshake(server=ServerProtocol(max_frame_size=MIN_FRAME_SIZE))
    with pytest.raises(LocalProtocolError):
        client.send(ListDir(1, "a" * MIN_FRAME_SIZE))
    assert client.pending_requests == 0


# ClientProtocol.send refuses (LocalProtocolError) requests that every server must reject:
# ids outside 0..2**32-1, paths over 4096 UTF-8 bytes, negative offsets, identity/digest
# strings over 256 characters, lone surrogates.
def test_client_send_refuses_requests_the_server_would_reject() -> None:
    bad_requests: list[Get | ListDir] = [
        Get(1 << 32, "f"),
        Get(-1, "f"),
        Get(1, "é" * 2049),
        ListDir(2, "x" * 4097),
        Get(3, "f", offset=-1),
        Get(4, "f", identity="i" * 257),
        Get(5, "\udcff"),
    ]
    not_refused = []
    for bad in bad_requests:
        client, server = handshake()
        try:
            payload = join(client.send(bad))
        except LocalProtocolError:
            continue
        except Exception as exc:  # the bug is precisely another exception type
            not_refused.append(f"{bad!r} -> {type(exc).__name__}")
            continue
        with pytest.raises(RemoteProtocolError):
            server.receive(payload)
        not_refused.append(repr(bad)[:60])
    assert not not_refused, "accepted or mis-refused:\n" + "\n".join(not_refused)


# ServerProtocol.send refuses answers that the client must reject (identity over 256
# characters, mode over 0o7777, a negative mtime below -2**63+1, error codes over 256
# characters, an entry name that is not valid Unicode).
def test_server_send_refuses_answers_the_client_would_reject() -> None:
    bad_answers: list[Message] = [
        FileHeader(1, 5, 0, "i" * 257),
        FileHeader(1, 5, 0, IDENTITY, mode=0o10000),
        FileHeader(1, 5, -(1 << 63), IDENTITY),
        Error(1, "c" * 257, ""),
        ListEntries(1, (Entry("\udcff", EntryType.FILE, 0, 0, 0),)),
    ]
    not_refused = []
    for bad in bad_answers:
        client, server = handshake()
        request(client, server, ListDir(1, "") if isinstance(bad, ListEntries) else Get(1, "f"))
        try:
            payload = join(server.send(bad))
        except LocalProtocolError:
            continue
        except Exception as exc:  # the bug is precisely another exception type
            not_refused.append(f"{bad!r:.60} -> {type(exc).__name__}")
            continue
        with pytest.raises(RemoteProtocolError):
            client.receive(payload)
        not_refused.append(repr(bad)[:60])
    assert not not_refused, "accepted or mis-refused:\n" + "\n".join(not_refused)


# LIST_END carries the number of entries sent; both sides check it against the entries sent,
# so a truncated or padded listing is noticed.
def test_list_end_count_must_match_the_entries_sent() -> None:
    client, server = handshake()
    request(client, server, ListDir(1, ""))
    answer(server, client, ListEntries(1, (entry("a"), entry("b"))))
    with pytest.raises(LocalProtocolError):
        server.send(ListEnd(1, 3))
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(ListEnd(1, 1)))


# An error message is human text, often built from a file name that is not valid UTF-8 (via
# os.fsdecode): its lone surrogates are escaped rather than the error being refused.
def test_error_message_with_a_lone_surrogate_is_escaped() -> None:
    client, server = handshake()
    request(client, server, Get(1, "f"))
    payload = join(server.send(Error(1, ErrorCode.NOT_FOUND, "no such file: '\udcff'")))
    received = client.receive(payload)
    assert isinstance(received, Error)
    assert received.message == "no such file: '\\udcff'"


# Refusals quote the path: a message over the limit is shortened, not turned into a failure
# that closes the whole connection.
def test_overlong_error_message_is_shortened() -> None:
    client, server = handshake()
    request(client, server, Get(1, "f"))
    payload = join(server.send(Error(1, ErrorCode.NOT_FOUND, "x" * 10_000)))
    received = client.receive(payload)
    assert isinstance(received, Error)
    assert len(received.message) == 4096
    assert received.message.endswith("\u2026")


def test_a_data_frame_taken_in_pieces_is_checked_as_a_data_message_would_be() -> None:
    # receive_data_frame(size) is the bulk path's check of a DATA frame whose content it takes
    # as it arrives: the same rules as receive() of a Data of that size (kind byte included).
    client, server = handshake()
    with pytest.raises(RemoteProtocolError, match="without a request"):
        client.receive_data_frame(11)
    client, server = handshake()
    request(client, server, Get(1, "hello"))
    with pytest.raises(RemoteProtocolError, match="outside of a file"):
        client.receive_data_frame(11)

    client, server = handshake()
    request(client, server, Get(1, "hello"))
    answer(server, client, header(1, size=10))
    client.receive_data_frame(5)  # 4 bytes of content
    with pytest.raises(RemoteProtocolError, match="7 bytes of data where 6 remained"):
        client.receive_data_frame(8)

    client, _server = handshake()
    too_big = max(client.local_hello.max_frame_size, client.max_data_frame_size) + 1
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        client.receive_data_frame(too_big)
    with pytest.raises(RemoteProtocolError, match="HELLO"):
        ClientProtocol().receive_data_frame(10)

    # After a violation nothing the server sends is trusted, a DATA frame's start included.
    client, _server = handshake()
    with pytest.raises(RemoteProtocolError):
        client.receive(b"\x21x")  # DATA without a request
    with pytest.raises(RemoteProtocolError, match="already broke the protocol"):
        client.receive_data_frame(10)
