"""What one connection may cost the server: its count, its time, and its silences.

A peer that connects and says nothing, or trickles a request a byte at a time, or asks for a large
file and then stops reading, would otherwise hold a connection slot, a task and a buffer forever
(rsync's CVE-2026-70464; the HTTP/2 "data dribble" attacks). Three settings of
:class:`~ftx.server.ServerConfig` bound each of these (their defaults are defined here):

- ``max_connections``: connections served at once; one more is refused with ``busy``.
- ``handshake_timeout``: an absolute deadline from accept to the end of the handshake (TLS,
  HELLO and authentication included).
- ``idle_timeout``: how long the server waits for each complete request (so a request trickled
  in slower than that is cut off), and how long the client may take to accept each frame sent
  to it (a DATA frame is at most the server's chunk size, 512 KiB by default).

The write deadline is per frame, not per answer: a client that takes less than a frame per idle
period is cut off (:exc:`WriteStalledError`); a healthy large transfer never is, however long
it takes. One deadline per frame, not per write, because on plain TCP a frame's file content
goes to the kernel in one sendfile, which no wrapper stream sees. A big file sent by a thread
span (:mod:`ftx.server._bulk`) counts bytes instead: 65536 per idle period, which the thread
can see (docs/protocol.md, section 3).
"""

from __future__ import annotations

from typing import Final

import trio

from ftx._net import DEFAULT_IDLE_TIMEOUT
from ftx.errors import FtxError

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "WriteStalledError",
]

DEFAULT_MAX_CONNECTIONS: Final = 100
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0


class WriteStalledError(FtxError, trio.BrokenResourceError):
    """The peer did not accept a frame within the idle period: the write was cancelled, and the
    connection is unusable (part of the frame may have gone out).

    Also a :exc:`trio.BrokenResourceError`, which is what it means to the code that sends: the
    connection broke (a download cut short this way still finishes its digest, for instance)."""
