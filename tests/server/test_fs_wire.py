"""The server's edge with its sandbox (ftx.server._fs_wire): every reason the sandbox can give
has a wire error code, every file type a wire entry type, and they are those the wire has always
carried. And every exception defined by the server or the sandbox is an FtxError."""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest
import trio

import ftx.server
from ftx.errors import FtxError
from ftx.fs import FileType, FsEntry, FsError, FsReason, ServedRoot
from ftx.protocol import ErrorCode
from ftx.protocol.messages import Entry, EntryType
from ftx.server._fs_wire import ENTRY_TYPES, ERROR_CODES, error_code, wire_entry
from ftx.server._limits import WriteStalledError
from ftx.server._uploads import UploadStalledError


def test_every_reason_has_an_error_code() -> None:
    """Fails when a reason is added to ftx.fs without its code in the server's table."""
    assert set(ERROR_CODES) == set(FsReason)
    assert all(isinstance(code, ErrorCode) for code in ERROR_CODES.values())


def test_every_file_type_has_an_entry_type() -> None:
    assert set(ENTRY_TYPES) == set(FileType)
    assert set(ENTRY_TYPES.values()) == set(EntryType)


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (FsReason.OUTSIDE_ROOT, "outside-root"),
        (FsReason.INVALID_PATH, "bad-request"),
        (FsReason.NOT_FOUND, "not-found"),
        (FsReason.PERMISSION_DENIED, "permission-denied"),
        (FsReason.NOT_A_FILE, "not-a-file"),
        (FsReason.EXISTS, "exists"),
        (FsReason.IN_USE, "busy"),
        (FsReason.NO_SPACE, "no-space"),
        (FsReason.READ_ONLY, "read-only"),
        (FsReason.UNEXPECTED, "internal"),
    ],
)
def test_each_reason_goes_on_the_wire_as_it_always_did(reason: FsReason, code: str) -> None:
    assert error_code(FsError(reason, "whatever")) == code


def test_the_tables_cannot_be_changed() -> None:
    with pytest.raises(TypeError):
        ERROR_CODES[FsReason.NOT_FOUND] = ErrorCode.INTERNAL  # type: ignore[index]


def test_an_fs_error_is_an_ftx_error_that_keeps_its_message() -> None:
    error = FsError(FsReason.NOT_FOUND, "no such file: 'x'")
    assert isinstance(error, FtxError)
    assert (error.reason, error.message, str(error)) == (
        FsReason.NOT_FOUND,
        "no such file: 'x'",
        "no such file: 'x'",
    )


def test_a_listed_entry_goes_on_the_wire_field_for_field(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_bytes(b"12345")
    os.chmod(tmp_path / "file.txt", 0o640)
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to("file.txt")
    os.mkfifo(tmp_path / "fifo")
    with ServedRoot(tmp_path) as root, root.list_directory("") as listing:
        listed = listing.next_page(100)
    by_name = {entry.name: wire_entry(entry) for entry in listed}
    assert {name: entry.type for name, entry in by_name.items()} == {
        "file.txt": EntryType.FILE,
        "dir": EntryType.DIRECTORY,
        "link": EntryType.SYMLINK,
        "fifo": EntryType.OTHER,
    }
    st = (tmp_path / "file.txt").stat()
    assert by_name["file.txt"] == Entry("file.txt", EntryType.FILE, 5, st.st_mtime_ns, 0o640)
    fs_entry = FsEntry("x", FileType.DIRECTORY, 0, 123, 0o755)
    assert wire_entry(fs_entry) == Entry("x", EntryType.DIRECTORY, 0, 123, 0o755)


def _modules() -> list[ModuleType]:
    names = [f"ftx.server.{info.name}" for info in pkgutil.iter_modules(ftx.server.__path__)]
    return [importlib.import_module(name) for name in ["ftx.fs", "ftx.server", *names]]


@pytest.mark.parametrize("module", _modules(), ids=lambda module: module.__name__)
def test_every_exception_of_the_server_and_the_sandbox_is_an_ftx_error(
    module: ModuleType,
) -> None:
    defined = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    ]
    assert all(issubclass(exc, FtxError) for exc in defined), defined


def test_a_stalled_write_is_still_a_broken_connection() -> None:
    assert issubclass(UploadStalledError, WriteStalledError)
    assert issubclass(WriteStalledError, FtxError)
    assert issubclass(WriteStalledError, trio.BrokenResourceError)
