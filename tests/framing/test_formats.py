"""FrameFormat: every format round-trips through encode_frame and FrameDecoder in any split, the
decoder refuses an oversized length as soon as the header is in, for every format, and the
channel speaks any format (PostgreSQL's messages among them, as docs/embedding.md shows).

The expected payloads are computed here from the format's definition (prefix, length field,
body; the first ``strip`` bytes dropped), not with the code under test.
"""

from __future__ import annotations

import itertools

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import memory_stream_pair

from ftx.errors import FrameTooLargeError, LocalProtocolError, RemoteProtocolError
from ftx.framing import FTX_FORMAT, FramedChannel, FrameDecoder, FrameFormat, encode_frame

PROPERTY = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def formats(draw: st.DrawFn) -> FrameFormat:
    size = draw(st.sampled_from([1, 2, 3, 4, 8]))
    offset = draw(st.integers(0, 3))
    strip = draw(st.none() | st.integers(0, offset + size))
    return FrameFormat(
        length_size=size,
        length_offset=offset,
        byteorder=draw(st.sampled_from(["big", "little"])),
        length_adjustment=draw(st.integers(-12, 12)),
        strip=strip,
    )


def wire_frame(fmt: FrameFormat, prefix: bytes, body: bytes) -> bytes:
    """One frame, written from the format's definition."""
    length = len(body) - fmt.length_adjustment
    return prefix + length.to_bytes(fmt.length_size, fmt.byteorder) + body


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p for p in points if 0 < p < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@PROPERTY
@given(fmt=formats(), data=st.data())
def test_every_format_round_trips_in_any_split(fmt: FrameFormat, data: st.DataObject) -> None:
    shortest = max(0, fmt.length_adjustment)  # a body shorter would need a negative length
    longest = min(60, fmt.max_length + fmt.length_adjustment)
    frames = data.draw(
        st.lists(
            st.tuples(
                st.binary(min_size=fmt.length_offset, max_size=fmt.length_offset),
                st.binary(min_size=shortest, max_size=max(shortest, longest)),
            ),
            max_size=6,
        ),
        label="frames",
    )
    limit = min(1 << 20, fmt.payload_limit())
    wire = b""
    expected = []
    for prefix, body in frames:
        frame = wire_frame(fmt, prefix, body)
        assert encode_frame(prefix + body, max_frame_size=limit, frame_format=fmt) == frame
        wire += frame
        expected.append(frame[fmt.strip_size :])
    points = data.draw(st.lists(st.integers(0, len(wire)), max_size=10), label="cuts")
    decoder = FrameDecoder(max_frame_size=limit, frame_format=fmt)
    got = []
    for chunk in cut(wire, points):
        decoder.receive_data(chunk)
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    decoder.receive_data(b"")
    assert decoder.next_frame() is None
    assert decoder.eof
    assert got == expected


@PROPERTY
@given(fmt=formats(), limit=st.integers(0, 300), filler=st.integers(0, 255))
def test_every_format_refuses_an_oversized_length_at_the_header(
    fmt: FrameFormat, limit: int, filler: int
) -> None:
    """A header announcing limit + 1 payload bytes is refused the moment its last byte
    arrives: nothing of the body is needed, and nothing before that byte raises."""
    limit = min(limit, fmt.payload_limit() - 1)
    if limit < 0:
        return  # a format whose field cannot announce more than any limit
    body = limit + 1 - (fmt.header_size - fmt.strip_size)
    length = body - fmt.length_adjustment
    if body < 0 or not 0 <= length <= fmt.max_length:
        return  # limit + 1 is not a size this format can announce
    header = bytes([filler]) * fmt.length_offset + length.to_bytes(fmt.length_size, fmt.byteorder)
    decoder = FrameDecoder(max_frame_size=limit, frame_format=fmt)
    for byte in header[:-1]:
        decoder.receive_data(bytes([byte]))
        assert decoder.next_frame() is None
    decoder.receive_data(header[-1:])
    with pytest.raises(FrameTooLargeError) as excinfo:
        decoder.next_frame()
    assert (excinfo.value.size, excinfo.value.limit) == (limit + 1, limit)
    with pytest.raises(FrameTooLargeError):
        decoder.next_frame()  # and for good


@PROPERTY
@given(fmt=formats(), garbage=st.binary(max_size=200), limit=st.integers(0, 100))
def test_garbage_in_any_format_raises_only_remote_protocol_errors(
    fmt: FrameFormat, garbage: bytes, limit: int
) -> None:
    decoder = FrameDecoder(max_frame_size=min(limit, max(0, fmt.payload_limit())), frame_format=fmt)
    try:
        if garbage:
            decoder.receive_data(garbage)
        while decoder.next_frame() is not None:
            pass
        decoder.receive_data(b"")
        while decoder.next_frame() is not None:
            pass
    except RemoteProtocolError:
        pass


