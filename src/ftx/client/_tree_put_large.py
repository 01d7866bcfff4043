"""The large files of a tree upload (``put -r``): sent after the stream as PUTs, which resume
and are verified as a single file's upload is, over the tree's connection and up to
``jobs - 1`` more.

Each PUT waits for the server twice (READY, then DONE), so files side by side on several
connections go faster than one after another, most of all over a network with some latency.
An extra connection is a helper: whatever goes wrong with it (refused as busy, lost), the file
it held goes back to the queue and the connection leaves; the tree's own connection sends
whatever is left, and its failures are the upload's.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from ftx._threads import run_together
from ftx.client._upload import UploadWire, send_file
from ftx.errors import FtxError, IntegrityError, LocalFileError, RemoteError
from ftx.protocol import ErrorCode

if TYPE_CHECKING:
    from ftx.client._tree_put_report import TreePutReport

__all__ = ["Connect", "LargeFile", "send_large_files"]

logger = logging.getLogger("ftx.client")

Connect = Callable[[], Awaitable[AbstractAsyncContextManager[UploadWire]]]
"""Makes one more connection to the same server (an open :class:`ftx.Client`, which
``send_large_files`` closes when it is done with it)."""

LargeFile = tuple[Path, str, int]
"""``(local path, remote path, size as the walk saw it)``."""


async def send_large_files(
    client: UploadWire,
    files: list[LargeFile],
    report: TreePutReport,
    overwrite: bool,
    *,
    jobs: int = 1,
    connect: Connect | None = None,
) -> None:
    """Send ``files`` (counted in ``report.queued`` until they start) with PUT, over
    ``client`` and, given ``connect``, up to ``jobs - 1`` more connections; report each
    through ``report``.

    Raises:
        ConnectionLostError, RemoteProtocolError: ``client``'s connection failed (files sent
            on it or on the others were reported; a re-run sends the rest).
    """
    queue = deque(files)

    async def send_from(wire: UploadWire, *, extra: bool) -> None:
        while queue:
            item = queue.popleft()
            report.queued -= 1
            report.queued_bytes -= item[2]
            try:
                await _put_large(wire, *item, overwrite, report)
            except BaseException:
                if extra:  # give it back: the tree's own connection sends it
                    queue.appendleft(item)
                    report.queued += 1
                    report.queued_bytes += item[2]
                raise

    async def extra_connection() -> None:
        assert connect is not None
        try:
            async with await connect() as wire:
                await send_from(wire, extra=True)
        except (FtxError, OSError) as exc:
            logger.debug("an extra connection for large files left: %s", exc)

    extras = min(jobs, len(files)) - 1 if connect is not None else 0
    await run_together(lambda: send_from(client, extra=False), *[extra_connection] * max(extras, 0))
    await send_from(client, extra=False)  # what the others gave back


async def _put_large(
    client: UploadWire, local: Path, remote: str, size: int, overwrite: bool, report: TreePutReport
) -> None:
    """One large file; a failure of that file alone is reported, not raised."""
    report.sizes[remote] = size  # in flight (as the walk saw it)
    report.sending[remote] = 0

    def progress(done: int, total: int) -> None:
        report.sending[remote] = done

    try:
        upload = await send_file(
            client,
            local,
            remote,
            progress=progress,
            overwrite=overwrite,
            resume=True,
            preserve_mtime=True,
        )
    except RemoteError as exc:
        if exc.code == ErrorCode.EXISTS and not overwrite:
            exc = RemoteError(exc.code, f"{exc.message} (use --force to replace it)")
        report.note_failed(remote, exc)
    except (IntegrityError, LocalFileError) as exc:
        report.note_failed(remote, exc)
    else:
        report.sizes[remote] = upload.size
        report.sending.pop(remote, None)  # (counted in note_stored's bytes from now on)
        report.note_stored(remote)
    finally:
        report.sending.pop(remote, None)
