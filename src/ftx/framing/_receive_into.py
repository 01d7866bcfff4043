""":meth:`FramedChannel.receive_into <ftx.framing.FramedChannel.receive_into>`: a payload put
straight into a caller's buffer, most of it read from the socket with ``recv_into``, around the
decoder, through a few private methods of :class:`~ftx.framing._decoder.FrameDecoder`.
"""

from __future__ import annotations

import trio

from ftx.framing._decoder import FrameDecoder
from ftx.framing._socket_io import socket_errors_as_stream_errors

__all__ = ["receive_into"]


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
