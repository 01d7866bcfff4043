"""The ``ftx`` command: ``serve``, ``get``, ``ls`` and ``put``.

:func:`main` is the entry point. Private modules, by role: ``_main`` (the parser and dispatch),
``_connect`` (connection options), ``_get``, ``_put``, ``_serve`` and ``_tree`` (one command
each).
"""

from ftx.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
