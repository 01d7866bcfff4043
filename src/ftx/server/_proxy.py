"""Reading the PROXY protocol header on connections from the load balancers the server trusts
(``ServerConfig.proxy_protocol_from``), so that logs name the client, not the balancer.

From an allowed address, a connection must begin with a header (version 1 or 2), read to its
last byte and no further (peeked first, so the client's own bytes stay in the socket for the
framing layer, sendfile and TLS alike). From any other address, a connection that begins like a
header is refused: nobody else may claim to speak for a client. The header is parsed by the
sans-IO :mod:`ftx.server._proxy_header`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import trio

from ftx.errors import RemoteProtocolError
from ftx.server._proxy_header import V2_MAX_LENGTH, ProxyHeader, header_length, parse_proxy_header

__all__ = [
    "Network",
    "begins_like_proxy_header",
    "is_allowed",
    "peer_address",
    "read_proxy_header",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def peer_address(
    stream: trio.SocketStream,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of the peer of a TCP ``stream`` (an IPv4-mapped IPv6 address as the IPv4
    address it maps), or ``None`` for other sockets or a peer already gone."""
    try:
        name = stream.socket.getpeername()
    except OSError:
        return None
    if not isinstance(name, tuple):
        return None
    try:
        address = ipaddress.ip_address(name[0].split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_allowed(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, networks: Sequence[Network]
) -> bool:
    """Whether ``address`` lies in one of ``networks``."""
    return address is not None and any(address in network for network in networks)


async def read_proxy_header(stream: trio.SocketStream) -> ProxyHeader:
    """Read the PROXY header that ``stream`` begins with, and not one byte more.

    Waits as long as the header takes to arrive: the caller bounds it.

    Raises:
        RemoteProtocolError: the stream does not begin with a valid header, or ends inside it.
        OSError: the connection broke.
    """
    sock = stream.socket
    got = bytearray()
    length = None
    while length is None:
        peeked = await sock.recv(V2_MAX_LENGTH, socket.MSG_PEEK)
        if not peeked:
            raise RemoteProtocolError("the connection ended inside the PROXY header")
        length = header_length(bytes(got) + peeked)
        if length is None:  # every byte peeked lies inside the header: take them
            got += await sock.recv(len(peeked))
    while len(got) < length:
        more = await sock.recv(length - len(got))
        if not more:
            raise RemoteProtocolError("the connection ended inside the PROXY header")
        got += more
    return parse_proxy_header(bytes(got))


async def begins_like_proxy_header(stream: trio.SocketStream) -> bool:
    """Whether the first byte waiting on ``stream`` is one a PROXY header begins with (``P`` or
    ``\\r``; no ftx frame or TLS record can), without taking it. Waits for that byte.

    Raises:
        OSError: the connection broke.
    """
    first = await stream.socket.recv(1, socket.MSG_PEEK)
    return first in (b"P", b"\r")
