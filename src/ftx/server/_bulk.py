"""The bulk path of a download on the server: the DATA of a big file on plain TCP sent by one
worker thread that owns the socket for the whole span (not a thread hop per chunk), while the
event loop only waits. Chunks go with ``sendfile``. When the whole-file digest is not known
yet, the same thread reads each chunk into a small buffer of its own and hashes it just before
``sendfile`` sends the same pages (one pass over the file, in one thread: not a second thread
re-reading the whole file). Reading a chunk once and sending what was read costs more CPU than
that (1 GiB: 0.51-0.71 s against 0.36 s of server CPU): ``sendfile`` hands the page-cache
pages to TCP without a copy, ``send`` copies the buffer. Hashing an ``mmap`` of the page cache
would save the read's copy too, but a file truncated while mapped kills the process with
SIGBUS, and a server must survive a file changed under it. Over TLS (a sender without
``sendfile``) each chunk is read once, in pieces, hashed and encrypted with its frame's head in
front (one TLS write, no record of its own for the head). docs/performance.md has more.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ftx.framing import FTX_FORMAT, BlockingSender
from ftx.fs import OpenedFile
from ftx.protocol import Hasher, ServerProtocol

# What sendfile raises for a file it cannot read (some file systems).
_NO_SENDFILE: Final = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})

__all__ = [
    "BULK_MIN_SIZE",
    "SPAN_CHUNK",
    "SPAN_HASH_BUFFER",
    "TLS_PIECE",
    "SpanEnd",
    "SpanResult",
    "bulk_eligible",
    "hash_rest",
    "send_span_work",
]

BULK_MIN_SIZE: Final = 4 << 20
"""Spans of at least this many bytes take the bulk path (below, a thread span costs more than
the event loop's sendfile per chunk)."""
SPAN_HASH_BUFFER: Final = 128 * 1024
"""The buffer a span reads into for the digest (its own: a pool's buffer would be held by a
slow client for its whole transfer)."""
SPAN_CHUNK: Final = 1 << 20
"""The DATA chunk of a span when the client accepts larger DATA frames (``large-data``)."""


TLS_PIECE: Final = 128 * 1024
"""Over TLS, the most of a file a span reads, hashes and encrypts at once (the span's own
buffer; a frame of ``chunk_size`` bytes goes in several pieces). Small enough that the piece,
its ciphertext in the outgoing BIO and the copy sent stay in a 1 MiB L2 cache: 0.74-0.85x the
server's CPU of 512 KiB pieces (docs/performance.md, "TLS pieces that fit the cache")."""
_HEADROOM: Final = 64
"""Room before a piece for its frame's head (length and DATA prefix)."""


def bulk_eligible(spans_supported: bool, count: int) -> bool:
    """Whether ``count`` bytes of a file go out by the bulk path: where the connection can be
    handed to a thread (plain TCP; TLS over TCP, see :class:`ftx.framing.FramedChannel`), for a
    big enough span; never under ``--limit-rate`` (the session's stream is then the rate
    limiter's, so ``spans_supported`` is false). The one place for such rules."""
    return spans_supported and count >= BULK_MIN_SIZE


class SpanEnd(enum.Enum):
    """How a span ended (failures are raised instead)."""

    SENT = "sent"
    TRUNCATED = "truncated"  # the file ended early: the last frame was completed with zeros


@dataclass(slots=True)
class SpanResult:
    """What a span did: how it ended, and the file bytes it sent (updated as it goes, so that
    a span cut short still says how far it got)."""

    end: SpanEnd = SpanEnd.SENT
    sent: int = 0
    hashed_to: int = 0
    """The hasher has seen the file's bytes ``[0, hashed_to)``."""


def send_span_work(
    opened: OpenedFile,
    offset: int,
    count: int,
    chunk_size: int,
    protocol: ServerProtocol,
    hasher: Hasher | None,
    buffer: bytearray | None,
    check_stop: Callable[[], None],
    result: SpanResult,
) -> Callable[[BlockingSender], SpanResult]:
    """The work of a span that sends bytes ``[offset, offset + count)`` of ``opened`` as DATA
    frames of at most ``chunk_size`` bytes, checked by ``protocol``. With a ``hasher`` (and a
    ``buffer`` to read into), the file is hashed from byte 0 to its end as it goes
    (the bytes before ``offset`` and after the span are read for the digest only).
    ``check_stop`` is called at each frame boundary and raises to stop there.
    """

    def work(sender: BlockingSender) -> SpanResult:
        if not sender.can_sendfile:
            return _send_read_span(
                opened, offset, count, chunk_size, protocol, hasher, check_stop, result, sender
            )
        view = memoryview(buffer) if buffer is not None else None
        if hasher is not None:
            assert view is not None
            if not _hash_range(opened, hasher, view, 0, offset, sender, result):
                result.end = SpanEnd.TRUNCATED
                return result
        position, end = offset, offset + count
        use_sendfile = True
        while position < end:
            check_stop()
            sender.check_awake()
            size = min(chunk_size, end - position)
            prefix = protocol.send_data_prefix(size)
            head = FTX_FORMAT.encode_length(len(prefix) + size) + prefix
            if hasher is not None and view is not None:
                # Read for the digest just before sendfile sends the same pages: one read
                # from the disk; the copy costs less than read + send (see the module). A file
                # that ends early is noticed by sendfile too.
                _hash_range(opened, hasher, view, position, position + size, sender, result)
            if use_sendfile:
                sender.send([head], more=True)
                try:
                    got = sender.sendfile(opened.fd, position, size)
                except OSError as exc:
                    if exc.errno not in _NO_SENDFILE:
                        raise
                    use_sendfile = False  # a file system sendfile cannot read: read it
                    got = 0
                if got < size:
                    if use_sendfile:
                        sender.send([bytes(size - got)])  # the frame completed, with zeros
                    else:
                        got = _send_read(opened, sender, position, size, view)
            else:
                sender.send([head], more=True)
                got = _send_read(opened, sender, position, size, view)
            result.sent += got
            if got < size:
                result.end = SpanEnd.TRUNCATED
                return result
            position += size
        if hasher is None or view is None or end == opened.size:
            return result
        if not _hash_range(opened, hasher, view, end, opened.size, sender, result):
            result.end = SpanEnd.TRUNCATED
        return result

    return work


def _send_read_span(
    opened: OpenedFile,
    offset: int,
    count: int,
    chunk_size: int,
    protocol: ServerProtocol,
    hasher: Hasher | None,
    check_stop: Callable[[], None],
    result: SpanResult,
    sender: BlockingSender,
) -> SpanResult:
    """:func:`send_span_work`'s work for a sender without ``sendfile`` (TLS): each chunk read
    once in pieces of :data:`TLS_PIECE`, hashed, and sent with its frame's head in front."""
    buffer = bytearray(_HEADROOM + TLS_PIECE)
    view = memoryview(buffer)
    body = view[_HEADROOM:]
    if hasher is not None and not _hash_range(opened, hasher, body, 0, offset, sender, result):
        result.end = SpanEnd.TRUNCATED
        return result
    position, end = offset, offset + count
    while position < end:
        check_stop()
        sender.check_awake()
        size = min(chunk_size, end - position)
        prefix = protocol.send_data_prefix(size)
        head = FTX_FORMAT.encode_length(len(prefix) + size) + prefix
        start = _HEADROOM - len(head)
        view[start:_HEADROOM] = head
        done = 0
        while done < size:
            piece = min(TLS_PIECE, size - done)
            got = _read_fully(opened, body[:piece], position + done)
            if hasher is not None and got:
                hasher.update(body[:got])
                result.hashed_to = position + done + got
            if got < piece:
                body[got:piece] = bytes(piece - got)  # the frame completed with zeros
            done += piece
            sender.send([view[start : _HEADROOM + piece]], more=done < size)
            start = _HEADROOM
            result.sent += got
            if got < piece:
                if done < size:
                    sender.send([bytes(size - done)])
                result.end = SpanEnd.TRUNCATED
                return result
        position += size
    if hasher is None or end == opened.size:
        return result
    if not _hash_range(opened, hasher, body, end, opened.size, sender, result):
        result.end = SpanEnd.TRUNCATED
    return result


def hash_rest(
    opened: OpenedFile, hasher: Hasher, buffer: bytearray, result: SpanResult, budget: int
) -> bool:
    """Finish the digest of a span cut short (for the resume that usually follows) if at most
    ``budget`` bytes remain to hash; return whether the hasher now holds the whole file."""
    if opened.size - result.hashed_to > budget:
        return False
    return _hash_range(
        opened, hasher, memoryview(buffer), result.hashed_to, opened.size, None, result
    )


def _hash_range(
    opened: OpenedFile,
    hasher: Hasher,
    view: memoryview,
    start: int,
    end: int,
    sender: BlockingSender | None,
    result: SpanResult,
) -> bool:
    """Feed bytes ``[start, end)`` of the file to ``hasher``; False if the file ended first."""
    position = start
    while position < end:
        if sender is not None:
            sender.check_awake()
        got = _read_fully(opened, view[: min(view.nbytes, end - position)], position)
        if got == 0:
            return False
        hasher.update(view[:got])
        position += got
        result.hashed_to = position
    return True


def _send_read(
    opened: OpenedFile, sender: BlockingSender, position: int, size: int, view: memoryview | None
) -> int:
    """Send the ``size`` bytes of a frame's content (its head is out) read from the file
    (where sendfile cannot read it); return how many the file gave (the rest sent as zeros)."""
    if view is None or view.nbytes < size:
        view = memoryview(bytearray(size))
    got = _read_fully(opened, view[:size], position)
    if got < size:
        view[got:size] = bytes(size - got)
    sender.send([view[:size]])
    return got


def _read_fully(opened: OpenedFile, view: memoryview, position: int) -> int:
    """Read ``view.nbytes`` bytes from ``position``, fewer only at the end of the file."""
    filled = 0
    while filled < view.nbytes:
        got = opened.read_into(view[filled:], position + filled)
        if got == 0:
            break
        filled += got
    return filled
