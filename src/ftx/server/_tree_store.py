"""The disk side of a tree upload (docs/protocol.md section 23): directories made one component
at a time, small files written to part files, and group commits.

Every directory is created and opened relative to its parent's descriptor with ``O_NOFOLLOW``:
a symbolic link or a file where a directory should be fails that directory (and everything
under it), never followed. Each file is checked against its record's digest before anything is
written, then written to its part file by :class:`~ftx.server._writes.UploadTarget` (the rules
of every upload: ``O_NOFOLLOW``, a lone regular file, locked), given its time and closed. A
*commit* publishes the parts written since the last one: one ``syncfs`` makes their data
durable, then each part is reopened (only if untouched since: same inode, size and change
time), linked to its name (never replacing anything unless the upload may overwrite), and one
more ``syncfs`` makes the names durable. Only then are the files reported stored. Where
``syncfs`` is missing, each part and each directory is flushed on its own.

A part itself (written, published) is :mod:`ftx.server._tree_parts`; the answer to an ask is
:mod:`ftx.server._tree_have`. Everything here blocks: the handler calls it from worker threads,
one write at a time, and at most one commit beside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Final

from ftx._names import sibling_name
from ftx._syncfs import syncfs
from ftx.errors import FtxError
from ftx.framing import Buffer
from ftx.fs import FsEntry, FsError, FsReason, ServedRoot
from ftx.protocol import ErrorCode, new_hasher
from ftx.protocol.messages import HaveRecord, TreeRecord
from ftx.server._fs_wire import error_code
from ftx.server._tree_have import have_pages
from ftx.server._tree_parts import CREATE_FLAGS, publish_part, write_new_part
from ftx.server._writes import (
    PART_SUFFIX,
    PartStamp,
    UploadTarget,
    check_upload_name,
    write_error,
)

__all__ = ["COMMIT_BYTES", "COMMIT_FILES", "Failure", "Part", "Stored", "TreeStore"]

COMMIT_FILES: Final = 2048
"""A commit is due once this many files wait to be published..."""
COMMIT_BYTES: Final = 32 << 20
"""... or this many bytes."""
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Failure:
    """An entry of the tree not stored: ``path`` relative to the tree's root."""

    path: str
    code: str
    message: str


@dataclass(slots=True)
class Stored:
    """Files of the directory ``path`` (of the tree) published and flushed."""

    path: str
    names: list[str] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Dir:
    path: str
    fd: int
    users: int = 1  # its use as the current directory, and each part waiting in it


@dataclass(frozen=True, slots=True)
class Part:
    """A part written and closed, waiting to be published as `name` in `directory`."""

    directory: _Dir
    name: str
    stamp: PartStamp


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _fail(path: str, exc: FsError) -> Failure:
    return Failure(path, error_code(exc), exc.message)


