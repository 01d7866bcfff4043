"""Names of the files kept beside a file being written (``NAME.part``, its resume record, ...).

A name may take all 255 bytes that file systems allow; adding a suffix to it would then fail
with "file name too long", and the file could not be downloaded or uploaded at all. Such a name
is shortened instead, the same way every time (so that a resume finds its part again), and
kept apart from every other name by a digest of the whole name.
"""

from __future__ import annotations

import hashlib
import os
from typing import Final

__all__ = ["NAME_MAX", "sibling_name"]

NAME_MAX: Final = 255
"""Bytes in one file name: the limit of ext4, XFS, Btrfs, tmpfs, APFS and NTFS (in UTF-16)."""


def sibling_name(name: str, suffix: str) -> str:
    """``name + suffix`` if that fits in :data:`NAME_MAX` bytes; otherwise the start of
    ``name``, cut at a character boundary, then ``~`` and 16 hex digits of its SHA-256, then
    ``suffix``."""
    encoded = os.fsencode(name)
    tail = os.fsencode(suffix)
    if len(encoded) + len(tail) <= NAME_MAX:
        return name + suffix
    tag = "~" + hashlib.sha256(encoded).hexdigest()[:16]
    keep = encoded[: NAME_MAX - len(tail) - len(tag)]
    return keep.decode("utf-8", "ignore") + tag + suffix
