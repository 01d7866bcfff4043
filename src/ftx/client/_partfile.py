"""The client's side of the disk: a download is written to ``DEST.part`` and appears at ``DEST``
only once it is complete, verified, flushed to disk and renamed into place.

Beside the part file, a small *resume record* (``DEST.part.resume``, JSON) says what the part
holds: the remote path, the server's identity token for the file, its size and the digest
algorithm. A later download of the same path continues from the part only if the server still
has the file with that identity; otherwise it starts again from zero. Old and new bytes are never
spliced together.

Everything here blocks; the client calls it from worker threads where a call may take long.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from ftx._names import sibling_name
from ftx.client._destination import check_replaceable, is_null_device
from ftx.errors import LocalFileError
from ftx.framing import Buffer
from ftx.protocol import Hasher

__all__ = [
    "RESUMABLE_SIZE",
    "DiscardingPart",
    "PartFile",
    "ResumeRecord",
    "part_file_name",
    "part_for",
]

_RECORD_VERSION: Final = 1
_MAX_RECORD_BYTES: Final = 64 * 1024
_HASH_BLOCK: Final = 1 << 20

RESUMABLE_SIZE: Final = 1 << 20
"""Transfers of fewer bytes are not set up for a resume, neither downloads (no resume record)
nor uploads (no source token, so the server keeps no record): sending them again costs less
than the record."""


def part_file_name(name: str) -> str:
    """The name of the part file a download to the file named ``name`` goes through."""
    return sibling_name(name, ".part")


def part_for(target: Path) -> PartFile:
    """The part file a download to ``target`` goes through: a :class:`DiscardingPart` for the
    null device, else a :class:`PartFile`."""
    return DiscardingPart(target) if is_null_device(target) else PartFile(target)


@dataclass(frozen=True, slots=True)
class ResumeRecord:
    """What a part file holds the beginning of."""

    path: str
    identity: str
    size: int
    digest: str | None


# Early write-back (see PartFile._start_write_back) is asked for every this many bytes. Each
# request can block while the disk's queue is full; every 64 MiB measured faster than every
# 8 MiB (1 GiB to disk, interleaved: 1.25-1.45 s against 1.33-1.70 s, medians of 3-4 runs).
_WRITE_BACK_STEP: Final = 64 << 20


class PartFile:
    """A download in progress: written to ``DEST.part``, published at ``DEST`` when complete.

    :meth:`open` takes an exclusive lock on the part file, so two downloads to the same
    destination cannot interleave. :meth:`publish` flushes the data to disk, then renames it into
    place atomically (without replacing an existing ``DEST`` unless asked to). Until then
    ``DEST`` is untouched. All methods raise :class:`~ftx.errors.LocalFileError` on failure.

    With ``dir_fd`` (a descriptor of ``DEST``'s directory, opened without following links,
    which the caller keeps open while the download lasts), every name is used relative to it:
    a directory on the way to ``DEST`` swapped for a symbolic link meanwhile cannot send the
    file elsewhere. ``dest`` is then only shown in messages.
    """

    def __init__(self, dest: str | os.PathLike[str], *, dir_fd: int | None = None) -> None:
        self.dest: Final = dest if isinstance(dest, Path) else Path(dest)
        # Kept as strings: a tree of small files pays for every pathlib object made per file.
        self._dest_shown = os.fspath(self.dest)
        self._directory, name = os.path.split(self._dest_shown)
        self._dir_fd = dir_fd
        # The names the system calls use: relative to dir_fd if there is one, else paths.
        where = "" if dir_fd is not None else self._directory
        self._dest = os.path.join(where, name)
        self._part = os.path.join(where, part_file_name(name))
        self._record = os.path.join(where, sibling_name(name, ".part.resume"))
        self._record_temporary = os.path.join(where, sibling_name(name, ".part.resume.tmp"))
        self._part_shown = os.path.join(self._directory, part_file_name(name))
        self._fd: int | None = None
        self._record_may_exist = False  # ours, or an earlier download's: publish removes it
        self._written = 0  # the file's size, as far as our writes go
        self._flushing_from = 0  # where the last early write-back request ended

    @property
    def part_path(self) -> Path:
        """The part file: ``DEST.part`` (for a name of over 250 bytes, a shortened one: see
        :func:`ftx._names.sibling_name`)."""
        return Path(self._part_shown)

    @property
    def record_path(self) -> Path:
        """The resume record: ``DEST.part.resume``."""
        return Path(self._directory, os.path.basename(self._record))

    def _open(self, name: str, flags: int) -> int:
        """``os.open`` of one of our names (relative to the directory's descriptor, if any)."""
        return os.open(name, flags | os.O_CLOEXEC, 0o644, dir_fd=self._dir_fd)

    def open(self, *, keep: int = 0) -> None:
        """Create (or take over) the part file, lock it, and cut it to its first ``keep`` bytes
        (0: empty); writes continue from there.

        Raises:
            LocalFileError: the part file cannot be written, is locked by another download, or
                holds fewer than ``keep`` bytes.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
        try:
            if keep == 0:
                try:
                    # Usually there is no part yet: a new, empty file needs none of the checks
                    # below (each a metadata operation, which a tree of small files pays).
                    fd = self._open(self._part, flags | os.O_EXCL)
                except FileExistsError:
                    pass
                else:
                    self._lock(fd)
                    self._fd = fd
                    self._written = self._flushing_from = 0
                    return
            fd = self._open(self._part, flags)
        except OSError as exc:
            raise LocalFileError(f"cannot write {self._part_shown}: {exc.strerror}") from exc
        self._lock(fd)
        self._record_may_exist = True  # an earlier download's may lie beside its part
        # A download that finished meanwhile renamed (or linked) this inode into place: it is
        # DEST now, and must not be written again. Only the inode still at the part's name is
        # ours to take over.
        try:
            current = os.stat(self._part, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is None or (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
            os.close(fd)
            raise LocalFileError(f"another download to {self._dest_shown} just finished; try again")
        # Truncate only once the lock is ours, never under another download's feet.
        if opened.st_size < keep:
            os.close(fd)
            raise LocalFileError(f"{self._part_shown} is shorter than expected: cannot resume")
        os.ftruncate(fd, keep)
        os.lseek(fd, keep, os.SEEK_SET)
        self._fd = fd
        self._written = self._flushing_from = keep

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LocalFileError(f"another download to {self._dest_shown} is in progress") from None

    def resumable(self, path: str) -> tuple[int, str] | None:
        """Where an earlier download of remote ``path`` to the same place can resume:
        ``(offset, identity of the file it began)``, or ``None`` if there is nothing to resume.

        Whatever digest the earlier download used, or none: a verified download hashes the bytes
        kept again (:meth:`hash_prefix`), since its digest covers the whole file."""
        try:
            with os.fdopen(self._open(self._record, os.O_RDONLY | os.O_NOFOLLOW), "rb") as file:
                raw = file.read(_MAX_RECORD_BYTES)
            record = _parse_record(json.loads(raw))
            held = os.stat(self._part, dir_fd=self._dir_fd, follow_symlinks=False).st_size
        except (OSError, ValueError, TypeError, KeyError):
            return None  # no record, or one we cannot trust: start from zero
        if record is None or record.path != path or held == 0:
            return None
        return min(held, record.size), record.identity

    def hash_prefix(self, end: int, hasher: Hasher) -> None:
        """Feed the first ``end`` bytes of the part file to ``hasher`` (for a resumed download,
        whose digest covers the whole file)."""
        flags = os.O_RDONLY | os.O_NOFOLLOW
        with os.fdopen(self._open(self._part, flags), "rb", buffering=0) as file:
            buffer = memoryview(bytearray(min(_HASH_BLOCK, max(end, 1))))
            position = 0
            while position < end:
                count = file.readinto(buffer[: end - position])
                if not count:
                    raise LocalFileError(f"{self._part_shown} shrank while resuming")
                hasher.update(buffer[:count])
                position += count

    def write_record(self, record: ResumeRecord) -> None:
        """Say what the part file holds, for a later resume."""
        data = json.dumps({"version": _RECORD_VERSION, **asdict(record)}).encode()
        self._record_may_exist = True
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        try:
            with os.fdopen(self._open(self._record_temporary, flags), "wb") as file:
                file.write(data)
            os.replace(
                self._record_temporary,
                self._record,
                src_dir_fd=self._dir_fd,
                dst_dir_fd=self._dir_fd,
            )
        except OSError as exc:
            _try_unlink(self._record_temporary, self._dir_fd)
            raise LocalFileError(f"cannot write {self.record_path}: {exc.strerror}") from exc

    def write(self, data: Buffer) -> None:
        """Append ``data`` to the part file."""
        if self._fd is None:
            raise RuntimeError("the part file is not open")
        view = memoryview(data).cast("B")
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self._written += written
            if self._written - self._flushing_from >= _WRITE_BACK_STEP:
                self._start_write_back()
        except OSError as exc:
            raise LocalFileError(f"cannot write {self._part_shown}: {exc.strerror}") from exc

    def write_at(self, data: Buffer, position: int) -> None:
        """Write ``data`` at ``position`` (a download filled block by block, in any order)."""
        if self._fd is None:
            raise RuntimeError("the part file is not open")
        view = memoryview(data).cast("B")
        try:
            while view:
                written = os.pwrite(self._fd, view, position)
                view = view[written:]
                position += written
        except OSError as exc:
            raise LocalFileError(f"cannot write {self._part_shown}: {exc.strerror}") from exc

    def resize(self, size: int) -> None:
        """Make the part file ``size`` bytes long (a hole where nothing was written yet)."""
        if self._fd is None:
            raise RuntimeError("the part file is not open")
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            raise LocalFileError(f"cannot write {self._part_shown}: {exc.strerror}") from exc

    def _start_write_back(self) -> None:
        """Ask the kernel to start writing what we wrote since the last call to disk now, so
        that the flush in :meth:`publish` finds little left to do: otherwise a large download
        sits in the page cache until the end and its fsync takes as long again as a good part
        of the transfer. On Linux, POSIX_FADV_DONTNEED starts that write-back; it drops only
        pages already clean, and the pages of this range are dirty yet."""
        assert self._fd is not None
        if hasattr(os, "posix_fadvise"):
            length = self._written - self._flushing_from
            os.posix_fadvise(self._fd, self._flushing_from, length, os.POSIX_FADV_DONTNEED)
        self._flushing_from = self._written

    def publish(
        self,
        *,
        overwrite: bool = False,
        mtime_ns: int | None = None,
        mode: int | None = None,
        durable: bool = True,
    ) -> None:
        """Flush the part file to disk and rename it to ``DEST``; close it.

        Args:
            overwrite: replace ``DEST`` if it exists; otherwise an existing ``DEST`` is an error
                and is left as it was.
            mtime_ns: the modification time to give the file (nanoseconds), or ``None``.
            mode: the permission bits to give the file, or ``None`` to keep the defaults.
            durable: flush the data before the rename and the directory after it. Without it
                the rename is still atomic for every process, but only a later ``sync`` makes
                it survive a power cut: for batches that sync once at the end.
        """
        fd = self._fd
        if fd is None:
            raise RuntimeError("the part file is not open")
        try:
            if durable:
                os.fsync(fd)
            if mode is not None:
                os.fchmod(fd, mode)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            if overwrite:
                check_replaceable(self._dest, self._dir_fd, self._dest_shown)
                os.replace(self._part, self._dest, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            else:
                _link_without_replacing(self._part, self._dest, self._dir_fd)
            if self._record_may_exist:
                _try_unlink(self._record, self._dir_fd)
            if durable:
                if self._dir_fd is not None:
                    os.fsync(self._dir_fd)
                else:
                    _fsync_directory(self._directory or ".")
        except FileExistsError as exc:
            message = f"{self._dest_shown} already exists (use --force to replace)"
            raise LocalFileError(message) from exc
        except OSError as exc:
            raise LocalFileError(f"cannot save {self._dest_shown}: {exc.strerror}") from exc
        finally:
            self.close()

    def discard(self) -> None:
        """Close and delete the part file and its record (the content is worthless)."""
        self.close()
        _try_unlink(self._record, self._dir_fd)
        _try_unlink(self._part, self._dir_fd)

    def close(self) -> None:
        """Close the part file and release the lock, keeping what was written."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _try_unlink(path: str, dir_fd: int | None = None) -> None:
    """Remove ``path`` (relative to ``dir_fd``, if given) if possible: for clean-up, which must
    not hide the error it follows (a part or record that cannot be removed is harmless: a later
    download replaces it)."""
    with contextlib.suppress(OSError):
        os.unlink(path, dir_fd=dir_fd)


def _link_without_replacing(source: str, dest: str, dir_fd: int | None = None) -> None:
    """Give the file ``source`` the name ``dest`` too (both relative to ``dir_fd``, if given),
    never replacing what is there, then drop the name ``source``."""
    try:
        os.link(source, dest, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        # No hard links on this file system (FAT, some FUSE): check, then rename.
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        try:
            os.stat(dest, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            raise FileExistsError(errno.EEXIST, "exists", dest) from None
        os.replace(source, dest, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    else:
        os.unlink(source, dir_fd=dir_fd)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_record(obj: object) -> ResumeRecord | None:
    if not isinstance(obj, dict) or obj.get("version") != _RECORD_VERSION:
        return None
    path, identity, size, digest = obj["path"], obj["identity"], obj["size"], obj["digest"]
    if not (isinstance(path, str) and isinstance(identity, str) and isinstance(size, int)):
        return None
    if isinstance(size, bool) or size < 0 or not (digest is None or isinstance(digest, str)):
        return None
    return ResumeRecord(path, identity, size, digest)


class DiscardingPart(PartFile):
    """A download to the null device: nothing is written, kept or renamed; the data is only
    verified (``ftx get HOST FILE -o /dev/null`` checks a file, or measures the transfer)."""

    def open(self, *, keep: int = 0) -> None:
        if keep:
            raise LocalFileError("nothing to resume into /dev/null")

    def resumable(self, path: str) -> tuple[int, str] | None:
        return None

    def write_record(self, record: ResumeRecord) -> None:
        pass

    def write(self, data: Buffer) -> None:
        pass

    def write_at(self, data: Buffer, position: int) -> None:
        pass

    def resize(self, size: int) -> None:
        pass

    def publish(
        self,
        *,
        overwrite: bool = False,
        mtime_ns: int | None = None,
        mode: int | None = None,
        durable: bool = True,
    ) -> None:
        pass

    def discard(self) -> None:
        pass
