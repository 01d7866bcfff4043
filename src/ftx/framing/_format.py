"""The frame header: :class:`FrameFormat`, its knobs, and ftx's own format.

Sans-IO and stateless: a format turns a payload size into header bytes and header bytes into a
frame size. :class:`~ftx.framing.FrameDecoder` and :class:`~ftx.framing.FramedChannel` take one.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, Literal

from ftx.errors import FrameTooLargeError, LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_SIZE_LIMIT",
    "FTX_FORMAT",
    "HEADER_SIZE",
    "Buffer",
    "FrameFormat",
    "check_max_frame_size",
]

Buffer = bytes | bytearray | memoryview

HEADER_SIZE: Final = 4  # of ftx's own format
DEFAULT_MAX_FRAME_SIZE: Final = 1 << 20
FRAME_SIZE_LIMIT: Final = (1 << 32) - 1  # what ftx's 4-byte length field can announce
# The largest max_frame_size any format accepts: a frame must fit in memory, and a Python
# bytes object in one index. 2**62 keeps every sum below in a machine word.
_MAX_ANY_FRAME: Final = 1 << 62

LengthSize = Literal[1, 2, 3, 4, 8]
_STRUCT_CODES: Final = {1: "B", 2: "H", 4: "I", 8: "Q"}


class FrameFormat:
    """Where a frame's length is and what it counts: the knobs of Netty's
    ``LengthFieldBasedFrameDecoder`` and tokio-util's ``LengthDelimitedCodec``.

    A frame on the wire is a header then a body::

        header = prefix (length_offset bytes, opaque) + length field (length_size bytes)
        body   = (length field value + length_adjustment) bytes

    The receiver hands out the frame minus its first ``strip`` bytes (by default the whole
    header: just the body); that is the *payload*, and ``max_frame_size`` limits its size. The
    sender is given the frame minus its length field: the first ``length_offset`` bytes of what
    is sent become the prefix, the rest the body, and the length field is computed and inserted.
    So with no prefix and the whole header stripped (ftx's own format), what is received is
    exactly what was sent.

    Attributes:
        length_size: the length field's width in bytes: 1, 2, 3, 4 or 8.
        length_offset: bytes of the header before the length field (a type byte, say).
        byteorder: ``"big"`` (network order) or ``"little"``.
        length_adjustment: added to the length field's value to get the body size: ``-4`` when
            a 4-byte length counts itself, ``-header_size`` when it counts the whole header.
        strip: how many bytes of each frame the receiver drops, from 0 (the receiver gets the
            whole frame, header included) to ``header_size``; ``None`` means ``header_size``.
        header_size: ``length_offset + length_size`` (read-only, computed).
        strip_size: ``strip``, with ``None`` resolved (read-only, computed).
        max_length: the largest value the length field holds (read-only, computed).

    Formats are immutable, hashable and compare equal when their knobs are equal.

    Raises:
        ValueError: a knob is out of range (a width not listed, a negative offset, a strip
            longer than the header).
    """

    __slots__ = (
        "_struct",
        "byteorder",
        "header_size",
        "length_adjustment",
        "length_offset",
        "length_size",
        "max_length",
        "strip",
        "strip_size",
    )
    length_size: LengthSize
    length_offset: int
    byteorder: Literal["big", "little"]
    length_adjustment: int
    strip: int | None
    header_size: int
    strip_size: int
    max_length: int
    _struct: struct.Struct | None

    def __init__(
        self,
        length_size: LengthSize = 4,
        length_offset: int = 0,
        byteorder: Literal["big", "little"] = "big",
        length_adjustment: int = 0,
        strip: int | None = None,
    ) -> None:
        if length_size not in (1, 2, 3, 4, 8):
            raise ValueError(f"length_size must be 1, 2, 3, 4 or 8, not {length_size!r}")
        if not 0 <= length_offset <= 1 << 16:
            raise ValueError("length_offset must be between 0 and 65536")
        if byteorder not in ("big", "little"):
            raise ValueError(f"byteorder must be 'big' or 'little', not {byteorder!r}")
        if abs(length_adjustment) > 1 << 32:
            raise ValueError("length_adjustment must be between -2**32 and 2**32")
        header_size = length_offset + length_size
        strip_size = header_size if strip is None else strip
        if not 0 <= strip_size <= header_size:
            raise ValueError(f"strip must be between 0 and the header size, {header_size}")
        code = _STRUCT_CODES.get(length_size)
        order = ">" if byteorder == "big" else "<"
        init = object.__setattr__
        for name, value in [
            ("length_size", length_size),
            ("length_offset", length_offset),
            ("byteorder", byteorder),
            ("length_adjustment", length_adjustment),
            ("strip", strip),
            ("header_size", header_size),
            ("strip_size", strip_size),
            ("max_length", (1 << (8 * length_size)) - 1),
            ("_struct", struct.Struct(order + code) if code else None),
        ]:
            init(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a FrameFormat cannot be changed (tried to set {name})")

    def _knobs(self) -> tuple[int, int, str, int, int]:
        return (
            self.length_size,
            self.length_offset,
            self.byteorder,
            self.length_adjustment,
            self.strip_size,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrameFormat):
            return NotImplemented
        return self._knobs() == other._knobs()

    def __hash__(self) -> int:
        return hash(self._knobs())

    def __repr__(self) -> str:
        return (
            f"FrameFormat(length_size={self.length_size}, length_offset={self.length_offset}, "
            f"byteorder={self.byteorder!r}, length_adjustment={self.length_adjustment}, "
            f"strip={self.strip!r})"
        )

    def length_unpacker(self) -> Callable[[Buffer, int], tuple[int]] | None:
        """``struct.unpack_from`` of the length field, if frames of this format are simply
        the length (of the payload alone, at offset 0) then the payload, which is all that
        the receiver keeps; else ``None``."""
        simple = not (self.length_offset or self.length_adjustment)
        if simple and self.strip_size == self.header_size and self._struct is not None:
            return self._struct.unpack_from
        return None

    def length_packer(self) -> Callable[[int], bytes]:
        """A function from a length field's value to its bytes, with no range check (that is
        the caller's): ``struct.pack`` where a width has a struct code."""
        if self._struct is not None:
            return self._struct.pack
        size, order = self.length_size, self.byteorder
        return lambda length: length.to_bytes(size, order)

    def payload_size(self, length: int) -> int:
        """The payload size a length field of value ``length`` announces.

        Raises:
            RemoteProtocolError: the adjusted length is negative (no frame can be that short).
        """
        body = length + self.length_adjustment
        if body < 0:
            raise RemoteProtocolError(
                f"a frame's length field says {length}, which with an adjustment of "
                f"{self.length_adjustment} leaves {body} bytes for its body"
            )
        return self.header_size - self.strip_size + body

    def read_length(self, header: Buffer, offset: int = 0) -> int:
        """The length field's value, from a header that starts at ``offset`` in ``header``."""
        start = offset + self.length_offset
        if self._struct is not None:
            value: int = self._struct.unpack_from(header, start)[0]
            return value
        return int.from_bytes(header[start : start + self.length_size], self.byteorder)

    def check_header(self, header: Buffer, max_frame_size: int, offset: int = 0) -> int:
        """Return the payload size announced by the header at ``offset`` in ``header``.

        Raises:
            FrameTooLargeError: it is over ``max_frame_size``.
            RemoteProtocolError: the length is too small for the format (a negative body).
        """
        size = self.payload_size(self.read_length(header, offset))
        if size > max_frame_size:
            raise FrameTooLargeError(size, max_frame_size)
        return size

    def encode_length(self, body_size: int) -> bytes:
        """The length field for a body of ``body_size`` bytes (the bytes after the field).

        Raises:
            LocalProtocolError: the field cannot express it.
        """
        length = body_size - self.length_adjustment
        if not 0 <= length <= self.max_length:
            raise LocalProtocolError(
                f"a {self.length_size}-byte length field cannot announce a body of "
                f"{body_size} bytes (length {length})"
            )
        if self._struct is not None:
            return self._struct.pack(length)
        return length.to_bytes(self.length_size, self.byteorder)

    def payload_limit(self) -> int:
        """The largest payload the length field can announce (may be negative for a format
        whose adjustment leaves no room at all)."""
        return self.header_size - self.strip_size + self.max_length + self.length_adjustment

    def sent_payload_size(self, value_size: int) -> int:
        """The payload size the receiver sees for a sent value of ``value_size`` bytes."""
        return value_size + self.length_size - self.strip_size

    def encode(self, value: Buffer) -> bytes:
        """Return the frame for ``value``: its first ``length_offset`` bytes, the length field,
        then the rest.

        Raises:
            LocalProtocolError: ``value`` is shorter than the prefix, or the field cannot
                express its body's size.
        """
        data = value if type(value) is bytes else bytes(value)  # any buffer, even strided
        offset = self.length_offset
        if len(data) < offset:
            raise LocalProtocolError(
                f"a frame of this format starts with {offset} prefix bytes; got {len(data)}"
            )
        length = self.encode_length(len(data) - offset)
        if offset:
            return data[:offset] + length + data[offset:]
        return length + data


def check_max_frame_size(max_frame_size: int, frame_format: FrameFormat | None = None) -> int:
    """Return ``max_frame_size`` if it is a valid limit (for ``frame_format``, whose length field
    must be able to announce it; ftx's own format by default).

    Raises:
        ValueError: it is negative, or more than the format can announce.
    """
    fmt = frame_format or FTX_FORMAT
    limit = min(_MAX_ANY_FRAME, max(0, fmt.payload_limit()))
    if not 0 <= max_frame_size <= limit:
        raise ValueError(f"max_frame_size must be between 0 and {limit}")
    return max_frame_size


FTX_FORMAT: Final = FrameFormat()
"""ftx's own format: a 4-byte big-endian length counting the payload alone, then the payload."""
