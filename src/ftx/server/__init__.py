"""The ftx server: serves the files under one directory to many clients at once.

:func:`serve` listens on TCP; :class:`Server` serves any listeners or streams you made. Its
private modules, by role: ``_server`` (accepting and counting connections), ``_session`` (one
connection), ``_downloads`` and ``_uploads`` (answering GET/LIST and PUT/MKDIR), ``_writes``
(upload targets on disk), ``_readahead`` (small files read in batches), ``_listen`` (accepting),
``_config`` (:class:`ServerConfig`, the settings), ``_limits`` (what a connection may cost),
``_resources`` (what connections share: the root, buffer pools, digest cache),
``_digest_store`` (digests on disk), ``_proxy`` and ``_proxy_header`` (the PROXY protocol of a
load balancer) and ``_access_log``.
"""

from ftx.server._access_log import JsonFormatter
from ftx.server._config import DEFAULT_CHUNK_SIZE, IDENTITY_MODES, IdentityMode, ServerConfig
from ftx.server._limits import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
)
from ftx.server._server import DEFAULT_PORT, Server, serve

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PORT",
    "IDENTITY_MODES",
    "IdentityMode",
    "JsonFormatter",
    "Server",
    "ServerConfig",
    "serve",
]
