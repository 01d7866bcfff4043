"""Plain-TCP fast paths of :mod:`ftx.framing`: writes and reads straight on the socket of a
:class:`trio.SocketStream` (non-blocking first, waiting only when the kernel says so), and
``os.sendfile``. Every socket error comes out as :class:`trio.SocketStream` would raise it.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

import trio

from ftx.framing._format import Buffer

__all__ = ["read_some", "read_up_to", "sendfile", "socket_errors_as_stream_errors", "write_some"]


def write_some(sock: trio.socket.SocketType, data: Sequence[Buffer]) -> int:
    """Write what the kernel takes now of ``data``, in order, without waiting; return how many
    bytes (0 if the socket is full).

    Raises:
        trio.BrokenResourceError: the connection is broken.
        trio.ClosedResourceError: the socket was closed.
    """
    try:
        if len(data) == 1:
            return os.write(sock.fileno(), data[0])
        return os.writev(sock.fileno(), data[:_IOV_MAX])
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise _stream_error(exc) from exc


def read_some(sock: trio.socket.SocketType, size: int) -> bytes | None:
    """Read up to ``size`` bytes if some are there, without waiting: ``None`` if none are,
    ``b""`` at the end of the stream.

    Raises:
        trio.BrokenResourceError: the connection is broken.
        trio.ClosedResourceError: the socket was closed.
    """
    try:
        return os.read(sock.fileno(), size)
    except BlockingIOError:
        return None
    except OSError as exc:
        raise _stream_error(exc) from exc


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in (errno.EBADF, errno.ENOTSOCK):
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


def read_up_to(fd: int, count: int, offset: int) -> bytes:
    """Read ``count`` bytes of file ``fd`` from ``offset``, fewer only at the end of the file
    (one pread may return less: Linux caps a read near 2 GiB, and not every file is regular)."""
    pieces = []
    while count:
        piece = os.pread(fd, count, offset)
        if not piece:
            break
        pieces.append(piece)
        count -= len(piece)
        offset += len(piece)
    return b"".join(pieces)


@contextmanager
def socket_errors_as_stream_errors() -> Iterator[None]:
    """Raise what :class:`trio.SocketStream` raises for the socket errors it translates."""
    try:
        yield
    except OSError as exc:
        raise _stream_error(exc) from exc


async def sendfile(
    sock: trio.socket.SocketType, head: bytes, fd: int, offset: int, count: int
) -> int:
    """Send ``head`` then up to ``count`` bytes of file ``fd`` from ``offset`` on ``sock``;
    return how many file bytes went (fewer if the file ended or sendfile cannot read it)."""
    view = memoryview(head)
    with socket_errors_as_stream_errors():
        while view:
            # MSG_MORE holds the header back until the file's bytes follow (trio sets
            # TCP_NODELAY, which would send it alone).
            view = view[await sock.send(view, _MSG_MORE if count else 0) :]
    sent = 0
    while sent < count:
        try:
            done = os.sendfile(sock.fileno(), fd, offset + sent, count - sent)
        except BlockingIOError:
            with socket_errors_as_stream_errors():
                await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as exc:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("the socket was closed") from None
            if exc.errno in _SOCKET_ERRNOS:
                raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
            if sent == 0 and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                break  # a file sendfile cannot read (some file systems): the caller reads it
            raise  # the file's own error (EIO, EBADF...): an OSError, as from a read
        if done == 0:
            break  # the file ended early
        sent += done
    return sent


# What os.sendfile raises for the socket's sake (anything else concerns the file).
_SOCKET_ERRNOS: Final = frozenset(
    {
        errno.EPIPE,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ENOTCONN,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
    }
)
# The most buffers one writev takes (POSIX guarantees at least 16; Linux and macOS take 1024).
_IOV_MAX: Final = 1024
# Linux only; elsewhere the header may go in a segment of its own.
_MSG_MORE: Final = getattr(socket, "MSG_MORE", 0)
