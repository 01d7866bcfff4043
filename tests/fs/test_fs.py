"""Tests of the root-confined file system layer (ftx.fs), called directly: no network, no trio.

The threats come from ``security-lessons.md``: path traversal (``..``, absolute paths, NUL bytes,
backslashes), symbolic links that lead out of the root (absolute, climbing, chained, looping),
existence oracles, FIFOs that hang an ``open``, the check-then-open race of CVE-2024-12747 and
CVE-2026-29518 (a file or a parent directory swapped for a link between the check and the
open), and the client's ``DEST.part`` discipline.

Anything that could hang (a FIFO, a link loop, the races) runs under :func:`deadline`, which
interrupts a blocked system call with ``SIGALRM`` instead of letting the suite hang.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import posixpath
import signal
import socket
import stat
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ftx.client._partfile
from ftx.client._destination import check_destination, local_destination
from ftx.client._partfile import DiscardingPart, PartFile, part_for
from ftx.errors import LocalFileError
from ftx.fs import (
    MAX_SYMLINKS,
    DirectoryListing,
    FileType,
    FsEntry,
    FsError,
    FsReason,
    OpenedFile,
    ServedRoot,
    file_identity,
    split_request_path,
)

SMALL = b"hello from the served root\n"
INNER = b"inner\n"
LEAF = b"leaf\n" * 100
SECRET = b"this file is outside the served root\n"
OUTSIDE_FILE = b"outside directory content\n"
INSIDE_FILE = b"inside directory content\n"

INSIDE_CONTENTS = {SMALL, INNER, LEAF, b""}
LOOKUP_REASONS = {
    FsReason.NOT_FOUND,
    FsReason.NOT_A_FILE,
    FsReason.OUTSIDE_ROOT,
    FsReason.INVALID_PATH,
    FsReason.PERMISSION_DENIED,
}

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- helpers


class Hung(Exception):
    """A call that must return at once was still blocked when its deadline passed."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`Hung` in the main thread if the block takes longer than ``seconds``.

    The SIGALRM handler raises, so a system call blocked in the kernel (``open`` on a FIFO with
    no writer) is interrupted instead of retried (PEP 475).
    """

    def on_alarm(signum: int, frame: object) -> None:
        raise Hung(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_all(opened: OpenedFile) -> bytes:
    buffer = bytearray(opened.size + 16)
    count = opened.read_into(buffer, 0)
    return bytes(buffer[:count])


def fetch(root: ServedRoot, path: str) -> bytes:
    with deadline(5), root.open_file(path) as opened:
        return read_all(opened)


def refusal(call: Callable[[], object]) -> FsError:
    """Run ``call`` (under a deadline), which must raise :class:`FsError`; return it."""
    try:
        with deadline(5):
            result = call()
    except FsError as exc:
        return exc
    if isinstance(result, OpenedFile | DirectoryListing):
        result.close()
    pytest.fail(f"no FsError: returned {result!r}")


def open_refused(root: ServedRoot, path: str) -> FsError:
    return refusal(lambda: root.open_file(path))


def list_refused(root: ServedRoot, path: str) -> FsError:
    return refusal(lambda: root.list_directory(path))


def all_entries(listing: DirectoryListing, page_size: int = 1000) -> list[FsEntry]:
    entries: list[FsEntry] = []
    while page := listing.next_page(page_size):
        entries.extend(page)
    return entries


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Tree:
    base: Path  # holds the root and what must never be served
    root: Path
    secret: Path  # base/secret.txt, next to the root


def make_tree(base: Path) -> Tree:
    """Build::

    base/secret.txt                  SECRET (never served)
    base/outside/file                OUTSIDE_FILE (never served)
    base/outside/only-outside        a name that must never be listed
    base/root/
        small.txt, empty.bin, sub/inner.txt, sub/deeper/leaf.txt
        link-in            -> small.txt               followed
        sub/up-link        -> ../small.txt            followed
        dl                 -> sub/deeper              followed (a directory)
        link-abs           -> BASE/secret.txt         absolute, target exists
        link-abs-missing   -> BASE/nope.txt           absolute, no target
        link-up            -> ../secret.txt           climbs out, target exists
        link-up-missing    -> ../nope.txt             climbs out, no target
        sub/esc            -> ../../secret.txt        climbs out from below
        sub/esc-missing    -> ../../nope.txt
        outdir             -> ../outside              a directory outside
        outdir-missing     -> ../nowhere
        null-link          -> /dev/null
        loop -> loop;  ping -> pong -> ping
        fifo               a named pipe
    """
    secret = base / "secret.txt"
    secret.write_bytes(SECRET)
    (base / "outside").mkdir()
    (base / "outside" / "file").write_bytes(OUTSIDE_FILE)
    (base / "outside" / "only-outside").write_bytes(b"")
    root = base / "root"
    root.mkdir()
    (root / "small.txt").write_bytes(SMALL)
    (root / "empty.bin").write_bytes(b"")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "inner.txt").write_bytes(INNER)
    (root / "sub" / "deeper" / "leaf.txt").write_bytes(LEAF)
    links = {
        "link-in": "small.txt",
        "sub/up-link": "../small.txt",
        "dl": "sub/deeper",
        "link-abs": str(secret),
        "link-abs-missing": str(base / "nope.txt"),
        "link-up": "../secret.txt",
        "link-up-missing": "../nope.txt",
        "sub/esc": "../../secret.txt",
        "sub/esc-missing": "../../nope.txt",
        "outdir": "../outside",
        "outdir-missing": "../nowhere",
        "null-link": "/dev/null",
        "loop": "loop",
        "ping": "pong",
        "pong": "ping",
    }
    for name, target in links.items():
        (root / name).symlink_to(target)
    os.mkfifo(root / "fifo")
    return Tree(base, root, secret)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return make_tree(tmp_path)


@pytest.fixture
def served(tree: Tree) -> Iterator[ServedRoot]:
    with ServedRoot(tree.root) as root:
        yield root


@pytest.fixture(scope="module")
def shared_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Tree, ServedRoot]]:
    """A tree that no test modifies, for the property tests (hypothesis wants no function-scoped
    fixtures)."""
    tree = make_tree(tmp_path_factory.mktemp("fs-shared"))
    with ServedRoot(tree.root) as root:
        yield tree, root


# --------------------------------------------------------------------------- split_request_path


@pytest.mark.parametrize(
    ("path", "components"),
    [
        ("a", ["a"]),
        ("a/b/c.txt", ["a", "b", "c.txt"]),
        ("", []),
        (".", []),
        ("./", []),
        # Empty and "." components carry no meaning and are dropped, as POSIX resolution does.
        ("a//b", ["a", "b"]),
        ("a///b/", ["a", "b"]),
        ("./a/./b/.", ["a", "b"]),
        # A ".." that stays inside is kept for the walk to resolve (after links, like the kernel).
        ("a/../b", ["a", "..", "b"]),
        ("a/b/../../c", ["a", "b", "..", "..", "c"]),
        # Names that merely look like dot segments are ordinary names: nothing is decoded.
        ("...", ["..."]),
        (".. ", [".. "]),
        ("..a/a..", ["..a", "a.."]),
        ("%2e%2e/secret.txt", ["%2e%2e", "secret.txt"]),
        (".%252e/x", [".%252e", "x"]),
        ("\uff0e\uff0e/x", ["\uff0e\uff0e", "x"]),  # fullwidth dots: no NFKC folding
        ("c:/windows/win.ini", ["c:", "windows", "win.ini"]),  # no drive letters on POSIX
        ("caf\u00e9 \u65e5\u672c.txt", ["caf\u00e9 \u65e5\u672c.txt"]),
    ],
)
def test_split_accepts_relative_paths(path: str, components: list[str]) -> None:
    assert split_request_path(path) == components


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../",
        "../secret.txt",
        "./..",
        "a/../..",
        "a/../../b",
        "a/./../../b",
        "a//..//..//b",
        "a/b/../../../c",
        "../" * 50 + "etc/passwd",
    ],
)
def test_split_refuses_dotdot_that_climbs_out(path: str) -> None:
    with pytest.raises(FsError) as info:
        split_request_path(path)
    assert info.value.reason == FsReason.OUTSIDE_ROOT


@pytest.mark.parametrize("path", ["/", "/etc/passwd", "//etc/passwd", "/a/../b", "/./x"])
def test_split_refuses_absolute_paths(path: str) -> None:
    with pytest.raises(FsError) as info:
        split_request_path(path)
    assert info.value.reason == FsReason.OUTSIDE_ROOT


@pytest.mark.parametrize(
    "path", ["\x00", "a\x00", "small.txt\x00.jpg", "a/\x00/b", "sub/inner.txt\x00"]
)
def test_split_refuses_nul_bytes(path: str) -> None:
    with pytest.raises(FsError) as info:
        split_request_path(path)
    assert info.value.reason == FsReason.INVALID_PATH


@pytest.mark.parametrize(
    "path", ["\\", "a\\b", "..\\..\\secret.txt", "sub\\inner.txt", "C:\\x", "\\\\.\\C:\\a"]
)
def test_split_refuses_backslashes(path: str) -> None:
    with pytest.raises(FsError) as info:
        split_request_path(path)
    assert info.value.reason == FsReason.INVALID_PATH


@pytest.mark.parametrize("path", ["/etc\\passwd", "/\x00"])
def test_split_checks_in_the_specified_order(path: str) -> None:
    """protocol.md section 12.1 lists the checks "in this order": a leading `/` (outside-root)
    before NUL or backslash (bad-request). The code checks NUL and backslash first."""
    with pytest.raises(FsError) as info:
        split_request_path(path)
    assert info.value.reason == FsReason.OUTSIDE_ROOT


@pytest.mark.parametrize(
    "path", [chr(0xDCFF), "a/" + chr(0xD800) + "/b"], ids=["escaped-byte", "lone-surrogate"]
)
def test_split_refuses_strings_that_are_not_utf8(path: str) -> None:
    """A lone surrogate is not text: no valid request carries one (the wire decoder refuses
    them), and ``os`` would turn ``\\udcXX`` into the raw byte ``XX`` (surrogateescape), reaching
    names the user guide says "cannot be fetched". The lexical check must refuse it."""
    with pytest.raises(FsError) as info:
        split_request_path(path)
    assert info.value.reason == FsReason.INVALID_PATH


_PIECES = st.sampled_from(["", ".", "..", "...", "a", "b", "%2e", "\\", "\x00", ".. ", "\u00e9"])
_SPLIT_INPUTS = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from("./\\\x00ab")),
    st.lists(_PIECES, max_size=12).map("/".join),
    st.lists(_PIECES, max_size=12).map(lambda parts: "/" + "/".join(parts)),
)


@FUZZ
@given(_SPLIT_INPUTS)
def test_split_property(path: str) -> None:
    """For any string: a refusal with outside-root or bad-request, or clean components whose
    running depth never goes below the root, and which mean what the string meant."""
    error: FsError | None = None
    try:
        parts = split_request_path(path)
    except FsError as exc:
        error = exc
    if error is not None:
        assert error.reason in (FsReason.OUTSIDE_ROOT, FsReason.INVALID_PATH)
        if error.reason == FsReason.INVALID_PATH:
            assert "\x00" in path or "\\" in path
        else:
            normal = posixpath.normpath(path)
            assert path.startswith("/") or normal == ".." or normal.startswith("../")
        return
    assert "\x00" not in path
    assert "\\" not in path
    assert not path.startswith("/")
    depth = 0
    for part in parts:
        assert part not in ("", ".")
        assert "/" not in part
        assert "\\" not in part
        assert "\x00" not in part
        depth += -1 if part == ".." else 1
        assert depth >= 0, f"{parts} climbs above the root"
    # Lexically the same place as the request, and never above the root.
    normal = posixpath.normpath("/".join(parts) or ".")
    assert normal == posixpath.normpath(path or ".")
    assert normal != ".."
    assert not normal.startswith(("../", "/"))


# --------------------------------------------------------------------------- open_file: basics


def test_regular_files_are_read_exactly(served: ServedRoot) -> None:
    assert fetch(served, "small.txt") == SMALL
    assert fetch(served, "empty.bin") == b""
    assert fetch(served, "sub/inner.txt") == INNER
    assert fetch(served, "sub/deeper/leaf.txt") == LEAF


def test_read_into_honours_offset_and_buffer_size(served: ServedRoot) -> None:
    with served.open_file("sub/deeper/leaf.txt") as opened:
        assert opened.size == len(LEAF)
        assert opened.identity == file_identity(opened.stat)
        buffer = bytearray(7)
        assert opened.read_into(buffer, 3) == 7
        assert bytes(buffer) == LEAF[3:10]
        view = memoryview(bytearray(100))
        assert opened.read_into(view[10:20], len(LEAF) - 4) == 4
        assert bytes(view[10:14]) == LEAF[-4:]
        assert opened.read_into(bytearray(10), len(LEAF)) == 0
        assert opened.read_into(bytearray(10), len(LEAF) + 1000) == 0
        fd = opened.fd
    with pytest.raises(OSError, match=r"Bad file descriptor") as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF


def test_read_cached_into_is_exact_or_declines(served: ServedRoot) -> None:
    with served.open_file("sub/deeper/leaf.txt") as opened:
        read_all(opened)  # now in the page cache, if the system keeps one
        buffer = bytearray(50)
        count = opened.read_cached_into(buffer, 10)
        assert count is None or 0 < count <= 50
        if count is not None:
            assert bytes(buffer[:count]) == LEAF[10 : 10 + count]
        assert opened.read_cached_into(bytearray(10), len(LEAF)) is None  # EOF: ask a thread


@pytest.mark.parametrize(
    ("path", "same_as"),
    [
        ("./small.txt", "small.txt"),
        ("sub//inner.txt", "sub/inner.txt"),
        ("sub/./deeper/./leaf.txt", "sub/deeper/leaf.txt"),
        ("sub/../small.txt", "small.txt"),
        ("sub/deeper/../../sub/inner.txt", "sub/inner.txt"),
    ],
)
def test_dot_and_empty_components_name_the_same_file(
    served: ServedRoot, path: str, same_as: str
) -> None:
    with served.open_file(path) as a, served.open_file(same_as) as b:
        assert (a.stat.st_dev, a.stat.st_ino) == (b.stat.st_dev, b.stat.st_ino)


@pytest.mark.parametrize("path", ["", ".", "sub", "sub/", "sub/deeper/..", "dl"])
def test_directories_are_not_files(served: ServedRoot, path: str) -> None:
    assert open_refused(served, path).reason == FsReason.NOT_A_FILE


@pytest.mark.parametrize(
    "path",
    [
        "nope.txt",
        "sub/nope.txt",
        "nope/inner.txt",
        "small.txt/x",  # through a file
        "small.txt/..",
        "%2e%2e/secret.txt",
        "c:/windows/win.ini",
        "\uff0e\uff0e/secret.txt",
    ],
)
def test_missing_paths_are_not_found(served: ServedRoot, path: str) -> None:
    assert open_refused(served, path).reason == FsReason.NOT_FOUND


def test_fifo_is_refused_at_once(served: ServedRoot, tree: Tree) -> None:
    (tree.root / "fifo-link").symlink_to("fifo")
    started = time.monotonic()
    for path in ["fifo", "fifo-link"]:
        try:
            error = open_refused(served, path)
        except Hung:
            # Let the blocked reader go, then fail.
            with contextlib.suppress(OSError):
                os.close(os.open(tree.root / "fifo", os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail(f"open_file({path!r}) blocked on a FIFO")
        assert error.reason == FsReason.NOT_A_FILE
    assert time.monotonic() - started < 2


def test_device_is_not_a_file(served: ServedRoot, tree: Tree) -> None:
    try:
        os.mknod(tree.root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError as exc:
        pytest.skip(f"cannot create a device node here: {exc}")
    assert open_refused(served, "null").reason == FsReason.NOT_A_FILE


def test_socket_is_not_a_file(served: ServedRoot, tree: Tree) -> None:
    # AF_UNIX paths are short: bind in a short directory, then move the socket into the root.
    with tempfile.TemporaryDirectory(dir="/tmp") as short:
        path = os.path.join(short, "s")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path)
            os.rename(path, tree.root / "sock")
            assert open_refused(served, "sock").reason == FsReason.NOT_A_FILE


def test_link_to_a_device_outside_is_outside_root(served: ServedRoot) -> None:
    assert open_refused(served, "null-link").reason == FsReason.OUTSIDE_ROOT


def test_over_long_paths_are_refused_quickly(served: ServedRoot) -> None:
    started = time.monotonic()
    assert open_refused(served, "x" * 300).reason == FsReason.NOT_FOUND  # ENAMETOOLONG
    assert open_refused(served, "x" * 1_000_000).reason == FsReason.NOT_FOUND
    assert open_refused(served, "sub/" + "x" * 5000 + "/y").reason == FsReason.NOT_FOUND
    assert open_refused(served, "a/" * 10_000 + "b").reason == FsReason.NOT_FOUND
    # Deep but balanced: stays inside, so it resolves.
    assert fetch(served, "sub/" + "deeper/../" * 2000 + "inner.txt") == INNER
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("path", [chr(0xDCFF), chr(0xD800)], ids=["escaped-byte", "lone-surrogate"])
def test_open_file_refuses_non_utf8_requests_with_an_fs_error(
    served: ServedRoot, tree: Tree, path: str
) -> None:
    """The user guide: "File names that are not valid UTF-8 on disk ... cannot be fetched", and
    open_file's contract is to raise FsError. A name made of escaped bytes must not open the
    file with those raw bytes, and an unencodable surrogate must not escape as
    UnicodeEncodeError (a traceback instead of a protocol error)."""
    os.close(os.open(os.path.join(os.fsencode(tree.root), b"\xff"), os.O_CREAT | os.O_WRONLY))
    error = open_refused(served, path)
    assert error.reason in (FsReason.INVALID_PATH, FsReason.NOT_FOUND)


def test_served_root_keeps_the_directory_it_opened(tree: Tree) -> None:
    with ServedRoot(tree.root) as served:
        tree.root.rename(tree.base / "moved")
        tree.root.mkdir()
        (tree.root / "small.txt").write_bytes(b"impostor\n")
        assert fetch(served, "small.txt") == SMALL


def test_served_root_must_be_a_directory(tree: Tree) -> None:
    with pytest.raises(NotADirectoryError):
        ServedRoot(tree.root / "small.txt")
    with pytest.raises(FileNotFoundError):
        ServedRoot(tree.base / "nope")


def test_lookups_leak_no_descriptors(served: ServedRoot) -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    paths = [
        "sub/deeper/leaf.txt",
        "dl/leaf.txt",
        "sub/deeper/../nope",
        "sub/esc",
        "sub/deeper/../../link-up",
        "loop",
        "sub/deeper",
        "fifo",
        "outdir/file",
        "small.txt/x",
    ]
    before = open_fd_count()
    for _ in range(20):
        for path in paths:
            try:
                with deadline(5):
                    served.open_file(path).close()
            except FsError:
                pass
            try:
                with deadline(5):
                    result = served.list_directory(path)
            except FsError:
                continue
            if isinstance(result, DirectoryListing):
                result.close()
    assert open_fd_count() == before


# --------------------------------------------------------------------------- open_file: links


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("link-in", SMALL),
        ("sub/up-link", SMALL),
        ("dl/leaf.txt", LEAF),
        ("./dl/../inner.txt", INNER),  # ".." after a link: the parent of its target (sub)
        ("sub/deeper/../up-link", SMALL),
    ],
)
def test_relative_links_inside_are_followed(served: ServedRoot, path: str, content: bytes) -> None:
    assert fetch(served, path) == content


def test_link_chains_inside_are_followed(served: ServedRoot, tree: Tree) -> None:
    (tree.root / "c1").symlink_to("c2")
    (tree.root / "c2").symlink_to("sub/c3")
    (tree.root / "sub" / "c3").symlink_to("deeper/c4")
    (tree.root / "sub" / "deeper" / "c4").symlink_to("../../link-in")
    assert fetch(served, "c1") == SMALL


def test_link_chain_through_a_directory_link(served: ServedRoot, tree: Tree) -> None:
    (tree.root / "sub" / "deeper" / "back").symlink_to("../../dl")
    assert fetch(served, "sub/deeper/back/back/back/leaf.txt") == LEAF


def test_link_count_limit(served: ServedRoot, tree: Tree) -> None:
    """A chain of MAX_SYMLINKS links resolves; one more is refused (as ELOOP would be)."""
    n = MAX_SYMLINKS
    for i in range(n + 1):
        target = "small.txt" if i == 0 else f"chain{i - 1}"
        (tree.root / f"chain{i}").symlink_to(target)
    assert fetch(served, f"chain{n - 1}") == SMALL
    assert open_refused(served, f"chain{n}").reason == FsReason.NOT_FOUND


@pytest.mark.parametrize("path", ["loop", "ping", "pong", "sub/../loop", "loop/x"])
def test_link_loops_end_quickly(served: ServedRoot, path: str) -> None:
    started = time.monotonic()
    assert open_refused(served, path).reason in (FsReason.NOT_FOUND, FsReason.OUTSIDE_ROOT)
    assert time.monotonic() - started < 2


def test_self_referencing_directory_link_is_bounded(served: ServedRoot, tree: Tree) -> None:
    (tree.root / "me").symlink_to(".")
    (tree.root / "grow").symlink_to("grow/grow/grow")
    assert fetch(served, "me/" * MAX_SYMLINKS + "small.txt") == SMALL
    too_many = "me/" * (MAX_SYMLINKS + 1) + "small.txt"
    assert open_refused(served, too_many).reason == FsReason.NOT_FOUND
    assert open_refused(served, "grow").reason == FsReason.NOT_FOUND


@pytest.mark.parametrize(
    "path",
    [
        "link-abs",
        "link-up",
        "sub/esc",
        "outdir/file",
        "null-link",
        "sub/deeper/../esc",
        "dl/../esc",
    ],
)
def test_links_leading_out_are_refused(served: ServedRoot, path: str) -> None:
    assert open_refused(served, path).reason == FsReason.OUTSIDE_ROOT
    assert list_refused(served, path).reason == FsReason.OUTSIDE_ROOT


def test_chain_that_escapes_on_a_later_hop_is_refused(served: ServedRoot, tree: Tree) -> None:
    (tree.root / "hop1").symlink_to("sub/hop2")
    (tree.root / "sub" / "hop2").symlink_to("deeper/hop3")
    (tree.root / "sub" / "deeper" / "hop3").symlink_to("../../../secret.txt")
    assert open_refused(served, "hop1").reason == FsReason.OUTSIDE_ROOT
    # Climbing out via a relative link from a directory reached through another link.
    (tree.root / "sub" / "deeper" / "up3").symlink_to("../../..")
    assert open_refused(served, "dl/up3/secret.txt").reason == FsReason.OUTSIDE_ROOT


def _same_answer(a: FsError, path_a: str, b: FsError, path_b: str) -> None:
    assert a.reason == b.reason == FsReason.OUTSIDE_ROOT
    assert a.message.replace(repr(path_a), "<P>") == b.message.replace(repr(path_b), "<P>")


@pytest.mark.parametrize(
    ("exists", "missing"),
    [
        ("../secret.txt", "../nope.txt"),
        ("sub/../../secret.txt", "sub/../../nope.txt"),
        ("/etc/passwd", "/etc/no-such-file-here"),
        ("link-abs", "link-abs-missing"),
        ("link-up", "link-up-missing"),
        ("sub/esc", "sub/esc-missing"),
        ("outdir/file", "outdir-missing/file"),
        ("outdir/file", "outdir/nope"),
    ],
)
def test_outside_answer_does_not_depend_on_existence(
    served: ServedRoot, tree: Tree, exists: str, missing: str
) -> None:
    """No oracle: the refusal for an outside target that exists is the refusal for one that
    does not, and it names only the requested path, never the server's own layout."""
    _same_answer(open_refused(served, exists), exists, open_refused(served, missing), missing)
    _same_answer(list_refused(served, exists), exists, list_refused(served, missing), missing)
    for path in (exists, missing):
        message = open_refused(served, path).message
        assert str(tree.base) not in message
        assert "secret.txt" not in message.replace(repr(path), "")


