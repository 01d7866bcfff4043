"""The ``ftx`` command: ``serve``, ``get``, ``ls`` and ``put``.

:func:`main` is the entry point. Private modules, by role: ``_main`` (the parser and dispatch);
``_get``, ``_tree``, ``_put`` and ``_serve`` (the commands: ``ftx get`` of one file and ``ftx
ls``, ``ftx get`` of several or ``-r``, ``ftx put``, ``ftx serve``); and what the commands share:
``_connect`` (connection options, connecting), ``_address`` (``HOST[:PORT]``), ``_errors``
(``CliError``, exit codes, one-line reports), ``_options`` (common options), ``_output``
(what is printed), ``_progress`` (the progress bar) and ``_retry`` (when to try again). Only
``_main`` imports the commands; they never import it. It imports a command's modules only
when that command runs (or its options are shown): ``ftx --version`` loads no command, ``ftx
get`` not the server.
"""

from ftx.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
