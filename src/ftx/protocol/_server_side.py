"""The server's side of a connection: :class:`ServerProtocol`, the sans-IO state machine that
checks what a server receives and sends (see :mod:`ftx.protocol._connection` for what both
sides share)."""

from __future__ import annotations

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.framing import DEFAULT_MAX_FRAME_SIZE, Buffer
from ftx.protocol._auth import (
    AUTH_FEATURE,
    ServerAuthenticator,
    ServerAuthState,
)
from ftx.protocol._blocks import BLOCK_PROGRESS_FEATURE
from ftx.protocol._connection import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    _latching,
    _Protocol,
)
from ftx.protocol._responses import (
    Request,
    Responses,
)
from ftx.protocol.messages import (
    DATA_PREFIX,
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

__all__ = ["ServerProtocol"]


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


def _hello_fields(hello: Hello) -> tuple[frozenset[str], int, str, int | None]:
    return hello.features, hello.max_frame_size, hello.agent, hello.max_data_frame_size
