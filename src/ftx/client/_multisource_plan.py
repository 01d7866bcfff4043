"""The plan of a download from several sources (:mod:`ftx.client._multisource`): the reference
content the sources are checked against, the blocks still to fetch and those verified (kept in
``DEST.part.blocks`` between runs), and the whole-file digest of the part file, computed as the
verified blocks form a longer prefix of it."""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

import trio

from ftx.client._partfile import PartFile
from ftx.client._ranges import BlockRecord
from ftx.errors import IntegrityError, LocalFileError
from ftx.protocol import new_hasher
from ftx.protocol.messages import BlockList

__all__ = [
    "Plan",
    "WholeDigest",
    "check_whole",
    "choose_reference",
    "open_part",
    "safe_mode",
    "save_record",
]

logger = logging.getLogger("ftx.client")

_HASH_READ: Final = 1 << 20
_S = TypeVar("_S")


@dataclass(slots=True)
class Plan:
    """The blocks still to fetch, and who is fetching what (state shared by the workers)."""

    reference: BlockList
    pending: deque[int]
    done: set[int]
    in_flight: int = 0
    received: int = 0
    mode: int | None = None  # the file's permission bits, from a FILE header
    changed: trio.Event = field(default_factory=trio.Event)
    saving: trio.Lock = field(default_factory=trio.Lock)

    def block_range(self, index: int) -> tuple[int, int]:
        start = index * self.reference.block_size
        return start, min(self.reference.size, start + self.reference.block_size)

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


def _content(answer: BlockList) -> tuple[object, ...]:
    return (answer.size, answer.block_size, answer.blocks, answer.file_digest)


def choose_reference(
    lists: dict[_S, BlockList], name: Callable[[_S], str], on_dropped: Callable[[str, str], object]
) -> BlockList:
    """The content most sources hold (ties: the one named first); the others are removed from
    ``lists`` and named."""
    votes = Counter(_content(answer) for answer in lists.values())
    best = max(votes.values())
    reference = next(a for a in lists.values() if votes[_content(a)] == best)
    for source, answer in list(lists.items()):
        if _content(answer) != _content(reference):
            del lists[source]
            differing = sum(a != b for a, b in zip(answer.blocks, reference.blocks, strict=False))
            what = (
                f"{answer.size} bytes where the others have {reference.size}"
                if answer.size != reference.size
                else f"{differing} of {len(reference.blocks)} blocks differ"
            )
            on_dropped(name(source), f"its copy differs from the others' ({what})")
    return reference


def open_part(part: PartFile, path: str, reference: BlockList, resume: bool) -> tuple[Plan, int]:
    """Open the part file, taking over the blocks an earlier run verified if it fetched the
    same content; return the plan of what remains and the bytes held already."""
    done: set[int] = set()
    earlier = BlockRecord.load(part.part_path) if resume else None
    wanted = BlockRecord(
        path,
        reference.size,
        reference.digest,
        reference.file_digest,
        reference.block_size,
        frozenset(),
    )
    if earlier is not None and earlier.same_file(wanted):
        try:
            held_size = part.part_path.stat().st_size
        except OSError:
            held_size = -1
        if held_size == reference.size:
            done = {index for index in earlier.done if index < len(reference.blocks)}
    if done:
        part.open(keep=reference.size)
    else:
        BlockRecord.remove(part.part_path)
        part.open()
        part.resize(reference.size)
    count = len(reference.blocks)
    plan = Plan(reference, deque(i for i in range(count) if i not in done), done)
    held = sum(plan.block_range(index)[1] - plan.block_range(index)[0] for index in done)
    if done:
        logger.debug("resuming: %d of %d blocks verified already", len(done), count)
    return plan, held


def safe_mode(mode: int | None) -> int | None:
    """The permission bits to give the file: read, write and execute only (never set-user-ID,
    set-group-ID or sticky), as :meth:`ftx.Client.get` does."""
    return None if mode is None else mode & 0o777


def save_record(part: PartFile, path: str, reference: BlockList, done: frozenset[int]) -> None:
    BlockRecord(
        path,
        reference.size,
        reference.digest,
        reference.file_digest,
        reference.block_size,
        done,
    ).save(part.part_path)


class WholeDigest:
    """The whole-file digest of the part file, computed while the download goes on: as the
    verified blocks form a longer prefix of the file, a worker thread reads that prefix back
    (from the page cache, just written) and hashes it. So the check at the end costs no wait
    once the last block is in, and reads only what was written.
    """

    def __init__(self, part: PartFile, plan: Plan) -> None:
        self._path = part.part_path
        self._plan = plan
        self._hasher = new_hasher(plan.reference.digest)
        self._next = 0  # the first block not hashed yet
        self.digest: str | None = None

    async def run(self) -> None:
        """Hash the blocks in order as they are verified, until the last (cancel to stop).

        Raises:
            LocalFileError: the part file cannot be read.
        """
        plan, count = self._plan, len(self._plan.reference.blocks)
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise LocalFileError(f"cannot read {self._path}: {exc.strerror}") from exc
        try:
            while self._next < count:
                end = self._next
                while end < count and end in plan.done:
                    end += 1
                if end == self._next:
                    await plan.changed.wait()  # (no checkpoint since the look: none missed)
                    continue
                first, last = plan.block_range(self._next)[0], plan.block_range(end - 1)[1]
                await trio.to_thread.run_sync(self._hash, fd, first, last)
                self._next = end
        finally:
            os.close(fd)
        self.digest = self._hasher.hexdigest()

    def _hash(self, fd: int, start: int, end: int) -> None:
        view = memoryview(bytearray(min(_HASH_READ, max(1, end - start))))
        try:
            while start < end:
                count = os.preadv(fd, [view[: min(len(view), end - start)]], start)
                if count == 0:
                    raise LocalFileError(f"{self._path} is shorter than the blocks written")
                self._hasher.update(view[:count])
                start += count
        except OSError as exc:
            raise LocalFileError(f"cannot read {self._path}: {exc.strerror}") from exc


def check_whole(part: PartFile, reference: BlockList, ours: str | None) -> None:
    """Compare the part file's whole-file digest with the reference's.

    Raises:
        IntegrityError: it differs (the part file and its record are removed).
    """
    if ours != reference.file_digest:
        BlockRecord.remove(part.part_path)
        part.discard()
        raise IntegrityError(
            f"the assembled file's {reference.digest} digest {ours} is not the sources' "
            f"{reference.file_digest}: nothing was saved"
        )