def test_a_length_too_small_for_the_format_is_a_remote_protocol_error() -> None:
    counts_itself = FrameFormat(length_size=4, length_adjustment=-4)
    decoder = FrameDecoder(frame_format=counts_itself)
    decoder.receive_data(b"\x00\x00\x00\x03")  # 3 cannot count its own 4 bytes
    with pytest.raises(RemoteProtocolError, match="leaves -1 bytes") as excinfo:
        decoder.next_frame()
    assert type(excinfo.value) is RemoteProtocolError
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_ftx_format_is_the_default_and_four_bytes_big_endian() -> None:
    assert FrameFormat() == FTX_FORMAT
    assert FTX_FORMAT.header_size == 4
    assert FTX_FORMAT.strip_size == 4
    assert encode_frame(b"hi") == b"\x00\x00\x00\x02hi"
    assert FrameDecoder().frame_format is FTX_FORMAT


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"length_size": 5}, "length_size"),
        ({"length_offset": -1}, "length_offset"),
        ({"byteorder": "middle"}, "byteorder"),
        ({"strip": 5}, "strip"),
        ({"strip": -1}, "strip"),
        ({"length_adjustment": 1 << 40}, "length_adjustment"),
    ],
)
def test_bad_knobs_are_value_errors(knobs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FrameFormat(**knobs)  # type: ignore[arg-type]


def test_formats_are_immutable_values() -> None:
    fmt = FrameFormat(length_size=2, byteorder="little")
    with pytest.raises(AttributeError):
        fmt.strip = 0  # type: ignore[misc]
    assert fmt == FrameFormat(2, 0, "little")
    assert len({fmt, FrameFormat(2, 0, "little"), FTX_FORMAT}) == 2
    assert "length_size=2" in repr(fmt)


def test_the_limit_must_fit_the_length_field() -> None:
    one_byte = FrameFormat(length_size=1)
    FrameDecoder(max_frame_size=255, frame_format=one_byte)
    with pytest.raises(ValueError, match="max_frame_size"):
        FrameDecoder(max_frame_size=256, frame_format=one_byte)
    with pytest.raises(ValueError, match="max_frame_size"):
        FramedChannel(memory_stream_pair()[0], frame_format=one_byte)  # 1 MiB by default


def test_encoding_refuses_what_the_format_cannot_carry() -> None:
    typed = FrameFormat(length_size=2, length_offset=1)
    with pytest.raises(LocalProtocolError, match="prefix"):
        encode_frame(b"", frame_format=typed)
    one_byte = FrameFormat(length_size=1)
    with pytest.raises(LocalProtocolError):
        one_byte.encode(bytes(256))
    with pytest.raises(LocalProtocolError, match="larger than the limit"):
        encode_frame(bytes(11), max_frame_size=10, frame_format=one_byte)


# PostgreSQL's backend messages (protocol 3.0): a type byte, then an Int32 length that counts
# itself and the body but not the type byte. What a server sends after a trusted startup:
# AuthenticationOk, one ParameterStatus, BackendKeyData, ReadyForQuery (idle).
POSTGRES = FrameFormat(length_size=4, length_offset=1, length_adjustment=-4, strip=0)
POSTGRES_STARTUP_REPLY = (
    b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    b"S\x00\x00\x00\x18server_version\x0016.2\x00"
    b"K\x00\x00\x00\x0c\x00\x00\x04\xd2\x12\x34\x56\x78"
    b"Z\x00\x00\x00\x05I"
)


async def test_a_channel_decodes_postgres_backend_messages() -> None:
    ours, server = memory_stream_pair()
    channel = FramedChannel(ours, frame_format=POSTGRES, max_frame_size=1 << 16)
    await server.send_all(POSTGRES_STARTUP_REPLY)
    with trio.fail_after(5):
        messages = [await channel.receive() for _ in range(4)]
    assert [m[:1] for m in messages] == [b"R", b"S", b"K", b"Z"]
    assert messages[1][5:] == b"server_version\x0016.2\x00"
    assert messages[3] == b"Z\x00\x00\x00\x05I"
    # And the other way: the type byte and the body; the length is computed.
    await channel.send(b"Q" + b"SELECT 1\x00")
    assert await server.receive_some() == b"Q\x00\x00\x00\x0dSELECT 1\x00"


@pytest.mark.parametrize(
    "fmt",
    [
        FrameFormat(length_size=2, byteorder="little"),
        FrameFormat(length_size=3, length_adjustment=-3),
        FrameFormat(length_size=8, strip=0),
        FrameFormat(length_size=1, length_offset=2, strip=1),
    ],
)
@pytest.mark.parametrize("transport", ["memory", "socket"])
async def test_channels_speak_other_formats(fmt: FrameFormat, transport: str) -> None:
    if transport == "memory":
        a, b = memory_stream_pair()
    else:
        left, right = trio.socket.socketpair()
        a, b = trio.SocketStream(left), trio.SocketStream(right)
    limit = min(1000, fmt.payload_limit())
    sender = FramedChannel(a, frame_format=fmt, max_frame_size=limit)
    receiver = FramedChannel(b, frame_format=fmt, max_frame_size=limit)
    values = [bytes(fmt.length_offset) + body for body in [b"", b"x", bytes(range(200))]]
    async with sender, receiver:
        await sender.send(values[0])
        await sender.send_parts(values[1][:1], values[1][1:])
        sender.send_nowait(values[2])
        await sender.flush()
        for value in values:
            frame = fmt.encode(value)
            assert await receiver.receive() == frame[fmt.strip_size :]
