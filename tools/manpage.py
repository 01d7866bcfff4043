"""The parser that the build turns into the manual page ``ftx.1`` (argparse-manpage, configured
in pyproject.toml): ``ftx``'s own, read from the source tree being built."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ftx.cli import build_parser as _build_parser


def build_parser() -> argparse.ArgumentParser:
    """``ftx``'s parser."""
    return _build_parser()
