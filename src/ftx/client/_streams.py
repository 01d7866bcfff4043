"""Two more ends for a download than a part file: a descriptor the bytes are written to as they
arrive (:class:`StreamPart`, for ``ftx get -o -``), and the digest of a local file, to compare a
copy with the server's without a transfer (:func:`file_digest`, for ``--checksum``)."""

from __future__ import annotations

import os
from typing import Final

from ftx.client._partfile import DiscardingPart
from ftx.errors import LocalFileError
from ftx.framing import Buffer
from ftx.protocol import new_hasher

__all__ = ["StreamPart", "file_digest"]

_HASH_BLOCK: Final = 1 << 20


def file_digest(path: str | os.PathLike[str], algorithm: str) -> str:
    """The hex digest of the local file at ``path`` with ``algorithm`` (to compare with the
    server's: ``--checksum``). Blocks: run it in a worker thread.

    Raises:
        OSError: the file cannot be read.
    """
    hasher = new_hasher(algorithm)
    with open(path, "rb", buffering=0) as file:
        buffer = memoryview(bytearray(_HASH_BLOCK))
        while count := file.readinto(buffer):
            hasher.update(buffer[:count])
    return hasher.hexdigest()


class StreamPart(DiscardingPart):
    """A download to an open descriptor, standard output say (``ftx get HOST FILE -o -``): the
    bytes are written there as they arrive, and verified only at the end, once they are out
    (nothing to resume, rename or take back). :attr:`written` counts them."""

    def __init__(self, fd: int, name: str = "-") -> None:
        super().__init__(name)
        self._out = fd
        self.written = 0

    def write(self, data: Buffer) -> None:
        """Write all of ``data``.

        Raises:
            BrokenPipeError: the reader went away.
            LocalFileError: another write error.
        """
        view = memoryview(data).cast("B")
        try:
            while view:
                count = os.write(self._out, view)
                view = view[count:]
                self.written += count
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise LocalFileError(f"cannot write to {self.dest}: {exc.strerror}") from exc
