"""What both ends of a TCP connection share: keepalive, the idle default, the innermost stream.

Imported by the client and by the server alike; it imports nothing of ftx.
"""

from __future__ import annotations

import logging
import socket
from typing import Final

import trio

__all__ = ["DEFAULT_IDLE_TIMEOUT", "set_keepalive", "transport_of"]

# Seconds a peer may stay silent while an answer (or the next request) is due: the default of
# the server's idle deadline and of the client's.
DEFAULT_IDLE_TIMEOUT: Final = 60.0
# TCP keepalive: probe after 60 s of silence, every 15 s, give up after 4 unanswered probes.
KEEPALIVE_IDLE: Final = 60
KEEPALIVE_INTERVAL: Final = 15
KEEPALIVE_COUNT: Final = 4

logger = logging.getLogger("ftx.net")


def set_keepalive(stream: trio.abc.Stream) -> None:
    """Turn on TCP keepalive (``SO_KEEPALIVE``, probing after :data:`KEEPALIVE_IDLE` seconds where
    the platform lets us say so) for the TCP socket under ``stream``, so that a peer that
    vanished (power cut, cable pulled) is noticed. Does nothing for other transports."""
    transport = transport_of(stream)
    if not isinstance(transport, trio.SocketStream):
        return
    if transport.socket.type != socket.SOCK_STREAM or transport.socket.family not in (
        socket.AF_INET,
        socket.AF_INET6,
    ):
        return
    try:
        transport.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE),  # Linux
            ("TCP_KEEPALIVE", KEEPALIVE_IDLE),  # macOS: the same, under another name
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
            ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                transport.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as exc:  # the peer may already be gone; nothing depends on this
        logger.debug("cannot set TCP keepalive: %s", exc)


def transport_of(stream: trio.abc.Stream) -> trio.abc.Stream:
    """The innermost stream under wrappers that expose ``transport_stream`` (TLS, deadlines)."""
    while isinstance(inner := getattr(stream, "transport_stream", None), trio.abc.Stream):
        stream = inner
    return stream