def test_refusals_name_only_the_requested_path(served: ServedRoot, tree: Tree) -> None:
    refused_by_both = ["link-abs", "outdir/file", "nope", "loop", "a\\b", "a\x00b", "x" * 300]
    errors = [open_refused(served, path) for path in [*refused_by_both, "sub", "fifo"]]
    errors += [list_refused(served, path) for path in refused_by_both]
    for error in errors:
        assert str(tree.base) not in error.message
        assert SECRET.decode() not in error.message


# --------------------------------------------------------------------------- permissions


def _fork() -> int:
    """``os.fork()``. The children here make only system calls (no locks, no imports), so the
    warning Python 3.12+ gives when other threads exist (trio's idle worker threads, say) does
    not apply; filterwarnings=error would otherwise turn it into a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _as_unprivileged(check: Callable[[], None]) -> None:
    """Run ``check`` where permissions apply: here if we are not root, else in a forked child
    that drops to uid/gid 65534 (the ServedRoot descriptor is inherited)."""
    if os.geteuid() != 0:
        check()
        return
    pid = _fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            except OSError:
                code = 77
            else:
                check()
                code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 77:
        pytest.skip("running as root and cannot drop privileges: chmod 000 would not deny")
    assert code == 0, "the unprivileged check failed (see the captured stderr)"


def test_permission_denied(served: ServedRoot, tree: Tree) -> None:
    private = tree.root / "private.txt"
    private.write_bytes(b"private\n")
    private.chmod(0o000)
    locked = tree.root / "locked"
    locked.mkdir()
    (locked / "inner.txt").write_bytes(b"x")
    locked.chmod(0o000)
    tree.root.chmod(0o755)

    def check() -> None:
        assert open_refused(served, "private.txt").reason == FsReason.PERMISSION_DENIED
        assert open_refused(served, "locked/inner.txt").reason == FsReason.PERMISSION_DENIED
        assert list_refused(served, "locked").reason == FsReason.PERMISSION_DENIED
        assert fetch(served, "small.txt") == SMALL  # everything else still works

    try:
        _as_unprivileged(check)
    finally:
        locked.chmod(0o755)


# --------------------------------------------------------------------------- races


AT_FDCWD = -100
RENAME_EXCHANGE = 2


def _renameat2() -> Callable[..., int] | None:
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return None
    func = libc.renameat2
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


class Swapper:
    """Keeps exchanging ``name`` with each of ``others`` in turn, atomically with
    ``renameat2(RENAME_EXCHANGE)`` where possible (else through a spare name), until the
    ``with`` block ends.

    It runs in a forked child process rather than a thread: a thread would have to take the GIL
    for every swap and so could barely ever swap while the main thread runs the Python code
    between its ``lstat`` and its ``open``, the very window under test.
    """

    def __init__(self, name: Path, others: list[Path]) -> None:
        self.name_path = name
        self.others = others
        self.pid = 0
        self._renameat2 = _renameat2()  # looked up before the fork: the child only calls it

    def _loop(self) -> None:  # pragma: no cover - runs in the child
        renameat2 = self._renameat2
        name = bytes(self.name_path)
        others = [bytes(other) for other in self.others]
        spare = name + b".spare"
        parent = os.getppid()
        while os.getppid() == parent:
            for other in others:
                for _ in range(2):  # the other thing in place, then back
                    if renameat2 is not None:
                        if renameat2(AT_FDCWD, name, AT_FDCWD, other, RENAME_EXCHANGE) == 0:
                            continue
                        if ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS):
                            raise OSError(ctypes.get_errno(), "renameat2")
                        renameat2 = None
                    os.rename(name, spare)
                    os.rename(other, name)
                    os.rename(spare, other)

    def __enter__(self) -> Swapper:
        self.pid = _fork()
        if self.pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                self._loop()
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        return self

    def __exit__(self, *exc_info: object) -> None:
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:  # still swapping, as it should be
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        else:
            pytest.fail(f"the swapping process stopped early: {os.waitstatus_to_exitcode(status)}")


RACE_ITERATIONS = 2000
RACE_SECONDS = 3.0


def _race_goes_on(iterations: int, outcomes: dict[str, int], started: float) -> bool:
    """RACE_ITERATIONS lookups, or more until both states have been seen (on a loaded machine
    the swapping process may not run for a while), but never beyond RACE_SECONDS."""
    if time.monotonic() - started >= RACE_SECONDS:
        return False
    both_seen = outcomes.get("ok", 0) > 0 and sum(outcomes.values()) > outcomes.get("ok", 0)
    return iterations < RACE_ITERATIONS or not both_seen


def test_race_parent_directory_swapped_for_a_link_outside(served: ServedRoot, tree: Tree) -> None:
    """CVE-2026-29518 / CVE-2024-12747: ``d`` is a real directory one moment and a link to a
    directory outside the next. No successful open may ever return the outside file, and no
    listing may ever show outside names."""
    (tree.root / "d").mkdir()
    (tree.root / "d" / "file").write_bytes(INSIDE_FILE)
    (tree.root / "d.abs").symlink_to(tree.base / "outside")
    (tree.root / "d.rel").symlink_to("../outside")
    # A naive resolve-then-open would be fooled: the kernel follows the link.
    assert (tree.root / "d.abs" / "file").read_bytes() == OUTSIDE_FILE

    outcomes: dict[str, int] = {}
    started = time.monotonic()
    with Swapper(tree.root / "d", [tree.root / "d.abs", tree.root / "d.rel"]):
        i = 0
        with deadline(RACE_SECONDS + 5):
            while _race_goes_on(i, outcomes, started):
                i += 1
                try:
                    if i % 4:
                        with served.open_file("d/file") as opened:
                            content = read_all(opened)
                        assert content == INSIDE_FILE, "read a file outside the root"
                    else:
                        with served.list_directory("d") as listing:
                            assert isinstance(listing, DirectoryListing)
                            names = {entry.name for entry in all_entries(listing)}
                        assert names == {"file"}, f"listed a directory outside the root: {names}"
                    outcomes["ok"] = outcomes.get("ok", 0) + 1
                except FsError as exc:
                    # Any refusal is confinement-safe; which code a race gets is checked
                    # deterministically in test_link_swapped_before_readlink_is_not_internal.
                    outcomes[exc.reason.name] = outcomes.get(exc.reason.name, 0) + 1
    # The race was live: both states were seen.
    assert outcomes.get("ok", 0) > 0, outcomes
    assert sum(outcomes.values()) - outcomes.get("ok", 0) > 0, outcomes


def test_race_file_swapped_for_a_link_outside_or_a_fifo(served: ServedRoot, tree: Tree) -> None:
    """CVE-2024-12747 on the last component: ``f`` is a regular file, then a link to a file
    outside (absolute and relative), then a FIFO. Every success is the inside file; a FIFO that
    slips in between the check and the open never blocks."""
    (tree.root / "f").write_bytes(INSIDE_FILE)
    (tree.root / "f.abs").symlink_to(tree.secret)
    (tree.root / "f.rel").symlink_to("../secret.txt")
    os.mkfifo(tree.root / "f.fifo")
    others = [tree.root / "f.abs", tree.root / "f.fifo", tree.root / "f.rel"]

    outcomes: dict[str, int] = {}
    started = time.monotonic()
    with Swapper(tree.root / "f", others):
        i = 0
        with deadline(RACE_SECONDS + 5):
            while _race_goes_on(i, outcomes, started):
                i += 1
                try:
                    with served.open_file("f") as opened:
                        assert stat.S_ISREG(opened.stat.st_mode)
                        content = read_all(opened)
                    assert content == INSIDE_FILE, "read a file outside the root"
                    outcomes["ok"] = outcomes.get("ok", 0) + 1
                except FsError as exc:
                    outcomes[exc.reason.name] = outcomes.get(exc.reason.name, 0) + 1
    assert outcomes.get("ok", 0) > 0, outcomes
    assert sum(outcomes.values()) - outcomes.get("ok", 0) > 0, outcomes


def _swap_right_after_lstat(
    monkeypatch: pytest.MonkeyPatch, name: str, place: Path, replacement: Path
) -> None:
    """Make the next lstat of ``name`` (relative to a directory descriptor) return what it saw,
    then put ``replacement`` at ``place``: the check-then-open window, made deterministic."""
    real_stat = os.stat

    def stat_then_swap(
        path: str, *, dir_fd: int | None = None, follow_symlinks: bool = True
    ) -> os.stat_result:
        result = real_stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        if path == name and dir_fd is not None:
            monkeypatch.setattr(os, "stat", real_stat)
            os.rename(place, place.with_name(place.name + ".orig"))
            os.rename(replacement, place)
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)


@pytest.mark.parametrize("swap_in", ["abs-link", "rel-link", "other-dir"])
@pytest.mark.parametrize("operation", ["open", "list"])
def test_parent_swapped_right_after_its_check(
    served: ServedRoot, tree: Tree, monkeypatch: pytest.MonkeyPatch, swap_in: str, operation: str
) -> None:
    d = tree.root / "d"
    d.mkdir()
    (d / "file").write_bytes(INSIDE_FILE)
    replacement = tree.base / "replacement"
    if swap_in == "abs-link":
        replacement.symlink_to(tree.base / "outside")
    elif swap_in == "rel-link":
        replacement.symlink_to("../outside")
    else:
        replacement.mkdir()
        (replacement / "file").write_bytes(b"another directory\n")
    _swap_right_after_lstat(monkeypatch, "d", d, replacement)
    error = open_refused(served, "d/file") if operation == "open" else list_refused(served, "d")
    assert error.reason == FsReason.NOT_FOUND
    assert (d / "file").exists()  # the swap did happen: d/file now resolves elsewhere


@pytest.mark.parametrize("swap_in", ["abs-link", "rel-link", "fifo", "other-file", "directory"])
def test_file_swapped_right_after_its_check(
    served: ServedRoot, tree: Tree, monkeypatch: pytest.MonkeyPatch, swap_in: str
) -> None:
    f = tree.root / "f"
    f.write_bytes(INSIDE_FILE)
    replacement = tree.base / "replacement"
    if swap_in == "abs-link":
        replacement.symlink_to(tree.secret)
    elif swap_in == "rel-link":
        replacement.symlink_to("../secret.txt")
    elif swap_in == "fifo":
        os.mkfifo(replacement)
    elif swap_in == "other-file":
        replacement.write_bytes(b"another file\n")
    else:
        replacement.mkdir()
    _swap_right_after_lstat(monkeypatch, "f", f, replacement)
    try:
        error = open_refused(served, "f")
    except Hung:
        with contextlib.suppress(OSError):
            os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("open_file blocked on a FIFO swapped in after the check")
    assert error.reason == FsReason.NOT_FOUND
    assert os.path.lexists(tree.root / "f.orig")  # the swap did happen


@pytest.mark.parametrize("replacement", ["file", "directory"])
def test_link_swapped_before_readlink_is_not_internal(
    served: ServedRoot, tree: Tree, monkeypatch: pytest.MonkeyPatch, replacement: str
) -> None:
    """The walk lstat()s a name, sees a link, then readlink()s it. If the link was replaced by
    a file or a directory in between, readlink fails with EINVAL. That is a race like the ELOOP
    ones and should be answered as such (``not-found``, "changed while being opened"), not as
    ``internal`` (a server bug; exit code 1 on the client). The racing process above hits this
    window now and then; here it is made deterministic."""
    swapped = tree.root / "swapped"
    swapped.symlink_to("small.txt")
    real_readlink = os.readlink

    def readlink_after_a_swap(path: str, *, dir_fd: int | None = None) -> str:
        monkeypatch.setattr(os, "readlink", real_readlink)
        swapped.unlink()
        if replacement == "file":
            swapped.write_bytes(b"now a file")
        else:
            swapped.mkdir()
        return real_readlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "readlink", readlink_after_a_swap)
    error = open_refused(served, "swapped")
    assert error.reason == FsReason.NOT_FOUND, error


# --------------------------------------------------------------------------- property: confinement


_COMPONENTS = st.sampled_from(
    [
        "",
        ".",
        "..",
        "sub",
        "deeper",
        "dl",
        "small.txt",
        "inner.txt",
        "leaf.txt",
        "link-in",
        "up-link",
        "link-up",
        "link-abs",
        "esc",
        "outdir",
        "file",
        "secret.txt",
        "outside",
        "root",
        "loop",
        "ping",
        "fifo",
        "null-link",
    ]
)


@FUZZ
@given(st.lists(_COMPONENTS, min_size=1, max_size=10).map("/".join))
def test_no_path_leads_outside(
    shared_tree: tuple[Tree, ServedRoot],
    path: str,
) -> None:
    """Whatever the path: an FsError with a lookup code, or a file that is inside the root;
    never the secret, never a hang, never another exception."""
    tree, served = shared_tree
    error: FsError | None = None
    try:
        with deadline(5), served.open_file(path) as opened:
            content = read_all(opened)
    except FsError as exc:
        error = exc
    if error is None:
        assert content in INSIDE_CONTENTS
    else:
        assert error.reason in LOOKUP_REASONS
        assert str(tree.base) not in error.message
    try:
        with deadline(5):
            result = served.list_directory(path)
    except FsError as exc:
        error = exc
    else:
        error = None
    if error is not None:
        assert error.reason in LOOKUP_REASONS
        return
    if isinstance(result, FsEntry):
        assert "/" not in result.name
        return
    with result:
        names = {entry.name for entry in all_entries(result)}
    assert "secret.txt" not in names
    assert "root" not in names
    assert "only-outside" not in names


# --------------------------------------------------------------------------- identity, changed()


def test_file_identity_is_stable_for_an_unchanged_file(tree: Tree, served: ServedRoot) -> None:
    path = tree.root / "small.txt"
    first = file_identity(os.stat(path))
    assert file_identity(os.stat(path)) == first
    with served.open_file("small.txt") as opened:
        read_all(opened)
        assert opened.identity == first
    assert file_identity(os.stat(path)) == first  # reading changes nothing
    assert len(first) == 32
    assert all(c in "0123456789abcdef" for c in first)


def test_file_identity_changes_with_same_size_content(tree: Tree) -> None:
    path = tree.root / "small.txt"
    before = os.stat(path)
    path.write_bytes(SMALL.upper())  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    after = os.stat(path)
    assert after.st_size == before.st_size
    assert file_identity(after) != file_identity(before)


def test_file_identity_changes_even_when_mtime_is_restored(tree: Tree) -> None:
    path = tree.root / "small.txt"
    before = os.stat(path)
    time.sleep(0.02)  # past a coarse timestamp tick
    path.write_bytes(SMALL.upper())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `touch -r` would
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert file_identity(after) != file_identity(before)  # ctime moved


def test_file_identity_changes_when_the_file_is_replaced(tree: Tree) -> None:
    path = tree.root / "small.txt"
    before = os.stat(path)
    replacement = tree.root / "replacement"
    replacement.write_bytes(SMALL)  # same content, same size
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(replacement, path)
    after = os.stat(path)
    assert after.st_ino != before.st_ino
    assert file_identity(after) != file_identity(before)


def test_changed_is_false_while_the_file_is_untouched(served: ServedRoot) -> None:
    with served.open_file("sub/deeper/leaf.txt") as opened:
        assert read_all(opened) == LEAF
        assert not opened.changed()


def test_changed_detects_truncation(served: ServedRoot, tree: Tree) -> None:
    with served.open_file("small.txt") as opened:
        os.truncate(tree.root / "small.txt", 3)
        assert opened.changed()


def test_changed_detects_growth(served: ServedRoot, tree: Tree) -> None:
    with served.open_file("small.txt") as opened:
        with (tree.root / "small.txt").open("ab") as file:
            file.write(b"more")
        assert opened.changed()


def test_changed_detects_same_size_rewrite_with_restored_mtime(
    served: ServedRoot, tree: Tree
) -> None:
    path = tree.root / "small.txt"
    with served.open_file("small.txt") as opened:
        time.sleep(0.02)
        with path.open("r+b") as file:
            file.write(b"J")
        os.utime(path, ns=(opened.stat.st_atime_ns, opened.stat.st_mtime_ns))
        assert os.stat(path).st_size == opened.size
        assert opened.changed()


def test_opened_file_keeps_its_inode_when_the_path_is_replaced(
    served: ServedRoot, tree: Tree
) -> None:
    with served.open_file("small.txt") as opened:
        new = tree.root / "new"
        new.write_bytes(b"replacement content\n")
        os.replace(new, tree.root / "small.txt")
        assert read_all(opened) == SMALL
        assert opened.identity != file_identity(os.stat(tree.root / "small.txt"))


# --------------------------------------------------------------------------- listings


def test_listing_reports_type_size_mtime_and_mode(served: ServedRoot, tree: Tree) -> None:
    (tree.root / "sub" / "mode.txt").write_bytes(b"12345")
    (tree.root / "sub" / "mode.txt").chmod(0o640)
    (tree.root / "sub" / "link").symlink_to("inner.txt")
    os.mkfifo(tree.root / "sub" / "pipe")
    with deadline(5), served.list_directory("sub") as listing:
        assert isinstance(listing, DirectoryListing)
        entries = {entry.name: entry for entry in all_entries(listing)}
    assert set(entries) == {
        "inner.txt",
        "deeper",
        "up-link",
        "esc",
        "esc-missing",
        "mode.txt",
        "link",
        "pipe",
    }
    assert entries["inner.txt"].type == FileType.FILE
    assert entries["inner.txt"].size == len(INNER)
    assert entries["deeper"].type == FileType.DIRECTORY
    assert entries["deeper"].size == 0
    for name in ("up-link", "esc", "esc-missing", "link"):
        assert entries[name].type == FileType.SYMLINK, name  # reported, not followed
        assert entries[name].size == 0
    assert entries["pipe"].type == FileType.OTHER
    mode_txt = entries["mode.txt"]
    st_mode = os.stat(tree.root / "sub" / "mode.txt")
    assert (mode_txt.type, mode_txt.size, mode_txt.mode) == (FileType.FILE, 5, 0o640)
    assert mode_txt.mtime_ns == st_mode.st_mtime_ns


@pytest.mark.parametrize("path", ["", ".", "./", "sub/..", "sub/deeper/../.."])
def test_listing_the_root(served: ServedRoot, path: str) -> None:
    with served.list_directory(path) as listing:
        assert isinstance(listing, DirectoryListing)
        names = {entry.name for entry in all_entries(listing)}
    assert {"small.txt", "sub", "link-up", "fifo"} <= names
    assert "secret.txt" not in names


def test_listing_through_a_link_inside(served: ServedRoot) -> None:
    with served.list_directory("dl") as listing:
        assert isinstance(listing, DirectoryListing)
        assert [entry.name for entry in all_entries(listing)] == ["leaf.txt"]


def test_listing_a_file_returns_its_entry(served: ServedRoot) -> None:
    entry = served.list_directory("sub/inner.txt")
    assert isinstance(entry, FsEntry)
    assert (entry.name, entry.type, entry.size) == ("inner.txt", FileType.FILE, len(INNER))
    fifo = served.list_directory("fifo")
    assert isinstance(fifo, FsEntry)
    assert fifo.type == FileType.OTHER
    # Followed, and named as asked (protocol.md section 10, as `ls -L` does).
    via_link = served.list_directory("link-in")
    assert isinstance(via_link, FsEntry)
    assert (via_link.name, via_link.type, via_link.size) == ("link-in", FileType.FILE, len(SMALL))


@pytest.mark.parametrize(
    ("path", "name"),
    [("small.txt/", "small.txt"), ("small.txt/.", "small.txt"), ("link-in/./", "link-in")],
)
def test_listing_a_file_never_names_it_dot(served: ServedRoot, path: str, name: str) -> None:
    """protocol.md: an entry's name is "one path component, never `.` or `..`", and `"a/."`
    means `a` (section 12.1). The entry of a non-directory is named after the last component of
    the request as written, so a request ending in `/.` gives an entry named `.`."""
    entry = served.list_directory(path)
    assert isinstance(entry, FsEntry)
    assert entry.name == name


def test_listing_missing_directory(served: ServedRoot) -> None:
    assert list_refused(served, "nope").reason == FsReason.NOT_FOUND
    assert list_refused(served, "../root").reason == FsReason.OUTSIDE_ROOT
    assert list_refused(served, "a\\b").reason == FsReason.INVALID_PATH


def test_listing_skips_names_that_are_not_utf8(served: ServedRoot, tree: Tree) -> None:
    (tree.root / "mixed").mkdir()
    raw = os.path.join(os.fsencode(tree.root / "mixed"), b"bad-\xff\xfe.bin")
    with open(raw, "wb") as file:
        file.write(b"x")
    os.mkdir(os.path.join(os.fsencode(tree.root / "mixed"), b"dir-\xc0\xae"))  # overlong "."
    (tree.root / "mixed" / "caf\u00e9.txt").write_bytes(b"ok")
    with served.list_directory("mixed") as listing:
        assert isinstance(listing, DirectoryListing)
        names = [entry.name for entry in all_entries(listing)]
    assert names == ["caf\u00e9.txt"]
    for name in names:
        name.encode("utf-8")  # every listed name can be sent


@pytest.mark.parametrize("page_size", [1, 7, 50, 103, 1000])
def test_listing_pages_cover_everything_exactly_once(
    served: ServedRoot, tree: Tree, page_size: int
) -> None:
    many = tree.root / "many"
    many.mkdir()
    expected = {f"f{i:03d}" for i in range(103)}
    for name in expected:
        (many / name).write_bytes(name.encode())
    seen: list[str] = []
    with served.list_directory("many") as listing:
        assert isinstance(listing, DirectoryListing)
        while page := listing.next_page(page_size):
            assert 1 <= len(page) <= page_size
            seen.extend(entry.name for entry in page)
        assert listing.next_page(page_size) == []  # stays at the end
    assert len(seen) == len(expected)
    assert set(seen) == expected
    with served.list_directory("many") as listing:
        assert isinstance(listing, DirectoryListing)
        assert {e.name: e.size for e in all_entries(listing, page_size)} == dict.fromkeys(
            expected, 4
        )


def test_listing_close_releases_its_descriptor(served: ServedRoot) -> None:
    listing = served.list_directory("sub")
    assert isinstance(listing, DirectoryListing)
    with listing:
        fd = listing._fd
        os.fstat(fd)
    with pytest.raises(OSError, match=r"Bad file descriptor") as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF


# --------------------------------------------------------------------------- PartFile


def test_part_file_writes_go_to_the_part_not_dest(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    part = PartFile(dest)
    assert part.part_path == tmp_path / "out.bin.part"
    part.open()
    try:
        part.write(b"abc")
        part.write(bytearray(b"def"))
        part.write(memoryview(b"xxghixx")[2:5])
        assert not os.path.lexists(dest)
        assert part.part_path.read_bytes() == b"abcdefghi"
    finally:
        part.close()
    assert not os.path.lexists(dest)
    assert part.part_path.read_bytes() == b"abcdefghi"  # close keeps what arrived


def test_part_file_publish_renames_and_sets_mtime(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    part = PartFile(dest)
    part.open()
    part.write(b"payload")
    part_inode = os.stat(part.part_path).st_ino
    mtime_ns = 1_600_000_000_123_456_789
    part.publish(mtime_ns=mtime_ns)
    assert dest.read_bytes() == b"payload"
    assert not os.path.lexists(part.part_path)
    st_dest = os.stat(dest)
    assert st_dest.st_ino == part_inode  # renamed, not copied
    assert st_dest.st_mtime_ns == mtime_ns
    with pytest.raises(RuntimeError):
        part.write(b"late")  # closed by publish


def test_part_file_refuses_to_replace_dest(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"original")
    part = PartFile(dest)
    part.open()
    part.write(b"new")
    with pytest.raises(LocalFileError, match="already exists"):
        part.publish()
    assert dest.read_bytes() == b"original"
    assert part.part_path.read_bytes() == b"new"  # kept, and closed
    with pytest.raises(RuntimeError):
        part.write(b"x")


def test_part_file_overwrite_replaces_dest(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"original")
    part = PartFile(dest)
    part.open()
    part.write(b"new")
    part.publish(overwrite=True)
    assert dest.read_bytes() == b"new"
    assert not os.path.lexists(part.part_path)


def test_part_file_never_writes_through_a_link_at_dest(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    dest = tmp_path / "out.bin"
    dest.symlink_to(victim)
    part = PartFile(dest)
    part.open()
    part.write(b"new")
    with pytest.raises(LocalFileError):
        part.publish()
    assert dest.is_symlink()
    part = PartFile(dest)
    part.open()
    part.write(b"new")
    part.publish(overwrite=True)
    assert not dest.is_symlink()
    assert dest.read_bytes() == b"new"
    assert victim.read_bytes() == b"precious"


def test_part_file_discard(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    part = PartFile(dest)
    part.open()
    part.write(b"worthless")
    part.discard()
    assert not os.path.lexists(part.part_path)
    assert not os.path.lexists(dest)
    part.discard()  # twice is harmless


def test_part_file_takes_over_a_stale_part_emptied(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    (tmp_path / "out.bin.part").write_bytes(b"left over from a crash")
    part = PartFile(dest)
    part.open()
    try:
        assert part.part_path.read_bytes() == b""
        part.write(b"fresh")
    finally:
        part.close()
    assert part.part_path.read_bytes() == b"fresh"


def test_part_file_open_keeping_a_prefix(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    (tmp_path / "out.bin.part").write_bytes(b"0123456789")
    part = PartFile(dest)
    part.open(keep=4)
    part.write(b"abc")
    part.close()
    assert part.part_path.read_bytes() == b"0123abc"
    with pytest.raises(LocalFileError, match="shorter"):
        PartFile(dest).open(keep=100)
    assert part.part_path.read_bytes() == b"0123abc"  # left as it was


def test_part_file_use_before_open(tmp_path: Path) -> None:
    part = PartFile(tmp_path / "out.bin")
    with pytest.raises(RuntimeError):
        part.write(b"x")
    with pytest.raises(RuntimeError):
        part.publish()
    assert not os.path.lexists(part.part_path)


def test_part_file_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(LocalFileError):
        PartFile(tmp_path / "no" / "out.bin").open()


def test_second_part_file_on_the_same_dest_fails_clearly(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    first = PartFile(dest)
    first.open()
    first.write(b"first download")
    second = PartFile(dest)
    with pytest.raises(LocalFileError, match="in progress"):
        second.open()
    with pytest.raises(RuntimeError):
        second.write(b"x")  # the failed open left nothing open
    # The refused second download did not truncate the first one's data.
    assert first.part_path.read_bytes() == b"first download"
    first.write(b", continued")
    first.publish()
    assert dest.read_bytes() == b"first download, continued"
    # Once the first is done, another download can start.
    third = PartFile(dest)
    third.open()
    third.discard()


def test_dest_appears_only_complete(tmp_path: Path) -> None:
    """A watcher polls DEST the whole time: it never sees it exist with partial content."""
    dest = tmp_path / "out.bin"
    payload = bytes(range(256)) * 4096  # 1 MiB
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.append(len(dest.read_bytes()))
            except FileNotFoundError:
                seen.append(-1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        while not seen:  # the watcher is looking before anything is written
            time.sleep(0.001)
        part = PartFile(dest)
        part.open()
        for i in range(0, len(payload), 4096):
            part.write(payload[i : i + 4096])
            assert not os.path.lexists(dest)
        part.publish()
        deadline_at = time.monotonic() + 2
        while len(payload) not in seen and time.monotonic() < deadline_at:
            time.sleep(0.001)
    finally:
        stop.set()
        watcher.join(5)
    assert dest.read_bytes() == payload
    assert set(seen) <= {-1, len(payload)}, sorted(set(seen))[:5]
    assert -1 in seen


def test_part_file_does_not_follow_a_link_planted_at_the_part_name(tmp_path: Path) -> None:
    """CWE-59: ``DEST.part`` is a predictable name. If something already put a symbolic link
    there (another local user in a shared directory, a stale link), opening the part file must
    not write through it: today ``open()`` follows the link, truncates the target to 0 and
    overwrites it with the download, and ``publish()`` then hard-links that file at ``DEST``."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    dest = downloads / "out.bin"
    Path(f"{dest}.part").symlink_to(victim)
    part = PartFile(dest)
    with contextlib.suppress(LocalFileError):
        part.open()
        part.write(b"downloaded")
        part.publish()
    part.close()
    assert victim.read_bytes() == b"precious"


