"""Files whose names take (almost) all 255 bytes a file system allows: their part files and
resume records get shortened names (``ftx._names.sibling_name``), on the client and on the
server, so that they can be downloaded, uploaded and resumed like any other."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import ftx
from conftest import serving
from ftx._names import NAME_MAX, sibling_name
from ftx.client._partfile import PartFile, ResumeRecord

LONG = "n" * 250 + ".txt"  # 254 bytes: fits, but not with ".part" after it
WIDE = "\u00e9" * 126 + ".b"  # 254 bytes of UTF-8 in 128 characters


class Interrupted(Exception):
    """Raised from a progress callback to cut a download short."""


def fits(name: str) -> bool:
    return len(os.fsencode(name)) <= NAME_MAX


def test_a_short_name_keeps_its_suffix_plainly() -> None:
    assert sibling_name("report.pdf", ".part") == "report.pdf.part"
    fitting = "x" * (NAME_MAX - 5)
    assert sibling_name(fitting, ".part") == fitting + ".part"


def test_a_long_name_is_shortened_to_fit_and_the_same_every_time() -> None:
    for name in (LONG, WIDE, "x" * NAME_MAX):
        for suffix in (".part", ".part.resume", ".part.resume.tmp", ".ftx-upload-part"):
            short = sibling_name(name, suffix)
            assert fits(short), (name, suffix)
            assert short.endswith(suffix)
            assert short == sibling_name(name, suffix)
            assert short != name + suffix


def test_a_shortened_name_is_cut_between_characters() -> None:
    short = sibling_name(WIDE, ".part")
    os.fsencode(short).decode("utf-8")  # no half character (it would raise)
    stem = short.split("~")[0]
    assert set(stem) == {"\u00e9"}


@given(st.text(min_size=1, max_size=200).filter(lambda s: "/" not in s and "\0" not in s))
def test_names_sharing_a_long_start_get_different_part_names(end: str) -> None:
    start = "s" * 240
    first, second = start + "a", start + "a" + end
    if not fits(second):
        second = start + "b"
    assert sibling_name(first, ".part") != sibling_name(second, ".part")


def test_a_name_that_is_not_utf_8_is_shortened_too() -> None:
    name = os.fsdecode(b"\xff" * 200 + b"z" * 54)
    short = sibling_name(name, ".part")
    assert fits(short)
    assert short.endswith(".part")


def test_a_part_file_of_a_long_name_is_written_recorded_and_published(tmp_path: Path) -> None:
    dest = tmp_path / LONG
    part = PartFile(dest)
    assert fits(part.part_path.name)
    assert fits(part.record_path.name)
    part.open()
    part.write(b"hello")
    part.write_record(ResumeRecord("remote/" + LONG, "id", 10, "blake3"))
    part.close()
    assert PartFile(dest).resumable("remote/" + LONG) == (5, "id")
    again = PartFile(dest)
    again.open(keep=5)
    again.write(b"world")
    again.publish(durable=False)
    assert dest.read_bytes() == b"helloworld"
    assert sorted(os.listdir(tmp_path)) == [LONG]  # no part, record or temporary left


@pytest.mark.parametrize("name", [LONG, WIDE], ids=["ascii", "utf-8"])
async def test_a_long_named_file_is_downloaded_resumed_and_uploaded(
    tmp_path: Path, name: str
) -> None:
    served, local = tmp_path / "served", tmp_path / "local"
    served.mkdir()
    local.mkdir()
    content = random.Random(7).randbytes(3 << 20)
    (served / name).write_bytes(content)
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / name).write_bytes(content[:1000])
    async with serving(served, writable=True) as (_, port):
        with trio.fail_after(30):
            async with ftx.connect("127.0.0.1", port) as client:
                got = await client.get(name, local)
                assert got.dest == local / name
                assert (local / name).read_bytes() == content

                # An interrupted download leaves a shortened part (and record) to resume from.
                (local / name).unlink()

                def stop_early(done: int, total: int) -> None:
                    if done >= 1 << 20:
                        raise Interrupted

                with pytest.raises(Interrupted):
                    await client.get(name, local, progress=stop_early)
            part = PartFile(local / name)
            kept = part.part_path.stat().st_size
            assert 0 < kept < len(content)
            assert part.resumable(name) is not None
            async with ftx.connect("127.0.0.1", port) as client:
                started: list[int] = []
                await client.get(name, local, progress=lambda done, _: started.append(done))
                assert started[0] == kept  # resumed where the part ended
                assert (local / name).read_bytes() == content
                assert sorted(os.listdir(local)) == [name]

                # An upload to a long name lands under it, its server-side part shortened.
                await client.put(tmp_path / "up" / name, "copy-" + name[5:])
            copy = served / ("copy-" + name[5:])
            assert copy.read_bytes() == content[:1000]
    assert not [n for n in os.listdir(served) if "ftx-upload-part" in n]
