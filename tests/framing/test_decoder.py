"""Tests of the sans-IO frame decoder and the frame encoders (ftx.framing).

The property tests compare :class:`FrameDecoder` with a reference decoder written from the wire
format alone (``reference_decode``), for valid streams, truncated streams and garbage, cut at
random points: what comes out must not depend on how the transport split the bytes. The
decoder's contract: whatever the peer sends, ``next_frame`` returns a payload or ``None``, or
raises :class:`RemoteProtocolError` (:class:`FrameTooLargeError` or
:class:`IncompleteFrameError`); never anything else.
"""

from __future__ import annotations

import tracemalloc
from array import array
from collections.abc import Callable, Iterable
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftx.errors import (
    FrameTooLargeError,
    IncompleteFrameError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from ftx.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_SIZE_LIMIT,
    HEADER_SIZE,
    Buffer,
    FrameDecoder,
    encode_frame,
    encode_header,
)

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

payloads = st.binary(max_size=40) | st.just(b"")  # empty frames come up often
frame_lists = st.lists(payloads, max_size=8)
# How a chunk is handed to receive_data: the transport may give any of these.
wrappers: st.SearchStrategy[Callable[[bytes], Buffer]] = st.sampled_from(
    [bytes, bytearray, memoryview]
)

Outcome = tuple[list[bytes], tuple[type[RemoteProtocolError], int, int] | None]


# ---------------------------------------------------------------------------------------------
# Helpers


def wire_of(frames: Iterable[bytes]) -> bytes:
    return b"".join(encode_frame(frame, max_frame_size=FRAME_SIZE_LIMIT) for frame in frames)


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    """``data`` cut at ``points`` into non-empty chunks (none at all for empty ``data``)."""
    bounds = [0, *sorted({p for p in points if 0 < p < len(data)}), len(data)]
    return [data[a:b] for a, b in pairwise(bounds) if b > a]


def chunkings(data: bytes, draw: st.DataObject) -> dict[str, list[bytes]]:
    """Random cuts, one byte at a time, and all at once."""
    points = draw.draw(st.lists(st.integers(0, len(data)), max_size=12), label="cut points")
    return {
        "random": cut(data, points),
        "bytewise": cut(data, range(len(data))),
        "whole": cut(data, []),
    }


def reference_decode(wire: bytes, max_frame_size: int) -> Outcome:
    """What a correct decoder makes of ``wire`` followed by end of stream.

    Returns the payloads, then ``None`` or the error as ``(type, a, b)``: ``(size, limit)`` for
    FrameTooLargeError, ``(received, expected)`` for IncompleteFrameError.
    """
    frames: list[bytes] = []
    pos = 0
    while pos < len(wire):
        header = wire[pos : pos + 4]
        if len(header) < 4:
            return frames, (IncompleteFrameError, len(header), 4)
        size = int.from_bytes(header, "big")
        if size > max_frame_size:
            return frames, (FrameTooLargeError, size, max_frame_size)
        body = wire[pos + 4 : pos + 4 + size]
        if len(body) < size:
            return frames, (IncompleteFrameError, 4 + len(body), 4 + size)
        frames.append(body)
        pos += 4 + size
    return frames, None


def describe(exc: RemoteProtocolError) -> tuple[type[RemoteProtocolError], int, int]:
    if isinstance(exc, FrameTooLargeError):
        return FrameTooLargeError, exc.size, exc.limit
    if isinstance(exc, IncompleteFrameError):
        return IncompleteFrameError, exc.received, exc.expected
    raise AssertionError(f"a RemoteProtocolError of an undocumented kind: {exc!r}")


def drain(decoder: FrameDecoder, into: list[bytes]) -> None:
    while (frame := decoder.next_frame()) is not None:
        assert type(frame) is bytes
        into.append(frame)