def test_second_part_file_racing_a_publish_cannot_rewrite_dest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "A second ``ftx get`` to the same DEST fails at once instead of mixing the two
    downloads." A second download opens ``DEST.part`` (the same inode as the first's), then the
    first publishes: links that inode at DEST, unlinks the part name, closes, releasing the
    lock. The second's ``flock`` now succeeds on an inode that *is* DEST, and it truncates it:
    a published, verified DEST becomes empty, then half-written. The window (between
    ``os.open`` and ``flock``) is made deterministic by running the first's publish inside it."""
    dest = tmp_path / "out.bin"
    first = PartFile(dest)
    first.open()
    first.write(b"A" * 1000)
    second = PartFile(dest)
    real_flock = fcntl.flock

    def flock_after_the_first_publishes(fd: int, operation: int) -> None:
        monkeypatch.setattr(fcntl, "flock", real_flock)
        first.publish()
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_first_publishes)
    with contextlib.suppress(LocalFileError):
        second.open()
        second.write(b"B" * 10)
    second.close()
    assert dest.read_bytes() == b"A" * 1000


def test_uploads_in_progress_are_neither_listed_nor_served(tmp_path: Path) -> None:
    (tmp_path / "done.bin").write_bytes(b"complete")
    (tmp_path / "new.bin.ftx-upload-part").write_bytes(b"half")
    (tmp_path / "new.bin.ftx-upload-part.resume").write_bytes(b"{}")
    root = ServedRoot(tmp_path)
    try:
        listing = root.list_directory("")
        assert isinstance(listing, DirectoryListing)
        with listing:
            assert [entry.name for entry in listing.next_page(100)] == ["done.bin"]
        for name in ("new.bin.ftx-upload-part", "new.bin.ftx-upload-part.resume"):
            with pytest.raises(FsError) as refused:
                root.open_file(name)
            assert refused.value.reason == FsReason.NOT_FOUND
    finally:
        root.close()


