"""The server's settings: one frozen, validated :class:`ServerConfig`, given to
:class:`~ftx.server.Server` (or :func:`~ftx.server.serve`) and handed down to every connection.
"""

from __future__ import annotations

import ipaddress
import math
import os
import ssl
from dataclasses import dataclass, field
from typing import Final, Literal

from ftx._rate import MIN_RATE
from ftx.framing import DEFAULT_MAX_FRAME_SIZE, FRAME_SIZE_LIMIT
from ftx.protocol import MIN_FRAME_SIZE, check_token
from ftx.server._limits import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
)

__all__ = ["DEFAULT_CHUNK_SIZE", "IDENTITY_MODES", "IdentityMode", "ServerConfig"]

IdentityMode = Literal["local", "portable"]
IDENTITY_MODES: Final[tuple[IdentityMode, ...]] = ("local", "portable")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_CHUNK_SIZE: Final = 512 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """How a server serves: what clients may change, how large its frames are, what one
    connection may cost (see :mod:`ftx.server._limits`), and how clients are let in.

    Attributes:
        writable: accept uploads (PUT) and new directories (MKDIR); otherwise clients are told
            ``read-only`` and nothing is changed.
        allow_overwrite: let a client that asks for it replace an existing file.
        max_upload_size: the largest upload accepted, in bytes (``None``: no limit).
        chunk_size: the largest DATA chunk to send (capped by the client's frame limit).
        max_frame_size: the largest frame this server accepts from a client.
        max_connections: connections served at once; one more is sent a connection-level
            ``busy`` ERROR and closed, without disturbing the others.
        handshake_timeout: seconds from accepting a connection to the end of the handshake.
        idle_timeout: seconds the server waits for each complete request, and the longest the
            client may take to accept one frame (at most ``chunk_size`` bytes of a file).
            ``math.inf`` switches a deadline off.
        ssl_context: serve over TLS with this server context (see
            :func:`ftx._tls.server_context`); a client speaking plain ftx is answered
            ``tls-required``.
        token: require clients to prove, by challenge and response, that they know this shared
            token (at least 16 bytes; see :mod:`ftx.protocol._auth`). It never crosses the
            wire, and is left out of the ``repr``.
        identity: how files are named to clients for resuming (docs/protocol.md, section
            9.4): ``"local"`` (device, inode, size, mtime and ctime: a resume continues only on
            this server's copy) or ``"portable"`` (relative path, size and mtime: a resume may
            continue on any server holding the same file, e.g. replicas behind a balancer).
        proxy_protocol_from: the networks of the load balancers that connect on behalf of
            clients: a connection from one of them must begin with a PROXY protocol header
            (version 1 or 2), whose client address then stands for the connection in the logs;
            a connection from anywhere else that begins with one is refused. Strings
            (``"10.0.0.0/8"``, ``"192.0.2.7"``) are accepted and converted. Empty: no PROXY
            headers are read (the default).
        state_dir: a directory outside the served one where the server keeps the digests of
            the files it has read whole (an SQLite database, shared safely by servers on this
            machine), so that they outlive the process. ``None``: kept in memory only.
        limit_rate: the most bytes per second each connection may send, and receive (each
            direction on its own), at least 32768; ``None``: no limit. A limited connection
            is sent DATA chunks of at most a second's worth, and does without sendfile.

    Raises:
        ValueError: a size or limit is out of range, a timeout is not a positive number, an
            upload setting is given without ``writable``, the token is too short, the
            identity mode is unknown, or a network is not one.
    """

    writable: bool = False
    allow_overwrite: bool = False
    max_upload_size: int | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    ssl_context: ssl.SSLContext | None = None
    token: str | bytes | None = field(default=None, repr=False)
    identity: IdentityMode = "local"
    proxy_protocol_from: tuple[Network, ...] = ()
    state_dir: str | os.PathLike[str] | None = None
    limit_rate: int | None = None

    def __post_init__(self) -> None:
        if self.max_upload_size is not None and self.max_upload_size < 0:
            raise ValueError("max_upload_size must be 0 or more")
        if not self.writable and (self.allow_overwrite or self.max_upload_size is not None):
            raise ValueError("allow_overwrite and max_upload_size need writable=True")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if not MIN_FRAME_SIZE <= self.max_frame_size <= FRAME_SIZE_LIMIT:
            raise ValueError(
                f"max_frame_size must be between {MIN_FRAME_SIZE} and {FRAME_SIZE_LIMIT}"
            )
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        for name in ("handshake_timeout", "idle_timeout"):
            value = getattr(self, name)
            if math.isnan(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        if self.token is not None:
            check_token(self.token)
        # (Strings too, though typed as networks: converted, or a ValueError.)
        networks = tuple(
            ipaddress.ip_network(network, strict=False) for network in self.proxy_protocol_from
        )
        object.__setattr__(self, "proxy_protocol_from", networks)
        if self.limit_rate is not None and self.limit_rate < MIN_RATE:
            raise ValueError(f"limit_rate must be at least {MIN_RATE} bytes per second")
        if self.identity not in IDENTITY_MODES:
            raise ValueError(f"identity must be one of {', '.join(IDENTITY_MODES)}")
