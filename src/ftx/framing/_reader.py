"""How :class:`~ftx.framing.FramedChannel` reads: :func:`read_frame` (the transport into the
decoder, until a frame is whole) and :func:`receive_into` (a payload put straight into a
caller's buffer, most of it read from the socket with ``recv_into``, around the decoder, through
a few private methods of :class:`~ftx.framing._decoder.FrameDecoder`).
"""

from __future__ import annotations

from typing import Final

import trio

from ftx.framing._decoder import FrameDecoder
from ftx.framing._socket_io import read_some, socket_errors_as_stream_errors

__all__ = ["MAX_RECEIVE_SIZE", "read_frame", "receive_into"]

# Never ask the transport for more than this in one read.
MAX_RECEIVE_SIZE: Final = 1 << 20


async def read_frame(
    decoder: FrameDecoder, stream: trio.abc.ReceiveStream, chunk_size: int
) -> bytes:
    """Read from ``stream`` until ``decoder`` has a whole frame; return its payload (the caller
    checked for cancellation and found no frame buffered). A checkpoint.

    On a :class:`trio.SocketStream` it reads the socket directly, non-blocking, after one
    scheduler trip: a sender in this process has then had its turn, so the read finds its bytes
    rather than an empty socket (a wait for readability costs more).

    Raises:
        trio.EndOfChannel: the peer closed cleanly on a frame boundary.
        RemoteProtocolError: from the decoder.
        trio.BrokenResourceError, trio.ClosedResourceError: from the transport.
    """
    sock = stream.socket if isinstance(stream, trio.SocketStream) else None
    waited = False
    if sock is not None and not decoder.eof:
        # The checkpoint first: a sender in this process then has had its turn, so the
        # read that follows finds its bytes rather than an empty socket (a wait costs more).
        await trio.lowlevel.cancel_shielded_checkpoint()
        waited = True
    while True:
        if decoder.eof:
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            raise trio.EndOfChannel
        want = min(max(decoder.bytes_needed, chunk_size), MAX_RECEIVE_SIZE)
        if sock is None:
            data = await stream.receive_some(want)
            waited = True
        else:
            read = read_some(sock, want)
            while read is None:
                await trio.lowlevel.wait_readable(sock)
                waited = True
                read = read_some(sock, want)
            data = read
        decoder.receive_data(data)
        payload = decoder.next_frame()
        if payload is not None:
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return payload


async def receive_into(
    decoder: FrameDecoder, stream: trio.abc.ReceiveStream, view: memoryview, chunk_size: int
) -> int:
    """Receive the next frame's payload into ``view`` (large enough); return its size.

    A checkpoint; cancelled, it loses nothing: the bytes taken go back to the decoder.

    Raises:
        trio.EndOfChannel: the peer closed cleanly on a frame boundary.
        RemoteProtocolError: from the decoder.
        trio.BrokenResourceError, trio.ClosedResourceError: from the transport.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    waited = await _receive_header(decoder, stream, chunk_size)
    size = decoder._start_frame()
    assert size is not None
    filled = decoder._take_payload_into(view[:size])
    try:
        while filled < size:
            count = await _receive_straight_into(stream, view[filled:size])
            waited = True
            if count == 0:
                raise decoder._end_of_stream_in_payload()
            decoder._payload_read(count)
            filled += count
    except BaseException:
        # Cancelled, or the transport failed (and may recover): the bytes taken go back, so
        # that the next receive returns the whole frame, or nothing.
        if decoder._error is None:
            decoder._unread_payload(bytes(view[:filled]))
        raise
    if not waited:
        await trio.lowlevel.cancel_shielded_checkpoint()
    return size


async def _receive_header(
    decoder: FrameDecoder, stream: trio.abc.ReceiveStream, chunk_size: int
) -> bool:
    """Receive until the decoder has the next frame's header; return whether it waited.

    Raises:
        trio.EndOfChannel: the peer closed cleanly on a frame boundary.
    """
    waited = False
    while decoder._start_frame() is None:
        if decoder.eof:
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            raise trio.EndOfChannel
        data = await stream.receive_some(chunk_size)
        waited = True
        decoder.receive_data(data)
    return waited


async def _receive_straight_into(stream: trio.abc.ReceiveStream, view: memoryview) -> int:
    """Read from the transport into ``view``, around the decoder; 0 means end of stream."""
    if isinstance(stream, trio.SocketStream):
        with socket_errors_as_stream_errors():
            return await stream.socket.recv_into(view)
    data = await stream.receive_some(view.nbytes)
    view[: len(data)] = data
    return len(data)
