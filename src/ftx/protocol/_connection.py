"""The ftx protocol state machines. Sans-IO, in the style of h11.

A :class:`ClientProtocol` and a :class:`ServerProtocol` each check that the messages going out
and coming in follow the protocol: the handshake first, then requests answered in order, every
file header followed by exactly the announced number of DATA bytes, every upload's DATA (from
the client, after READY) adding up to the size its PUT announced, and so on. They turn
frame payloads into :mod:`ftx.protocol.messages` objects and back, and never do I/O; the trio code
in
:mod:`ftx.client` and :mod:`ftx.server` moves the payloads.

Misuse on our side raises :class:`~ftx.errors.LocalProtocolError` (nothing was sent); anything
wrong that the peer sends raises :class:`~ftx.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Final, TypeVar

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.framing import DEFAULT_MAX_FRAME_SIZE, Buffer
from ftx.protocol._auth import (
    AUTH_FEATURE,
    ClientAuthenticator,
    ClientAuthState,
    ServerAuthenticator,
    ServerAuthState,
)
from ftx.protocol._blocks import BLOCK_PROGRESS_FEATURE, RANGES_FEATURE, overflows
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
    Request,
    Responses,
)
from ftx.protocol._tree_types import TREE_FEATURE, TREE_PUT_FEATURE
from ftx.protocol.messages import (
    DATA_PREFIX,
    Auth,
    AuthOk,
    BlockProgress,
    Blocks,
    Challenge,
    Data,
    Error,
    FileEnd,
    Get,
    Hello,
    Kind,
    ListDir,
    MakeDir,
    Message,
    Put,
    TreeAsk,
    TreeDir,
    TreeFiles,
    TreeGet,
    TreeHave,
    TreeHaveEnd,
    TreePut,
    TreePutEnd,
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
    "ClientProtocol",
    "DigestChoice",
    "ErrorCode",
    "Hasher",
    "ServerProtocol",
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


def _latching(
    receive: Callable[[_P, Buffer], Message | None],
) -> Callable[[_P, Buffer], Message | None]:
    """Once ``receive`` has raised, it raises again on every later call: after a protocol
    violation nothing the peer sends can be trusted (sending, e.g. a farewell ERROR, still
    works)."""

    @functools.wraps(receive)
    def latched(self: _P, payload: Buffer) -> Message | None:
        if self._failure is not None:
            raise RemoteProtocolError(f"the peer already broke the protocol: {self._failure}")
        try:
            return receive(self, payload)
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


class ClientProtocol(_Protocol):
    """The client side: sends HELLO and requests, checks the server's answers.

    Call :meth:`send` for each message to send and frame what it returns; pass each frame
    payload received to :meth:`receive`.
    """

    def __init__(
        self,
        *,
        features: frozenset[str] = frozenset(),
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        agent: str = "",
        auth: ClientAuthenticator | None = None,
        max_data_frame_size: int | None = None,
    ) -> None:
        if auth is not None:
            features = features | {AUTH_FEATURE}
        hello = Hello(SUPPORTED_VERSIONS, features, max_frame_size, agent, max_data_frame_size)
        super().__init__(hello)
        self._auth = ClientAuthState(auth)
        self._hello_sent = False
        self._responses = Responses(RemoteProtocolError)
        self._next_id = 1

    @property
    def version(self) -> int | None:
        return None if self.peer_hello is None else self.peer_hello.versions[0]

    def new_request_id(self) -> int:
        """A request id not used before on this connection."""
        request_id = self._next_id
        self._next_id = (self._next_id + 1) % (1 << 32)
        return request_id

    def send(self, message: Message) -> tuple[Buffer, ...]:
        """Check that ``message`` may be sent now and return its frame payload.

        The first message must be :attr:`local_hello`; then requests
        (:class:`~ftx.protocol.messages.Get`,
        :class:`~ftx.protocol.messages.ListDir`; with :data:`UPLOAD_FEATURE` in use also
        :class:`~ftx.protocol.messages.Put` and :class:`~ftx.protocol.messages.MakeDir`), which may
        be pipelined,
        except that after a PUT nothing but its own DATA and END may be sent until its END (and
        those only once its READY has arrived).

        Raises:
            LocalProtocolError: the message may not be sent now.
        """
        if self.closed:
            raise LocalProtocolError("the connection was closed with an error")
        if not self._hello_sent:
            if message != self.local_hello:
                raise LocalProtocolError("the client must send its HELLO first")
            parts = self._encode(message)
            self._hello_sent = True
        elif isinstance(message, Auth):
            parts = self._encode(message)
            self._auth.sent(message)
        elif not self._auth.done:
            raise LocalProtocolError("authenticate first: the server's AUTH_OK has not arrived")
        elif isinstance(message, TreeHave | TreeHaveEnd):
            parts = self._encode(message)
            self._responses.check_have(message, LocalProtocolError)
        elif isinstance(message, TreeDir | TreeFiles | TreeAsk | TreePutEnd):
            parts = self._encode(message)
            self._responses.check_tree_upload(message, LocalProtocolError)
        elif isinstance(message, Get | ListDir | Put | MakeDir | Blocks | TreeGet | TreePut):
            if isinstance(message, TreeGet) and TREE_FEATURE not in self.features:
                raise LocalProtocolError(f"the server does not offer the {TREE_FEATURE!r} feature")
            if isinstance(message, TreePut):
                if TREE_PUT_FEATURE not in self.features:
                    raise LocalProtocolError(
                        f"the server does not offer the {TREE_PUT_FEATURE!r} feature"
                    )
                if message.digest not in DIGEST_ALGORITHMS:
                    raise LocalProtocolError(f"unknown digest algorithm {message.digest!r}")
            if isinstance(message, Get) and message.digest not in DIGEST_ALGORITHMS | {None}:
                raise LocalProtocolError(f"unknown digest algorithm {message.digest!r}")
            if isinstance(message, Get) and message.length is not None:
                _check_ranged_get(message, self.features)
            if isinstance(message, Blocks):
                if RANGES_FEATURE not in self.features:
                    raise LocalProtocolError(f"the server does not offer {RANGES_FEATURE!r}")
                if message.digest not in DIGEST_ALGORITHMS:
                    raise LocalProtocolError(f"unknown digest algorithm {message.digest!r}")
            if isinstance(message, Put | MakeDir) and UPLOAD_FEATURE not in self.features:
                raise LocalProtocolError(
                    f"the server does not offer the {UPLOAD_FEATURE!r} feature"
                )
            if isinstance(message, Put) and message.digest not in DIGEST_ALGORITHMS:
                raise LocalProtocolError(f"unknown digest algorithm {message.digest!r}")
            parts = self._encode(message)  # first: a message too large changes no state
            self._responses.add(message, LocalProtocolError)
        elif isinstance(message, Data | FileEnd):
            parts = self._encode(message)
            self._responses.check_upload(message, LocalProtocolError)
        else:
            raise LocalProtocolError(f"a client cannot send {type(message).__name__}")
        return parts

    @_latching
    def receive(self, payload: Buffer) -> Message | None:
        """Decode and check one frame payload from the server.

        Returns the message, or ``None`` for an extension message to ignore.

        Raises:
            RemoteProtocolError: the payload is malformed or out of order.
        """
        message = self._decode(payload)
        if message is None:
            return None
        if self.peer_hello is None:
            if isinstance(message, Error) and message.request_id is None:
                self.closed = True
                return message
            if not isinstance(message, Hello):
                raise RemoteProtocolError(f"expected HELLO, got {type(message).__name__}")
            if len(message.versions) != 1 or message.versions[0] not in SUPPORTED_VERSIONS:
                raise RemoteProtocolError(f"the server chose an unknown version {message.versions}")
            self._check_peer_hello(message)
            self._auth.start(AUTH_FEATURE in message.features)
            return message
        if isinstance(message, Challenge | AuthOk):
            self._auth.receive(message)
            return message
        if isinstance(message, BlockProgress) and BLOCK_PROGRESS_FEATURE not in self.features:
            raise RemoteProtocolError(
                f"BLOCK_PROGRESS without the {BLOCK_PROGRESS_FEATURE!r} feature"
            )
        self._responses.check(message)
        if isinstance(message, Error) and message.request_id is None:
            self.closed = True
        return message

    def receive_data_frame(self, size: int) -> None:
        """Check the start of a DATA frame of ``size`` payload bytes (kind byte included) whose
        content the caller takes as it arrives, without a :class:`Data` (a big file's bulk
        path): everything :meth:`receive` checks of a DATA message that long.

        Raises:
            RemoteProtocolError: DATA is out of place, or the frame is over the DATA limit.
        """
        if self.closed:
            raise RemoteProtocolError("message after the connection was closed with an error")
        if self.peer_hello is None:
            raise RemoteProtocolError("expected HELLO, got Data")
        if size > self.local_hello.max_frame_size and size > self.max_data_frame_size:
            raise RemoteProtocolError(
                f"a frame of {size} bytes exceeds the limit of "
                f"{self.local_hello.max_frame_size} bytes"
            )
        self._responses.check_data(size - 1)

    def auth_answer(self) -> Auth:
        """The AUTH to send once the server's CHALLENGE has arrived (see
        :mod:`ftx.protocol._auth`)."""
        return self._auth.answer()

    @property
    def authenticated(self) -> bool:
        """Whether requests may be sent: no token is used, or the server proved it knows it."""
        return self._auth.done

    @property
    def pending_requests(self) -> int:
        """How many requests are still waiting for (the end of) their answer."""
        return len(self._responses)


class ServerProtocol(_Protocol):
    """The server side: checks HELLO and requests, and the answers the server sends.

    After :meth:`receive` returns the client's :class:`~ftx.protocol.messages.Hello`,
    :attr:`version` is
    the version chosen, or ``None`` if the client speaks none that we do: then send an
    ``unsupported-version`` :class:`~ftx.protocol.messages.Error` and close.
    """

    def __init__(
        self,
        *,
        features: frozenset[str] = frozenset(),
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        agent: str = "",
        auth: ServerAuthenticator | None = None,
    ) -> None:
        if auth is not None:
            features = features | {AUTH_FEATURE}
        super().__init__(Hello((PROTOCOL_VERSION,), features, max_frame_size, agent))
        self._auth = ServerAuthState(auth)
        self._version: int | None = None
        self._hello_sent = False
        self._requests = Responses(LocalProtocolError)

    @property
    def version(self) -> int | None:
        return self._version

    @property
    def auth(self) -> ServerAuthState:
        """The token exchange: :attr:`~ftx.protocol._auth.ServerAuthState.refused` after a HELLO
        that
        does not offer it when a token is required (answer ``unauthorized`` instead of HELLO);
        then CHALLENGE right after HELLO, AUTH received, and AUTH_OK (or, if
        :attr:`~ftx.protocol._auth.ServerAuthState.rejected`, an ``unauthorized`` ERROR)."""
        return self._auth

    def hello_reply(self) -> Hello:
        """The HELLO to send back once the client's HELLO arrived and a version was chosen."""
        if self._version is None:
            raise LocalProtocolError("no version was agreed")
        return Hello((self._version,), *_hello_fields(self.local_hello))

    @_latching
    def receive(self, payload: Buffer) -> Message | None:
        """Decode and check one frame payload from the client.

        Returns the message, or ``None`` for an extension message to ignore.

        Raises:
            RemoteProtocolError: the payload is malformed or breaks the protocol.
        """
        message = self._decode(payload)
        if message is None:
            return None
        if self.peer_hello is None:
            if not isinstance(message, Hello):
                raise RemoteProtocolError(f"expected HELLO, got {type(message).__name__}")
            self._check_peer_hello(message)
            common = set(message.versions) & set(SUPPORTED_VERSIONS)
            self._version = max(common) if common else None
            self._auth.start(AUTH_FEATURE in message.features)
            return message
        if not self._hello_sent:
            raise RemoteProtocolError("request before the handshake finished")
        if not self._auth.done:
            self._auth.receive(message)
            return message
        if isinstance(message, Data | FileEnd):
            self._requests.check_upload(message, RemoteProtocolError)
            return message
        if isinstance(message, TreeHave | TreeHaveEnd):
            self._requests.check_have(message, RemoteProtocolError)
            return message
        if isinstance(message, TreeDir | TreeFiles | TreeAsk | TreePutEnd):
            self._requests.check_tree_upload(message, RemoteProtocolError)
            return message
        # PUT and MKDIR are accepted even when UPLOAD_FEATURE is not in use: a server that does
        # not offer it answers them with a read-only ERROR rather than closing the connection.
        # BLOCKS too, from a client that did not list RANGES_FEATURE: this server knows it.
        # So is TREE: a server without TREE_FEATURE refuses it as a bad request.
        # TREE_PUT too: without TREE_PUT_FEATURE in use the server reads the stream and
        # refuses it after its end (read-only).
        if not isinstance(message, Get | ListDir | Put | MakeDir | Blocks | TreeGet | TreePut):
            raise RemoteProtocolError(f"a client cannot send {type(message).__name__}")
        self._requests.add(message, RemoteProtocolError)
        return message

    @property
    def current_request(self) -> Request | None:
        """The oldest request not yet fully answered: the one to answer next."""
        return self._requests.current

    def send(self, message: Message) -> tuple[Buffer, ...]:
        """Check that ``message`` may be sent now and return its frame payload.

        Raises:
            LocalProtocolError: the message may not be sent now (e.g. more DATA than the file
                header announced, or an answer to a request that is not the current one).
        """
        if self.closed:
            raise LocalProtocolError("the connection was closed with an error")
        parts = self._encode(message)  # first: a message too large changes no state
        if isinstance(message, Error) and message.request_id is None:
            self.closed = True
        elif isinstance(message, Hello):
            if self._hello_sent or message != self.hello_reply():
                raise LocalProtocolError("HELLO is sent once, as hello_reply() gives it")
            self._hello_sent = True
        elif not self._hello_sent:
            raise LocalProtocolError("HELLO must be sent first")
        elif isinstance(message, Challenge | AuthOk):
            self._auth.sent(message)
        elif not self._auth.done:
            raise LocalProtocolError("the client has not proved it knows the token")
        elif isinstance(message, BlockProgress) and BLOCK_PROGRESS_FEATURE not in self.features:
            raise LocalProtocolError(
                f"BLOCK_PROGRESS without the {BLOCK_PROGRESS_FEATURE!r} feature"
            )
        else:
            self._requests.check(message)
        return parts

    def send_data_prefix(self, size: int) -> bytes:
        """Check that a :class:`~ftx.protocol.messages.Data` of ``size`` bytes may be sent now, as
        :meth:`send` does, and return the start of its payload: the caller sends the ``size``
        bytes of content after it itself, e.g. from a file with
        :meth:`ftx.framing.FramedChannel.send_file` (like h11's data passthrough).

        Raises:
            LocalProtocolError: the data may not be sent now.
        """
        if self.closed:
            raise LocalProtocolError("the connection was closed with an error")
        if not self._hello_sent or not self._auth.done:
            raise LocalProtocolError("file data before the handshake was done")
        self._requests.check_data(size)
        return DATA_PREFIX


def _check_ranged_get(message: Get, features: frozenset[str]) -> None:
    """A GET with a ``length`` needs :data:`RANGES_FEATURE`, asks for no digest, and ends
    within 2^63-1.

    Raises:
        LocalProtocolError: it breaks one of those rules.
    """
    if RANGES_FEATURE not in features:
        raise LocalProtocolError(f"a GET with a length needs the {RANGES_FEATURE!r} feature")
    if message.digest is not None:
        raise LocalProtocolError("a GET with a length asks for no digest (block digests check it)")
    if overflows(message.offset, message.length):
        raise LocalProtocolError("offset + length lies beyond 2^63-1")


def _hello_fields(hello: Hello) -> tuple[frozenset[str], int, str, int | None]:
    return hello.features, hello.max_frame_size, hello.agent, hello.max_data_frame_size
