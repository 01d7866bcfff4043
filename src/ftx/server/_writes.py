"""The server's writes: a file being uploaded, and a directory being made, inside the served root.

An upload to ``dir/NAME`` goes to ``dir/NAME.ftx-upload-part``; a small *resume record* beside
it, ``NAME.ftx-upload-part.resume``, says which version of which source file the part holds the
start of. Once the whole file has arrived and its digest matched, the part is flushed to disk
and published as ``NAME``: with ``linkat`` (which never replaces anything) or, when the client
asked to overwrite and the server allows it, with ``renameat`` (which replaces a file or a
symbolic link atomically, never writes through one, and fails on a directory).

Every name is used relative to a descriptor of its directory, opened by
:meth:`~ftx.fs.ServedRoot.open_parent` with the same per-component ``O_NOFOLLOW`` walk as
downloads: never through an absolute path string. The part and the record are opened with
``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat``: a symbolic link, FIFO, device or
directory planted at either name is refused, and so is a regular file with other hard links
(writing to it would change the file it is linked to). The part is locked (``flock``) while an
upload writes it, so two uploads to one name cannot interleave.

Everything here blocks: the session calls it from worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from typing import Final, Self

from ftx._names import sibling_name
from ftx.framing import Buffer
from ftx.fs import UPLOAD_PART_SUFFIX, FsError, FsReason, ServedRoot
from ftx.protocol import Hasher

__all__ = [
    "PART_SUFFIX",
    "RECORD_SUFFIX",
    "PartStamp",
    "UploadTarget",
    "check_upload_name",
    "make_directory",
    "write_error",
]

PART_SUFFIX: Final = UPLOAD_PART_SUFFIX
RECORD_SUFFIX: Final = PART_SUFFIX + ".resume"
_RECORD_VERSION: Final = 1
_MAX_RECORD_BYTES: Final = 4096
_HASH_BLOCK: Final = 1 << 20
# O_NONBLOCK: a FIFO planted at the name must not block the open (it fails with ENXIO instead).
_PART_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
PartStamp = tuple[int, int, int, int]
"""A closed part file's device, inode, size and change time (``st_ctime_ns``)."""
_NO_HARD_LINKS: Final = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK)


def write_error(exc: OSError, path: str) -> FsError:
    """The refusal (with its :class:`~ftx.fs.FsReason`) for writing ``path`` failing with
    ``exc``."""
    match exc.errno:
        case errno.ENOSPC | errno.EDQUOT | errno.EFBIG:
            return FsError(FsReason.NO_SPACE, f"no space left for {path!r} on the server")
        case errno.EROFS:
            return FsError(FsReason.READ_ONLY, "the server's file system is read-only")
        case errno.EACCES | errno.EPERM:
            return FsError(FsReason.PERMISSION_DENIED, f"permission denied: {path!r}")
        case errno.ENAMETOOLONG:
            return FsError(FsReason.INVALID_PATH, f"{path!r}: the name is too long")
        case errno.ELOOP | errno.EISDIR | errno.ENXIO:
            return FsError(FsReason.NOT_A_FILE, f"{path!r}: not a regular file")
        case errno.ENOENT | errno.ENOTDIR:
            return FsError(FsReason.NOT_FOUND, f"{path!r} changed while being written")
    return FsError(FsReason.UNEXPECTED, f"cannot write {path!r}: {os.strerror(exc.errno or 0)}")


def check_upload_name(name: str, path: str) -> None:
    """Refuse (``INVALID_PATH``) a ``name`` reserved for the part files of uploads."""
    if name.endswith((PART_SUFFIX, RECORD_SUFFIX)):
        message = f"{path!r}: names ending in {PART_SUFFIX} are reserved"
        raise FsError(FsReason.INVALID_PATH, message)


