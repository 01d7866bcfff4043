"""The exceptions ftx raises.

The tree is small on purpose, in the style of h11 and wsproto::

    FtxError
    ├── ProtocolError                 a peer (us or them) broke the rules of the wire format
    │   ├── LocalProtocolError        we were asked to send something illegal
    │   └── RemoteProtocolError       the peer sent something illegal
    │       ├── FrameTooLargeError    a frame header announced more than the receiver accepts
    │       └── IncompleteFrameError  the byte stream ended inside a frame
    ├── RemoteError                   the server refused a request (it carries an error code)
    ├── ConnectionLostError           the connection died before a response was complete
    ├── IntegrityError                the bytes received do not match the sender's digest
    ├── AuthenticationError           the server did not prove who it is (TLS, pin, token)
    └── LocalFileError                the downloaded file could not be written or published

The layers above add a few of their own, each deriving from :class:`FtxError` too:
:class:`ftx.fs.FsError` (the sandbox refused a path or an operation, for a reason of its own
that the server translates into a wire error code), ``WriteStalledError`` (the server's peer
stopped reading; also a :class:`trio.BrokenResourceError`) and the command line's ``CliError``
(a message and an exit code). Private ones, used for control flow inside one module, derive
from it as well.

trio's own ``ClosedResourceError``, ``BrokenResourceError``, ``BusyResourceError`` and
``EndOfChannel`` are not wrapped by the framing layer: they pass through unchanged.

This module imports nothing else of ftx, so that :mod:`ftx.framing` can be embedded alone.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConnectionLostError",
    "FrameTooLargeError",
    "FtxError",
    "IncompleteFrameError",
    "IntegrityError",
    "LocalFileError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteError",
    "RemoteProtocolError",
]


class FtxError(Exception):
    """Base class of every exception that ftx raises on purpose."""


class ProtocolError(FtxError):
    """The rules of the wire format were broken. Not raised itself: see the two subclasses.

    Attributes:
        error_code: the protocol error code to report to the peer, when there is a peer to tell
            (``"bad-request"`` unless a subclass says otherwise).
    """

    error_code: str = "bad-request"

    def __init__(self, message: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError, not ProtocolError")
        super().__init__(message)


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol forbids; nothing was sent."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or messages that break the protocol.

    Whatever a peer sends, the sans-IO decoders raise this (or a subclass) and nothing else.
    """


class FrameTooLargeError(RemoteProtocolError):
    """A frame header announced a payload larger than the receiver's ``max_frame_size``.

    Raised as soon as the four header bytes arrive, before any of the body is buffered.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"the peer announced a frame of {size} bytes, larger than the limit of {limit} bytes"
        )


class IncompleteFrameError(RemoteProtocolError):
    """The byte stream ended in the middle of a frame (inside its header or its payload)."""

    def __init__(self, received: int, expected: int) -> None:
        self.received = received
        self.expected = expected
        super().__init__(
            f"the connection ended inside a frame: {received} of {expected} bytes arrived"
        )


class RemoteError(FtxError):
    """The server answered a request with an error.

    Attributes:
        code: the protocol error code, e.g. ``"not-found"`` (see :class:`ftx.ErrorCode`); a
            code this version does not know is kept as the string the server sent.
        message: the server's human-readable explanation.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{message} [{code}]")


class ConnectionLostError(FtxError):
    """The connection closed or broke before the server finished answering."""


class IntegrityError(FtxError):
    """The bytes received do not match the digest the sender computed: nothing was published."""


class AuthenticationError(FtxError):
    """The server did not prove who it is: its TLS certificate did not verify (or is not the
    pinned one), or it does not know the shared token. Nothing was sent to it but the handshake.

    (A server that refuses *us* answers with a :class:`RemoteError` instead, code
    ``unauthorized``.)
    """


class LocalFileError(FtxError):
    """The local side of a transfer failed: the destination exists, is not writable, the disk is
    full, or the like. Its ``__cause__`` is the underlying :class:`OSError` when there is one."""
