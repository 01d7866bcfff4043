"""The file system as the server sees it.

:class:`ServedRoot` is the server's view of the directory it serves. Every lookup walks the
requested path one component at a time from a descriptor of the root, with ``O_NOFOLLOW`` and
``dir_fd``, and checks the opened file with ``fstat``: a path can never lead outside the root,
even when a directory is swapped for a symbolic link between the check and the open.
``Path.resolve()`` followed by a prefix check would be open to exactly that race.

Symbolic links inside the root are resolved here, not by the kernel: a relative link whose
target stays inside the root is followed; an absolute link, or one that climbs out of the root,
is refused (:attr:`FsReason.OUTSIDE_ROOT`) without ever touching its target.

It speaks its own language, not the protocol's: a refusal is an :class:`FsError` with an
:class:`FsReason`, a listing is made of :class:`FsEntry`; the server translates both for its
clients (:mod:`ftx.server._fs_wire`).

Everything here blocks; the trio layers call it through :func:`trio.to_thread.run_sync` where a
call may take long. POSIX only (it needs ``dir_fd`` support).
"""

from ftx.fs._files import (
    UPLOAD_PART_SUFFIX,
    DirectoryListing,
    FileType,
    FsEntry,
    OpenedFile,
    file_identity,
    is_upload_in_progress,
    portable_identity,
    read_cached_into,
)
from ftx.fs._refusals import FsError, FsReason, split_request_path
from ftx.fs._root import MAX_SYMLINKS, ServedRoot

__all__ = [
    "MAX_SYMLINKS",
    "UPLOAD_PART_SUFFIX",
    "DirectoryListing",
    "FileType",
    "FsEntry",
    "FsError",
    "FsReason",
    "OpenedFile",
    "ServedRoot",
    "file_identity",
    "is_upload_in_progress",
    "portable_identity",
    "read_cached_into",
    "split_request_path",
]
