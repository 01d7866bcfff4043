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

Everything here blocks: the handler calls it from worker threads, one call at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Final

from ftx._syncfs import syncfs
from ftx.framing import Buffer
from ftx.fs import FsEntry, FsError, FsReason, ServedRoot, is_upload_in_progress
from ftx.protocol import ErrorCode, new_hasher
from ftx.protocol.messages import HaveRecord, TreeRecord
from ftx.server._fs_wire import error_code
from ftx.server._writes import PartStamp, UploadTarget, check_upload_name, write_error

__all__ = ["COMMIT_BYTES", "COMMIT_FILES", "Failure", "Stored", "TreeStore"]

COMMIT_FILES: Final = 2048
"""A commit is due once this many files wait to be published..."""
COMMIT_BYTES: Final = 32 << 20
"""... or this many bytes."""
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_NAME_BYTES: Final = 255
_HASH_BLOCK: Final = 1 << 20


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


@dataclass(slots=True)
class _Dir:
    path: str
    fd: int


@dataclass(frozen=True, slots=True)
class _Written:
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
        self._open: list[_Dir] = []  # directories with parts waiting, the current one last
        self._failed: list[str] = []
        self._pending: list[_Written] = []
        self.pending_bytes = 0

    @property
    def pending_files(self) -> int:
        """How many files wait for the next commit."""
        return len(self._pending)

    def close(self) -> None:
        """Close every descriptor (the parts not committed stay, as after a lost upload)."""
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
        if self._open and self._open[-1] is self._current and not self._has_pending(self._current):
            os.close(self._open.pop().fd)
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
        self._open.append(self._current)
        return None

    def _has_pending(self, directory: _Dir | None) -> bool:
        return any(written.directory is directory for written in self._pending[-1:])

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
        try:
            existing = os.stat(record.name, dir_fd=directory.fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        except OSError as exc:
            raise write_error(exc, path) from None
        target = UploadTarget(os.dup(directory.fd), record.name, path)
        with target:
            if existing is not None:
                if stat.S_ISDIR(existing.st_mode):
                    raise FsError(FsReason.NOT_A_FILE, f"{path!r} is a directory")
                if not (stat.S_ISREG(existing.st_mode) or stat.S_ISLNK(existing.st_mode)):
                    raise FsError(FsReason.NOT_A_FILE, f"{path!r} is not a regular file")
                if existing.st_nlink > 1:
                    target.forget_published_part(existing)
                if not self._overwrite:
                    raise FsError(FsReason.EXISTS, f"{path!r} already exists")
            target.open_part(source=None, size=record.size)
            try:
                target.write(data, 0)
                stamp = target.finish_part(record.mtime_ns)
            except BaseException:
                target.discard()
                raise
        self._pending.append(_Written(directory, record.name, stamp))
        self.pending_bytes += record.size

    def commit(self) -> tuple[list[Stored], list[Failure]]:
        """Publish every part written since the last commit (see the module's docstring);
        return the files stored, by directory, and the failures."""
        pending, self._pending, self.pending_bytes = self._pending, [], 0
        stored: list[Stored] = []
        failures: list[Failure] = []
        if not pending:
            return stored, failures
        grouped = self._top >= 0 and _flush_all(self._top, pending, failures)
        touched: list[_Dir] = []
        for written in pending:
            directory = written.directory
            path = _join(directory.path, written.name)
            target = UploadTarget(os.dup(directory.fd), written.name, path)
            try:
                target.reopen_part(written.stamp)
                if not grouped:
                    os.fsync(target_fd(target))
                target.publish(overwrite=self._overwrite, mtime_ns=None, durable=False)
            except FsError as exc:
                target.discard()
                failures.append(_fail(path, exc))
                continue
            except OSError as exc:
                target.discard()
                failures.append(_fail(path, write_error(exc, path)))
                continue
            finally:
                target.close()
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
        self._close_done()
        return stored, failures

    def _close_done(self) -> None:
        """Close the directories no part waits in, but the current one."""
        keep = [d for d in self._open if d is self._current]
        for directory in self._open:
            if directory is not self._current:
                with contextlib.suppress(OSError):
                    os.close(directory.fd)
        self._open = keep

    def have_pages(
        self, path: str, checksum: bool, max_records: int, max_bytes: int
    ) -> Generator[list[HaveRecord], None, None]:
        """What the server has in the directory ``path`` of the tree, in pages: its regular
        files (not following links; names a tree stream cannot carry, and part files, left
        out), with their digests if ``checksum``. Nothing if the directory is missing or is
        not one."""
        fd = os.dup(self._top)
        try:
            for name in path.split("/") if path else ():
                inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
        except OSError:
            os.close(fd)
            return
        try:
            page: list[HaveRecord] = []
            size = 0
            with os.scandir(fd) as entries:
                for entry in entries:
                    record = self._have(fd, entry, checksum)
                    if record is None:
                        continue
                    weight = 6 * len(record.name.encode()) + 200
                    if page and (len(page) >= max_records or size + weight > max_bytes):
                        yield page
                        page, size = [], 0
                    page.append(record)
                    size += weight
            if page:
                yield page
        finally:
            os.close(fd)

    def _have(self, fd: int, entry: os.DirEntry[str], checksum: bool) -> HaveRecord | None:
        name = entry.name
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            return None
        if size > _MAX_NAME_BYTES or "\\" in name or is_upload_in_progress(name):
            return None
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        digest = _file_digest(fd, name, self._algorithm) if checksum else None
        return HaveRecord(name, st.st_size, st.st_mtime_ns, digest)


class _Refusal(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def target_fd(target: UploadTarget) -> int:
    """The open part's descriptor (for a flush where ``syncfs`` is missing)."""
    return target._part_fd()


def _flush_all(top: int, pending: list[_Written], failures: list[Failure]) -> bool:
    """One ``syncfs`` for the data of every part; False where it is missing (each part is
    then flushed on its own)."""
    try:
        return syncfs(top)
    except OSError as exc:
        message = f"cannot flush to disk: {os.strerror(exc.errno or 0)}"
        failures += [Failure(_join(w.directory.path, w.name), "internal", message) for w in pending]
        pending.clear()
        return True


def _file_digest(dir_fd: int, name: str, algorithm: str) -> str | None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        hasher = new_hasher(algorithm)
        position = 0
        while block := os.pread(fd, _HASH_BLOCK, position):
            hasher.update(block)
            position += len(block)
        return hasher.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


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