class TreeStore:
    """Where one tree upload lands: the directory ``path`` inside ``root``.

    Args:
        root: the served root.
        path: the tree's directory, relative to the root; created if missing (its parent must
            exist), ``""`` for the root itself.
        overwrite: whether files that exist may be replaced (the client asked, the server
            allows it).
        algorithm: the digest every record carries.
        max_size: the largest file accepted, or ``None``.

    Raises:
        FsError: the tree's directory is refused, or cannot be made or opened.
    """

    def __init__(
        self,
        root: ServedRoot,
        path: str,
        *,
        overwrite: bool,
        algorithm: str,
        max_size: int | None,
    ) -> None:
        self._overwrite = overwrite
        self._algorithm = algorithm
        self._max_size = max_size
        self._top = _open_top(root, path)
        self._current: _Dir | None = None  # None: the current directory failed
        self._current_path = ""
        # Directories open: the current one, and those parts wait in. A commit may run in
        # another thread than the writes: each directory counts its users under this lock.
        self._lock = threading.Lock()
        self._open: set[_Dir] = set()
        self._failed: list[str] = []
        self._pending: list[Part] = []
        self.pending_bytes = 0

    @property
    def pending_files(self) -> int:
        """How many files wait for the next commit."""
        return len(self._pending)

    def close(self) -> None:
        """Close every descriptor (the parts not committed stay, as after a lost upload). Call
        it once no write or commit runs."""
        for directory in self._open:
            with contextlib.suppress(OSError):
                os.close(directory.fd)
        self._open.clear()
        self._current = None
        if self._top >= 0:
            os.close(self._top)
            self._top = -1

    def enter(self, path: str) -> Failure | None:
        """Make ``path`` (names checked by the decoder, joined by ``/``) the current directory,
        creating what is missing; return the failure of that directory, if it is reported now
        (not for a directory below one that failed already)."""
        if self._current is not None:
            self._release(self._current, 1)
        self._current = None
        self._current_path = path
        if any(path == failed or path.startswith(failed + "/") for failed in self._failed):
            return None
        fd = os.dup(self._top)
        try:
            for index, name in enumerate(path.split("/") if path else ()):
                inner = _make_directory(fd, name, "/".join(path.split("/")[: index + 1]))
                os.close(fd)
                fd = inner
        except FsError as exc:
            os.close(fd)
            self._failed.append(path)
            return _fail(path, exc)
        self._current = _Dir(path, fd)
        with self._lock:
            self._open.add(self._current)
        return None

    def _release(self, directory: _Dir, uses: int) -> None:
        """``directory`` has ``uses`` fewer users: closed once it has none."""
        with self._lock:
            directory.users -= uses
            if directory.users:
                return
            self._open.discard(directory)
        os.close(directory.fd)

    def failure_of(self, path: str) -> Failure | None:
        """The failure a file at ``path`` (in the current directory) inherits from its
        directory, if that failed."""
        if self._current is not None:
            return None
        for failed in self._failed:
            if path.startswith(failed + "/"):
                return Failure(path, ErrorCode.NOT_A_DIRECTORY, f"its directory {failed!r} failed")
        return Failure(path, ErrorCode.NOT_A_DIRECTORY, "its directory failed")

    def write(self, records: tuple[TreeRecord, ...], content: Buffer) -> list[Failure]:
        """Verify the files of one TREE_FILES frame and write each to its part file, in the
        current directory; return the failures (the rest wait for :meth:`commit`)."""
        failures: list[Failure] = []
        view = memoryview(content).cast("B")
        offset = 0
        directory = self._current
        prefix = self._current_path
        room = self._free_space(directory, sum(record.size for record in records))
        for record in records:
            data = view[offset : offset + record.size]
            offset += record.size
            path = _join(prefix, record.name)
            if directory is None:
                failure = self.failure_of(path)
                assert failure is not None
                failures.append(failure)
                continue
            try:
                self._write_one(directory, record, data, path, room)
            except FsError as exc:
                failures.append(_fail(path, exc))
            except _Refusal as exc:
                failures.append(Failure(path, exc.code, exc.message))
        return failures

    def _free_space(self, directory: _Dir | None, wanted: int) -> bool:
        if directory is None:
            return True
        try:
            st = os.fstatvfs(directory.fd)
        except OSError:
            return True  # the writes themselves say what is wrong
        return st.f_bavail * st.f_frsize >= wanted

    def _write_one(
        self, directory: _Dir, record: TreeRecord, data: memoryview, path: str, room: bool
    ) -> None:
        check_upload_name(record.name, path)
        if self._max_size is not None and record.size > self._max_size:
            message = f"{record.size} bytes is more than this server accepts ({self._max_size})"
            raise _Refusal(ErrorCode.TOO_LARGE, message)
        hasher = new_hasher(self._algorithm)
        hasher.update(data)
        if hasher.hexdigest() != record.digest:
            message = f"the data received for {path!r} does not match its digest; not stored"
            raise _Refusal(ErrorCode.DIGEST_MISMATCH, message)
        if not room:
            raise FsError(FsReason.NO_SPACE, f"not enough space on the server for {path!r}")
        part = sibling_name(record.name, PART_SUFFIX)
        try:
            fd = os.open(part, CREATE_FLAGS, 0o644, dir_fd=directory.fd)
        except FileExistsError:  # left by an upload cut short: taken over as PUT would
            stamp = self._write_taken_over(directory, record, data, path)
        except OSError as exc:
            raise write_error(exc, path) from None
        else:
            stamp = write_new_part(fd, directory.fd, part, record.mtime_ns, data, path)
        with self._lock:
            directory.users += 1
        self._pending.append(Part(directory, record.name, stamp))
        self.pending_bytes += record.size

    def _write_taken_over(
        self, directory: _Dir, record: TreeRecord, data: memoryview, path: str
    ) -> PartStamp:
        """Write through the part an earlier upload left (or one in progress: ``busy``),
        with every check of :meth:`~ftx.server._writes.UploadTarget.open_part`."""
        with UploadTarget(os.dup(directory.fd), record.name, path) as target:
            existing = target.existing()
            if existing is not None and existing.st_nlink > 1:
                target.forget_published_part(existing)  # (a publish cut short)
            target.open_part(source=None, size=record.size)
            try:
                target.write(data, 0)
                return target.finish_part(record.mtime_ns)
            except BaseException:
                target.discard()
                raise

    def take(self) -> list[Part]:
        """The parts written since the last :meth:`take`: to :meth:`publish`, in this thread
        or another one, while more are written."""
        pending, self._pending, self.pending_bytes = self._pending, [], 0
        return pending

    def commit(self) -> tuple[list[Stored], list[Failure]]:
        """:meth:`publish` every part written since the last commit."""
        return self.publish(self.take())

    def publish(self, pending: list[Part]) -> tuple[list[Stored], list[Failure]]:
        """Publish the parts ``pending`` (see the module's docstring); return the files stored,
        by directory, and the failures."""
        try:
            return self._publish_all(pending)
        finally:
            uses: dict[_Dir, int] = {}
            for written in pending:
                uses[written.directory] = uses.get(written.directory, 0) + 1
            for directory, count in uses.items():
                self._release(directory, count)

    def _publish_all(self, pending: list[Part]) -> tuple[list[Stored], list[Failure]]:
        stored: list[Stored] = []
        failures: list[Failure] = []
        if not pending:
            return stored, failures
        grouped = _flush_all(self._top, pending, failures)
        touched: list[_Dir] = []
        for written in [] if failures else pending:
            directory = written.directory
            path = _join(directory.path, written.name)
            try:
                publish_part(
                    directory.fd,
                    written.name,
                    written.stamp,
                    path,
                    overwrite=self._overwrite,
                    flush=not grouped,
                )
            except FsError as exc:
                failures.append(_fail(path, exc))
                continue
            if not stored or stored[-1].path != directory.path:
                stored.append(Stored(directory.path))
                touched.append(directory)
            stored[-1].names.append(written.name)
        try:
            if not (grouped and syncfs(self._top)):
                for directory in touched:
                    os.fsync(directory.fd)
        except OSError as exc:
            # Published, but maybe not durable: not reported stored (a re-run checks).
            message = f"cannot flush the tree to disk: {os.strerror(exc.errno or 0)}"
            for entry in stored:
                failures += [
                    Failure(_join(entry.path, n), "internal", message) for n in entry.names
                ]
            stored = []
        return stored, failures

    def have_pages(
        self, path: str, checksum: bool, max_records: int, max_bytes: int
    ) -> Generator[list[HaveRecord], None, None]:
        """What the server has in the directory ``path`` of the tree (see
        :func:`~ftx.server._tree_have.have_pages`)."""
        algorithm = self._algorithm if checksum else None
        return have_pages(self._top, path, algorithm, max_records, max_bytes)


