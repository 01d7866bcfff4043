"""Hostile peers that speak the wire format by hand (docs/protocol.md only), for the tests of
issue 17: a client on a raw socket against a real server, and a scripted trio server against
the real client. Both build frames with ``encode_frame`` and ``encode_message``, or send raw
bytes, so that any field can be made wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from ftx.framing import FrameDecoder, encode_frame
from ftx.protocol import TREE_FEATURE
from ftx.protocol.messages import (
    Data,
    Entry,
    Error,
    FileEnd,
    FileHeader,
    Get,
    Hello,
    ListDir,
    ListEnd,
    ListEntries,
    Message,
    TreeGet,
    TreeHaveEnd,
    decode_message,
    encode_message,
)

LOOPBACK = "127.0.0.1"


def frame(message: Message) -> bytes:
    """The whole frame (length prefix included) of ``message``."""
    return encode_frame(b"".join(bytes(part) for part in encode_message(message)))


def json_frame(kind: int, body: bytes) -> bytes:
    """A frame of ``kind`` with ``body`` as it is: JSON of any shape, valid or not."""
    return encode_frame(bytes([kind]) + body)


def hello(features: frozenset[str] = frozenset(), agent: str = "hostile") -> bytes:
    return frame(Hello((1,), features, 1 << 20, agent))


class RawClient:
    """A client on a real socket that sends what it is told and decodes what comes back."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_frame_size=1 << 20)

    @classmethod
    async def connect(cls, port: int, *, features: frozenset[str] = frozenset()) -> RawClient:
        """Connect and shake hands (the server's HELLO is read)."""
        client = cls(await trio.open_tcp_stream(LOOPBACK, port))
        await client.send_raw(hello(features))
        answer = await client.receive()
        assert isinstance(answer, Hello), answer
        return client

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, *messages: Message) -> None:
        await self.stream.send_all(b"".join(frame(message) for message in messages))

    async def receive(self) -> Message | None:
        """The next message, or ``None`` once the server closed the connection."""
        while (payload := self._decoder.next_frame()) is None:
            try:
                data = await self.stream.receive_some(1 << 20)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self._decoder.receive_data(data)
        return decode_message(payload)

    async def receive_all(self) -> list[Message]:
        """Every message until the server closes the connection."""
        messages = []
        while (message := await self.receive()) is not None:
            messages.append(message)
        return messages

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await trio.aclose_forcefully(self.stream)


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


Script = Callable[["ScriptedConnection"], Awaitable[None]]


class ScriptedConnection:
    """One connection of a :class:`ScriptedServer`, from the server's side."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_frame_size=1 << 20)

    async def receive(self) -> Message | None:
        """The next message from the client, or ``None`` once it closed the connection."""
        while (payload := self._decoder.next_frame()) is None:
            try:
                data = await self.stream.receive_some(1 << 20)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            self._decoder.receive_data(data)
        return decode_message(payload)

    async def send(self, *messages: Message) -> None:
        await self.send_raw(b"".join(frame(message) for message in messages))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def handshake(self) -> Hello:
        """Answer the client's HELLO with version 1 and no features (so SHA-256 digests)."""
        client_hello = await self.receive()
        assert isinstance(client_hello, Hello), client_hello
        await self.send(Hello((1,), frozenset(), 1 << 20, "scripted"))
        return client_hello


class ScriptedServer:
    """A TCP server in the test's nursery that runs ``script`` on every connection; over TLS
    with ``ssl_context``, where ``close_notify=False`` cuts the TCP connection at the end of the
    script without a TLS close."""

    def __init__(
        self,
        script: Script,
        ssl_context: ssl.SSLContext | None = None,
        *,
        close_notify: bool = True,
    ) -> None:
        self.script = script
        self.ssl_context = ssl_context
        self.close_notify = close_notify
        self.port = 0
        self.connections = 0

    async def start(self, nursery: trio.Nursery) -> ScriptedServer:
        serve = partial(trio.serve_tcp, self._handle, 0, host=LOOPBACK)
        listeners = await nursery.start(serve)
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _handle(self, tcp: trio.SocketStream) -> None:
        self.connections += 1
        stream: trio.abc.Stream = tcp
        if self.ssl_context is not None:
            stream = trio.SSLStream(tcp, self.ssl_context, server_side=True)
        # The client may go away at any point: what the test checks is on its side.
        try:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.script(ScriptedConnection(stream))
                if self.close_notify:
                    await stream.aclose()
        finally:
            await trio.aclose_forcefully(tcp)


class TreeScript:
    """Answers LIST from ``listings`` (a path's entries exactly as given: duplicates and all)
    and GET from ``files`` (whole, with the right SHA-256), until the client closes."""

    def __init__(self, listings: dict[str, list[Entry]], files: dict[str, bytes]) -> None:
        self.listings = listings
        self.files = files
        self.requested: list[str] = []

    async def __call__(self, conn: ScriptedConnection) -> None:
        await conn.handshake()
        while (request := await conn.receive()) is not None:
            if isinstance(request, ListDir):
                self.requested.append(f"LIST {request.path}")
                entries = tuple(self.listings[request.path])
                if entries:
                    await conn.send(ListEntries(request.request_id, entries))
                await conn.send(ListEnd(request.request_id, len(entries)))
            elif isinstance(request, Get):
                self.requested.append(f"GET {request.path}")
                content = self.files.get(request.path)
                if content is None:
                    await conn.send(Error(request.request_id, "not-found", "no such file"))
                    continue
                identity = sha256_hex(request.path.encode())[:32]
                size = len(content)
                await conn.send(
                    FileHeader(request.request_id, size, 0, identity, 0, 0o644, request.digest),
                    Data(content),
                    FileEnd(request.request_id, sha256_hex(content)),
                )


def hostile_json(**members: object) -> bytes:
    """Compact JSON of ``members`` (surrogates pass through as ``\\u`` escapes)."""
    return json.dumps(members, separators=(",", ":")).encode()


class TreeStreamScript:
    """Offers tree streams; answers the first TREE with ``frames`` as they are (built with
    :func:`frame` or :func:`json_frame`, so names and counts may be anything), after reading
    the client's have-list to its end. What the client sent is kept in ``received``."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.received: list[Message] = []

    async def __call__(self, conn: ScriptedConnection) -> None:
        client_hello = await conn.receive()
        assert isinstance(client_hello, Hello), client_hello
        await conn.send(Hello((1,), frozenset({TREE_FEATURE}), 1 << 20, "scripted"))
        request = await conn.receive()
        assert isinstance(request, TreeGet), request
        self.received.append(request)
        if request.have:
            while not isinstance(message := await conn.receive(), TreeHaveEnd | None):
                self.received.append(message)
        await conn.send_raw(b"".join(self.frames))
        while await conn.receive() is not None:
            pass  # until the client closes
