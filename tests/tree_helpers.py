"""A small tree of files for the tree-stream tests (``get -r`` and ``put -r``), and what a
tree holds, to compare two of them."""

from __future__ import annotations

import random
from pathlib import Path


def tree_files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every regular file under ``root`` (links left out): its content and modification time,
    by path relative to ``root``."""
    return {
        str(path.relative_to(root)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def make_tree(top: Path, seed: int) -> None:
    """Make at ``top`` a tree of 305 files (one empty, one large, one of 300 KiB, 300 small
    ones of random sizes in a nested directory, a non-ASCII name), an empty directory and a
    symbolic link, with contents drawn from ``seed``."""
    rng = random.Random(seed)
    (top / "a" / "b" / "c").mkdir(parents=True)
    (top / "empty-dir").mkdir()
    (top / "empty.bin").write_bytes(b"")
    (top / "x.txt").write_bytes(b"x")
    (top / "a" / "caf\u00e9 \u2014 menu.txt").write_bytes("\u00e9t\u00e9".encode())
    (top / "a" / "b" / "big.bin").write_bytes(rng.randbytes(3 * 1024 * 1024 + 7))
    (top / "a" / "b" / "medium.bin").write_bytes(rng.randbytes(300 * 1024))
    for i in range(300):
        (top / "a" / "b" / "c" / f"f{i:03}").write_bytes(rng.randbytes(rng.randrange(0, 9000)))
    (top / "link").symlink_to("x.txt")
