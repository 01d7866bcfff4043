"""The documentation's code must keep working.

The runnable example (docs/examples/framed_echo.py) is run in a subprocess, and every Python block
of the embedding guide must compile and import only names that exist, so that the docs cannot
rot silently when the API changes. Local links and anchors in the guide must lead somewhere.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
EXAMPLE = DOCS / "examples" / "framed_echo.py"
GUIDES = [DOCS / "embedding.md"]

# A fenced block of Python, possibly indented (inside a list item).
PYTHON_BLOCK = re.compile(r"^(?P<indent> *)```python\n(?P<code>.*?)^(?P=indent)```", re.S | re.M)


def python_blocks(path: Path) -> list[tuple[str, str]]:
    """``(where, code)`` for each Python block of a Markdown file, ``where`` as ``name:line``."""
    text = path.read_text(encoding="utf-8")
    return [
        (f"{path.name}:{text.count(chr(10), 0, match.start()) + 1}", textwrap.dedent(match["code"]))
        for match in PYTHON_BLOCK.finditer(text)
    ]


BLOCKS = [block for guide in GUIDES for block in python_blocks(guide)]


def test_framed_file_example_runs() -> None:
    """docs/examples/framed_file.py: send_frames, receive_nowait, send_file and receive_into
    together; the example checks every byte itself and says so."""
    lines = run_example(DOCS / "examples" / "framed_file.py")
    assert lines[0] == "server: took 3 request(s) in one batch"
    assert len([line for line in lines if line.endswith("all correct")]) == 3, lines
    assert lines[-1] == "done"


def test_framed_span_example_runs() -> None:
    """docs/examples/framed_span.py: a receive span taking frames piece by piece, then the
    event loop receiving the next frame; the example checks the digest itself."""
    lines = run_example(DOCS / "examples" / "framed_span.py")
    assert lines == [
        "took 16777216 bytes in a worker thread; digest matches",
        "then, on the event loop: the end",
    ]


def run_example(example: Path) -> list[str]:
    """Run an example with warnings as errors; it must succeed silently on stderr. Returns the
    lines it printed."""
    result = subprocess.run(
        [sys.executable, "-W", "error", str(example)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=example.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.splitlines()


def test_framed_echo_example_runs() -> None:
    lines = run_example(EXAMPLE)
    assert len(lines) == 8, lines
    listening = re.fullmatch(r"echo server listening on 127\.0\.0\.1:(\d+)", lines[0])
    assert listening, lines[0]
    assert int(listening[1]) != 0  # the real port, not the 0 it was asked for
    assert lines[1:4] == [
        "sent b'hello, frames', got back b'hello, frames'",
        "sent b'', got back b''",  # the empty frame came back as an empty frame
        r"sent b'\x00\x01\x02\xff', got back b'\x00\x01\x02\xff'",
    ]
    assert lines[4] == "sent 3 parts as one frame, got back 40012 bytes: b'chunk 7:x'..."
    assert lines[5].startswith("refused before sending: ")
    assert "65537 bytes" in lines[5]
    assert lines[6:] == ["server closed the connection; 0 frames left over", "done"]


def test_the_guide_has_its_python_blocks() -> None:
    # Guards the block regex itself: a pattern that matched nothing would pass every check below.
    assert len(BLOCKS) >= 6
    assert any("check_framed_channel" in code for _, code in BLOCKS)
    assert any("FrameDecoder" in code for _, code in BLOCKS)


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_guide_python_block_compiles_and_imports_real_names(where: str, code: str) -> None:
    compile(code, where, "exec")  # a SyntaxError fails the test, and says where
    for node in ast.walk(ast.parse(code, where)):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module}.{alias.name} is gone"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("guide", GUIDES, ids=[guide.name for guide in GUIDES])
def test_guide_local_links_lead_somewhere(guide: Path) -> None:
    text = guide.read_text(encoding="utf-8")
    outside_code = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", outside_code, re.M)}
    links = re.findall(r"\]\(([^)\s]+)\)", outside_code)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert local, "no local links found: the pattern is broken"
    for link in local:
        target, _, anchor = link.partition("#")
        if target:
            assert (guide.parent / target).exists(), f"{guide.name}: {link} leads nowhere"
        else:
            assert anchor in anchors, f"{guide.name}: #{anchor} is no heading of the guide"


def test_the_guide_s_tcp_example_runs_as_written(tmp_path: Path) -> None:
    """The embedding guide's TCP block is a whole program (a free port, a main): run as it is,
    it asks once and prints the echo."""
    [code] = [code for _, code in BLOCKS if "async def ask(port" in code]
    script = tmp_path / "tcp_example.py"
    script.write_text(code, encoding="utf-8")
    assert run_example(script) == ["b'you said: hello'"]