def test_local_destination_is_dest_or_the_remote_name_inside_a_directory(tmp_path: Path) -> None:
    assert local_destination("a/b.txt", tmp_path / "x.bin") == tmp_path / "x.bin"
    assert local_destination("a/b.txt", tmp_path) == tmp_path / "b.txt"
    assert local_destination("a/b.txt", str(tmp_path)) == tmp_path / "b.txt"
    assert local_destination("a/b.txt", None) == Path("b.txt")
    with pytest.raises(LocalFileError, match="names no file"):
        local_destination("a/..", tmp_path)
    # A trailing slash asks for a directory (as cp does): never a file of that name.
    assert local_destination("a/b.txt", f"{tmp_path}/") == tmp_path / "b.txt"
    with pytest.raises(LocalFileError, match="no such directory"):
        local_destination("a/b.txt", f"{tmp_path}/new/")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(LocalFileError, match="no such directory"):
        local_destination("a/b.txt", f"{tmp_path}/file/")


def test_check_destination_refuses_an_existing_file_and_a_missing_directory(
    tmp_path: Path,
) -> None:
    (tmp_path / "there.bin").write_bytes(b"x")
    with pytest.raises(LocalFileError, match="already exists"):
        check_destination(tmp_path / "there.bin", overwrite=False)
    check_destination(tmp_path / "there.bin", overwrite=True)
    with pytest.raises(LocalFileError, match="is not a directory"):
        check_destination(tmp_path / "missing" / "f.bin", overwrite=False)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(LocalFileError, match="is not a directory"):
        check_destination(tmp_path / "file" / "f.bin", overwrite=True)


