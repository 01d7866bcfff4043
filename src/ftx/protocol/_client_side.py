"""The client's side of a connection: :class:`ClientProtocol`, the sans-IO state machine that
checks what a client sends and receives (see :mod:`ftx.protocol._connection` for what both
sides share)."""

from __future__ import annotations

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.framing import DEFAULT_MAX_FRAME_SIZE, Buffer
from ftx.protocol._auth import (
    AUTH_FEATURE,
    ClientAuthenticator,
    ClientAuthState,
)
from ftx.protocol._blocks import BLOCK_PROGRESS_FEATURE, RANGES_FEATURE, overflows
from ftx.protocol._connection import (
    SUPPORTED_VERSIONS,
    UPLOAD_FEATURE,
    _latching,
    _Protocol,
)
from ftx.protocol._digests import (
    DIGEST_ALGORITHMS,
)
from ftx.protocol._responses import (
    Responses,
)
from ftx.protocol._tree_types import TREE_FEATURE, TREE_PUT_FEATURE
from ftx.protocol.messages import (
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
)

__all__ = ["ClientProtocol"]


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

    @_latching
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