def run_decoder(
    decoder: FrameDecoder, chunks: Iterable[Buffer]
) -> tuple[list[bytes], RemoteProtocolError | None]:
    """Feed each chunk then end of stream, taking frames as they come, until an error."""
    frames: list[bytes] = []
    try:
        for chunk in chunks:
            decoder.receive_data(chunk)
            drain(decoder, frames)
        decoder.receive_data(b"")
        drain(decoder, frames)
    except RemoteProtocolError as exc:  # anything else fails the test
        return frames, exc
    return frames, None


def assert_counters(decoder: FrameDecoder, fed: int, start: int, end: int, how: str) -> None:
    """``fed`` bytes were received; the frame in progress spans ``start:end`` on the wire."""
    assert decoder.buffered_bytes == fed - start, how
    if fed - start < HEADER_SIZE:  # the header is not complete: it is what is needed
        assert decoder.bytes_needed == HEADER_SIZE - (fed - start), how
    else:  # the rest of the payload, or 0 if the frame is complete but not taken yet
        assert decoder.bytes_needed == max(0, end - fed), how
    assert not decoder.eof, how


def assert_dead(decoder: FrameDecoder, error: RemoteProtocolError) -> None:
    """The decoder raises the very same error on every later call."""
    for _ in range(3):
        with pytest.raises(RemoteProtocolError) as again:
            decoder.next_frame()
        assert again.value is error


# ---------------------------------------------------------------------------------------------
# (a) Valid streams, any split: the same frames, and eof / bytes_needed / buffered_bytes


@PROPERTY
@given(frames=frame_lists, slack=st.integers(0, 3), wrap=wrappers, draw=st.data())
def test_round_trip_in_any_split(
    frames: list[bytes], slack: int, wrap: Callable[[bytes], Buffer], draw: st.DataObject
) -> None:
    # The limit is exactly the largest payload (a frame of max_frame_size bytes is legal) or a
    # little more.
    max_frame_size = max(map(len, frames), default=0) + slack
    wire = wire_of(frames)
    starts, ends, offset = [], [], 0
    for frame in frames:
        starts.append(offset)
        offset += HEADER_SIZE + len(frame)
        ends.append(offset)
    starts.append(len(wire))  # once all are taken, the next frame would start here
    ends.append(len(wire) + HEADER_SIZE)  # and be at least a header

    for how, chunks in chunkings(wire, draw).items():
        decoder = FrameDecoder(max_frame_size=max_frame_size)
        assert decoder.max_frame_size == max_frame_size
        got: list[bytes] = []
        fed = 0
        for chunk in chunks:
            decoder.receive_data(wrap(chunk))
            fed += len(chunk)
            # Before taking frames (the header may have been read by an earlier call), and after.
            # The frame in progress is the one after those taken.
            assert_counters(decoder, fed, starts[len(got)], ends[len(got)], how)
            drain(decoder, got)
            assert_counters(decoder, fed, starts[len(got)], ends[len(got)], how)
            # Every frame whose last byte has arrived is out, and none other.
            assert got == frames[: sum(1 for end in ends if end <= fed)], how
        assert got == frames, how
        # Nothing buffered, a header needed, and no end of stream yet.
        counters = (decoder.buffered_bytes, decoder.bytes_needed, decoder.eof)
        assert counters == (0, HEADER_SIZE, False), how
        decoder.receive_data(b"")
        assert decoder.eof, how  # clean end on a frame boundary
        for _ in range(2):
            assert decoder.next_frame() is None
        assert decoder.eof


@PROPERTY
@given(frames=frame_lists)
def test_eof_only_once_every_frame_is_taken(frames: list[bytes]) -> None:
    wire = wire_of(frames)
    decoder = FrameDecoder()
    if wire:  # b"" would be the end of stream
        decoder.receive_data(wire)
    decoder.receive_data(b"")
    assert decoder.buffered_bytes == len(wire)
    remaining = len(wire)
    for frame in frames:
        assert not decoder.eof  # a complete frame is still waiting
        assert decoder.bytes_needed == 0  # "0 if one is complete"
        assert decoder.next_frame() == frame
        remaining -= HEADER_SIZE + len(frame)
        assert decoder.buffered_bytes == remaining
    assert decoder.eof
    assert decoder.next_frame() is None


