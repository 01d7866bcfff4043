#!/usr/bin/env python3
"""Fuzz the ftx decoders by hand, for as long as you like.

::

    python fuzz/fuzz_decoders.py --seconds 600
    python fuzz/fuzz_decoders.py --seconds 60 --target client --target server --seed 7
    python fuzz/fuzz_decoders.py --replay fuzz/findings/client-latch-....json

Targets (``--target``, all by default):

- ``framing``: byte streams, cut into random pieces, into :class:`ftx.framing.FrameDecoder`, in
  ftx's format or one of ``FORMATS`` (the session re-framed in it, then damaged);
- ``messages``: frame payloads into :func:`ftx.protocol.messages.decode_message`;
- ``client``: payload sequences into :meth:`ftx.protocol.ClientProtocol.receive` (HELLO first,
  with GET and LIST requests outstanding);
- ``server``: payload sequences into :meth:`ftx.protocol.ServerProtocol.receive`, the server
  answering its HELLO and, now and then, the current request, as the real server does;
- ``pipeline``: byte streams through a ``FrameDecoder`` into a ``ClientProtocol``, as the
  client reads a socket;
- ``proxy``: starts of streams into the PROXY header parser of ``ftx.server._proxy_header``;
- ``tree``: payload sequences into a ``ClientProtocol`` with TREE requests outstanding (tree
  streams, docs/protocol.md section 21); the ``server`` target gets TREE and have-lists too;
- ``tree-put``: payload sequences into a ``ClientProtocol`` that sent a TREE_PUT and its
  stream (tree uploads, section 23); the ``server`` target gets TREE_PUT streams too, and
  answers their asks and ends as the real server does.

Inputs start from valid sessions and are mutated at the frame, payload, JSON and byte level; an
input that makes a target say something new (a new error message, a new message accepted) is
kept to be mutated further. No dependency beyond ftx itself.

Oracles (a violation is a *finding*):

- nothing but :exc:`~ftx.errors.RemoteProtocolError` (and subclasses) ever escapes a decoder;
- ``FrameDecoder`` returns the frames a reference parser finds, stops where it stops (too large,
  incomplete, clean end), keeps raising the same error once it failed, and never holds a whole
  frame's worth of bytes without returning it;
- whatever ``decode_message`` accepts, ``encode_message`` encodes and decodes back to the same
  message (what is accepted can be sent, and means the same);
- a state machine that raised stays failed: every later ``receive`` raises too
  (``--no-latch`` leaves this oracle out);
- the server side may always answer the request ``current_request`` names.

Findings are printed in the summary, grouped, with the smallest input seen for each, and saved as
JSON under ``--findings`` (default ``fuzz/findings``) for ``--replay``. The exit status is 1 if
anything was found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ftx.errors import (
    FrameTooLargeError,
    IncompleteFrameError,
    LocalProtocolError,
    RemoteProtocolError,
)
from ftx.framing import FRAME_SIZE_LIMIT, FTX_FORMAT, HEADER_SIZE, FrameDecoder, FrameFormat
from ftx.protocol import (
    BASE_BLOCK_SIZE,
    BLAKE3_FEATURE,
    BLOCK_PROGRESS_FEATURE,
    RANGES_FEATURE,
    TREE_FEATURE,
    TREE_PUT_FEATURE,
    UPLOAD_FEATURE,
    ClientProtocol,
    ServerProtocol,
)
from ftx.protocol.messages import (
    BlockList,
    BlockProgress,
    Blocks,
    Data,
    Entry,
    EntryType,
    Error,
    FileEnd,
    FileHeader,
    Get,
    HaveRecord,
    Hello,
    ListDir,
    ListEnd,
    ListEntries,
    MakeDir,
    Message,
    Put,
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
    TreeRecord,
    TreeSame,
    TreeSkip,
    TreeStored,
    decode_message,
    encode_message,
)
from ftx.server import _proxy_header as proxy_header

Payloads = list[bytes]

FEATURES: Final = frozenset({BLAKE3_FEATURE, RANGES_FEATURE, BLOCK_PROGRESS_FEATURE})
IDENTITY: Final = "0123456789abcdef0123456789abcdef"
CONTENT: Final = b"hello"
SHA256: Final = hashlib.sha256(CONTENT).hexdigest()
MTIME: Final = 1767225600000000000
MAX_CORPUS: Final = 400
FRAME_LIMITS: Final = (0, 1, 5, 64, 65536, 1 << 20, FRAME_SIZE_LIMIT)
# Headers the framing target decodes besides ftx's own (half of its cases).
FORMATS: Final = (
    FrameFormat(length_size=2, byteorder="little"),
    FrameFormat(length_size=1),
    FrameFormat(length_size=3, length_adjustment=-3),  # the length counts the header
    FrameFormat(length_size=4, length_offset=1, length_adjustment=-4, strip=0),  # PostgreSQL
    FrameFormat(length_size=8, byteorder="little", strip=0),
    FrameFormat(length_size=2, length_offset=2, length_adjustment=1, strip=2),
)


class Finding(Exception):
    """An oracle was violated."""

    def __init__(self, oracle: str, detail: str) -> None:
        super().__init__(f"{oracle}: {detail}")
        self.oracle = oracle
        self.detail = detail


# ----------------------------------------------------------------------------- seed inputs


def payload(message: Message) -> bytes:
    return b"".join(bytes(part) for part in encode_message(message))


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(HEADER_SIZE, "big") + data


# The requests the client target has outstanding, in order; the server session answers them.
CLIENT_REQUESTS: Final[tuple[Get | ListDir | Blocks, ...]] = (
    Get(1, "hello.txt", digest="sha256"),
    ListDir(2, ""),
    Get(3, "nope.txt", digest="blake3"),
    Get(4, "hello.txt", offset=2, identity=IDENTITY, digest=None),
    ListDir(5, "dir"),
    Blocks(6, "hello.txt", "sha256"),
    Get(7, "hello.txt", offset=1, identity=IDENTITY, digest=None, length=2),
)


def server_session() -> Payloads:
    """What a server sends the client target: its HELLO, then the answers, in order."""
    header = FileHeader(1, 5, MTIME, IDENTITY, offset=0, mode=0o644, digest="sha256")
    return [
        payload(Hello((1,), FEATURES, 1 << 20, "ftx/0.1.0")),
        payload(header),
        payload(Data(b"he")),
        bytes([0x80]) + b"an extension",
        payload(Data(b"llo")),
        payload(FileEnd(1, SHA256)),
        payload(
            ListEntries(
                2,
                (
                    Entry("hello.txt", EntryType.FILE, 5, MTIME, 0o644),
                    Entry("dir", EntryType.DIRECTORY, 0, MTIME, 0o755),
                ),
            )
        ),
        payload(ListEntries(2, (Entry("link", EntryType.SYMLINK, 9, MTIME, 0o777),))),
        payload(ListEnd(2, 3)),
        payload(Error(3, "not-found", "no such file or directory: 'nope.txt'")),
        payload(FileHeader(4, 5, MTIME, IDENTITY, offset=2, mode=0o600, digest=None)),
        payload(Data(b"llo")),
        payload(FileEnd(4, None)),
        payload(ListEnd(5, 0)),
        payload(BlockProgress(6, 5, 0)),
        payload(BlockProgress(6, 5, 3)),
        payload(BlockList(6, 5, MTIME, IDENTITY, "sha256", BASE_BLOCK_SIZE, (SHA256,), SHA256)),
        payload(FileHeader(7, 5, MTIME, IDENTITY, offset=1, mode=0o600, digest=None)),
        payload(Data(b"el")),
        payload(FileEnd(7, None)),
        payload(Error(None, "internal", "internal server error")),
    ]


def client_session() -> Payloads:
    """What a client sends the server target."""
    return [
        payload(Hello((1, 2), FEATURES, 1 << 20, "ftx/0.1.0")),
        payload(Get(1, "hello.txt", digest="blake3")),
        bytes([0xFF]),
        payload(ListDir(2, "")),
        payload(Get(3, "dir/x.bin", offset=10, identity=IDENTITY, digest="sha256")),
        payload(Get(4, "../outside", digest=None)),
        payload(ListDir(5, "dir")),
        payload(Blocks(6, "dir/x.bin", "xxh3-128", identity=IDENTITY)),
        payload(Get(7, "hello.txt", offset=3, digest=None, length=10)),
    ]


def tree_server_session() -> Payloads:
    """What a server offering tree streams sends the tree client target: its HELLO, then the
    answer to TREE_REQUESTS."""
    records = (
        TreeRecord("a.txt", 5, MTIME, 0o644, SHA256),
        TreeRecord("empty", 0, MTIME, 0o600, hashlib.sha256(b"").hexdigest()),
    )
    return [
        payload(Hello((1,), FEATURES | {TREE_FEATURE}, 1 << 20, "ftx/0.4.0")),
        payload(TreeDir(1, "")),
        payload(TreeFiles(1, records, CONTENT)),
        payload(TreeSame(1, ("kept.txt", "other"))),
        payload(TreeDir(1, "sub/deeper")),
        payload(TreeFile(1, "big.bin")),
        payload(FileHeader(1, 5, MTIME, IDENTITY, offset=0, mode=0o644, digest="sha256")),
        payload(Data(b"hel")),
        payload(Data(b"lo")),
        payload(FileEnd(1, SHA256)),
        payload(TreeSkip(1, "sub/link", "symlink", "a symbolic link")),
        payload(TreeFile(1, "cut.bin")),
        payload(FileHeader(1, 5, MTIME, IDENTITY, offset=0, mode=0o644, digest="sha256")),
        payload(Data(b"he")),
        payload(TreeSkip(1, "sub/deeper/cut.bin", "changed", "changed while it was sent")),
        payload(TreeEnd(1, 3, 2, 2)),
        payload(Error(2, "not-a-directory", "'f' is not a directory")),
    ]


TREE_REQUESTS: Final = (TreeGet(1, "dir", digest="sha256"), TreeGet(2, "f", digest=None))


def tree_client_session() -> Payloads:
    """What a client sends the server target: a TREE with its have-list."""
    have = (HaveRecord("a.txt", 5, MTIME), HaveRecord("b", 0, -1, SHA256))
    return [
        payload(Hello((1,), FEATURES | {TREE_FEATURE}, 1 << 20, "ftx/0.4.0")),
        payload(TreeGet(1, "dir", digest="sha256", have=True, checksum=True)),
        payload(TreeHave(1, "", have)),
        payload(TreeHave(1, "sub/deeper", ())),
        payload(TreeHaveEnd(1)),
        payload(Get(2, "hello.txt")),
    ]


PUT_FEATURES: Final = FEATURES | {TREE_PUT_FEATURE, UPLOAD_FEATURE}
PUT_RECORDS: Final = (
    TreeRecord("a.txt", 5, MTIME, 0o644, SHA256),
    TreeRecord("empty", 0, MTIME, 0o600, hashlib.sha256(b"").hexdigest()),
)


def tree_put_client_session() -> Payloads:
    """What a client sends the server target: a TREE_PUT and its stream."""
    return [
        payload(Hello((1,), PUT_FEATURES, 1 << 20, "ftx/0.4.0")),
        payload(TreePut(1, "up", "sha256", overwrite=True, checksum=True)),
        payload(TreeAsk(1, "")),
        payload(TreeDir(1, "")),
        payload(TreeFiles(1, PUT_RECORDS, CONTENT)),
        payload(TreeAsk(1, "sub/deeper")),
        payload(TreeDir(1, "sub/deeper")),
        payload(TreeFiles(1, PUT_RECORDS[1:], b"")),
        payload(TreePutEnd(1, 2, 3)),
        payload(Get(2, "hello.txt")),
    ]


def tree_put_server_session() -> Payloads:
    """What a server sends the tree-put client target: its HELLO, then the answer to
    TREE_PUT_STREAM."""
    return [
        payload(Hello((1,), PUT_FEATURES, 1 << 20, "ftx/0.4.0")),
        payload(TreeHave(1, "", (HaveRecord("a.txt", 5, MTIME, SHA256),))),
        payload(TreeHaveEnd(1)),
        payload(TreeStored(1, "", ("a.txt",))),
        payload(TreeHaveEnd(1)),
        payload(TreeSkip(1, "sub/x", "exists", "already there")),
        payload(TreeStored(1, "sub", ("b", "c"))),
        payload(TreeEnd(1, 3, 1, 0)),
    ]


TREE_PUT_STREAM: Final = (
    TreePut(1, "up", "sha256"),
    TreeAsk(1, ""),
    TreeAsk(1, "sub"),
    TreeDir(1, ""),
    TreeFiles(1, PUT_RECORDS, CONTENT),
    TreeDir(1, "sub"),
    TreePutEnd(1, 2, 2),
)


def all_seed_payloads() -> Payloads:
    return [
        *server_session(),
        *client_session(),
        *tree_server_session(),
        *tree_client_session(),
        *tree_put_client_session(),
        *tree_put_server_session(),
    ]


# ------------------------------------------------------------------------------- mutation

INTERESTING_NUMBERS: Final = (
    -1,
    0,
    1,
    0o7777,
    0o10000,
    65535,
    65536,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    (1 << 53) + 1,
    (1 << 63) - 1,
    1 << 63,
    -((1 << 63) - 1),
    -(1 << 63),
)
INTERESTING_VALUES: Final[tuple[Any, ...]] = (
    *INTERESTING_NUMBERS,
    1.0,
    0.5,
    -0.0,
    1e300,
    float("nan"),
    float("inf"),
    True,
    False,
    None,
    "",
    "x" * 257,
    "x" * 4097,
    "\ud800",
    "\udfff\ud800",
    "a/../b",
    "\x00",
    "\u2028",
    "é" * 300,
    "ftx",
    "blake3",
    "sha256",
    "changed",
    [],
    {},
    [1],
    [1, 2],
    ["digest-blake3"],
    {"a": 1},
)
RAW_JSON: Final = (
    b"1.0",
    b"1e3",
    b"-0",
    b"9" * 5000,
    b"NaN",
    b"Infinity",
    b"[" * 3000,
    b'"\\ud800"',
    b'"\\u0000"',
    b"\xef\xbb\xbf{}",
    b"\xc0\xae",
    b"\xed\xa0\x80",
    b"{}}",
    b"{} ",
    b'{"a":1,"a":2}',
)
KIND_BYTES: Final = (
    *(0x00, 0x01, 0x02, 0x05, 0x10, 0x11, 0x20, 0x21, 0x22, 0x30, 0x31, 0x7F, 0x80),
    *range(0x50, 0x5A),
)


def _mutate_json_value(value: Any, rng: random.Random, depth: int = 0) -> Any:
    if isinstance(value, dict) and value and depth < 4:
        key = rng.choice(list(value))
        action = rng.random()
        if action < 0.15:
            del value[key]
        elif action < 0.25:
            value[rng.choice(["zz", "id", "path", "size", "offset", "digest", "x" * 300])] = (
                rng.choice(INTERESTING_VALUES)
            )
        else:
            value[key] = _mutate_json_value(value[key], rng, depth + 1)
        return value
    if isinstance(value, list) and value and depth < 4:
        index = rng.randrange(len(value))
        action = rng.random()
        if action < 0.2:
            del value[index]
        elif action < 0.35:
            value.extend(value[: rng.randint(1, 70)])
        else:
            value[index] = _mutate_json_value(value[index], rng, depth + 1)
        return value
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
        return value + rng.choice((-1, 1))
    return rng.choice(INTERESTING_VALUES)


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    """Mutate the JSON body of a payload as JSON (values, members, types)."""
    if len(data) < 2:
        return mutate_bytes(data, rng)
    try:
        value = json.loads(data[1:])
    except (ValueError, RecursionError):
        return mutate_bytes(data, rng)
    value = _mutate_json_value(value, rng)
    if rng.random() < 0.2:
        value = rng.choice(INTERESTING_VALUES) if rng.random() < 0.5 else [value]
    text = json.dumps(value, ensure_ascii=rng.random() < 0.5, allow_nan=True)
    body = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.2:
        # Put a raw token where a number or a string was.
        spots = [m.span() for m in re.finditer(rb'-?\d+|"[^"]*"|true|false|null', body)]
        if spots:
            start, end = rng.choice(spots)
            body = body[:start] + rng.choice(RAW_JSON) + body[end:]
    return data[:1] + body


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    action = rng.randrange(9)
    position = rng.randint(0, len(buffer))
    if action == 0 and buffer:
        index = rng.randrange(len(buffer))
        buffer[index] ^= 1 << rng.randrange(8)
    elif action == 1 and buffer:
        buffer[rng.randrange(len(buffer))] = rng.choice((0x00, 0x7F, 0x80, 0xFF, 0x22, 0x5C, 0x7B))
    elif action == 2:
        buffer[position:position] = rng.randbytes(rng.randint(1, 8))
    elif action == 3 and buffer:
        del buffer[position : position + rng.randint(1, 16)]
    elif action == 4:
        buffer[position:position] = buffer[position : position + rng.randint(1, 32)]
    elif action == 5:
        del buffer[position:]
    elif action == 6 and buffer:
        buffer[0] = rng.choice(KIND_BYTES)
    elif action == 7:
        buffer[position:position] = rng.choice(RAW_JSON)
    else:
        buffer = bytearray(rng.randbytes(rng.randint(0, 24)))
    return bytes(buffer)


def mutate_payloads(payloads: Payloads, rng: random.Random, pool: Sequence[bytes]) -> Payloads:
    """Apply one to several mutations to a sequence of payloads."""
    result = list(payloads)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5, 8))):
        action = rng.random()
        index = rng.randrange(len(result)) if result else 0
        if not result or action < 0.1:
            result.insert(index, rng.choice(pool) if rng.random() < 0.7 else rng.randbytes(8))
        elif action < 0.2:
            del result[index]
        elif action < 0.27:
            result.insert(index, result[index])
        elif action < 0.34 and len(result) > 1:
            other = rng.randrange(len(result))
            result[index], result[other] = result[other], result[index]
        elif action < 0.38:
            del result[index:]
        elif action < 0.7:
            result[index] = mutate_json(result[index], rng)
        else:
            result[index] = mutate_bytes(result[index], rng)
    return result


def mutate_stream(stream: bytes, rng: random.Random) -> bytes:
    """Byte-level damage to a framed stream: length prefixes included."""
    buffer = bytearray(stream)
    for _ in range(rng.choice((1, 1, 2, 3))):
        if not buffer or rng.random() < 0.5:
            buffer = bytearray(mutate_bytes(bytes(buffer), rng))
        else:
            position = rng.randrange(len(buffer))
            buffer[position : position + 4] = rng.choice(
                (b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x01\x00\x00", b"\x00\x10\x00\x01")
            )
    return bytes(buffer)


def chunks(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` cut where the transport might have cut it."""
    pieces: list[bytes] = []
    position = 0
    while position < len(data):
        size = rng.choice((1, 2, 3, 4, 5, 7, 64, 1000, 70000, len(data)))
        pieces.append(data[position : position + size])
        position += size
    return pieces