def test_check_destination_looks_a_known_directory_up_once(tmp_path: Path) -> None:
    """With ``known_directories`` a directory found once is not looked up again (many files
    into few directories); the existence of each file is still checked every time."""
    sub = tmp_path / "sub"
    sub.mkdir()
    known: set[str] = set()
    check_destination(sub / "a.bin", overwrite=False, known_directories=known)
    assert known == {str(sub)}
    (sub / "b.bin").write_bytes(b"")
    with pytest.raises(LocalFileError, match="already exists"):
        check_destination(sub / "b.bin", overwrite=False, known_directories=known)
    with pytest.raises(LocalFileError, match="is not a directory"):
        check_destination(tmp_path / "gone" / "c.bin", overwrite=False, known_directories=known)
    assert known == {str(sub)}
    (sub / "b.bin").unlink()
    sub.rmdir()
    check_destination(sub / "c.bin", overwrite=False, known_directories=known)  # not looked up
    with pytest.raises(LocalFileError, match="is not a directory"):
        check_destination(sub / "c.bin", overwrite=False)


def test_check_destination_never_lets_a_device_pipe_or_directory_be_replaced(
    tmp_path: Path,
) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "link").symlink_to("file")
    for name, why in (("pipe", "is not a regular file"), ("dir", "is a directory")):
        with pytest.raises(LocalFileError, match=why):
            check_destination(tmp_path / name, overwrite=True)
    check_destination(tmp_path / "file", overwrite=True)
    check_destination(tmp_path / "link", overwrite=True)  # the link is replaced, not followed
    check_destination(Path(os.devnull), overwrite=False)  # verified, and dropped


