"""The framing-only distribution, ftx-framing (packaging/ftx-framing): it ships every module the
framing layer needs and nothing else, and installed alone in a fresh virtual environment, with
trio as its only dependency, it runs the embedding guide's echo example.

The install test builds and installs from this checkout with pip, which fetches trio and the
build backend (hatchling) from the package index or pip's cache: about 20 s.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "packaging" / "ftx-framing"
# What trio itself pulls in (trio's own dependencies), and pip's own.
TRIO_AND_ITS_DEPENDENCIES = {"trio", "attrs", "idna", "outcome", "sniffio", "sortedcontainers"}
INSTALLER = {"pip", "setuptools", "wheel"}


def shipped() -> dict[str, str]:
    """The wheel's force-include table: source path -> path in the wheel."""
    config = tomllib.loads((DIST / "pyproject.toml").read_text())
    table: dict[str, str] = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    return table


def test_the_distribution_ships_every_framing_module_and_what_they_import() -> None:
    in_wheel = {(DIST / source).resolve() for source in shipped()}
    framing = {
        *(ROOT / "src" / "ftx" / "framing").glob("*.py"),
        *(ROOT / "src" / "ftx" / "testing").glob("*.py"),
    }
    assert framing <= in_wheel, f"not shipped: {sorted(map(str, framing - in_wheel))}"
    # Everything of ftx that the shipped modules import is shipped too, but what the package's
    # __init__ imports on first use only (PEP 562) for the full tool.
    top = (ROOT / "src" / "ftx" / "__init__.py").resolve()
    lazy = {"ftx.client", "ftx.server", "ftx.protocol", "ftx.protocol.messages"}
    for path in in_wheel:
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module):
                continue
            if not node.module.startswith("ftx") or (path == top and node.module in lazy):
                continue
            module = ROOT / "src" / Path(*node.module.split("."))
            candidates = {module.with_suffix(".py"), module / "__init__.py"}
            assert candidates & in_wheel, f"{path.name} imports {node.module}, not shipped"
    assert (ROOT / "src" / "ftx" / "__init__.py").resolve() in in_wheel


def test_installed_alone_it_runs_the_embedding_example(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    quiet = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": ""}
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(DIST)],
        check=True,
        env=quiet,
        cwd=tmp_path,
        timeout=600,
    )
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"],
        check=True,
        capture_output=True,
        text=True,
        env=quiet,
        cwd=tmp_path,
    )
    names = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert names - INSTALLER == TRIO_AND_ITS_DEPENDENCIES | {"ftx-framing"}, names
    # Run from elsewhere: the example's own folder is on sys.path, the checkout's src is not.
    example = subprocess.run(
        [python, str(ROOT / "docs" / "examples" / "framed_echo.py")],
        capture_output=True,
        text=True,
        env=quiet,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert example.returncode == 0, example.stderr
    assert example.stdout.rstrip().endswith("done"), example.stdout
    where = subprocess.run(
        [
            python,
            "-c",
            "import ftx.framing, sys; print(ftx.framing.__file__, 'ftx.client' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        env=quiet,
        cwd=tmp_path,
        check=True,
    ).stdout.split()
    assert where[0].startswith(str(env_dir)), where
    assert where[1] == "False"
    assert sys.prefix != str(env_dir)
