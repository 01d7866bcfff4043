"""The ftx server: serves the files under one directory to many clients at once.

:func:`serve` listens on TCP; :class:`Server` serves any listeners or streams you made. Its
private modules, by role: ``_server`` (connections and their limits), ``_session`` (one
connection), ``_downloads`` and ``_uploads`` (answering GET/LIST and PUT/MKDIR), ``_writes``
(upload targets on disk), ``_readahead`` (small files read in batches), ``_listen`` (accepting),
``_limits``, ``_resources`` (buffer pools, digest cache) and ``_access_log``.
"""

from ftx.server._server import DEFAULT_CHUNK_SIZE, DEFAULT_PORT, Server, serve

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_PORT", "Server", "serve"]
