"""The message classes are made by ``@record`` (ftx.protocol._record), which costs far less at
start-up than ``@dataclass(frozen=True, slots=True)``; they must behave exactly as the
dataclasses they were. Each is compared with its twin: the same module source run again with
``@dataclass(frozen=True, slots=True)`` in place of ``@record``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import ftx.protocol._message_types as message_types
import ftx.protocol._tree_types as tree_types
from ftx.protocol._record import record


def _twins(module: types.ModuleType) -> dict[str, tuple[type, type]]:
    """Each ``@record`` class of ``module`` with its dataclass twin, by name."""
    source = Path(module.__file__ or "").read_text()
    assert source.count("@record\n") >= 5
    twin_source = source.replace("@record\n", "@dataclass(frozen=True, slots=True)\n")
    twin = types.ModuleType(module.__name__ + "_twin")
    twin.__dict__["dataclass"] = dataclasses.dataclass
    sys.modules[twin.__name__] = twin  # (dataclasses looks its module up)
    try:
        exec(compile(twin_source, f"<twin of {module.__name__}>", "exec"), twin.__dict__)
    finally:
        del sys.modules[twin.__name__]
    return {
        name: (value, twin.__dict__[name])
        for name, value in vars(module).items()
        if isinstance(value, type) and "_record_values" in value.__dict__
    }


TWINS = {**_twins(message_types), **_twins(tree_types)}


def test_every_message_class_is_compared() -> None:
    assert len(TWINS) >= 30
    assert {"Hello", "Get", "Data", "TreeFiles", "TreePut", "BlockList"} <= set(TWINS)
    for ours, theirs in TWINS.values():
        assert dataclasses.is_dataclass(theirs)
        assert not dataclasses.is_dataclass(ours)


def _values(cls: type, salt: int) -> list[Any]:
    """Distinct values for each field of ``cls``, different for each ``salt``."""
    return [f"{name}-{salt}" for name in inspect.signature(cls).parameters]


@pytest.mark.parametrize("name", sorted(TWINS))
def test_a_message_class_behaves_as_its_dataclass_twin(name: str) -> None:
    ours, theirs = TWINS[name]
    assert str(inspect.signature(ours)) == str(inspect.signature(theirs))
    assert ours.__match_args__ == theirs.__match_args__  # type: ignore[attr-defined]
    assert tuple(ours.__slots__) == tuple(theirs.__slots__)  # type: ignore[attr-defined]
    assert (ours.__name__, ours.__qualname__, ours.__doc__) == (
        theirs.__name__,
        theirs.__qualname__,
        theirs.__doc__,
    )
    assert ours.__module__ + "_twin" == theirs.__module__
    ours_one, theirs_one = ours(*_values(ours, 1)), theirs(*_values(theirs, 1))
    assert repr(ours_one) == repr(theirs_one)
    assert hash(ours_one) == hash(theirs_one)
    assert ours_one == ours(*_values(ours, 1))
    assert ours_one != ours(*_values(ours, 2))
    assert ours_one != theirs_one  # another class
    assert not hasattr(ours_one, "__dict__")
    # (Python 3.11's twin fails with a TypeError on a name that is not a field: a known bug.)
    with pytest.raises(AttributeError):
        ours_one.not_a_field = 0
    for attribute in ours.__match_args__:  # type: ignore[attr-defined]
        with pytest.raises(dataclasses.FrozenInstanceError) as ours_error:
            setattr(ours_one, attribute, 0)
        with pytest.raises(dataclasses.FrozenInstanceError) as theirs_error:
            setattr(theirs_one, attribute, 0)
        assert str(ours_error.value) == str(theirs_error.value)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(ours_one, attribute)
    for again in (pickle.loads(pickle.dumps(ours_one)), copy.copy(ours_one)):
        assert again == ours_one
        assert again is not ours_one
    # The defaults: only the fields without one given.
    required = [p for p in inspect.signature(ours).parameters.values() if p.default is p.empty]
    values = [f"{p.name}-0" for p in required]
    assert repr(ours(*values)) == repr(theirs(*values))


def test_match_statements_see_the_fields() -> None:
    get = message_types.Get(7, "a.txt", length=3)
    match get:
        case message_types.Get(request_id, path, offset, length=length):
            assert (request_id, path, offset, length) == (7, "a.txt", 0, 3)
        case _:
            pytest.fail("no match")


def test_record_refuses_what_a_dataclass_refuses() -> None:
    with pytest.raises(TypeError, match="non-default field 'b' follows a default"):

        @record
        class Bad:
            a: int = 0
            b: int