def test_empty_frames_are_frames() -> None:
    decoder = FrameDecoder(max_frame_size=0)
    decoder.receive_data(encode_header(0) * 3)
    assert [decoder.next_frame() for _ in range(4)] == [b"", b"", b"", None]
    assert decoder.buffered_bytes == 0


def test_returned_frames_are_bytes_and_do_not_alias_the_input() -> None:
    decoder = FrameDecoder()
    chunk = bytearray(encode_frame(b"abc") + encode_frame(b"de"))
    decoder.receive_data(chunk)
    chunk[4:7] = b"XYZ"  # the caller reuses its buffer
    first = decoder.next_frame()
    assert type(first) is bytes
    assert first == b"abc"
    assert decoder.next_frame() == b"de"


def test_header_is_big_endian() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"\x00\x00\x01\x02")
    assert decoder.next_frame() is None
    assert decoder.bytes_needed == 0x0102
    assert decoder.buffered_bytes == 4
    decoder.receive_data(bytes(0x0102))
    assert decoder.next_frame() == bytes(0x0102)


def test_nothing_at_all_then_eof_is_a_clean_end() -> None:
    decoder = FrameDecoder()
    assert (decoder.eof, decoder.next_frame(), decoder.bytes_needed) == (False, None, HEADER_SIZE)
    decoder.receive_data(b"")
    assert decoder.eof
    assert decoder.next_frame() is None


# ---------------------------------------------------------------------------------------------
# (b) Garbage: only RemoteProtocolError, and the same outcome whatever the split

# Mostly-random bytes with plausible small headers mixed in, so that garbage also gets past the
# first header now and then.
garbage_pieces = st.binary(max_size=12) | st.integers(0, 24).map(encode_header)
garbage = st.lists(garbage_pieces, max_size=10).map(b"".join)


@PROPERTY
@given(wire=garbage, max_frame_size=st.integers(0, 16), draw=st.data())
def test_garbage_only_raises_remote_protocol_errors(
    wire: bytes, max_frame_size: int, draw: st.DataObject
) -> None:
    expected_frames, expected_error = reference_decode(wire, max_frame_size)
    for how, chunks in chunkings(wire, draw).items():
        decoder = FrameDecoder(max_frame_size=max_frame_size)
        frames, error = run_decoder(decoder, chunks)
        assert frames == expected_frames, how
        assert all(len(frame) <= max_frame_size for frame in frames)
        if error is None:
            assert expected_error is None, how
            assert decoder.eof
        else:
            assert isinstance(error, FrameTooLargeError | IncompleteFrameError)
            assert describe(error) == expected_error, how
            assert error.error_code == "bad-request"
            assert_dead(decoder, error)


# ---------------------------------------------------------------------------------------------
# (c) A header over the limit is refused at its 4th byte


@PROPERTY
@given(max_frame_size=st.integers(0, 64), draw=st.data())
def test_oversized_header_is_refused_at_its_fourth_byte(
    max_frame_size: int, draw: st.DataObject
) -> None:
    before = draw.draw(st.lists(st.binary(max_size=max_frame_size), max_size=3), label="before")
    size = draw.draw(st.integers(max_frame_size + 1, FRAME_SIZE_LIMIT), label="size")
    tail = draw.draw(st.binary(max_size=8), label="bytes after the header")
    header = encode_header(size)
    decoder = FrameDecoder(max_frame_size=max_frame_size)
    got: list[bytes] = []
    for chunk in cut(wire_of(before), []):  # no chunk at all if empty: b"" would be the end
        decoder.receive_data(chunk)
    drain(decoder, got)
    assert got == before
    for i in range(3):
        decoder.receive_data(header[i : i + 1])
        assert decoder.next_frame() is None  # three bytes say nothing yet
        assert decoder.bytes_needed == 3 - i
    decoder.receive_data(header[3:] + tail)  # the 4th header byte, perhaps with some body
    with pytest.raises(FrameTooLargeError) as excinfo:
        decoder.next_frame()
    assert (excinfo.value.size, excinfo.value.limit) == (size, max_frame_size)
    assert isinstance(excinfo.value, RemoteProtocolError)
    assert_dead(decoder, excinfo.value)
    decoder.receive_data(b"")  # neither more bytes nor the end of stream revive it
    assert_dead(decoder, excinfo.value)


