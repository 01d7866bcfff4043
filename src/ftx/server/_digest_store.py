"""Whole-file digests kept on disk between runs (``ftx serve --state-dir DIR``): one SQLite
database, ``DIR/digests.sqlite3``, so that a restarted server, or another one serving the same
files on this machine, does not read a large file through before it can send its digest.

Keys are the in-memory cache's (:class:`~ftx.server._resources.DigestCache`): the algorithm and
the file's *local* identity (device, inode, size, mtime, ctime; ``ftx.fs.file_identity``),
whatever identity mode the server announces, so an entry is never used for a file changed since
(any write moves its ctime). Several servers may share the directory: the database is in WAL
mode and waits for a lock rather than failing. Calls block: run them in a worker thread. A
failure to read or write is logged and treated as a miss; the transfer goes on.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Final

__all__ = ["DIGEST_STORE_NAME", "MAX_STORED_DIGESTS", "DigestStore", "check_state_dir"]

DIGEST_STORE_NAME: Final = "digests.sqlite3"
MAX_STORED_DIGESTS: Final = 100_000  # the oldest are dropped beyond this
_PRUNE_EVERY: Final = 1000  # writes
_BUSY_TIMEOUT_MS: Final = 5000
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS digests "
    "(key TEXT PRIMARY KEY, digest TEXT NOT NULL, stored REAL NOT NULL) WITHOUT ROWID"
)

logger = logging.getLogger("ftx.server")


def check_state_dir(state_dir: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path:
    """The state directory, made if missing (mode 0700), once checked to lie outside the served
    ``root`` (where clients could fetch, or a writable server overwrite, the database).

    Raises:
        ValueError: it is inside the served directory (or is it), or cannot be made.
    """
    path = Path(state_dir)
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot make the state directory {path}: {exc.strerror}") from None
    resolved, served = path.resolve(), Path(root).resolve()
    if resolved == served or served in resolved.parents:
        raise ValueError(f"the state directory {path} must be outside the served directory")
    return path


class DigestStore:
    """Digests by key (``"<algorithm>:<local identity>"``) in ``directory/digests.sqlite3``.

    Opening checks that the database can be created or read, so that a bad ``--state-dir``
    fails at start-up rather than on the first download.

    Raises:
        ValueError: the database cannot be opened or is not one.
    """

    def __init__(self, directory: Path) -> None:
        self.path: Final = directory / DIGEST_STORE_NAME
        self._writes = 0
        self._lock = threading.Lock()  # for the write counter only
        self._warned = False
        try:
            with closing(self._connect()) as db, db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise ValueError(f"cannot use {self.path} as the digest store: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        return db

    def get(self, key: str) -> str | None:
        """The digest stored under ``key``, or ``None`` (also when the database fails)."""
        try:
            with closing(self._connect()) as db:
                row = db.execute("SELECT digest FROM digests WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            self._warn(exc)
            return None
        return row[0] if row is not None and isinstance(row[0], str) else None

    def put(self, key: str, digest: str) -> None:
        """Store ``digest`` under ``key`` (a failure is logged, once, and ignored)."""
        with self._lock:
            self._writes += 1
            prune = self._writes % _PRUNE_EVERY == 0
        try:
            with closing(self._connect()) as db:
                db.execute(
                    "INSERT OR REPLACE INTO digests VALUES (?, ?, ?)", (key, digest, time.time())
                )
                if prune:
                    db.execute(
                        "DELETE FROM digests WHERE key IN (SELECT key FROM digests "
                        "ORDER BY stored DESC LIMIT -1 OFFSET ?)",
                        (MAX_STORED_DIGESTS,),
                    )
        except sqlite3.Error as exc:
            self._warn(exc)

    def _warn(self, exc: sqlite3.Error) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("digest store %s: %s; going on without it", self.path, exc)