# --------------------------------------------------------------------------------- targets


@dataclass
class Case:
    """One input: payloads, and for stream targets a byte stream built from them."""

    payloads: Payloads
    seed: int
    stream: bytes | None = None

    def size(self) -> int:
        return sum(map(len, self.payloads)) + len(self.stream or b"")

    def to_json(self) -> dict[str, object]:
        return {
            "payloads": [data.hex() for data in self.payloads],
            "seed": self.seed,
            "stream": None if self.stream is None else self.stream.hex(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Case:
        stream = obj.get("stream")
        return cls(
            [bytes.fromhex(data) for data in obj["payloads"]],
            int(obj["seed"]),
            None if stream is None else bytes.fromhex(stream),
        )


def _signature(exc: BaseException) -> str:
    """An exception's type and message with the numbers taken out: what coverage we have."""
    return f"{type(exc).__name__}: {re.sub(r'[0-9]+', 'N', str(exc))[:80]}"


def reframe(data: bytes, fmt: FrameFormat) -> bytes:
    """``data`` framed in ``fmt`` (after zero prefix bytes), cut to what the field can say;
    ``b""`` if even that cannot be framed."""
    longest = fmt.max_length + fmt.length_adjustment
    try:
        return fmt.encode(bytes(fmt.length_offset) + data[: max(0, longest)])
    except LocalProtocolError:
        return b""


def reference_frames(
    stream: bytes, limit: int, eof: bool, fmt: FrameFormat = FTX_FORMAT
) -> tuple[list[bytes], str]:
    """The frames in ``stream`` and how it ends ("too-large", "incomplete", "eof", "more", or
    "bad-length" for a length too small for the format)."""
    frames: list[bytes] = []
    position = 0
    header, strip = fmt.header_size, fmt.strip_size
    while True:
        left = len(stream) - position
        if left < header:
            if eof:
                return frames, "incomplete" if left else "eof"
            return frames, "more"
        start = position + fmt.length_offset
        length = int.from_bytes(stream[start : start + fmt.length_size], fmt.byteorder)
        body = length + fmt.length_adjustment
        if body < 0:
            return frames, "bad-length"
        if header - strip + body > limit:
            return frames, "too-large"
        if left - header < body:
            return frames, "incomplete" if eof else "more"
        frames.append(stream[position + strip : position + header + body])
        position += header + body


def run_framing(case: Case, check_latch: bool) -> set[str]:
    rng = random.Random(case.seed)
    stream = case.stream if case.stream is not None else b""
    fmt = FTX_FORMAT if rng.random() < 0.5 else rng.choice(FORMATS)
    if fmt != FTX_FORMAT and case.payloads:
        stream = b"".join(reframe(data, fmt) for data in case.payloads)
        stream = mutate_stream(stream, rng) if rng.random() < 0.4 else stream
    limit = min(rng.choice(FRAME_LIMITS), fmt.payload_limit())
    eof = rng.random() < 0.7
    decoder = FrameDecoder(max_frame_size=limit, frame_format=fmt)
    frames: list[bytes] = []
    error: RemoteProtocolError | None = None
    events: set[str] = set()

    def drain() -> None:
        nonlocal error
        while True:
            try:
                got = decoder.next_frame()
            except RemoteProtocolError as exc:
                if error is not None and exc is not error:
                    detail = f"a second, different error: {exc!r} after {error!r}"
                    raise Finding("latch", detail) from None
                if error is None:
                    events.add(_signature(exc))
                error = exc
                return
            if error is not None:
                raise Finding("latch", f"a frame after the error {error!r}")
            if got is None:
                held = decoder.buffered_bytes
                if held >= fmt.header_size + limit and limit < fmt.payload_limit():
                    raise Finding(
                        "memory",
                        f"{decoder.buffered_bytes} bytes held, limit {limit}, no frame returned",
                    )
                return
            frames.append(got)

    for piece in chunks(stream, rng):
        decoder.receive_data(piece)
        drain()
    if eof:
        decoder.receive_data(b"")
        drain()
    if error is not None:
        drain()  # once more: the same error again
    expected, end = reference_frames(stream, limit, eof, fmt)
    if frames != expected:
        raise Finding(
            "frames", f"{len(frames)} frames returned, the reference finds {len(expected)}"
        )
    if isinstance(error, FrameTooLargeError):
        got_end = "too-large"
    elif isinstance(error, IncompleteFrameError):
        got_end = "incomplete"
    elif type(error) is RemoteProtocolError:
        got_end = "bad-length"
    elif error is not None:
        got_end = type(error).__name__
    else:
        got_end = "eof" if decoder.eof else "more"
    if got_end != end:
        raise Finding("frames", f"the decoder ended with {got_end!r}, the reference with {end!r}")
    if error is not None and decoder.eof:
        raise Finding("frames", "eof is true after an error")
    events.add(f"end:{end}:{len(frames) > 0}")
    return events


def check_round_trip(message: Message) -> None:
    if isinstance(message, Data):
        return
    try:
        again = decode_message(payload(message))
    except Exception as exc:
        raise Finding(
            "round-trip", f"{message!r} was accepted but cannot be sent: {exc!r}"
        ) from exc
    if again != message:
        raise Finding("round-trip", f"{message!r} came back as {again!r}")


def run_messages(case: Case, check_latch: bool) -> set[str]:
    events: set[str] = set()
    for data in case.payloads:
        try:
            message = decode_message(data)
        except RemoteProtocolError as exc:
            events.add(_signature(exc))
            continue
        events.add(f"accepted:{type(message).__name__}")
        if message is not None:
            check_round_trip(message)
    return events


def _feed(
    receive: Callable[[bytes], Message | None],
    payloads: Iterable[bytes],
    check_latch: bool,
    after: Callable[[Message | None], None] = lambda message: None,
) -> set[str]:
    events: set[str] = set()
    failed: RemoteProtocolError | None = None
    for data in payloads:
        try:
            message = receive(data)
        except RemoteProtocolError as exc:
            events.add(_signature(exc))
            if failed is None:
                failed = exc
                if not check_latch:
                    break
            continue
        if failed is not None:
            what = "a message accepted" if message is not None else "an extension frame ignored"
            raise Finding(
                f"latch ({what})",
                f"{message!r} returned after the state machine failed with {failed!r}",
            )
        events.add(f"accepted:{type(message).__name__}")
        after(message)
    return events


def new_client() -> ClientProtocol:
    client = ClientProtocol(features=FEATURES, agent="fuzz")
    client.send(client.local_hello)
    # BLOCKS and ranged GETs may be sent only once the server's HELLO listed 'ranges': the
    # requests are queued as if it had, and the session replayed from its HELLO on.
    client.peer_hello = Hello((1,), FEATURES, 1 << 20)
    for request in CLIENT_REQUESTS:
        client.send(request)
    client.peer_hello = None
    return client


_REQUEST_TYPES: Final = (
    Get,
    ListDir,
    Put,
    MakeDir,
    Blocks,
    TreeGet,
    TreePut,
    TreeAsk,
    TreePutEnd,
)
# What a server may accept from a client besides: have-lists, and a tree upload's stream.
_CLIENT_STREAM_TYPES: Final = (TreeHave, TreeHaveEnd, TreeDir, TreeFiles)


def run_tree_put_client(case: Case, check_latch: bool) -> set[str]:
    """The client having sent a TREE_PUT and its whole stream (once the server's HELLO is in)."""
    client = ClientProtocol(features=PUT_FEATURES, agent="fuzz")
    client.send(client.local_hello)

    def check(message: Message | None) -> None:
        hello = isinstance(message, Hello) and client.peer_hello is message
        if isinstance(message, (Hello, *_REQUEST_TYPES, TreeDir, TreeFiles)) and not hello:
            raise Finding("tree-put client", f"the client accepted {message!r} from a server")
        if hello and TREE_PUT_FEATURE in client.features:
            for request in TREE_PUT_STREAM:
                client.send(request)

    return _feed(client.receive, case.payloads, check_latch, check)


def run_tree_client(case: Case, check_latch: bool) -> set[str]:
    """The client with TREE requests outstanding (sent once the server's HELLO is in)."""
    client = ClientProtocol(features=FEATURES | {TREE_FEATURE}, agent="fuzz")
    client.send(client.local_hello)

    def check(message: Message | None) -> None:
        hello = isinstance(message, Hello) and client.peer_hello is message
        if isinstance(message, (Hello, *_REQUEST_TYPES, TreeHave, TreeHaveEnd)) and not hello:
            raise Finding("tree client", f"the client accepted {message!r} from a server")
        if hello and TREE_FEATURE in client.features:
            for request in TREE_REQUESTS:
                client.send(request)

    return _feed(client.receive, case.payloads, check_latch, check)


def run_client(case: Case, check_latch: bool) -> set[str]:
    client = new_client()

    def check(message: Message | None) -> None:
        hello = isinstance(message, Hello) and client.peer_hello is message
        if isinstance(message, (Hello, *_REQUEST_TYPES, TreeHave, TreeHaveEnd)) and not hello:
            raise Finding("client", f"the client accepted {message!r} from a server")

    return _feed(client.receive, case.payloads, check_latch, check)


def run_server(case: Case, check_latch: bool) -> set[str]:
    rng = random.Random(case.seed)
    server = ServerProtocol(features=PUT_FEATURES | {TREE_FEATURE}, agent="fuzz")
    ended: set[int] = set()  # tree uploads whose TREE_PUT_END came

    def answer(message: Message | None) -> None:
        if isinstance(message, Hello):
            if server.version is None:
                server.send(Error(None, "unsupported-version", "no"))
            else:
                server.send(server.hello_reply())
            return
        if message is not None and not isinstance(message, _REQUEST_TYPES + _CLIENT_STREAM_TYPES):
            raise Finding("server", f"the server accepted {message!r} from a client")
        if isinstance(message, TreeAsk):  # answered at once, as the real server does, once
            # the requests before its TREE_PUT are (answers come in order)
            while (request := server.current_request) is not None and not isinstance(
                request, TreePut
            ):
                server.send(Error(request.request_id, "not-found", "no"))
            server.send(TreeHaveEnd(message.request_id))
            return
        if isinstance(message, TreePutEnd):
            ended.add(message.request_id)
        while server.current_request is not None and rng.random() < 0.5:
            request = server.current_request
            if isinstance(request, TreePut):
                if request.request_id not in ended:
                    break  # its answer comes after its stream
                ended.discard(request.request_id)
                server.send(TreeEnd(request.request_id, 0, 0, 0))  # must never raise
                continue
            server.send(Error(request.request_id, "not-found", "no"))  # must never raise

    return _feed(server.receive, case.payloads, check_latch, answer)


def run_pipeline(case: Case, check_latch: bool) -> set[str]:
    rng = random.Random(case.seed)
    decoder = FrameDecoder()
    client = new_client()
    events: set[str] = set()
    try:
        for piece in chunks(case.stream or b"", rng):
            decoder.receive_data(piece)
            while (data := decoder.next_frame()) is not None:
                message = client.receive(data)
                events.add(f"accepted:{type(message).__name__}")
        decoder.receive_data(b"")
        if decoder.next_frame() is not None:
            raise Finding("pipeline", "a frame after end of stream")
    except RemoteProtocolError as exc:
        events.add(_signature(exc))
    return events


# ------------------------------------------------------------------ the PROXY protocol header


def proxy_seeds() -> Payloads:
    """Valid PROXY headers (v1 and v2, each kind), to be mutated; a few bytes of ftx follow."""
    client, server = ("203.0.113.7", 40123), ("192.0.2.1", 3890)
    return [
        proxy_header.encode_v1(client, server) + b"\x00\x00",
        proxy_header.encode_v1(("2001:db8::1", 1), ("2001:db8::2", 2)),
        proxy_header.encode_v1(None, server),
        proxy_header.encode_v2(client, server, tlvs=b"\x04\x00\x02ab") + b"\x00",
        proxy_header.encode_v2(("2001:db8::1", 1), ("2001:db8::2", 2)),
        proxy_header.encode_v2(None, server),
    ]


def run_proxy(case: Case, check_latch: bool) -> set[str]:
    """Each payload is the start of a stream: its header length must not depend on where the
    bytes were cut, and what it delimits parses or is refused, within the limits."""
    events: set[str] = set()
    for data in case.payloads:
        try:
            length = proxy_header.header_length(data)
        except RemoteProtocolError as exc:
            events.add(_signature(exc))
            length = -1  # refused: every prefix is refused too, or still undecided
        for cut in range(len(data)):
            try:
                partial = proxy_header.header_length(data[:cut])
            except RemoteProtocolError:
                if length != -1:
                    raise Finding("proxy", "a prefix refused, the whole accepted") from None
                continue
            if partial not in (None, length):
                raise Finding("proxy", f"length {partial} from a prefix, {length} in whole")
        if length is None or length == -1 or length > len(data):
            continue
        if length > proxy_header.V2_MAX_LENGTH:
            raise Finding("proxy", f"a header of {length} bytes accepted")
        try:
            header = proxy_header.parse_proxy_header(data[:length])
        except RemoteProtocolError as exc:
            events.add(_signature(exc))
            continue
        if header.length != length or (header.version == 1 and length > proxy_header.V1_MAX_LENGTH):
            raise Finding("proxy", f"parsed {header} from {length} bytes")
        events.add(f"accepted:v{header.version}:{header.source is not None}")
    return events


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[Case, bool], set[str]]
    seeds: Callable[[], list[Payloads]]
    stream: bool  # the input is the framed stream of the payloads (then damaged)


TARGETS: Final = {
    target.name: target
    for target in (
        Target("framing", run_framing, lambda: [server_session(), client_session()], True),
        Target("messages", run_messages, lambda: [all_seed_payloads()], False),
        Target("client", run_client, lambda: [server_session(), server_session()[:7]], False),
        Target(
            "server",
            run_server,
            lambda: [client_session(), tree_client_session(), tree_put_client_session()],
            False,
        ),
        Target("tree", run_tree_client, lambda: [tree_server_session()], False),
        Target("tree-put", run_tree_put_client, lambda: [tree_put_server_session()], False),
        Target("pipeline", run_pipeline, lambda: [server_session()], True),
        Target("proxy", run_proxy, lambda: [proxy_seeds()], False),
    )
}


# ---------------------------------------------------------------------------------- runner


@dataclass
class Report:
    """What was found about one oracle violation (or escaping exception)."""

    target: str
    key: str
    count: int
    smallest: Case
    detail: str


@dataclass
class TargetStats:
    runs: int = 0
    seconds: float = 0.0
    events: Counter[str] = field(default_factory=Counter)
    corpus: int = 0


@dataclass
class Summary:
    seed: int
    seconds: float
    stats: dict[str, TargetStats]
    findings: dict[tuple[str, str], Report]

    def format(self) -> str:
        lines = [f"ftx fuzz: {self.seconds:.1f} s, seed {self.seed}"]
        lines.append(f"{'target':<10} {'runs':>9} {'runs/s':>8} {'corpus':>7} {'behaviours':>11}")
        for name, stats in self.stats.items():
            rate = stats.runs / stats.seconds if stats.seconds else 0.0
            lines.append(
                f"{name:<10} {stats.runs:>9} {rate:>8.0f} {stats.corpus:>7} {len(stats.events):>11}"
            )
        if not self.findings:
            lines.append("no findings")
        for report in self.findings.values():
            lines.append(
                f"FINDING [{report.target}] {report.key} (seen {report.count} times; smallest "
                f"input {report.smallest.size()} bytes, seed {report.smallest.seed}):\n    "
                + report.detail.replace("\n", "\n    ")
            )
        return "\n".join(lines)


def run_case(target: Target, case: Case, check_latch: bool) -> tuple[set[str], Finding | None]:
    try:
        return target.run(case, check_latch), None
    except Finding as finding:
        return set(), finding
    except Exception as exc:  # anything but RemoteProtocolError escaping is a finding
        where = traceback.extract_tb(exc.__traceback__)[-1]
        detail = "".join(traceback.format_exception(exc, limit=-6)).rstrip()
        key = f"escaped {type(exc).__name__} at {Path(where.filename).name}:{where.lineno}"
        return set(), Finding(key, detail)


def fuzz(
    targets: Sequence[str] = tuple(TARGETS),
    *,
    seconds: float = 60.0,
    iterations: int | None = None,
    seed: int | None = None,
    check_latch: bool = True,
    findings_dir: Path | None = None,
) -> Summary:
    """Fuzz ``targets`` in turn for ``seconds`` (or ``iterations`` runs per target)."""
    seed = random.randrange(1 << 32) if seed is None else seed
    rng = random.Random(seed)
    pool = all_seed_payloads()
    chosen = [TARGETS[name] for name in targets]
    corpora = {target.name: list(target.seeds()) for target in chosen}
    seen: dict[str, set[str]] = {target.name: set() for target in chosen}
    stats = {target.name: TargetStats() for target in chosen}
    findings: dict[tuple[str, str], Report] = {}
    started = time.monotonic()
    deadline = started + seconds
    rounds = 0
    while (iterations is None and time.monotonic() < deadline) or (
        iterations is not None and rounds < iterations
    ):
        rounds += 1
        for target in chosen:
            corpus = corpora[target.name]
            base = rng.choice(corpus)
            payloads = mutate_payloads(base, rng, pool) if rng.random() < 0.95 else base
            case = Case(payloads, rng.getrandbits(32))
            if target.stream:
                stream = b"".join(frame(data) for data in payloads)
                case.stream = mutate_stream(stream, rng) if rng.random() < 0.4 else stream
            begun = time.perf_counter()
            events, finding = run_case(target, case, check_latch)
            stat = stats[target.name]
            stat.seconds += time.perf_counter() - begun
            stat.runs += 1
            stat.events.update(events)
            if events - seen[target.name]:
                seen[target.name] |= events
                corpus.append(payloads)
                if len(corpus) > MAX_CORPUS:
                    del corpus[rng.randrange(1, len(corpus))]
            if finding is not None:
                key = (target.name, finding.oracle)
                report = findings.get(key)
                if report is None:
                    findings[key] = Report(target.name, key[1], 1, case, finding.detail)
                else:
                    report.count += 1
                    if case.size() < report.smallest.size():
                        report.smallest, report.detail = case, finding.detail
    for name, stat in stats.items():
        stat.corpus = len(corpora[name])
    summary = Summary(seed, time.monotonic() - started, stats, findings)
    if findings_dir is not None and findings:
        save(summary, findings_dir)
    return summary


def save(summary: Summary, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for report in summary.findings.values():
        name = re.sub(r"[^a-z0-9]+", "-", f"{report.target} {report.key}".lower()).strip("-")
        path = directory / f"{name[:80]}.json"
        record = {
            "target": report.target,
            "finding": report.key,
            "detail": report.detail,
            "count": report.count,
            "fuzz_seed": summary.seed,
            "case": report.smallest.to_json(),
        }
        path.write_text(json.dumps(record, indent=1) + "\n")
        paths.append(path)
    return paths


def replay(path: Path, check_latch: bool = True) -> int:
    record = json.loads(path.read_text())
    target = TARGETS[record["target"]]
    case = Case.from_json(record["case"])
    for index, data in enumerate(case.payloads):
        print(f"payload {index}: {data[:200]!r}")
    events, finding = run_case(target, case, check_latch)
    if finding is None:
        print(f"no finding any more; behaviours: {sorted(events)}")
        return 0
    print(f"FINDING [{target.name}] {finding.oracle}\n{finding.detail}")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run (60)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument(
        "--target",
        action="append",
        choices=sorted(TARGETS),
        help="a target to fuzz; repeat for several (default: all)",
    )
    parser.add_argument(
        "--no-latch",
        action="store_true",
        help="leave out the 'a failed state machine stays failed' oracle",
    )
    parser.add_argument(
        "--findings",
        type=Path,
        default=Path(__file__).resolve().parent / "findings",
        help="where to save the findings (default: fuzz/findings)",
    )
    parser.add_argument("--replay", type=Path, help="run one saved finding again")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay, check_latch=not args.no_latch)
    summary = fuzz(
        args.target or tuple(TARGETS),
        seconds=args.seconds,
        seed=args.seed,
        check_latch=not args.no_latch,
        findings_dir=args.findings,
    )
    print(summary.format())
    if summary.findings:
        print(f"findings saved in {args.findings}; replay one with --replay FILE")
    return 1 if summary.findings else 0


if __name__ == "__main__":
    sys.exit(main())
