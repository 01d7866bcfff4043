"""What both sides of an ftx connection share, sans-IO in the style of h11: the protocol's
constants and feature names, :class:`ErrorCode`, and the base of the two state machines,
:class:`~ftx.protocol._client_side.ClientProtocol` and
:class:`~ftx.protocol._server_side.ServerProtocol`.

Each checks that the messages going out and coming in follow the protocol: the handshake first,
then requests answered in order, every file header followed by exactly the announced number of
DATA bytes, every upload's DATA (from the client, after READY) adding up to the size its PUT
announced, and so on. They turn frame payloads into :mod:`ftx.protocol.messages` objects and
back, and never do I/O; the trio code in :mod:`ftx.client` and :mod:`ftx.server` moves the
payloads.

Misuse on our side raises :class:`~ftx.errors.LocalProtocolError` (nothing was sent); anything
wrong that the peer sends raises :class:`~ftx.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Concatenate, Final, ParamSpec, TypeVar

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.framing import Buffer
from ftx.protocol._blocks import RANGES_FEATURE
from ftx.protocol._digests import (
    BLAKE3_FEATURE,
    DIGEST_ALGORITHMS,
    DIGEST_FEATURES,
    XXH3_FEATURE,
    DigestChoice,
    Hasher,
    check_digest_choice,
    choose_digest,
    new_hasher,
)
from ftx.protocol._responses import (
    MAX_LIST_ENTRIES,
    MAX_PENDING_REQUESTS,
    MAX_TREE_ASKS,
)
from ftx.protocol._tree_types import TREE_FEATURE, TREE_PUT_FEATURE
from ftx.protocol.messages import (
    Data,
    Hello,
    Kind,
    Message,
    decode_message,
    encode_message,
)

__all__ = [
    "BLAKE3_FEATURE",
    "DIGEST_ALGORITHMS",
    "DIGEST_FEATURES",
    "LARGE_DATA_FEATURE",
    "MAX_LIST_ENTRIES",
    "MAX_PENDING_REQUESTS",
    "MAX_TREE_ASKS",
    "MIN_FRAME_SIZE",
    "PORTABLE_IDENTITY_FEATURE",
    "PROTOCOL_VERSION",
    "RANGES_FEATURE",
    "SUPPORTED_VERSIONS",
    "TREE_FEATURE",
    "TREE_PUT_FEATURE",
    "UPLOAD_FEATURE",
    "XXH3_FEATURE",
    "DigestChoice",
    "ErrorCode",
    "Hasher",
    "check_digest_choice",
    "choose_digest",
    "new_hasher",
]

DATA_KIND: Final = int(Kind.DATA)
PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)
# A peer must accept frames at least this large, so that a file chunk or a listing page fits.
MIN_FRAME_SIZE: Final = 64 * 1024
UPLOAD_FEATURE: Final = "upload"
# Listed by a peer that sends DATA frames up to the other's max_data_frame_size, and accepts
# them up to its own (docs/protocol.md, section 20); control frames keep max_frame_size.
LARGE_DATA_FEATURE: Final = "large-data"
# Listed by a server whose identities are portable between servers holding the same file
# (docs/protocol.md, section 9.4): informational, nothing is sent differently.
PORTABLE_IDENTITY_FEATURE: Final = "identity-portable"
"""Listed by a server that accepts uploads (PUT, MKDIR) and by a client that can send them. A
client sends PUT and MKDIR only when both list it."""


class ErrorCode(enum.StrEnum):
    """The error codes of the protocol. A peer may send codes this version does not know."""

    NOT_FOUND = "not-found"
    NOT_A_FILE = "not-a-file"
    NOT_A_DIRECTORY = "not-a-directory"
    PERMISSION_DENIED = "permission-denied"
    OUTSIDE_ROOT = "outside-root"
    BAD_REQUEST = "bad-request"
    BUSY = "busy"
    CHANGED = "changed"
    INTERNAL = "internal"
    UNSUPPORTED_VERSION = "unsupported-version"
    SHUTTING_DOWN = "shutting-down"
    TIMEOUT = "timeout"
    READ_ONLY = "read-only"
    EXISTS = "exists"
    TOO_LARGE = "too-large"
    NO_SPACE = "no-space"
    DIGEST_MISMATCH = "digest-mismatch"
    TLS_REQUIRED = "tls-required"
    UNAUTHORIZED = "unauthorized"


_P = TypeVar("_P", bound="_Protocol")
_A = ParamSpec("_A")
_R = TypeVar("_R")


def _latching(receive: Callable[Concatenate[_P, _A], _R]) -> Callable[Concatenate[_P, _A], _R]:
    """Once ``receive`` (a method taking what the peer sent) has raised RemoteProtocolError,
    it raises again on every later call, and so does every other method so wrapped: after a
    protocol violation nothing the peer sends can be trusted (sending, e.g. a farewell ERROR,
    still works)."""

    @functools.wraps(receive)
    def latched(self: _P, /, *args: _A.args, **kwargs: _A.kwargs) -> _R:
        if self._failure is not None:
            raise RemoteProtocolError(f"the peer already broke the protocol: {self._failure}")
        try:
            return receive(self, *args, **kwargs)
        except RemoteProtocolError as exc:
            self._failure = exc
            raise

    return latched


class _Protocol:
    def __init__(self, hello: Hello) -> None:
        self.local_hello: Final = hello
        self.peer_hello: Hello | None = None
        self.closed = False
        self._failure: RemoteProtocolError | None = None

    @property
    def version(self) -> int | None:
        """The major version in use, once the handshake is done."""
        raise NotImplementedError

    @property
    def features(self) -> frozenset[str]:
        """The optional features both sides support (empty before the handshake)."""
        if self.peer_hello is None:
            return frozenset()
        return self.local_hello.features & self.peer_hello.features

    @property
    def peer_max_frame_size(self) -> int:
        """The largest frame payload the peer accepts."""
        if self.peer_hello is None:
            return MIN_FRAME_SIZE
        return self.peer_hello.max_frame_size

    @property
    def peer_max_data_frame_size(self) -> int:
        """The largest DATA payload the peer accepts: its ``max_data_frame_size`` when
        ``large-data`` is in use, else its frame limit."""
        hello = self.peer_hello
        if hello is None or hello.max_data_frame_size is None:
            return self.peer_max_frame_size
        if LARGE_DATA_FEATURE not in self.features:
            return hello.max_frame_size
        return max(hello.max_frame_size, hello.max_data_frame_size)

    @property
    def max_data_frame_size(self) -> int:
        """The largest DATA payload this side accepts now (see :attr:`peer_max_data_frame_size`)."""
        local = self.local_hello
        if local.max_data_frame_size is None or LARGE_DATA_FEATURE not in self.features:
            return local.max_frame_size
        return max(local.max_frame_size, local.max_data_frame_size)

    def _encode(self, message: Message) -> tuple[Buffer, ...]:
        parts = encode_message(message)
        size = sum(memoryview(part).nbytes for part in parts)
        if self.peer_hello is not None:
            limit = (
                self.peer_max_data_frame_size
                if isinstance(message, Data)
                else self.peer_hello.max_frame_size
            )
            if size > limit:
                raise LocalProtocolError(
                    f"a {type(message).__name__} of {size} bytes exceeds the peer's frame limit"
                )
        return parts

    def _decode(self, payload: Buffer) -> Message | None:
        if self.closed:
            raise RemoteProtocolError("message after the connection was closed with an error")
        size = memoryview(payload).nbytes
        if self.peer_hello is None:
            # Before its HELLO the peer cannot know our limit: it may send MIN_FRAME_SIZE.
            if size > MIN_FRAME_SIZE:
                raise RemoteProtocolError(
                    f"a frame of {size} bytes before the handshake, where at most "
                    f"{MIN_FRAME_SIZE} are allowed"
                )
        elif size > self.local_hello.max_frame_size and (
            # Only DATA may exceed the frame limit, and only with large-data (section 20).
            memoryview(payload)[0] != DATA_KIND or size > self.max_data_frame_size
        ):
            raise RemoteProtocolError(
                f"a frame of {size} bytes exceeds the limit of "
                f"{self.local_hello.max_frame_size} bytes"
            )
        return decode_message(payload)

    def _check_peer_hello(self, hello: Hello) -> None:
        if hello.max_frame_size < MIN_FRAME_SIZE:
            raise RemoteProtocolError(
                f"the peer's frame limit of {hello.max_frame_size} bytes is below the "
                f"minimum of {MIN_FRAME_SIZE}"
            )
        if hello.max_data_frame_size is not None and hello.max_data_frame_size < MIN_FRAME_SIZE:
            raise RemoteProtocolError(
                f"the peer's DATA frame limit of {hello.max_data_frame_size} bytes is below the "
                f"minimum of {MIN_FRAME_SIZE}"
            )
        self.peer_hello = hello
