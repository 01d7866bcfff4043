"""Every exception the client defines, private ones too, is an ftx.FtxError (h11's rule: one
small tree, so that ``except ftx.FtxError`` catches everything ftx raises on purpose)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import ftx.client
from ftx.errors import FtxError


def test_every_exception_defined_in_the_client_is_an_ftx_error() -> None:
    defined: list[type[BaseException]] = []
    for module_info in pkgutil.iter_modules(ftx.client.__path__, "ftx.client."):
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                defined.append(value)
    assert defined  # (_upload's _ResumedMismatchError, at least)
    assert [cls for cls in defined if not issubclass(cls, FtxError)] == []
