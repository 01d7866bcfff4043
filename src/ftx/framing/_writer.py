"""How :class:`~ftx.framing.FramedChannel` writes: whole frames' bytes to its transport, with a
bounded pending buffer, and the cancellation rules that keep the framing whole.

On a :class:`trio.SocketStream` the bytes go straight to the socket, non-blocking first: a frame
the kernel takes at once costs one system call and no wait. A frame is *committed* once its
first byte is written; from then on its remaining bytes are kept in the pending buffer (so a
cancellation can no longer cut it short: they go out before any later frame). On any other
stream the bytes go through ``send_all``, which does not say how much it wrote when cancelled,
so a cancelled write there breaks the channel, as :class:`trio.SSLStream` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import suppress
from typing import Final

import trio

from ftx.errors import LocalProtocolError
from ftx.framing._format import Buffer, FrameFormat
from ftx.framing._socket_io import read_up_to, sendfile, write_some

__all__ = ["JOIN_THRESHOLD", "FrameWriter", "encode_frames"]

# Below this, a frame is joined with its header into one write: two tiny writes on a TCP_NODELAY
# socket would cost two segments. Above it, copying the payload costs more than a second write.
JOIN_THRESHOLD: Final = 16 * 1024


class FrameWriter:
    """Writes frames' bytes to ``stream`` in order; holds at most ``buffer_size`` bytes queued
    by :meth:`queue`, plus the rest of at most one committed frame."""

    def __init__(self, stream: trio.abc.Stream, buffer_size: int) -> None:
        self.stream = stream
        self.socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self.buffer_size = buffer_size
        self.pending = bytearray()  # queued or committed bytes not written yet, whole frames
        # Why writing broke: a transport error, or a cancelled send_all (some unknown part of a
        # frame may have gone out). Then the peer's framing is lost.
        self.broken: BaseException | None = None

    def queue(self, data: Sequence[Buffer], size: int) -> None:
        """Add ``size`` bytes (whole frames) to the pending buffer, without I/O.

        Raises:
            trio.WouldBlock: they would take it past ``buffer_size``; nothing was queued.
        """
        if len(self.pending) + size > self.buffer_size:
            raise trio.WouldBlock
        for part in data:
            self.pending += part

    async def write(self, data: Sequence[Buffer], size: int, written: int = 0) -> bool:
        """Write the pending bytes then ``data`` (``size`` bytes, whole frames, of which the
        first ``written`` went already, with nothing pending before them); return whether
        this was a checkpoint (it is only if it had to wait: the caller adds one otherwise).
        The caller has checked for cancellation already.

        Cancelled before the first byte of ``data`` is written, it raises
        :exc:`trio.Cancelled` and ``data`` is dropped. Cancelled after, it returns normally: the
        rest of ``data`` stays in the pending buffer, written before anything sent later.

        Raises:
            trio.Cancelled: as above.
            trio.BrokenResourceError, trio.ClosedResourceError: from the transport.
        """
        sock = self.socket
        if not size and not self.pending:
            return False
        if sock is None:
            if self.pending:
                data = [self.pending, *data]
                self.pending = bytearray()
            await self._write_through(data)
            return bool(data)
        waited = False
        if written == 0:
            if self.pending:
                waited = await self.flush()
            written = write_some(sock, data)
        while written == 0 and size:
            await trio.lowlevel.wait_writable(sock)  # Cancelled here: nothing of data went
            waited = True
            written = write_some(sock, data)
        if written == size:
            return waited
        self._keep_rest(data, written)
        # Committed: cancelled, the rest stays pending, and the caller's scope stays cancelled.
        with suppress(trio.Cancelled):
            await self.flush()
        return True

    async def flush(self) -> bool:
        """Write every pending byte; return whether this was a checkpoint (see :meth:`write`).
        Cancelled, it keeps what is left for the next write.

        Raises:
            trio.Cancelled, trio.BrokenResourceError, trio.ClosedResourceError: as
                :meth:`write`.
        """
        sock = self.socket
        if sock is None:
            if not self.pending:
                return False
            data, self.pending = self.pending, bytearray()
            await self._write_through([data])
            return True
        pending = self.pending
        waited = False
        while pending:
            written = write_some(sock, [pending])
            del pending[:written]
            if pending:
                await trio.lowlevel.wait_writable(sock)
                waited = True
        return waited

    async def write_file(self, head: bytes, fd: int, offset: int, count: int) -> int:
        """Write the pending bytes, then ``head`` and ``count`` bytes of file ``fd`` from
        ``offset`` (with ``os.sendfile`` on a socket, else read in a worker thread), padded with
        zeros if the file ends first; return how many came from the file. Any exception leaves
        an unknown part written: the caller breaks the channel."""
        await self.flush()
        stream = self.stream
        if self.socket is not None:
            sent = await sendfile(self.socket, head, fd, offset, count)
        else:
            sent = 0
            await stream.send_all(head)
        if sent < count:  # no sendfile, or it is not supported for this file
            data = await trio.to_thread.run_sync(read_up_to, fd, count - sent, offset + sent)
            await stream.send_all(data + bytes(count - sent - len(data)))
            sent += len(data)
        return sent

    def flush_nowait(self) -> None:
        """Write what the socket takes of the pending bytes now, without waiting (best effort:
        errors are left for the next write to find)."""
        if self.pending and self.socket is not None:
            try:
                written = write_some(self.socket, [self.pending])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            del self.pending[:written]

    def _keep_rest(self, data: Sequence[Buffer], written: int) -> None:
        """Copy what was not written of ``data`` into the pending buffer (the caller may reuse
        its buffers once it has returned)."""
        for part in data:
            view = memoryview(part).cast("B")
            if written >= view.nbytes:
                written -= view.nbytes
                continue
            self.pending += view[written:]
            written = 0

    async def _write_through(self, data: Sequence[Buffer]) -> None:
        try:
            for part in data:
                await self.stream.send_all(part)
        except BaseException as exc:
            self.broken = exc
            raise


def encode_frames(
    fmt: FrameFormat, max_frame_size: int, frames: Iterable[Iterable[Buffer]]
) -> tuple[list[Buffer], int]:
    """The writes of ``frames`` (each given as its parts) and their total size: headers and
    small parts joined, parts over :data:`JOIN_THRESHOLD` left as they are (never copied).

    Raises:
        TypeError: a frame is a buffer, not a sequence of parts.
        LocalProtocolError: a frame's payload would be over ``max_frame_size``, or the format
            cannot carry it.
    """
    writes: list[Buffer] = []
    pending = bytearray()
    total = 0
    plain = fmt.length_unpacker() is not None  # the payload is the value: no prefix to insert
    # For those formats, a size within max_frame_size is one the field can announce.
    pack_length = fmt.length_packer() if plain else fmt.encode_length
    for frame in frames:
        if isinstance(frame, bytes | bytearray | memoryview):
            raise TypeError("each frame is a sequence of parts: send_frames((payload,), ...)")
        # A tuple first: a generator of parts would be used up by counting its size.
        parts = frame if type(frame) is tuple or type(frame) is list else tuple(frame)
        if plain and len(parts) == 1 and type(part := parts[0]) is bytes:
            size = len(part)
            if size <= JOIN_THRESHOLD and size <= max_frame_size:
                # The common case, a small frame of one part: its header and it, joined.
                header = pack_length(size)
                pending += header
                pending += part
                total += len(header) + size
                continue
        sizes = [len(part) if type(part) is bytes else memoryview(part).nbytes for part in parts]
        size = sum(sizes)
        payload = size if plain else fmt.sent_payload_size(size)
        if payload > max_frame_size:
            raise LocalProtocolError(
                f"a frame of {payload} bytes is larger than the limit of {max_frame_size} bytes"
            )
        if fmt.length_offset:
            encoded = fmt.encode(b"".join(parts))
            pending += encoded
            total += len(encoded)
            continue
        header = pack_length(size)
        pending += header
        total += len(header) + size
        for part, part_size in zip(parts, sizes, strict=True):
            if part_size <= JOIN_THRESHOLD:
                pending += part
            else:
                if pending:
                    writes.append(pending)
                    pending = bytearray()
                writes.append(part)
    if pending:
        writes.append(pending)
    return writes, total