def test_default_limit_is_one_mebibyte_checked_without_the_body() -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 1 << 20
    decoder = FrameDecoder()
    assert decoder.max_frame_size == DEFAULT_MAX_FRAME_SIZE
    decoder.receive_data(encode_header(DEFAULT_MAX_FRAME_SIZE))
    assert decoder.next_frame() is None  # at the limit: accepted, waiting for the body
    assert decoder.bytes_needed == DEFAULT_MAX_FRAME_SIZE
    over = FrameDecoder()
    for byte in encode_header(DEFAULT_MAX_FRAME_SIZE + 1)[:3]:
        over.receive_data(bytes([byte]))
        assert over.next_frame() is None
    over.receive_data(b"\x01")
    with pytest.raises(FrameTooLargeError, match=str(DEFAULT_MAX_FRAME_SIZE + 1)):
        over.next_frame()


def test_largest_limit_accepts_the_largest_header() -> None:
    decoder = FrameDecoder(max_frame_size=FRAME_SIZE_LIMIT)
    decoder.receive_data(b"\xff\xff\xff\xff")
    assert decoder.next_frame() is None
    assert decoder.bytes_needed == FRAME_SIZE_LIMIT
    assert decoder.buffered_bytes == HEADER_SIZE


def test_http_request_is_too_large_not_anything_else() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(FrameTooLargeError) as excinfo:
        decoder.next_frame()
    assert excinfo.value.size == int.from_bytes(b"GET ", "big")


@pytest.mark.parametrize("bad", [-1, FRAME_SIZE_LIMIT + 1])
def test_decoder_limit_is_validated(bad: int) -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        FrameDecoder(max_frame_size=bad)


def test_memory_stays_near_the_frame_size_when_bytes_trickle_in() -> None:
    # The limit is there so that "a peer cannot make us allocate more than that per connection"
    # (module docstring). A peer that sends a frame in one-byte pieces (TCP segments of one byte,
    # each read on its own) must not cost much more than the frame itself.
    size = 64 * 1024
    decoder = FrameDecoder(max_frame_size=size)
    decoder.receive_data(encode_header(size))
    assert decoder.next_frame() is None
    tracemalloc.start()
    try:
        for i in range(size - 1):
            decoder.receive_data(bytes([i % 256]))  # one byte per read
        assert decoder.next_frame() is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.buffered_bytes == HEADER_SIZE + size - 1
    assert peak < 4 * size, f"{peak} bytes of memory to buffer {size - 1} bytes of a frame"
    decoder.receive_data(b"!")
    frame = decoder.next_frame()
    assert frame is not None
    assert len(frame) == size
    assert frame[-2:] == b"\xfe!"


# ---------------------------------------------------------------------------------------------
# (d) End of stream inside a frame


@PROPERTY
@given(frames=st.lists(payloads, min_size=1, max_size=6), wrap=wrappers, draw=st.data())
def test_eof_inside_a_frame_is_incomplete(
    frames: list[bytes], wrap: Callable[[bytes], Buffer], draw: st.DataObject
) -> None:
    index = draw.draw(st.integers(0, len(frames) - 1), label="frame cut")
    frame_size = HEADER_SIZE + len(frames[index])
    inside = draw.draw(st.integers(1, frame_size - 1), label="bytes of it that arrive")
    wire = wire_of(frames[:index]) + wire_of(frames[index:])[:inside]
    for how, chunks in chunkings(wire, draw).items():
        decoder = FrameDecoder()
        got: list[bytes] = []
        for chunk in chunks:
            decoder.receive_data(wrap(chunk))
            drain(decoder, got)  # before the end of stream, an incomplete frame is no error
        assert got == frames[:index], how
        assert decoder.buffered_bytes == inside
        decoder.receive_data(b"")
        with pytest.raises(IncompleteFrameError) as excinfo:
            decoder.next_frame()
        expected = HEADER_SIZE if inside < HEADER_SIZE else frame_size
        assert (excinfo.value.received, excinfo.value.expected) == (inside, expected), how
        assert f"{inside} of {expected} bytes" in str(excinfo.value)
        assert_dead(decoder, excinfo.value)


