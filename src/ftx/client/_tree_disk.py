"""The destination side of a tree stream (:mod:`ftx.client._tree_stream`): what a tree
download reports, the names it accepts, the have-list (what the destination already holds,
walked in the tree's canonical order), and the small files of a batch verified and saved.

Every directory is opened with ``O_NOFOLLOW`` relative to its parent's descriptor, and every
file is created through a part file, exclusively, relative to its directory's: a symbolic link
planted in the destination is refused, never followed. Everything here blocks but the
dataclasses: worker threads call it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ftx.client._partfile import part_file_name
from ftx.client._receive import Download
from ftx.client._streams import file_digest
from ftx.errors import FtxError, IntegrityError, LocalFileError
from ftx.framing import Buffer
from ftx.protocol import new_hasher
from ftx.protocol.messages import HaveRecord, TreeHave, TreeRecord

__all__ = [
    "DIR_FLAGS",
    "Batch",
    "Skipped",
    "TreeProgress",
    "TreeResult",
    "have_pages",
    "open_directory",
    "open_path",
    "safe_name",
    "write_batch",
]

DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PART_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_HAVE_PAGE: Final = 1000
_MAX_NAME_BYTES: Final = 255


@dataclass(frozen=True, slots=True)
class Skipped:
    """A remote entry that was not downloaded, and why (not an error)."""

    path: str
    reason: str


TreeResult = Download | FtxError | Skipped


@dataclass(slots=True)
class TreeProgress:
    """Totals for a progress display; updated in place while a tree download runs."""

    files_found: int = 0
    bytes_found: int = 0
    files_done: int = 0
    bytes_done: int = 0
    listing_done: bool = False
    in_flight: set[str] = field(default_factory=set)


def _usable(name: str) -> bool:
    if name.isascii():  # (most names: one byte a character, no surrogates)
        size = len(name)
    else:
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            return False
    return 0 < size <= _MAX_NAME_BYTES and "/" not in name and "\\" not in name and "\0" not in name


def safe_name(name: str) -> str:
    if name in ("", ".", "..") or not _usable(name):
        raise LocalFileError(f"the server sent an unsafe file name: {name!r}; refused")
    return name


def _sort_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def have_pages(root: Path, checksum: str | None, request_id: int) -> Iterator[TreeHave]:
    """What the client has under ``root``, as pages in the tree's canonical order (directories
    depth first, files before subdirectories, names by UTF-8 bytes), links not followed."""
    pending: list[tuple[str, Path]] = [("", root)]
    while pending:
        relative, directory = pending.pop()
        files: list[HaveRecord] = []
        subdirectories: list[str] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if not _usable(entry.name) or entry.name in (".", ".."):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        subdirectories.append(entry.name)
                    elif stat.S_ISREG(st.st_mode):
                        digest = None
                        if checksum is not None:
                            try:
                                digest = file_digest(entry.path, checksum)
                            except OSError:
                                continue
                        files.append(HaveRecord(entry.name, st.st_size, st.st_mtime_ns, digest))
        except OSError:
            continue  # not there (the first run), or unreadable: nothing had
        files.sort(key=lambda record: _sort_key(record.name))
        for start in range(0, len(files), _HAVE_PAGE):
            yield TreeHave(request_id, relative, tuple(files[start : start + _HAVE_PAGE]))
        subdirectories.sort(key=_sort_key, reverse=True)
        for name in subdirectories:
            pending.append((f"{relative}/{name}" if relative else name, directory / name))


def open_directory(parent: int, name: str) -> int:
    """Create (if needed) and open the directory ``name`` in ``parent``, never through a
    symbolic link. Raises LocalFileError."""
    try:
        os.mkdir(name, dir_fd=parent)
    except FileExistsError:
        pass
    except OSError as exc:
        raise LocalFileError(f"cannot create directory {name!r}: {exc.strerror}") from exc
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise LocalFileError(f"{name!r} exists and is not a directory") from exc
        raise LocalFileError(f"cannot open directory {name!r}: {exc.strerror}") from exc


def open_path(top: int, path: str) -> int:
    """Open (creating) the directory ``path`` (checked names joined by ``/``) below ``top``."""
    fd = os.dup(top)
    try:
        for part in path.split("/") if path else ():
            inner = open_directory(fd, safe_name(part))
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True, slots=True)
class Batch:
    directory_fd: int
    directory: Path
    remote: str
    records: tuple[TreeRecord, ...]
    content: Buffer


def write_batch(
    batch: Batch, algorithm: str | None, overwrite: bool, preserve_mode: bool
) -> list[tuple[str, TreeResult]]:
    """Verify and save the small files of ``batch`` (in a worker thread)."""
    results: list[tuple[str, TreeResult]] = []
    view = memoryview(batch.content)
    offset = 0
    started = time.monotonic()
    directory, directory_fd = batch.directory, batch.directory_fd
    prefix = f"{batch.remote}/" if batch.remote else ""
    for record in batch.records:
        size = record.size
        data = view[offset : offset + size]
        offset += size
        remote = prefix + record.name
        try:
            name = safe_name(record.name)
            if algorithm is not None:
                hasher = new_hasher(algorithm)
                hasher.update(data)
                if hasher.hexdigest() != record.digest:
                    raise IntegrityError(
                        f"{size}-byte download does not match the server's {algorithm}; "
                        "nothing was saved"
                    )
            _save(directory_fd, name, data, record, overwrite, preserve_mode, directory, remote)
        except FtxError as exc:
            results.append((remote, exc))
            continue
        download = Download(
            remote,
            directory / name,
            size,
            record.mtime_ns,
            record.digest if algorithm else None,
            algorithm,
            time.monotonic() - started,
        )
        results.append((remote, download))
    return results


def _save(
    directory: int,
    name: str,
    data: memoryview,
    record: TreeRecord,
    overwrite: bool,
    preserve_mode: bool,
    local: Path,
    remote: str,
) -> None:
    """Write ``data`` to a part file created exclusively in ``directory``, give it the
    record's time (and mode), and rename it to ``name``. ``local`` is the directory's path and
    ``remote`` the file's remote one, for messages. Raises LocalFileError."""
    part = part_file_name(name)
    try:
        try:
            fd = os.open(part, _PART_FLAGS, 0o666, dir_fd=directory)
        except FileExistsError:
            os.unlink(part, dir_fd=directory)  # left by an interrupted run: ours to replace
            fd = os.open(part, _PART_FLAGS, 0o666, dir_fd=directory)
        try:
            written = 0
            while written < data.nbytes:
                written += os.write(fd, data[written:])
            if preserve_mode:
                os.fchmod(fd, record.mode & 0o777)
            os.utime(fd, ns=(record.mtime_ns, record.mtime_ns))
        finally:
            os.close(fd)
        if overwrite:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.lstat(name, dir_fd=directory).st_mode):
                    raise IsADirectoryError(errno.EISDIR, "is a directory")
            os.rename(part, name, src_dir_fd=directory, dst_dir_fd=directory)
        else:
            os.link(part, name, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
            os.unlink(part, dir_fd=directory)
    except (FileExistsError, IsADirectoryError) as exc:
        dest = local / name
        with contextlib.suppress(OSError):
            os.unlink(part, dir_fd=directory)
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(name, dir_fd=directory).st_mode):
                raise LocalFileError(
                    f"{dest} is a directory: the server's file {remote!r} is not saved there"
                ) from exc
        raise LocalFileError(f"{dest} already exists (use --force to replace)") from exc
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(part, dir_fd=directory)
        raise LocalFileError(f"cannot save {local / name}: {exc.strerror}") from exc
