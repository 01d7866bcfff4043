"""The walk behind a tree stream (:mod:`ftx._tree_walk`): files the client has are left out
from the listing alone (:meth:`TreeWalker.take_unchanged`, no worker thread) exactly as
:meth:`TreeWalker.next_batch` leaves them out, and the walk goes on from the first other file."""

from __future__ import annotations

import os
from pathlib import Path

from ftx._tree_walk import DirItem, Have, SameItem, SkipItem, SmallItem, TreeWalker, WalkItem
from ftx.fs import ServedRoot


def make_directory(root: Path) -> None:
    (root / "d").mkdir(parents=True)
    for i in range(10):
        (root / "d" / f"f{i}").write_bytes(b"x" * i)
    (root / "d" / "f5").unlink()
    (root / "d" / "f5").symlink_to("f4")  # a link where the client has a file: never "same"


def have_of(root: Path, names: list[str]) -> Have:
    have: Have = {}
    for name in names:
        st = (root / "d" / name).lstat()
        have[name] = (st.st_size, st.st_mtime_ns, None)
    return have


def walk_d(root: Path, have: Have, *, fast: bool, max_files: int = 512, checksum: bool = False):  # type: ignore[no-untyped-def]
    """The items of directory d, taking unchanged files from the listing first when ``fast``."""
    with ServedRoot(root) as served:
        walker = TreeWalker(
            served.list_directory("d"),
            small_size=1 << 20,
            digest=lambda content: f"{len(content)}",
            checksum=checksum,
        )
        try:
            items: list[WalkItem] = []
            assert walker.next_batch(512, 1 << 20, True) == [DirItem("")]
            walker.have = have
            while True:
                if fast:
                    items.extend(walker.take_unchanged(max_files))
                batch = walker.next_batch(512, 1 << 20, True)
                if not batch:
                    return items, walker.unchanged
                items.extend(batch)
        finally:
            walker.close()


def test_take_unchanged_leaves_out_what_next_batch_would(tmp_path: Path) -> None:
    make_directory(tmp_path)
    have = have_of(tmp_path, ["f0", "f1", "f2", "f4", "f5", "f6", "f7", "f8", "f9"])
    # f3 is not had; f5 is a link here; f8 changed since (another size).
    (tmp_path / "d" / "f8").write_bytes(b"changed!!")
    slow = walk_d(tmp_path, have, fast=False)
    for max_files in (1, 2, 512):
        assert walk_d(tmp_path, have, fast=True, max_files=max_files) == slow
    items, unchanged = slow
    names = [
        (type(item).__name__, getattr(item, "name", getattr(item, "path", ""))) for item in items
    ]
    assert names == [
        ("SameItem", "f0"),
        ("SameItem", "f1"),
        ("SameItem", "f2"),
        ("SmallItem", "f3"),
        ("SameItem", "f4"),
        ("SkipItem", "f5"),
        ("SameItem", "f6"),
        ("SameItem", "f7"),
        ("SmallItem", "f8"),
        ("SameItem", "f9"),
    ]
    assert unchanged == 7


def test_take_unchanged_stops_at_the_first_other_file_and_at_its_limit(tmp_path: Path) -> None:
    make_directory(tmp_path)
    have = have_of(tmp_path, ["f0", "f1", "f2", "f4"])
    with ServedRoot(tmp_path) as served:
        walker = TreeWalker(served.list_directory("d"), small_size=1 << 20, digest=None)
        try:
            walker.next_batch(512, 1 << 20, True)
            walker.have = have
            assert walker.take_unchanged(2) == [SameItem("f0"), SameItem("f1")]
            assert walker.take_unchanged(5) == [SameItem("f2")]  # f3 is not had
            assert walker.take_unchanged(5) == []
            assert walker.unchanged == 3
            first = walker.next_batch(1, 1 << 20, True)
            assert [type(item) for item in first] == [SmallItem]
            assert isinstance(first[0], SmallItem)
            assert first[0].name == "f3"
            assert walker.take_unchanged(5) == [SameItem("f4")]
            assert isinstance(walker.next_batch(1, 1 << 20, True)[0], SkipItem)  # the link f5
        finally:
            walker.close()


def test_with_checksum_take_unchanged_takes_nothing(tmp_path: Path) -> None:
    make_directory(tmp_path)
    have = have_of(tmp_path, ["f0", "f1"])
    have["f0"] = (have["f0"][0], have["f0"][1], "0")  # (the test's digest: the length)
    have["f1"] = (have["f1"][0], have["f1"][1], "wrong digest")
    items, unchanged = walk_d(tmp_path, have, fast=True, checksum=True)
    assert items == walk_d(tmp_path, have, fast=False, checksum=True)[0]
    assert items[0] == SameItem("f0")  # digests compared: "0" is f0's
    assert isinstance(items[1], SmallItem)
    assert items[1].name == "f1"
    assert unchanged == 1


def test_no_descriptor_is_left_open(tmp_path: Path) -> None:
    make_directory(tmp_path)
    before = len(os.listdir("/proc/self/fd"))
    walk_d(tmp_path, have_of(tmp_path, ["f0"]), fast=True)
    walk_d(tmp_path, {}, fast=False)
    assert len(os.listdir("/proc/self/fd")) == before