@pytest.mark.parametrize(
    ("wire", "received", "expected"),
    [
        (b"\0", 1, 4),
        (b"\0\0\0", 3, 4),
        (encode_header(0)[:2], 2, 4),
        (encode_header(5), 4, 9),
        (encode_header(5) + b"abcd", 8, 9),
        (encode_frame(b"ok") + encode_header(1), 4, 5),
    ],
)
def test_eof_inside_a_frame_examples(wire: bytes, received: int, expected: int) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(wire)
    decoder.receive_data(b"")
    if wire.startswith(encode_frame(b"ok")):
        assert decoder.next_frame() == b"ok"  # whole frames before the cut still come out
    with pytest.raises(IncompleteFrameError) as excinfo:
        decoder.next_frame()
    assert (excinfo.value.received, excinfo.value.expected) == (received, expected)


@pytest.mark.parametrize(
    ("max_frame_size", "wire", "error"),
    [
        (DEFAULT_MAX_FRAME_SIZE, b"\0\0", IncompleteFrameError),  # inside a header
        (DEFAULT_MAX_FRAME_SIZE, encode_header(10) + b"abc", IncompleteFrameError),  # a body
        (DEFAULT_MAX_FRAME_SIZE, encode_header(10), IncompleteFrameError),  # right after a header
        (100, encode_header(101), FrameTooLargeError),  # a refused frame, then the end
    ],
    ids=["inside-header", "inside-body", "after-header", "too-large"],
)
def test_eof_is_false_after_an_unclean_end(
    max_frame_size: int, wire: bytes, error: type[RemoteProtocolError]
) -> None:
    # `eof` is documented as "True once the peer closed cleanly and every complete frame has been
    # taken": a stream that ended inside a frame did not close cleanly, whatever the decoder
    # did with its buffer when it raised.
    decoder = FrameDecoder(max_frame_size=max_frame_size)
    decoder.receive_data(wire)
    decoder.receive_data(b"")
    assert not decoder.eof
    with pytest.raises(error):
        decoder.next_frame()
    assert not decoder.eof


# ---------------------------------------------------------------------------------------------
# (e) Errors are sticky; data after the end of stream is a RuntimeError


def test_too_large_error_is_sticky_even_if_valid_frames_follow() -> None:
    decoder = FrameDecoder(max_frame_size=4)
    decoder.receive_data(encode_header(5))
    with pytest.raises(FrameTooLargeError) as excinfo:
        decoder.next_frame()
    decoder.receive_data(encode_frame(b"fine"))
    assert_dead(decoder, excinfo.value)


def test_incomplete_error_is_sticky() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_header(3) + b"a")
    decoder.receive_data(b"")
    with pytest.raises(IncompleteFrameError) as excinfo:
        decoder.next_frame()
    assert_dead(decoder, excinfo.value)


def test_data_after_eof_is_a_runtime_error_and_changes_nothing() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(b"last"))
    decoder.receive_data(b"")
    with pytest.raises(RuntimeError, match="after end of stream"):
        decoder.receive_data(b"more")
    with pytest.raises(RuntimeError, match="after end of stream"):
        decoder.receive_data(encode_frame(b"more"))
    assert not issubclass(RuntimeError, ProtocolError)  # a caller's bug, not the peer's
    assert decoder.buffered_bytes == HEADER_SIZE + 4
    assert decoder.next_frame() == b"last"
    assert decoder.eof
    assert decoder.next_frame() is None