class _Refusal(FtxError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _flush_all(top: int, pending: list[Part], failures: list[Failure]) -> bool:
    """One ``syncfs`` for the data of every part; False where it is missing (each part is
    then flushed on its own). If it fails, every part fails (and stays, unpublished)."""
    try:
        return syncfs(top)
    except OSError as exc:
        message = f"cannot flush to disk: {os.strerror(exc.errno or 0)}"
        failures += [Failure(_join(w.directory.path, w.name), "internal", message) for w in pending]
        return True


def _make_directory(parent: int, name: str, path: str) -> int:
    """Create (if needed) and open the directory ``name`` in ``parent``, never through a link.
    Raises FsError."""
    check_upload_name(name, path)
    try:
        os.mkdir(name, 0o777, dir_fd=parent)
    except FileExistsError:
        pass
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            message = f"{path!r} exists on the server and is not a directory"
            raise FsError(FsReason.EXISTS, message) from None
        raise write_error(exc, path) from None


def _open_top(root: ServedRoot, path: str) -> int:
    """Open (creating its last component if needed) the tree's directory. Raises FsError."""
    if path.strip("/") in ("", "."):
        listing = root.list_directory("")
        if isinstance(listing, FsEntry):  # pragma: no cover - the root is a directory
            raise FsError(FsReason.NOT_FOUND, "the root is not a directory")
        with listing:
            return os.dup(listing.fd)
    parent, name = root.open_parent(path)
    try:
        return _make_directory(parent, name, path)
    finally:
        os.close(parent)
