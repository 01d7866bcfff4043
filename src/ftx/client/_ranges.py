"""The client's side of ranges and block digests (docs/protocol.md, section 22): asking a server
for a file's block digests (BLOCKS), fetching one range of a file (a GET with a length), and the
*block record* (``DEST.part.blocks``) that says which blocks of a part file are verified, so
that a download from several sources resumes block by block.

The functions take the connection as a :class:`RangeWire` (:class:`ftx.Client` is one); the
caller holds the connection's lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from ftx._names import sibling_name
from ftx.errors import LocalFileError, RemoteError, RemoteProtocolError
from ftx.framing import Buffer
from ftx.protocol import ClientProtocol, ErrorCode
from ftx.protocol.messages import (
    BlockList,
    BlockProgress,
    Blocks,
    Data,
    Error,
    FileEnd,
    FileHeader,
    Get,
    Message,
)

__all__ = ["BlockRecord", "RangeWire", "fetch_range", "request_blocks"]

logger = logging.getLogger("ftx.client")

_RECORD_VERSION: Final = 1
_MAX_RECORD_BYTES: Final = 64 * 1024


class RangeWire(Protocol):
    """What the functions here need of a connection (the client's private members)."""

    @property
    def _protocol(self) -> ClientProtocol:
        """The connection's protocol state (it numbers the requests)."""

    async def _send(self, *messages: Message) -> None:
        """Send the messages."""

    async def _receive(self, into: bytearray | None = None) -> Message:
        """The next message (a DATA chunk a view of ``into`` if given)."""


async def request_blocks(
    wire: RangeWire, path: str, algorithm: str, identity: str | None = None
) -> BlockList:
    """The server's BLOCK_LIST for the file at ``path``, with ``algorithm``. The
    BLOCK_PROGRESS messages a server sends while it reads a file for the first time are passed
    over (each one restarts the connection's progress deadline).

    Raises:
        RemoteError: the server refused (``not-found``, ``changed``, ...).
        LocalProtocolError: the server does not offer the feature ``ranges``.
        ConnectionLostError, RemoteProtocolError: the connection failed.
    """
    await wire._send(Blocks(wire._protocol.new_request_id(), path, algorithm, identity))
    answer = await wire._receive()
    while isinstance(answer, BlockProgress):
        logger.debug("the server has hashed %d of %d bytes of %r", answer.hashed, answer.size, path)
        answer = await wire._receive()
    if isinstance(answer, Error):
        raise RemoteError(answer.code, answer.message)
    if not isinstance(answer, BlockList):  # pragma: no cover - the protocol checks it
        raise RemoteProtocolError(f"expected BLOCK_LIST, got {type(answer).__name__}")
    return answer


async def fetch_range(
    wire: RangeWire,
    path: str,
    offset: int,
    length: int,
    *,
    identity: str,
    buffer: bytearray,
    sink: Callable[[Buffer], object],
) -> FileHeader:
    """Fetch bytes ``offset`` to ``offset + length`` (or the end of the file) of the file at
    ``path`` with a ranged GET, handing each chunk to ``sink`` as it arrives (a view of
    ``buffer``, valid until ``sink`` returns); return the FILE header.

    Raises:
        RemoteError: the server refused; ``changed`` also when it answered with another
            identity than ``identity`` (its DATA is then not handed to ``sink``).
        LocalProtocolError: the server does not offer the feature ``ranges``.
        ConnectionLostError, RemoteProtocolError: the connection failed.
    """
    request_id = wire._protocol.new_request_id()
    await wire._send(Get(request_id, path, offset, identity, digest=None, length=length))
    header = await wire._receive()
    if isinstance(header, Error):
        raise RemoteError(header.code, header.message)
    if not isinstance(header, FileHeader):  # pragma: no cover - the protocol checks it
        raise RemoteProtocolError(f"expected FILE, got {type(header).__name__}")
    same = header.identity == identity
    while not isinstance(message := await wire._receive(into=buffer), FileEnd):
        if isinstance(message, Error):
            raise RemoteError(message.code, message.message)
        if isinstance(message, Data) and same:
            sink(message.data)
    if not same:
        raise RemoteError(ErrorCode.CHANGED, f"{path!r} has another identity now")
    return header


@dataclass(frozen=True, slots=True)
class BlockRecord:
    """What a part file being filled block by block holds: the file it is a copy of (``path``,
    and its content named by ``size``, ``algorithm`` and ``file_digest``) and the blocks of it
    (``block_size`` bytes each) already verified (``done``)."""

    path: str
    size: int
    algorithm: str
    file_digest: str
    block_size: int
    done: frozenset[int]

    @staticmethod
    def path_for(part: str | os.PathLike[str]) -> str:
        """The record kept beside ``part``: ``DEST.part.blocks``."""
        directory, name = os.path.split(os.fspath(part))
        return os.path.join(directory, sibling_name(name, ".blocks"))

    def same_file(self, other: BlockRecord) -> bool:
        """Whether the two records describe the same content cut the same way."""
        mine = (self.path, self.size, self.algorithm, self.file_digest, self.block_size)
        return mine == (
            other.path,
            other.size,
            other.algorithm,
            other.file_digest,
            other.block_size,
        )

    def save(self, part: str | os.PathLike[str]) -> None:
        """Write the record beside ``part`` (atomically: a temporary file renamed).

        Raises:
            LocalFileError: it cannot be written.
        """
        target = self.path_for(part)
        temporary = target + ".tmp"
        data = {
            "version": _RECORD_VERSION,
            "path": self.path,
            "size": self.size,
            "algorithm": self.algorithm,
            "file_digest": self.file_digest,
            "block_size": self.block_size,
            "done": sorted(self.done),
        }
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump(data, file)
            os.replace(temporary, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise LocalFileError(f"cannot write {target}: {exc.strerror}") from exc

    @classmethod
    def load(cls, part: str | os.PathLike[str]) -> BlockRecord | None:
        """The record beside ``part``, or ``None`` if there is none we can trust."""
        try:
            with open(cls.path_for(part), "rb") as file:
                raw = json.loads(file.read(_MAX_RECORD_BYTES))
            record = cls(
                path=raw["path"],
                size=raw["size"],
                algorithm=raw["algorithm"],
                file_digest=raw["file_digest"],
                block_size=raw["block_size"],
                done=frozenset(raw["done"]),
            )
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if raw.get("version") != _RECORD_VERSION or not _well_typed(record):
            return None
        return record

    @classmethod
    def remove(cls, part: str | os.PathLike[str]) -> None:
        """Remove the record beside ``part``, if there is one."""
        with contextlib.suppress(OSError):
            os.unlink(cls.path_for(part))


def _well_typed(record: BlockRecord) -> bool:
    texts = (record.path, record.algorithm, record.file_digest)
    numbers = (record.size, record.block_size, *record.done)
    return all(isinstance(text, str) for text in texts) and all(
        isinstance(number, int) and not isinstance(number, bool) and number >= 0
        for number in numbers
    )