def test_a_second_end_of_stream_is_refused_too() -> None:
    # What the code does: receive_data(b"") after the end of stream raises like data does.
    decoder = FrameDecoder()
    decoder.receive_data(b"")
    with pytest.raises(RuntimeError):
        decoder.receive_data(b"")
    with pytest.raises(RuntimeError):
        decoder.receive_data(memoryview(b""))
    assert decoder.eof


def test_data_after_eof_is_refused_after_an_error_too() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"\0")
    decoder.receive_data(b"")
    with pytest.raises(IncompleteFrameError) as excinfo:
        decoder.next_frame()
    with pytest.raises(RuntimeError):
        decoder.receive_data(b"\0\0\0")
    assert_dead(decoder, excinfo.value)


# ---------------------------------------------------------------------------------------------
# (f) The encoders


@PROPERTY
@given(payload=st.binary(max_size=100), wrap=wrappers)
def test_encode_frame_is_header_then_payload(
    payload: bytes, wrap: Callable[[bytes], Buffer]
) -> None:
    encoded = encode_frame(wrap(payload))
    assert type(encoded) is bytes
    assert encoded == len(payload).to_bytes(4, "big") + payload
    assert encoded[:4] == encode_header(len(payload))
    decoder = FrameDecoder()
    decoder.receive_data(encoded)
    assert decoder.next_frame() == payload


@PROPERTY
@given(length=st.integers(0, FRAME_SIZE_LIMIT))
def test_encode_header_is_four_bytes_big_endian(length: int) -> None:
    header = encode_header(length)
    assert len(header) == HEADER_SIZE
    assert int.from_bytes(header, "big") == length


def test_encode_header_edges() -> None:
    assert encode_header(0) == b"\0\0\0\0"
    assert encode_header(1) == b"\0\0\0\x01"
    assert encode_header(FRAME_SIZE_LIMIT) == b"\xff\xff\xff\xff"
    assert FRAME_SIZE_LIMIT == (1 << 32) - 1


@pytest.mark.parametrize("length", [-1, -(1 << 40), FRAME_SIZE_LIMIT + 1, 1 << 64])
def test_encode_header_refuses_what_32_bits_cannot_say(length: int) -> None:
    with pytest.raises(LocalProtocolError, match=str(length)):
        encode_header(length)


@pytest.mark.parametrize(
    ("payload", "max_frame_size"),
    [
        (b"x" * (DEFAULT_MAX_FRAME_SIZE + 1), DEFAULT_MAX_FRAME_SIZE),
        (b"12345678901", 10),
        (b"x", 0),
        (bytearray(3), 2),
        (memoryview(array("H", [1, 2])), 3),  # 4 bytes, though only 2 items
    ],
)
def test_encode_frame_refuses_payloads_over_the_limit(payload: Buffer, max_frame_size: int) -> None:
    size = memoryview(payload).nbytes
    with pytest.raises(LocalProtocolError, match=f"{size} bytes") as excinfo:
        encode_frame(payload, max_frame_size=max_frame_size)
    assert not isinstance(excinfo.value, RemoteProtocolError)  # our mistake, not the peer's


def test_encode_frame_at_the_limit_and_of_odd_buffers() -> None:
    assert encode_frame(b"x" * 10, max_frame_size=10) == encode_header(10) + b"x" * 10
    assert encode_frame(b"", max_frame_size=0) == encode_header(0)
    wide = memoryview(array("H", [1, 2]))
    assert encode_frame(wide) == encode_header(4) + wide.tobytes()  # sized in bytes, not items
    assert encode_frame(memoryview(b"abcdef")[::2]) == encode_header(3) + b"ace"
    big = bytes(DEFAULT_MAX_FRAME_SIZE)
    assert encode_frame(big) == encode_header(DEFAULT_MAX_FRAME_SIZE) + big
