"""The layout's promises, checked: no import cycles anywhere in ftx, and ``import ftx.framing``
stays light (the layers themselves are checked by ``lint-imports`` in CI)."""

from __future__ import annotations

import json
import subprocess
import sys

import grimp

import ftx.errors
import ftx.framing


def _cycles(package: str) -> list[list[str]]:
    """The strongly connected components of more than one module in ``package``'s import graph
    (every import counts: module level, inside functions and under ``TYPE_CHECKING``)."""
    graph = grimp.build_graph(package)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's algorithm; ftx is small enough to recurse
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in edges[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    assert _cycles("ftx") == []


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic import b\n")
    (package / "b.py").write_text("def f():\n    from cyclic import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (package / "c.py").write_text("import cyclic.a\n")  # imports into the cycle, not part of it
    assert _cycles("cyclic") == [["cyclic.a", "cyclic.b"]]


def _private_imports(package: str) -> list[tuple[str, str]]:
    """The imports in ``package`` of another package's private module: ``a.b._c`` may be
    imported only from inside ``a.b``."""
    graph = grimp.build_graph(package)
    found = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            parts = imported.split(".")
            private = next((i for i, part in enumerate(parts) if part.startswith("_")), None)
            if private is None:
                continue
            owner = ".".join(parts[:private])
            if not (importer == owner or importer.startswith(owner + ".")):
                found.append((importer, imported))
    return found


def test_packages_are_used_through_their_public_names() -> None:
    assert _private_imports("ftx") == []


def test_the_private_import_check_sees_one(tmp_path, monkeypatch) -> None:
    package = tmp_path / "layered"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "_shared.py").write_text("")
    (package / "low" / "__init__.py").write_text("from layered.low._impl import x\n")
    (package / "low" / "_impl.py").write_text("from layered import _shared\nx = 1\n")
    (package / "high.py").write_text("from layered.low._impl import x\nfrom layered.low import x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _private_imports("layered") == [("layered.high", "layered.low._impl")]


_LOADED = """
import json, sys
before = set(sys.modules)
import {what}
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _newly_loaded(what: str, after: str = "") -> set[str]:
    """The modules that ``import what`` loads in a fresh interpreter, after ``after``."""
    code = (f"import {after}\n" if after else "") + _LOADED.format(what=what)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    return set(json.loads(out.stdout))


def test_import_framing_is_light() -> None:
    loaded = _newly_loaded("ftx.framing", after="trio")
    ftx_modules = {m for m in loaded if m == "ftx" or m.startswith("ftx.")}
    assert {"ftx.framing", "ftx.errors"} <= ftx_modules
    beyond = {m for m in ftx_modules if not m.startswith("ftx.framing")}
    assert beyond == {"ftx", "ftx._version", "ftx.errors"}
    # Beyond what trio itself loads (trio imports ssl), the framing layer loads nothing of
    # the standard library's networking or hashing.
    assert not {m for m in loaded if m.split(".")[0] in {"ssl", "hashlib", "xxhash", "blake3"}}


def test_import_framing_alone_does_not_load_ssl_more_than_trio() -> None:
    with_trio = _newly_loaded("trio")
    with_framing = _newly_loaded("ftx.framing")
    extra = with_framing - with_trio
    assert not {m for m in extra if not (m == "ftx" or m.startswith("ftx."))}, extra


def test_the_light_import_check_sees_heavy_imports() -> None:
    loaded = _newly_loaded("ftx.client._client", after="trio")  # (ftx.client alone is lazy)
    assert "ftx.protocol" in loaded
    assert "ftx.server" not in loaded


def test_framing_errors_are_importable_from_framing() -> None:
    for name in (
        "FtxError",
        "ProtocolError",
        "LocalProtocolError",
        "RemoteProtocolError",
        "FrameTooLargeError",
        "IncompleteFrameError",
    ):
        assert getattr(ftx.framing, name) is getattr(ftx.errors, name)
        assert name in ftx.framing.__all__


def test_the_package_exports_everything_it_names() -> None:
    import ftx

    for name in ftx.__all__:
        assert getattr(ftx, name) is not None
    assert set(dir(ftx)) >= set(ftx.__all__)
