"""The PROXY protocol header (HAProxy's, versions 1 and 2), sans-IO: how long the header at the
start of a stream is, and what it says about the client a load balancer connected on behalf of.

A balancer in TCP mode (HAProxy ``send-proxy`` or ``send-proxy-v2``) writes one such header before
the client's first byte, so that the server learns the client's address instead of the
balancer's. Only the server ever reads one (a client never receives it), hence its place here;
the socket reading is in :mod:`ftx.server._proxy`. Limits (docs/protocol.md, section 3.2): a
version 1 header is at most :data:`V1_MAX_LENGTH` bytes, a version 2 header at most
:data:`V2_MAX_LENGTH` (its address block and TLVs included, which are ignored).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from ftx.errors import RemoteProtocolError

__all__ = [
    "V1_MAX_LENGTH",
    "V2_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "encode_v1",
    "encode_v2",
    "header_length",
    "parse_proxy_header",
]

V1_PREFIX: Final = b"PROXY "
V1_MAX_LENGTH: Final = 107  # the protocol's own limit, CRLF included
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED: Final = 16  # signature, version and command, family and transport, length
V2_MAX_LENGTH: Final = V2_FIXED + 2048  # ours: addresses (at most 216 bytes) and a few TLVs
_V1_LINE: Final = re.compile(
    rb"PROXY (?:UNKNOWN[^\r\n]*|(?P<proto>TCP4|TCP6) (?P<src>[0-9A-Fa-f.:]+) "
    rb"(?P<dst>[0-9A-Fa-f.:]+) (?P<sport>0|[1-9][0-9]{0,4}) (?P<dport>0|[1-9][0-9]{0,4}))\r\n"
)
_LOCAL, _PROXY = 0x0, 0x1
_UNSPEC, _INET, _INET6, _UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One PROXY header.

    Attributes:
        version: 1 (text) or 2 (binary).
        length: its length in bytes: where the client's own bytes begin.
        source: the client's address and port, or ``None`` when the header carries none
            (version 2 ``LOCAL``, the balancer's own health check; ``UNKNOWN``; other families):
            then the connection's own peer address stands.
    """

    version: int
    length: int
    source: tuple[str, int] | None


def header_length(data: bytes) -> int | None:
    """The length of the PROXY header at the start of ``data`` (the first bytes of a stream), or
    ``None`` if more bytes are needed to know it. May exceed ``len(data)`` (version 2).

    Raises:
        RemoteProtocolError: ``data`` cannot be the start of a PROXY header, or announces one
            longer than the limits.
    """
    if not data:
        return None
    if data[:1] == b"P":
        if not V1_PREFIX.startswith(data[:6]):
            raise RemoteProtocolError("not a PROXY protocol header")
        end = data.find(b"\n", 0, V1_MAX_LENGTH)
        if end < 0:
            if len(data) >= V1_MAX_LENGTH:
                raise RemoteProtocolError(f"PROXY v1 header longer than {V1_MAX_LENGTH} bytes")
            return None
        if data[end - 1 : end] != b"\r":
            raise RemoteProtocolError("PROXY v1 header not ended by CRLF")
        return end + 1
    if not V2_SIGNATURE.startswith(data[:12]):
        raise RemoteProtocolError("not a PROXY protocol header")
    if len(data) < V2_FIXED:
        return None
    if data[12] >> 4 != 2:
        raise RemoteProtocolError(f"PROXY v2 header of unknown version {data[12] >> 4}")
    if data[12] & 0xF not in (_LOCAL, _PROXY):
        raise RemoteProtocolError(f"PROXY v2 header with unknown command {data[12] & 0xF}")
    length = V2_FIXED + int.from_bytes(data[14:16], "big")
    if length > V2_MAX_LENGTH:
        raise RemoteProtocolError(f"PROXY v2 header of {length} bytes: over {V2_MAX_LENGTH}")
    return length


def parse_proxy_header(data: bytes) -> ProxyHeader:
    """Parse ``data``, exactly one whole PROXY header (as long as :func:`header_length` says).

    Raises:
        RemoteProtocolError: it is not a valid header, or not exactly one.
    """
    length = header_length(data)
    if length != len(data):
        raise RemoteProtocolError("incomplete PROXY header" if length else "no PROXY header")
    if data[:1] == b"P":
        return _parse_v1(data)
    return _parse_v2(data)


def _parse_v1(data: bytes) -> ProxyHeader:
    match = _V1_LINE.fullmatch(data)
    if match is None:
        raise RemoteProtocolError("malformed PROXY v1 header")
    if match["proto"] is None:  # UNKNOWN
        return ProxyHeader(1, len(data), None)
    kind = ipaddress.IPv4Address if match["proto"] == b"TCP4" else ipaddress.IPv6Address
    try:
        source = kind(match["src"].decode())
        kind(match["dst"].decode())
    except ValueError:
        raise RemoteProtocolError("PROXY v1 header with a malformed address") from None
    ports = int(match["sport"]), int(match["dport"])
    if max(ports) > 0xFFFF:
        raise RemoteProtocolError("PROXY v1 header with a port over 65535")
    return ProxyHeader(1, len(data), (str(source), ports[0]))


def _parse_v2(data: bytes) -> ProxyHeader:
    family, transport = data[13] >> 4, data[13] & 0xF
    if data[12] & 0xF == _LOCAL or family in (_UNSPEC, _UNIX):
        return ProxyHeader(2, len(data), None)
    if family not in (_INET, _INET6):
        raise RemoteProtocolError(f"PROXY v2 header with unknown address family {family}")
    if transport != _STREAM:
        raise RemoteProtocolError("PROXY v2 header for a connection that is not a stream")
    size = 4 if family == _INET else 16
    block = data[V2_FIXED:]
    if len(block) < 2 * size + 4:
        raise RemoteProtocolError("PROXY v2 header too short for its addresses")
    address = ipaddress.ip_address(block[:size])
    port = int.from_bytes(block[2 * size : 2 * size + 2], "big")
    return ProxyHeader(2, len(data), (str(address), port))


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int]) -> bytes:
    """A version 1 header saying that ``source`` connected to ``destination`` (``UNKNOWN``
    when ``source`` is ``None``): what a balancer sends, for tests and tools."""
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP4" if ipaddress.ip_address(source[0]).version == 4 else "TCP6"
    line = f"PROXY {proto} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    return line.encode()


def encode_v2(
    source: tuple[str, int] | None, destination: tuple[str, int], tlvs: bytes = b""
) -> bytes:
    """A version 2 header saying that ``source`` connected to ``destination`` (``LOCAL`` when
    ``source`` is ``None``), followed by the raw ``tlvs``: for tests and tools."""
    if source is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + len(tlvs).to_bytes(2, "big") + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = _INET if src.version == 4 else _INET6
    block = (
        src.packed
        + dst.packed
        + source[1].to_bytes(2, "big")
        + destination[1].to_bytes(2, "big")
        + tlvs
    )
    head = bytes([0x20 | _PROXY, family << 4 | _STREAM]) + len(block).to_bytes(2, "big")
    return V2_SIGNATURE + head + block
