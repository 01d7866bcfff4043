"""Length-prefixed frames over any byte stream.

Wire format (ftx's own, :data:`FTX_FORMAT`; any other length-prefixed header is described with
a :class:`FrameFormat`: length width, offset, byte order, adjustment, bytes to strip)::

    frame   = length payload
    length  = 4 octets, unsigned, big-endian: the number of payload octets (header excluded)
    payload = length octets (zero is allowed)

Two layers, in the h11 style:

* :class:`FrameDecoder` is sans-IO: feed it bytes with :meth:`~FrameDecoder.receive_data`, pull
  whole payloads with :meth:`~FrameDecoder.next_frame`. It never touches a socket, so it can be
  fuzzed and reused on any transport.
* :class:`FramedChannel` is a :class:`trio.abc.Channel` of ``bytes`` over any
  :class:`trio.abc.Stream` (TCP, :class:`trio.SSLStream`, memory streams, pipes): one ``send`` is
  one frame, one ``receive`` is one frame; ``send_nowait`` and ``flush`` batch small frames
  into one write.

The receiver enforces ``max_frame_size`` (1 MiB by default) the moment a header arrives, before
any of the body is buffered, so a peer cannot make us allocate more than that per connection.

Its errors (all from :mod:`ftx.errors`, all subclasses of :class:`FtxError`) are importable
from here too. This package imports nothing of ftx but :mod:`ftx.errors`, and importing it loads
neither the rest of ftx nor anything trio does not load already. Its private modules:
``_format`` and ``_decoder`` (sans-IO), ``_channel``, ``_writer``, ``_reader`` and
``_socket_io`` (trio I/O), ``_blocking`` (a worker thread owning the socket for a span),
``_tls_span`` (such a thread driving the TLS session of a :class:`trio.SSLStream`). The
distribution ftx-framing (packaging/ftx-framing) ships it alone.
"""

from ftx.errors import (
    FrameTooLargeError,
    FtxError,
    IncompleteFrameError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from ftx.framing._blocking import (
    BlockingReceiver,
    BlockingSender,
    IdleClock,
    SpanInterruptedError,
    SpanStalledError,
)
from ftx.framing._channel import FramedChannel
from ftx.framing._decoder import FrameDecoder, encode_frame, encode_header
from ftx.framing._format import (
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_SIZE_LIMIT,
    FTX_FORMAT,
    HEADER_SIZE,
    Buffer,
    FrameFormat,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_SIZE_LIMIT",
    "FTX_FORMAT",
    "HEADER_SIZE",
    "BlockingReceiver",
    "BlockingSender",
    "Buffer",
    "FrameDecoder",
    "FrameFormat",
    "FrameTooLargeError",
    "FramedChannel",
    "FtxError",
    "IdleClock",
    "IncompleteFrameError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "SpanInterruptedError",
    "SpanStalledError",
    "encode_frame",
    "encode_header",
]