def test_publish_refuses_a_pipe_that_took_the_destination_meanwhile(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    part = PartFile(dest)
    part.open()
    part.write(b"data")
    os.mkfifo(dest)  # after the early check, before the rename
    with pytest.raises(LocalFileError, match="is not a regular file"):
        part.publish(overwrite=True, durable=False)
    assert stat.S_ISFIFO(os.lstat(dest).st_mode)
    assert part.part_path.read_bytes() == b"data"  # kept


def test_a_download_to_the_null_device_writes_nothing_anywhere() -> None:
    part = part_for(Path(os.devnull))
    assert isinstance(part, DiscardingPart)
    assert part.resumable("x") is None
    part.open()
    part.write(b"dropped")
    part.publish(overwrite=True, mtime_ns=0, mode=0o600)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert not os.path.lexists(os.devnull + ".part")
    assert type(part_for(Path("/tmp/dev/null"))) is PartFile


def test_a_part_file_asks_for_write_back_as_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Early write-back (so that the final flush finds little left to write): requested for
    each step's worth of new data, over exactly the range written since the last request."""
    if not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise here")
    requests: list[tuple[int, int, int]] = []
    monkeypatch.setattr(ftx.client._partfile, "_WRITE_BACK_STEP", 1 << 20)

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        requests.append((offset, length, advice))

    monkeypatch.setattr(os, "posix_fadvise", advise)
    part = PartFile(tmp_path / "out.bin")
    part.open()
    for _ in range(7):
        part.write(b"x" * (512 << 10))  # 3.5 MiB in all
    part.publish(durable=False)
    assert requests == [
        (0, 1 << 20, os.POSIX_FADV_DONTNEED),
        (1 << 20, 1 << 20, os.POSIX_FADV_DONTNEED),
        (2 << 20, 1 << 20, os.POSIX_FADV_DONTNEED),
    ]
    assert (tmp_path / "out.bin").stat().st_size == 7 * (512 << 10)
