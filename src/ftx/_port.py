"""The default TCP port of ftx (docs/protocol.md §3), in a module of its own: the command line
needs it to build its parser, and importing it from :mod:`ftx.server` would load the whole
server into ``ftx get``. It imports nothing."""

from typing import Final

__all__ = ["DEFAULT_PORT"]

DEFAULT_PORT: Final = 3890
