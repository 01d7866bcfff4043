"""The local side of a tree upload (:mod:`ftx.client._tree_put`): the tree walked a directory at a
time, and small files read whole and hashed, a frame's worth per worker-thread call.

Symbolic links are never followed (reported as skipped, as ``get -r`` reports them), nor are
special files; a file is opened with ``O_NOFOLLOW`` and sent only as it is when read (its size
and time then). Everything here blocks but the dataclasses: worker threads call it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ftx.errors import LocalFileError
from ftx.protocol import new_hasher
from ftx.protocol.messages import TreeRecord

__all__ = ["LocalDir", "LocalFile", "ReadBatch", "read_files", "walk_tree"]

_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_NAME_BYTES: Final = 255
_MAX_DEPTH: Final = 128


@dataclass(frozen=True, slots=True)
class LocalFile:
    name: str
    size: int
    mtime_ns: int


@dataclass(slots=True)
class LocalDir:
    """One directory of the local tree: ``path`` relative to the tree's root (``""``: the
    root), ``local`` its path on this machine, its regular files, and the entries skipped
    (``(local path, reason)``: links, special files, names a tree stream cannot carry)."""

    path: str
    local: Path
    files: list[LocalFile] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _usable(name: str) -> bool:
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return 0 < size <= _MAX_NAME_BYTES and "\\" not in name


def _key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def walk_tree(root: Path) -> Iterator[LocalDir]:
    """The directories under ``root`` (itself first), depth first, names in UTF-8 byte order;
    links not followed. A directory that cannot be read is yielded with one skipped entry, its
    own path, and nothing under it.

    Raises:
        LocalFileError: ``root`` itself cannot be read as a directory.
    """
    pending: list[tuple[str, Path, int]] = [("", root, 0)]
    first = True
    while pending:
        relative, directory, depth = pending.pop()
        found = LocalDir(relative, directory)
        subdirectories: list[str] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    _classify(entry, found, subdirectories)
        except OSError as exc:
            if first:
                raise LocalFileError(f"cannot read {directory}: {exc.strerror}") from exc
            found.skipped.append((directory, f"cannot be read: {exc.strerror}"))
            yield found
            continue
        first = False
        found.files.sort(key=lambda file: _key(file.name))
        yield found
        if depth >= _MAX_DEPTH and subdirectories:
            for name in subdirectories:
                found.skipped.append((directory / name, f"more than {_MAX_DEPTH} levels deep"))
            continue
        subdirectories.sort(key=_key, reverse=True)
        for name in subdirectories:
            path = f"{relative}/{name}" if relative else name
            pending.append((path, directory / name, depth + 1))


def _classify(entry: os.DirEntry[str], found: LocalDir, subdirectories: list[str]) -> None:
    name = entry.name
    if not _usable(name):
        found.skipped.append((Path(entry.path), "a name the protocol cannot carry"))
        return
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return  # removed while we list
    if stat.S_ISDIR(st.st_mode):
        subdirectories.append(name)
    elif stat.S_ISREG(st.st_mode):
        found.files.append(LocalFile(name, st.st_size, st.st_mtime_ns))
    elif stat.S_ISLNK(st.st_mode):
        found.skipped.append((Path(entry.path), "a symbolic link (not followed)"))
    else:
        found.skipped.append((Path(entry.path), "not a regular file"))


@dataclass(slots=True)
class ReadBatch:
    """Files read whole: frames of ``(records, content)``, each within the budget, and the
    files that could not be read (``(name, error)``) or that the server has with the same
    digest (``same``, with ``--checksum``)."""

    frames: list[tuple[tuple[TreeRecord, ...], bytes]] = field(default_factory=list)
    failed: list[tuple[str, LocalFileError]] = field(default_factory=list)
    same: list[str] = field(default_factory=list)
    grown: list[LocalFile] = field(default_factory=list)
    """Files that grew past the small size since they were listed: to send on their own."""


def read_files(
    directory: Path,
    files: list[tuple[LocalFile, str | None]],
    algorithm: str,
    max_records: int,
    max_bytes: int,
    small_size: int,
) -> ReadBatch:
    """Read and hash ``files`` of ``directory``; pack them into frames of at most
    ``max_records`` records and about ``max_bytes`` (each name counted six times over, as its
    JSON may be escaped). A file given with a digest (the server's, ``--checksum``) that has
    that digest is put in ``same``, not sent; one that grew to ``small_size`` or more, in
    ``grown``."""
    batch = ReadBatch()
    records: list[TreeRecord] = []
    content: list[bytes] = []
    size = 0
    for file, known in files:
        try:
            data, st = _read(directory / file.name)
        except LocalFileError as exc:
            batch.failed.append((file.name, exc))
            continue
        if len(data) >= small_size:
            batch.grown.append(LocalFile(file.name, len(data), st.st_mtime_ns))
            continue
        hasher = new_hasher(algorithm)
        hasher.update(data)
        digest = hasher.hexdigest()
        if known is not None and known == digest:
            batch.same.append(file.name)
            continue
        weight = len(data) + 6 * len(file.name.encode("utf-8")) + 400
        if records and (len(records) >= max_records or size + weight > max_bytes):
            batch.frames.append((tuple(records), b"".join(content)))
            records, content, size = [], [], 0
        mode = stat.S_IMODE(st.st_mode)
        records.append(TreeRecord(file.name, len(data), st.st_mtime_ns, mode, digest))
        content.append(data)
        size += weight
    if records:
        batch.frames.append((tuple(records), b"".join(content)))
    return batch


def _read(path: Path) -> tuple[bytes, os.stat_result]:
    try:
        fd = os.open(path, _FILE_FLAGS)
    except OSError as exc:
        raise LocalFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LocalFileError(f"{path} is no longer a regular file")
        data = os.pread(fd, st.st_size + 1, 0)
        if len(data) != st.st_size:
            raise LocalFileError(f"{path} changed while being read")
        return data, st
    except OSError as exc:
        raise LocalFileError(f"cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
