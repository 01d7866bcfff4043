"""The class decorator of the message types: frozen, slotted value classes, made cheaply.

``@record`` gives a class what ``@dataclass(frozen=True, slots=True)`` gives the messages (the
same constructor, ``__slots__``, ``__match_args__``, equality, hashing, ``repr``, immutability
with :class:`dataclasses.FrozenInstanceError`, pickling), at about a tenth of the cost when ftx
starts: :func:`dataclasses.dataclass` compiles six or seven functions per class, ``@record``
one (its ``__init__``); the others are shared and read the fields through an
:func:`operator.attrgetter`. Messages are not dataclasses (:func:`dataclasses.fields` and
:func:`dataclasses.replace` do not apply to them); type checkers see them as dataclasses
(:func:`typing.dataclass_transform`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from operator import attrgetter
from typing import Any, TypeVar, dataclass_transform

__all__ = ["record"]

_C = TypeVar("_C", bound=type)

_MISSING: Any = object()


def _fields_of(
    values: Callable[[Any], Any], names: tuple[str, ...]
) -> Callable[[Any], tuple[Any, ...]]:
    """The function that gives an instance's field values as a tuple."""
    if len(names) == 1:
        return lambda self: (values(self),)
    return values if names else lambda self: ()


def _eq(self: Any, other: object) -> bool:
    values: Callable[[object], tuple[Any, ...]] = self._record_values
    if other.__class__ is not self.__class__:
        return NotImplemented  # type: ignore[no-any-return]
    return values(self) == values(other)


def _hash(self: Any) -> int:
    return hash(self.__class__._record_values(self))


def _repr(self: Any) -> str:
    cls = self.__class__
    pairs = zip(cls.__match_args__, cls._record_values(self), strict=True)
    return f"{cls.__qualname__}({', '.join(f'{name}={value!r}' for name, value in pairs)})"


def _setattr(self: Any, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _getstate(self: Any) -> list[Any]:
    return list(self.__class__._record_values(self))


def _setstate(self: Any, state: list[Any]) -> None:
    for name, value in zip(self.__class__.__match_args__, state, strict=True):
        object.__setattr__(self, name, value)


def _make_init(names: tuple[str, ...], defaults: tuple[Any, ...]) -> Callable[..., None]:
    """An ``__init__`` taking ``names`` in order (the last ones defaulting to ``defaults``) that
    sets each field."""
    body = "".join(f" _set(self, {name!r}, {name})\n" for name in names) or " pass\n"
    source = f"def __init__(self, {', '.join(names)}):\n{body}"
    namespace: dict[str, Any] = {"_set": object.__setattr__}
    exec(source, namespace)  # (made of the class's field names only)
    init: Callable[..., None] = namespace["__init__"]
    init.__defaults__ = defaults or None
    return init


@dataclass_transform(frozen_default=True, eq_default=True)
def record(cls: _C) -> _C:
    """Make ``cls`` a frozen value class of the fields its annotations name, in order, with
    their class values as defaults (a new class, with ``__slots__``).

    Raises:
        TypeError: a field without a default follows one with a default, or a field is not a
            valid identifier.
    """
    annotations = inspect.get_annotations(cls)  # (strings: not evaluated)
    names = tuple(annotations)
    defaults: list[Any] = []
    for name in names:
        if not name.isidentifier() or name == "self":
            raise TypeError(f"{cls.__qualname__}: bad field name {name!r}")
        default = cls.__dict__.get(name, _MISSING)
        if default is not _MISSING:
            defaults.append(default)
        elif defaults:
            raise TypeError(f"{cls.__qualname__}: non-default field {name!r} follows a default")
    init = _make_init(names, tuple(defaults))
    init.__annotations__ = {**annotations, "return": None}  # (as a dataclass's: for typing)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    namespace = {k: v for k, v in cls.__dict__.items() if k not in names}
    namespace.pop("__dict__", None)
    namespace.pop("__weakref__", None)
    namespace.update(
        __slots__=names,
        __match_args__=names,
        __init__=init,
        __eq__=_eq,
        __hash__=_hash,
        __repr__=_repr,
        __setattr__=_setattr,
        __delattr__=_delattr,
        __getstate__=_getstate,
        __setstate__=_setstate,
        _record_values=staticmethod(_fields_of(attrgetter(*names or ("__class__",)), names)),
    )
    new = type(cls)(cls.__name__, cls.__bases__, namespace)
    new.__qualname__ = cls.__qualname__
    return new
