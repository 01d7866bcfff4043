"""What a tree upload did, reported as it goes (:class:`TreePutReport`): each file through its
callbacks, and the totals a progress display draws."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from ftx.errors import FtxError

__all__ = ["TreePutReport"]


@dataclass(slots=True)
class TreePutReport:
    """What a tree upload did, reported as it goes: ``stored(path, size)``,
    ``failed(path, error)``, ``skipped(local, reason)``, ``unchanged(path)``; and the totals."""

    stored: Callable[[str, int], object] = lambda path, size: None
    failed: Callable[[str, FtxError], object] = lambda path, error: None
    skipped: Callable[[Path, str], object] = lambda local, reason: None
    unchanged: Callable[[str], object] = lambda path: None
    files: int = 0
    bytes: int = 0
    failures: int = 0
    up_to_date: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # sent, not yet answered
    queued: int = 0  # large files put aside for a PUT after the stream
    queued_bytes: int = 0
    sending: dict[str, int] = field(default_factory=dict)  # large files being sent: bytes sent
    listing_done: bool = False  # the whole tree was walked (and its stream sent)

    @property
    def in_flight(self) -> Collection[str]:
        """The large files being sent now (for a progress display)."""
        return self.sending.keys()

    @property
    def files_found(self) -> int:
        """The files seen so far: answered, in flight and queued (for a progress display)."""
        return self.files_done + len(self.sizes) + self.queued

    @property
    def files_done(self) -> int:
        """The files answered so far: stored, failed or up to date."""
        return self.files + self.failures + self.up_to_date

    @property
    def bytes_found(self) -> int:
        """The bytes of the files stored, in flight and queued."""
        return self.bytes + sum(self.sizes.values()) + self.queued_bytes

    @property
    def bytes_done(self) -> int:
        """The bytes stored so far, and those sent of the large files being sent."""
        return self.bytes + sum(self.sending.values())

    def note_stored(self, path: str) -> None:
        size = self.sizes.pop(path, 0)
        self.files += 1
        self.bytes += size
        self.stored(path, size)

    def note_failed(self, path: str, error: FtxError) -> None:
        self.sizes.pop(path, None)
        self.failures += 1
        self.failed(path, error)

    def note_unchanged(self, path: str) -> None:
        self.up_to_date += 1
        self.unchanged(path)
