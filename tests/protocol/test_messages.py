"""Tests of the message codec (ftx.protocol.messages): round trips, limits, and fuzzing of the
decoder.

The decoder's contract: whatever the payload, ``decode_message`` returns a message or ``None``
(an extension kind to ignore), or raises :class:`RemoteProtocolError`; never anything else.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftx.errors import RemoteProtocolError
from ftx.framing import Buffer
from ftx.protocol import _json_body
from ftx.protocol.messages import (
    MAX_JSON_DEPTH,
    MAX_PATH_BYTES,
    Auth,
    AuthOk,
    BlockList,
    Blocks,
    Challenge,
    Data,
    Done,
    Entry,
    EntryType,
    Error,
    FileEnd,
    FileHeader,
    Get,
    Hello,
    Kind,
    ListDir,
    ListEnd,
    ListEntries,
    MakeDir,
    Message,
    Put,
    Ready,
    TreeAsk,
    TreeDir,
    TreeEnd,
    TreeFile,
    TreeFiles,
    TreeGet,
    TreeHave,
    TreeHaveEnd,
    TreePut,
    TreePutEnd,
    TreeSame,
    TreeSkip,
    TreeStored,
    decode_message,
    encode_message,
)

MESSAGE_TYPES = (
    TreePut,
    TreeAsk,
    TreePutEnd,
    TreeStored,
    TreeGet,
    TreeDir,
    TreeFiles,
    TreeFile,
    TreeSkip,
    TreeEnd,
    TreeHave,
    TreeHaveEnd,
    TreeSame,
    Hello,
    Get,
    ListDir,
    FileHeader,
    Data,
    FileEnd,
    ListEntries,
    ListEnd,
    Error,
    Put,
    MakeDir,
    Ready,
    Done,
)
MAX_INT = (1 << 63) - 1
MAX_ID = (1 << 32) - 1

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROUND_TRIP = settings(max_examples=200, deadline=None)


# --------------------------------------------------------------------------- helpers


def join(parts: tuple[Buffer, ...]) -> bytes:
    return b"".join(bytes(part) for part in parts)


def encode(message: Message) -> bytes:
    return join(encode_message(message))


def json_payload(kind: int, body: object, **dumps_options: Any) -> bytes:
    return bytes([kind]) + json.dumps(body, **dumps_options).encode("utf-8")


def decode_or_reject(payload: bytes) -> Message | RemoteProtocolError | None:
    """Decode; a RemoteProtocolError is returned, anything else but a message or None fails."""
    try:
        result = decode_message(payload)
    except RemoteProtocolError as exc:
        return exc
    assert result is None or isinstance(result, MESSAGE_TYPES), result
    if result is None:
        assert payload[0] >= 0x80
    return result


def body_of(message: Message) -> dict[str, Any]:
    payload = encode(message)
    obj = json.loads(payload[1:].decode("utf-8"))
    assert isinstance(obj, dict)
    return obj


# --------------------------------------------------------------------------- strategies


# Valid Unicode text (no lone surrogates), which is what JSON strings in ftx must be.
def text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8"), min_size=min_size, max_size=max_size)


request_ids = st.integers(0, MAX_ID)
sizes = st.integers(0, MAX_INT)
mtimes = st.integers(-MAX_INT, MAX_INT)
modes = st.integers(0, 0o7777)
short_strings = text(40) | st.sampled_from(["a" * 256, "é" * 256, "🙂" * 256])
optional_short = st.none() | short_strings
paths = text(60) | st.sampled_from(
    ["", ".", "a/b/c", "dir/", "é" * 2048, "🙂" * 1024, "x" * MAX_PATH_BYTES]
)

hellos = st.builds(
    Hello,
    versions=st.lists(st.integers(0, 1 << 16), min_size=1, max_size=64).map(tuple),
    features=st.frozensets(short_strings, max_size=64),
    max_frame_size=st.integers(0, (1 << 32) - 1),
    agent=short_strings,
)
gets = st.builds(
    Get,
    request_id=request_ids,
    path=paths,
    offset=sizes,
    identity=optional_short,
    digest=optional_short,
)
list_dirs = st.builds(ListDir, request_id=request_ids, path=paths)
file_headers = st.builds(
    FileHeader,
    request_id=request_ids,
    size=sizes,
    mtime_ns=mtimes,
    identity=short_strings,
    offset=sizes,
    mode=modes,
    digest=optional_short,
)
datas = st.builds(Data, data=st.binary(max_size=300))
file_ends = st.builds(FileEnd, request_id=request_ids, digest=optional_short)
entries = st.builds(
    Entry,
    name=text(60, min_size=1),
    type=st.sampled_from(EntryType),
    size=sizes,
    mtime_ns=mtimes,
    mode=modes,
)
list_entries = st.builds(
    ListEntries,
    request_id=request_ids,
    entries=st.lists(entries, max_size=8).map(tuple),
)
list_ends = st.builds(ListEnd, request_id=request_ids, count=sizes)
errors = st.builds(
    Error,
    request_id=st.none() | request_ids,
    code=short_strings,
    message=text(100) | st.sampled_from(["m" * 4096, "é" * 4096]),
)
json_messages = st.one_of(
    hellos, gets, list_dirs, file_headers, file_ends, list_entries, list_ends, errors
)
messages = json_messages | datas

# Arbitrary JSON-like values, including what ftx must reject: huge and negative integers,
# floats (NaN and infinities too), booleans, lone surrogates, deep-ish nesting.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(1 << 70), 1 << 70)
    | st.sampled_from([-1, 0, 1, 1 << 32, 1 << 63, -(1 << 63), 0o10000])
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["ftx", "file", "dir", "sha256", "\ud800", "\udfff", "a/../b"])
)


def json_trees(scalars: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=20,
    )


json_values = json_trees(json_scalars)
# What may appear in an unknown field of a valid message (docs/protocol.md, section 5.2): any
# JSON but NaN and infinities, integers beyond 64 bits and strings with lone surrogates.
finite_json_values = json_trees(
    json_scalars.filter(
        lambda v: (
            not isinstance(v, float | str | int)
            or (isinstance(v, int) and -(1 << 63) <= v < (1 << 63))
            or (isinstance(v, str) and not any("\ud800" <= c <= "\udfff" for c in v))
        )
    )
    | st.floats(allow_nan=False, allow_infinity=False)
)
FIELD_NAMES = [
    "protocol",
    "versions",
    "features",
    "max_frame_size",
    "agent",
    "id",
    "path",
    "offset",
    "identity",
    "digest",
    "size",
    "mtime_ns",
    "mode",
    "entries",
    "count",
    "code",
    "message",
    "name",
    "type",
]
field_names = st.sampled_from(FIELD_NAMES) | st.text(max_size=10)
json_kinds = st.sampled_from([k for k in Kind if k is not Kind.DATA])


# --------------------------------------------------------------------------- round trips


@ROUND_TRIP
@given(json_messages)
def test_round_trip(message: Message) -> None:
    payload = encode(message)
    assert payload[0] == _kind_of(message)
    assert decode_message(payload) == message


@ROUND_TRIP
@given(datas)
def test_data_round_trip(message: Data) -> None:
    payload = encode(message)
    assert payload == bytes([Kind.DATA]) + bytes(message.data)
    decoded = decode_message(payload)
    assert isinstance(decoded, Data)
    assert bytes(decoded.data) == bytes(message.data)


@ROUND_TRIP
@given(st.one_of(st.just(Hello((1,))), gets, list_dirs, file_headers, errors))
def test_round_trip_from_memoryview_and_bytearray(message: Message) -> None:
    payload = encode(message)
    assert decode_message(memoryview(payload)) == message
    assert decode_message(bytearray(payload)) == message


def test_data_is_not_copied_on_encode() -> None:
    chunk = bytearray(b"x" * 100_000)
    parts = encode_message(Data(chunk))
    assert parts[0] == bytes([Kind.DATA])
    assert parts[1] is chunk


@pytest.mark.parametrize("data", [b"", b"\x00", b"{not json}", bytes(range(256))])
def test_data_body_is_raw_bytes(data: bytes) -> None:
    decoded = decode_message(bytes([Kind.DATA]) + data)
    assert isinstance(decoded, Data)
    assert bytes(decoded.data) == data


def _kind_of(message: Message) -> Kind:
    return {
        Hello: Kind.HELLO,
        Get: Kind.GET,
        ListDir: Kind.LIST,
        FileHeader: Kind.FILE,
        Data: Kind.DATA,
        FileEnd: Kind.END,
        ListEntries: Kind.ENTRIES,
        ListEnd: Kind.LIST_END,
        Error: Kind.ERROR,
        Put: Kind.PUT,
        MakeDir: Kind.MKDIR,
        Ready: Kind.READY,
        Done: Kind.DONE,
    }[type(message)]


def test_kind_values_are_the_documented_ones() -> None:
    assert {k.name: int(k) for k in Kind} == {
        "HELLO": 0x01,
        "ERROR": 0x02,
        "CHALLENGE": 0x03,
        "AUTH": 0x04,
        "AUTH_OK": 0x05,
        "GET": 0x10,
        "LIST": 0x11,
        "PUT": 0x12,
        "MKDIR": 0x13,
        "FILE": 0x20,
        "DATA": 0x21,
        "END": 0x22,
        "READY": 0x23,
        "DONE": 0x24,
        "ENTRIES": 0x30,
        "LIST_END": 0x31,
        "TREE": 0x50,
        "TREE_DIR": 0x51,
        "TREE_FILES": 0x52,
        "TREE_FILE": 0x53,
        "TREE_SKIP": 0x54,
        "TREE_END": 0x55,
        "TREE_HAVE": 0x56,
        "TREE_HAVE_END": 0x57,
        "TREE_SAME": 0x58,
        "TREE_PUT": 0x59,
        "TREE_ASK": 0x5A,
        "TREE_PUT_END": 0x5B,
        "TREE_STORED": 0x5C,
        "BLOCKS": 0x60,
        "BLOCK_LIST": 0x61,
        "BLOCK_PROGRESS": 0x62,
    }


def test_encoding_is_compact_utf8_json() -> None:
    payload = encode(Error(7, "not-found", "fichier «é» absent"))
    assert payload[0] == Kind.ERROR
    text_body = payload[1:].decode("utf-8")
    assert "«é»" in text_body  # not \u-escaped
    assert " " not in text_body.replace("fichier «é» absent", "")  # compact separators
    assert json.loads(text_body) == {"id": 7, "code": "not-found", "message": "fichier «é» absent"}


def test_hello_encoding_fields() -> None:
    body = body_of(Hello((1,), frozenset({"zeta", "alpha"}), 65536, "ftx/0.1"))
    assert body == {
        "protocol": "ftx",
        "versions": [1],
        "features": ["alpha", "zeta"],  # sorted: the encoding is deterministic
        "max_frame_size": 65536,
        "agent": "ftx/0.1",
    }


def test_get_encoding_fields() -> None:
    assert body_of(Get(3, "a/b", 10, "tok", None)) == {
        "id": 3,
        "path": "a/b",
        "offset": 10,
        "identity": "tok",
        "digest": None,
    }


# --------------------------------------------------------------------------- defaults


def test_get_defaults_when_fields_are_missing() -> None:
    decoded = decode_message(json_payload(Kind.GET, {"id": 1, "path": "f"}))
    assert decoded == Get(1, "f", offset=0, identity=None, digest="sha256")


def test_get_digest_null_means_no_digest() -> None:
    decoded = decode_message(json_payload(Kind.GET, {"id": 1, "path": "f", "digest": None}))
    assert isinstance(decoded, Get)
    assert decoded.digest is None


def test_file_header_defaults() -> None:
    body = {"id": 1, "size": 5, "mtime_ns": 0, "identity": "x"}
    decoded = decode_message(json_payload(Kind.FILE, body))
    assert decoded == FileHeader(1, 5, 0, "x", offset=0, mode=0o644, digest=None)


def test_hello_defaults() -> None:
    body = {"protocol": "ftx", "versions": [1], "max_frame_size": 65536}
    assert decode_message(json_payload(Kind.HELLO, body)) == Hello((1,), frozenset(), 65536, "")


def test_error_without_id_is_connection_level() -> None:
    decoded = decode_message(json_payload(Kind.ERROR, {"code": "busy"}))
    assert decoded == Error(None, "busy", "")


def test_entry_defaults() -> None:
    body = {"id": 2, "entries": [{"name": "n", "type": "dir"}]}
    decoded = decode_message(json_payload(Kind.ENTRIES, body))
    assert decoded == ListEntries(2, (Entry("n", EntryType.DIRECTORY, 0, 0, 0),))


def test_empty_entries_page() -> None:
    assert decode_message(json_payload(Kind.ENTRIES, {"id": 2, "entries": []})) == ListEntries(2)


# --------------------------------------------------------------------------- extensibility


UNKNOWN_KINDS = sorted(set(range(256)) - set(Kind))


def test_unknown_kinds_below_0x80_are_errors_and_above_are_ignored() -> None:
    assert len(UNKNOWN_KINDS) == 256 - len(Kind)
    for kind in UNKNOWN_KINDS:
        for body in (b"", b"{}", b"\xff\xfe garbage", b'{"id": 1}'):
            payload = bytes([kind]) + body
            if kind >= 0x80:
                assert decode_message(payload) is None, hex(kind)
            else:
                with pytest.raises(RemoteProtocolError, match="unknown message kind"):
                    decode_message(payload)


def test_empty_payload_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(b"")


@ROUND_TRIP
@given(
    json_messages,
    st.dictionaries(
        st.text(max_size=12).filter(lambda key: key not in FIELD_NAMES),
        finite_json_values,
        max_size=4,
    ),
)
def test_unknown_fields_are_ignored(message: Message, extra: dict[str, Any]) -> None:
    body = body_of(message)
    body.update(extra)
    payload = json_payload(_kind_of(message), body, allow_nan=False)
    assert decode_message(payload) == message


def test_unknown_fields_in_entries_are_ignored() -> None:
    raw = {"name": "a", "type": "file", "size": 1, "mtime_ns": 2, "mode": 3, "xattr": [1, {}]}
    decoded = decode_message(json_payload(Kind.ENTRIES, {"id": 1, "entries": [raw]}))
    assert decoded == ListEntries(1, (Entry("a", EntryType.FILE, 1, 2, 3),))


@pytest.mark.parametrize("raw_type", ["socket", "fifo", "", "FILE", "door"])
def test_unknown_entry_type_is_other(raw_type: str) -> None:
    raw = {"name": "a", "type": raw_type, "size": 0, "mtime_ns": 0, "mode": 0}
    decoded = decode_message(json_payload(Kind.ENTRIES, {"id": 1, "entries": [raw]}))
    assert isinstance(decoded, ListEntries)
    assert decoded.entries[0].type is EntryType.OTHER


@pytest.mark.parametrize(
    ("raw_type", "expected"),
    [
        ("file", EntryType.FILE),
        ("dir", EntryType.DIRECTORY),
        ("symlink", EntryType.SYMLINK),
        ("other", EntryType.OTHER),
    ],
)
def test_known_entry_types(raw_type: str, expected: EntryType) -> None:
    raw = {"name": "a", "type": raw_type}
    decoded = decode_message(json_payload(Kind.ENTRIES, {"id": 1, "entries": [raw]}))
    assert isinstance(decoded, ListEntries)
    assert decoded.entries[0].type is expected


def test_unknown_features_are_kept_as_strings() -> None:
    body = {"protocol": "ftx", "versions": [1, 7], "max_frame_size": 1 << 20, "features": ["x"]}
    decoded = decode_message(json_payload(Kind.HELLO, body))
    assert decoded == Hello((1, 7), frozenset({"x"}), 1 << 20, "")


def test_error_code_unknown_to_this_version_is_accepted() -> None:
    body = {"id": 4, "code": "quota-exceeded", "message": "later version"}
    assert decode_message(json_payload(Kind.ERROR, body)) == Error(
        4, "quota-exceeded", "later version"
    )


# --------------------------------------------------------------------------- rejections


GOOD_HELLO = {"protocol": "ftx", "versions": [1], "features": [], "max_frame_size": 1 << 20}


@pytest.mark.parametrize(
    "protocol", [None, "FTX", "ftx2", "", 1, ["ftx"], "http", "MISSING"], ids=repr
)
def test_hello_without_ftx_protocol_is_rejected(protocol: object) -> None:
    body = dict(GOOD_HELLO)
    if protocol == "MISSING":
        del body["protocol"]
    else:
        body["protocol"] = protocol
    with pytest.raises(RemoteProtocolError):
        decode_message(json_payload(Kind.HELLO, body))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("versions", []),
        ("versions", list(range(65))),
        ("versions", [True]),
        ("versions", [-1]),
        ("versions", [1.0]),
        ("versions", ["1"]),
        ("versions", [(1 << 16) + 1]),
        ("versions", 1),
        ("versions", None),
        ("features", "abc"),
        ("features", [1]),
        ("features", [f"f{i}" for i in range(65)]),
        ("features", ["x" * 257]),
        ("features", ["\ud800"]),
        ("max_frame_size", -1),
        ("max_frame_size", 1 << 32),
        ("max_frame_size", True),
        ("max_frame_size", 65536.0),
        ("max_frame_size", "65536"),
        ("max_frame_size", None),
        ("agent", 5),
        ("agent", "a" * 257),
        ("agent", None),
    ],
)
def test_hello_bad_fields(field: str, value: object) -> None:
    body = dict(GOOD_HELLO)
    body[field] = value
    with pytest.raises(RemoteProtocolError):
        decode_message(json_payload(Kind.HELLO, body))


@pytest.mark.parametrize("field", ["versions", "max_frame_size"])
def test_hello_required_fields(field: str) -> None:
    body = dict(GOOD_HELLO)
    del body[field]
    with pytest.raises(RemoteProtocolError, match=field):
        decode_message(json_payload(Kind.HELLO, body))


INT_FIELDS: list[tuple[Kind, dict[str, Any], str, int, int]] = [
    # kind, a valid body, the integer field, lowest and highest valid values
    (Kind.GET, {"id": 1, "path": "f"}, "id", 0, MAX_ID),
    (Kind.GET, {"id": 1, "path": "f"}, "offset", 0, MAX_INT),
    (Kind.LIST, {"id": 1, "path": ""}, "id", 0, MAX_ID),
    (Kind.FILE, {"id": 1, "size": 1, "mtime_ns": 0, "identity": "i"}, "size", 0, MAX_INT),
    (
        Kind.FILE,
        {"id": 1, "size": 1, "mtime_ns": 0, "identity": "i"},
        "mtime_ns",
        -MAX_INT,
        MAX_INT,
    ),
    (Kind.FILE, {"id": 1, "size": 1, "mtime_ns": 0, "identity": "i"}, "mode", 0, 0o7777),
    (Kind.FILE, {"id": 1, "size": 1, "mtime_ns": 0, "identity": "i"}, "offset", 0, MAX_INT),
    (Kind.END, {"id": 1, "digest": None}, "id", 0, MAX_ID),
    (Kind.LIST_END, {"id": 1, "count": 0}, "count", 0, MAX_INT),
    (Kind.ERROR, {"id": 1, "code": "busy"}, "id", 0, MAX_ID),
    (Kind.HELLO, GOOD_HELLO, "max_frame_size", 0, (1 << 32) - 1),
]


@pytest.mark.parametrize(("kind", "body", "field", "low", "high"), INT_FIELDS)
def test_integer_ranges(kind: Kind, body: dict[str, Any], field: str, low: int, high: int) -> None:
    for good in (low, high):
        decoded = decode_message(json_payload(kind, {**body, field: good}))
        assert decoded is not None
        attribute = "request_id" if field == "id" else field
        assert getattr(decoded, attribute) == good
    for bad in (low - 1, high + 1, True, False, 1.0, "1", [1], {"v": 1}, 10**400):
        with pytest.raises(RemoteProtocolError):
            decode_message(json_payload(kind, {**body, field: bad}))


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        (Kind.GET, {"path": "f"}, "id"),
        (Kind.GET, {"id": 1}, "path"),
        (Kind.LIST, {"id": 1}, "path"),
        (Kind.LIST, {"path": ""}, "id"),
        (Kind.FILE, {"id": 1, "mtime_ns": 0, "identity": "i"}, "size"),
        (Kind.FILE, {"id": 1, "size": 1, "identity": "i"}, "mtime_ns"),
        (Kind.FILE, {"id": 1, "size": 1, "mtime_ns": 0}, "identity"),
        (Kind.END, {"digest": None}, "id"),
        (Kind.ENTRIES, {"id": 1}, "entries"),
        (Kind.ENTRIES, {"entries": []}, "id"),
        (Kind.LIST_END, {"id": 1}, "count"),
        (Kind.ERROR, {"id": 1}, "code"),
    ],
)
def test_required_fields(kind: Kind, body: dict[str, Any], field: str) -> None:
    with pytest.raises(RemoteProtocolError, match=field):
        decode_message(json_payload(kind, body))


def test_path_limit_is_in_utf8_bytes() -> None:
    at_limit = "é" * (MAX_PATH_BYTES // 2)  # 4096 bytes, 2048 characters
    assert decode_message(json_payload(Kind.GET, {"id": 1, "path": at_limit})) == Get(1, at_limit)
    for too_long in (at_limit + "a", "é" * MAX_PATH_BYTES, "a" * (MAX_PATH_BYTES + 1)):
        for kind in (Kind.GET, Kind.LIST):
            with pytest.raises(RemoteProtocolError, match="path"):
                decode_message(json_payload(kind, {"id": 1, "path": too_long}))


@pytest.mark.parametrize(
    ("kind", "body", "field", "limit"),
    [
        (Kind.GET, {"id": 1, "path": "f"}, "identity", 256),
        (Kind.GET, {"id": 1, "path": "f"}, "digest", 256),
        (Kind.FILE, {"id": 1, "size": 1, "mtime_ns": 0}, "identity", 256),
        (Kind.END, {"id": 1}, "digest", 256),
        (Kind.ERROR, {"id": 1, "message": ""}, "code", 256),
        (Kind.ERROR, {"id": 1, "code": "busy"}, "message", 4096),
    ],
)
def test_string_limits(kind: Kind, body: dict[str, Any], field: str, limit: int) -> None:
    assert decode_message(json_payload(kind, {**body, field: "a" * limit})) is not None
    for bad in ("a" * (limit + 1), 1, True, ["a"], {"a": "b"}, "\ud800", "x\udc80y"):
        with pytest.raises(RemoteProtocolError, match=field):
            decode_message(json_payload(kind, {**body, field: bad}))


@pytest.mark.parametrize(
    "raw",
    [
        "not an object",
        ["file"],
        None,
        {"type": "file"},  # no name
        {"name": "a"},  # no type
        {"name": 1, "type": "file"},
        {"name": "a", "type": 1},
        {"name": "\ud800", "type": "file"},
        {"name": "a" * (MAX_PATH_BYTES + 1), "type": "file"},
        {"name": "a", "type": "file", "size": -1},
        {"name": "a", "type": "file", "size": True},
        {"name": "a", "type": "file", "mode": 0o10000},
        {"name": "a", "type": "file", "mtime_ns": 1.5},
    ],
    ids=repr,
)
def test_bad_entries(raw: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(json_payload(Kind.ENTRIES, {"id": 1, "entries": [raw]}))


@pytest.mark.parametrize("entries", [None, {}, "x", 3, {"name": "a", "type": "file"}], ids=repr)
def test_entries_must_be_a_list(entries: object) -> None:
    with pytest.raises(RemoteProtocolError, match="entries"):
        decode_message(json_payload(Kind.ENTRIES, {"id": 1, "entries": entries}))


GET = bytes([Kind.GET])
HELLO = bytes([Kind.HELLO])

NASTY_PAYLOADS = [
    pytest.param(GET, id="no body"),
    pytest.param(GET + b" ", id="blank body"),
    pytest.param(GET + b"[" * 100_000, id="deep arrays"),
    pytest.param(GET + b'{"a":' * 100_000, id="deep objects"),
    pytest.param(
        GET + b'{"id":1,"path":"f","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        id="deep unknown field",
    ),
    pytest.param(GET + b'{"id":NaN,"path":"f"}', id="NaN"),
    pytest.param(GET + b'{"id":Infinity,"path":"f"}', id="Infinity"),
    pytest.param(GET + b'{"id":-Infinity,"path":"f"}', id="-Infinity"),
    pytest.param(GET + b'{"id":1,"path":"f","x":NaN}', id="NaN in an unknown field"),
    pytest.param(GET + b'{"id":1e400,"path":"f"}', id="float overflow"),
    pytest.param(GET + b'{"id":1.0,"path":"f"}', id="float id"),
    pytest.param(GET + b'{"id":1,"path":"\\ud800"}', id="lone high surrogate"),
    pytest.param(GET + b'{"id":1,"path":"\\udfffa"}', id="lone low surrogate"),
    pytest.param(GET + b'{"id":1,"path":"\xff"}', id="invalid UTF-8"),
    pytest.param(GET + b'{"id":1,"path":"\xed\xa0\x80"}', id="UTF-8 encoded surrogate"),
    pytest.param(GET + b'{"id":1,"path":"\xc0\xaf"}', id="overlong UTF-8"),
    pytest.param(GET + b'\xef\xbb\xbf{"id":1,"path":"f"}', id="BOM"),
    pytest.param(GET + b'{"id":true,"path":"f"}', id="true as id"),
    pytest.param(GET + b'{"id":-1,"path":"f"}', id="negative id"),
    pytest.param(GET + b'{"id":4294967296,"path":"f"}', id="id over 32 bits"),
    pytest.param(GET + b'{"id":' + b"9" * 5000 + b',"path":"f"}', id="5000-digit int"),
    pytest.param(GET + b'{"id":1,"path":"f","offset":-1}', id="negative offset"),
    pytest.param(GET + b'{"id":1,"path":"f"', id="truncated"),
    pytest.param(GET + b'{"id":1,"path":"f"}{}', id="trailing data"),
    pytest.param(GET + b"[]", id="array body"),
    pytest.param(GET + b'"string"', id="string body"),
    pytest.param(GET + b"null", id="null body"),
    pytest.param(GET + b"{'id':1}", id="single quotes"),
    pytest.param(GET + b'{"id":1,"path":"f\x00"}', id="raw control character"),
    pytest.param(
        HELLO + b'{"protocol":"ftx","versions":[NaN],"max_frame_size":65536}', id="NaN version"
    ),
    pytest.param(
        HELLO + b'{"protocol":"ftx","versions":[1],"max_frame_size":1e9}', id="float frame size"
    ),
    pytest.param(
        HELLO + b'{"protocol":"\\ud800","versions":[1],"max_frame_size":65536}',
        id="surrogate protocol",
    ),
]


@pytest.mark.parametrize("payload", NASTY_PAYLOADS)
def test_nasty_payloads_are_rejected(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(payload)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"id":1,"path":"f","note":"\\ud800"}', id="in an unknown member"),
        pytest.param(b'{"id":1,"path":"f","\\udc00":1}', id="in an unknown member's name"),
        pytest.param(b'{"id":1,"path":"f","x":[{"y":["\\udfff"]}]}', id="nested"),
    ],
)
def test_lone_surrogate_anywhere_is_refused(body: bytes) -> None:
    # Issue 17, item 5: the whole message is validated, not only the members read.
    with pytest.raises(RemoteProtocolError, match="not valid Unicode"):
        decode_message(GET + body)


@pytest.mark.parametrize(
    "message",
    [
        Hello((1,), frozenset({"f"}), 1 << 20, "a"),
        Get(1, "p", length=5),
        ListDir(1, "p"),
        FileHeader(1, 5, 0, "i", 0, 0o644, "sha256"),
        FileEnd(1, None),
        ListEntries(1, (Entry("a", EntryType.FILE, 0, 0, 0),)),
        ListEnd(1, 1),
        Error(1, "c", "m"),
        Put(1, "p", 5, "sha256", None, False, None),
        MakeDir(1, "p"),
        Ready(1, 0),
        Done(1, True),
        Challenge("0" * 64),
        Auth("0" * 64, "1" * 64),
        AuthOk("0" * 64),
        Blocks(1, "p", "sha256", "i"),
        BlockList(1, 5, 0, "i", "xxh3-128", 8 << 20, ("0" * 32,), "1" * 32),
    ],
    ids=lambda message: type(message).__name__,
)
def test_the_members_checked_as_a_whole_are_those_the_decoder_does_not_read(
    message: Message,
) -> None:
    # The decoder checks a message's own members one by one, and the others as a whole
    # (strings, integers, nesting): the table that tells them apart lists every member sent.
    body = body_of(message)
    kind = Kind(encode(message)[0])
    assert set(body) == _json_body._MEMBERS[kind]
    if isinstance(message, ListEntries):
        assert set(body["entries"][0]) == _json_body._ENTRY_MEMBERS


def nested(levels: int) -> bytes:
    """A GET whose unknown member nests arrays so that the body is ``levels`` deep in all."""
    return GET + b'{"id":1,"path":"f","x":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


def test_nesting_is_allowed_up_to_max_json_depth() -> None:
    assert MAX_JSON_DEPTH == 32  # docs/protocol.md, section 5.2
    assert decode_message(nested(MAX_JSON_DEPTH)) == Get(1, "f")
    for levels in (MAX_JSON_DEPTH + 1, 200_000):
        with pytest.raises(RemoteProtocolError, match="more than 32 levels deep"):
            decode_message(nested(levels))


@pytest.mark.parametrize(
    ("literal", "valid"),
    [
        (b"9223372036854775807", True),
        (b"-9223372036854775808", True),
        (b"9223372036854775808", False),
        (b"-9223372036854775809", False),
        (b"9" * 5000, False),
        (b"-" + b"1" * 25, False),
    ],
    ids=lambda value: value.decode()[:24] if isinstance(value, bytes) else str(value),
)
def test_integers_anywhere_fit_in_64_bits(literal: bytes, valid: bool) -> None:
    payload = GET + b'{"id":1,"path":"f","x":[' + literal + b"]}"
    if valid:
        assert decode_message(payload) == Get(1, "f")
    else:
        with pytest.raises(RemoteProtocolError, match="outside the 64-bit range"):
            decode_message(payload)


def test_duplicate_keys_last_wins() -> None:
    # Python's json takes the last; the spec says senders must not repeat keys.
    assert decode_message(GET + b'{"id":1,"id":2,"path":"f"}') == Get(2, "f")


def test_whitespace_around_json_is_accepted() -> None:
    assert decode_message(GET + b' \n{ "id" : 1 , "path" : "f" }\t') == Get(1, "f")


# --------------------------------------------------------------------------- fuzzing


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(payload: bytes) -> None:
    result = decode_or_reject(payload)
    if payload and payload[0] == Kind.DATA:
        assert isinstance(result, Data)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_after_each_json_kind(body: bytes) -> None:
    for kind in Kind:
        decode_or_reject(bytes([kind]) + body)


JSONISH = '{}[]":,0123456789.eE-+ \\/untrlfasNIiy\x00\ud800é'


@FUZZ
@given(json_kinds, st.text(st.sampled_from(JSONISH), max_size=80))
def test_fuzz_jsonish_text(kind: Kind, body: str) -> None:
    payload = bytes([kind]) + body.encode("utf-8", "surrogatepass")
    decode_or_reject(payload)


@FUZZ
@given(json_kinds, json_values)
def test_fuzz_any_json_value(kind: Kind, value: object) -> None:
    for ensure_ascii in (True, False):
        try:
            body = json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
        except ValueError:  # pragma: no cover - json refuses nothing we generate
            continue
        result = decode_or_reject(bytes([kind]) + body)
        if not isinstance(value, dict):
            assert isinstance(result, RemoteProtocolError)


@FUZZ
@given(json_kinds, st.dictionaries(field_names, json_values, max_size=6))
def test_fuzz_objects_with_random_fields(kind: Kind, obj: dict[str, Any]) -> None:
    if kind is Kind.HELLO and obj:
        obj.setdefault("protocol", "ftx")
    decode_or_reject(json_payload(kind, obj, allow_nan=True))


@FUZZ
@given(json_messages, st.data())
def test_fuzz_valid_messages_with_one_field_mistyped(message: Message, data: st.DataObject) -> None:
    body = body_of(message)
    key = data.draw(st.sampled_from(sorted(body)))
    if data.draw(st.booleans()):
        del body[key]
    else:
        body[key] = data.draw(json_values)
    for ensure_ascii in (True, False):
        raw = json.dumps(body, ensure_ascii=ensure_ascii, allow_nan=True)
        result = decode_or_reject(bytes([_kind_of(message)]) + raw.encode("utf-8", "surrogatepass"))
        if isinstance(result, MESSAGE_TYPES):
            assert type(result) is type(message)


@FUZZ
@given(list_entries, st.data())
def test_fuzz_entries_with_one_field_mistyped(message: ListEntries, data: st.DataObject) -> None:
    body = body_of(message)
    if not body["entries"]:
        body["entries"].append({})
    index = data.draw(st.integers(0, len(body["entries"]) - 1))
    entry = body["entries"][index]
    key = data.draw(st.sampled_from(["name", "type", "size", "mtime_ns", "mode", "extra"]))
    entry[key] = data.draw(json_values)
    decode_or_reject(json_payload(Kind.ENTRIES, body, allow_nan=True))


@FUZZ
@given(messages, st.data())
def test_fuzz_bit_flips_in_valid_messages(message: Message, data: st.DataObject) -> None:
    payload = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(payload) - 1))
        payload[index] ^= 1 << data.draw(st.integers(0, 7))
    decode_or_reject(bytes(payload))


@FUZZ
@given(messages, st.data())
def test_fuzz_truncated_valid_messages(message: Message, data: st.DataObject) -> None:
    payload = encode(message)
    cut = data.draw(st.integers(0, len(payload) - 1))
    result = decode_or_reject(payload[:cut])
    if cut == 0 or not isinstance(message, Data):
        # A JSON object cut short is never valid (a Data message cut short still is).
        assert isinstance(result, RemoteProtocolError)