class UploadTarget:
    """Where one upload lands: the directory's descriptor, the final name and the part file.

    Use :meth:`open`, then :meth:`open_part`, :meth:`write` (and :meth:`hash_prefix` on a
    resume), and :meth:`publish` or :meth:`discard`; :meth:`close` (or ``with``) releases the
    descriptors and the lock, keeping the part for a later resume.
    """

    def __init__(self, dir_fd: int, name: str, path: str) -> None:
        self._dir_fd = dir_fd
        self.name: Final = name
        self.path: Final = path
        self._part = sibling_name(name, PART_SUFFIX)
        self._record = sibling_name(name, RECORD_SUFFIX)
        self._fd: int | None = None

    @classmethod
    def open(cls, root: ServedRoot, path: str) -> UploadTarget:
        """Resolve the directory of ``path`` inside ``root``.

        Raises:
            FsError: the path is refused (as for a download), its directory does not exist, or
                its name is reserved (``INVALID_PATH``).
        """
        dir_fd, name = root.open_parent(path)
        try:
            check_upload_name(name, path)
        except BaseException:
            os.close(dir_fd)
            raise
        return cls(dir_fd, name, path)

    def existing(self) -> os.stat_result | None:
        """What is at the final name now (not following a symbolic link), if anything."""
        try:
            return os.stat(self.name, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise write_error(exc, self.path) from None

    def forget_published_part(self, existing: os.stat_result) -> None:
        """Delete the part file and its record if the part *is* the file at the final name
        (``existing``): what a publish cut short between its link and its unlinks (the server
        killed) leaves. Else they would stay forever, and block every later upload there."""
        try:
            part = os.stat(self._part, dir_fd=self._dir_fd, follow_symlinks=False)
        except OSError:
            return
        if (part.st_dev, part.st_ino) == (existing.st_dev, existing.st_ino):
            for name in (self._part, self._record):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self._dir_fd)

    def open_part(self, *, source: str | None, size: int) -> int:
        """Create or take over the part file, lock it, and return how many bytes of it are kept:
        its length if the resume record says it holds the start of ``source`` (``size`` bytes
        long), else 0 (it is emptied and the record rewritten).

        Raises:
            FsError: ``IN_USE`` (another upload to this name is in progress), ``NOT_A_FILE``
                (something other than a lone regular file is at the part's or the record's
                name), or what :func:`write_error` says.
        """
        try:
            fd = os.open(self._part, _PART_FLAGS, 0o644, dir_fd=self._dir_fd)
        except OSError as exc:
            raise write_error(exc, self.path + PART_SUFFIX) from None
        self._fd = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            message = f"another upload to {self.path!r} is in progress"
            raise FsError(FsReason.IN_USE, message) from None
        try:
            opened = os.fstat(fd)
            self._check_lone_file(opened, self._part)
            # An upload that finished meanwhile published this inode: only the one still at the
            # part's name is ours to take over.
            current = os.stat(self._part, dir_fd=self._dir_fd, follow_symlinks=False)
            if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
                raise FsError(FsReason.IN_USE, f"another upload to {self.path!r} just finished")
            resumable = 0 < opened.st_size <= size and source is not None
            if resumable and self._read_record() == (source, size):
                return opened.st_size
            os.ftruncate(fd, 0)
            self._write_record(source, size)
            return 0
        except OSError as exc:
            self.close()
            raise write_error(exc, self.path + PART_SUFFIX) from None
        except BaseException:
            self.close()
            raise

    def _check_lone_file(self, st: os.stat_result, name: str) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise FsError(FsReason.NOT_A_FILE, f"{name!r} on the server is not a regular file")
        if st.st_nlink != 1:
            raise FsError(FsReason.NOT_A_FILE, f"{name!r} on the server has other hard links")

    def _read_record(self) -> tuple[str, int] | None:
        try:
            fd = os.open(self._record, _READ_FLAGS, dir_fd=self._dir_fd)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            obj = json.loads(os.read(fd, _MAX_RECORD_BYTES))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        if not isinstance(obj, dict) or obj.get("version") != _RECORD_VERSION:
            return None
        source, size = obj.get("source"), obj.get("size")
        if isinstance(source, str) and isinstance(size, int) and not isinstance(size, bool):
            return source, size
        return None

    def _write_record(self, source: str | None, size: int) -> None:
        """Say what the (now empty) part is about to hold; with no source, remove the record."""
        if source is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._record, dir_fd=self._dir_fd)
            return
        data = json.dumps({"version": _RECORD_VERSION, "source": source, "size": size})
        # No O_TRUNC: what is at the name is checked before anything is cut or written.
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(self._record, flags, 0o644, dir_fd=self._dir_fd)
        try:
            self._check_lone_file(os.fstat(fd), self._record)
            os.ftruncate(fd, 0)
            _write_all(fd, data.encode(), 0)
        finally:
            os.close(fd)

    def free_space(self) -> int:
        """Bytes available to this server process on the part file's file system."""
        st = os.fstatvfs(self._part_fd())
        return st.f_bavail * st.f_frsize

    def hash_prefix(self, end: int, hasher: Hasher) -> None:
        """Feed the part's first ``end`` bytes to ``hasher`` (a resumed upload is verified
        whole).

        Raises:
            FsError: the part could not be read, or is shorter than ``end``.
        """
        fd = self._part_fd()
        buffer = memoryview(bytearray(min(_HASH_BLOCK, max(end, 1))))
        position = 0
        try:
            while position < end:
                count = os.preadv(fd, [buffer[: end - position]], position)
                if not count:
                    raise FsError(FsReason.UNEXPECTED, f"the part of {self.path!r} shrank")
                hasher.update(buffer[:count])
                position += count
        except OSError as exc:
            raise write_error(exc, self.path) from None

    def write(self, data: Buffer, position: int) -> None:
        """Write ``data`` to the part at ``position``.

        Raises:
            FsError: as :func:`write_error` says (``NO_SPACE`` for a full disk).
        """
        try:
            _write_all(self._part_fd(), data, position)
        except OSError as exc:
            raise write_error(exc, self.path) from None

    def finish_part(self, mtime_ns: int) -> PartStamp:
        """Give the written part its modification time, and close it (releasing its lock);
        return its stamp (a tree upload publishes many parts at once, after one flush, and
        cannot keep them all open: it reopens each, and publishes it only if the stamp is
        unchanged). Raises FsError."""
        fd = self._part_fd()
        try:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            st = os.fstat(fd)
        except OSError as exc:
            raise write_error(exc, self.path) from None
        os.close(fd)
        self._fd = None
        return (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)

    def publish(self, *, overwrite: bool, mtime_ns: int | None) -> bool:
        """Flush the part to disk and give it the final name; return whether the name was new.

        Without ``overwrite`` nothing at the final name is ever replaced (``linkat``); with it,
        a file or symbolic link there is replaced atomically (``renameat``).

        Raises:
            FsError: ``EXISTS`` (something is at the final name and ``overwrite`` is false),
                ``NOT_A_FILE`` (a directory is), or what :func:`write_error` says.
        """
        fd, dir_fd = self._part_fd(), self._dir_fd
        try:
            os.fsync(fd)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            # Only the inode we wrote may be published: not something swapped in at its name.
            current = os.stat(self._part, dir_fd=dir_fd, follow_symlinks=False)
            opened = os.fstat(fd)
            if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
                raise FsError(FsReason.UNEXPECTED, f"the part of {self.path!r} was replaced")
            created = self.existing() is None
            if overwrite:
                os.rename(self._part, self.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                self._link_without_replacing()
                created = True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._record, dir_fd=dir_fd)
            os.fsync(dir_fd)
        except FileExistsError:
            raise FsError(FsReason.EXISTS, f"{self.path!r} already exists") from None
        except (IsADirectoryError, NotADirectoryError):
            raise FsError(FsReason.NOT_A_FILE, f"{self.path!r} is a directory") from None
        except OSError as exc:
            raise write_error(exc, self.path) from None
        self.close()
        return created

    def _link_without_replacing(self) -> None:
        dir_fd = self._dir_fd
        try:
            os.link(self._part, self.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            # No hard links on this file system: check, then rename (a narrow race, there only).
            if exc.errno not in _NO_HARD_LINKS or self.existing() is not None:
                raise
            os.rename(self._part, self.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            os.unlink(self._part, dir_fd=dir_fd)

    def discard(self) -> None:
        """Delete the part and its record (their content is worthless), and close."""
        if self._fd is not None:
            for name in (self._record, self._part):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self._dir_fd)
        self.close()

    def _part_fd(self) -> int:
        if self._fd is None:
            raise RuntimeError("the part file is not open")
        return self._fd

    def close(self) -> None:
        """Close the part (releasing its lock) and the directory. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _write_all(fd: int, data: Buffer, position: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, position)
        view = view[written:]
        position += written


def make_directory(root: ServedRoot, path: str) -> bool:
    """Create the directory ``path`` inside ``root`` (its parent must exist); return whether it
    was created (false: a directory was there already).

    Raises:
        FsError: as :meth:`~ftx.fs.ServedRoot.open_parent` does; ``INVALID_PATH`` for a name
            reserved for the part files of uploads; ``EXISTS`` when something other than a
            directory has that name (a symbolic link included: it is not followed).
    """
    dir_fd, name = root.open_parent(path)
    try:
        check_upload_name(name, path)
        try:
            os.mkdir(name, 0o777, dir_fd=dir_fd)
        except FileExistsError:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                return False
            raise FsError(FsReason.EXISTS, f"{path!r} exists and is not a directory") from None
        os.fsync(dir_fd)
        return True
    except OSError as exc:
        raise write_error(exc, path) from None
    finally:
        os.close(dir_fd)
