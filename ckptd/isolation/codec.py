"""Values and errors across the isolation boundary, as JSON: typed on both sides, never pickled.

The child that parses checkpoints (``ckptd.isolation.child``) sends back the frozen dataclasses
the library returns (``Identification``, ``VerifyReport``, ``ConversionOutcome``) and the
``CkptdError`` or ``OSError`` it raised. They cross as JSON and are rebuilt from the dataclass's
own type hints, so a field added to one of them crosses without a change here, and nothing the
child sends can make the daemon construct anything but those types (docs/security.md, Isolation).
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import functools
import types
import typing
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from ckptd import errors

# An error the parser raised that is not ckptd's own (a bug): rebuilt as RuntimeError, so the
# daemon treats it as it always has (the worker logs it, the rescan retries the file).
_ERROR_FALLBACK = RuntimeError


def encode(value: Any) -> Any:
    """``value`` (dataclasses, paths, enums, durations, tuples, mappings, scalars) as plain JSON values."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return encode(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: encode(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(key): encode(item) for key, item in value.items()}
    if isinstance(value, tuple | list | set | frozenset):
        return [encode(item) for item in value]
    raise TypeError(f"cannot send a {type(value).__name__} across the isolation boundary")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(hint: Any, data: Any) -> Any:
    """Rebuild a value of type ``hint`` from what :func:`encode` made of it."""
    return _decoder(hint)(data)


def _same(data: Any) -> Any:
    return data


@functools.cache
def _decoder(hint: Any) -> Callable[[Any], Any]:
    """The function that rebuilds a ``hint`` from JSON, worked out once per type: the daemon
    decodes an identification and a report for every file of a burst, and walking the type hints
    each time cost more than the rest of its work on the answer."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return _same
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional = type(None) in typing.get_args(hint)
        inner = _decoder(options[0]) if len(options) == 1 else _same

        def union(data: Any) -> Any:
            return None if data is None and optional else inner(data)

        return union
    if origin is typing.Literal:
        return _same
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            item = _decoder(args[0])
            return lambda data: tuple(item(value) for value in data)
        items = tuple(_decoder(arg) for arg in args)
        return lambda data: tuple(item(value) for item, value in zip(items, data, strict=True))
    if origin is list:
        (arg,) = typing.get_args(hint)
        element = _decoder(arg)
        return lambda data: [element(value) for value in data]
    if origin in (dict, Mapping) or hint is dict:
        args = typing.get_args(hint) or (str, Any)
        value_of = _decoder(args[1])
        return lambda data: {key: value_of(value) for key, value in data.items()}
    if hint is timedelta:
        return lambda data: timedelta(seconds=data)
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
            return _dataclass_decoder(hint)
        if issubclass(hint, enum.Enum | Path):
            return hint
    return _same


def _dataclass_decoder(cls: type) -> Callable[[Any], Any]:
    # The fields' decoders are worked out at the first call, so a dataclass that refers to itself
    # (through a field's type) does not recurse here.
    fields: dict[str, Callable[[Any], Any]] = {}

    def build(data: Any) -> Any:
        if not fields:
            hints = _hints(cls)
            fields.update(
                {f.name: _decoder(hints[f.name]) for f in dataclasses.fields(cls) if f.init}
            )
        return cls(**{key: fields[key](item) for key, item in data.items() if key in fields})

    return build


def encode_error(err: BaseException) -> dict[str, Any]:
    """An exception as JSON: its class, its one-line text and the attributes it carries."""
    attrs = {
        key: value
        for key, value in vars(err).items()
        if value is None or isinstance(value, bool | int | float | str)
    }
    payload: dict[str, Any] = {"type": type(err).__name__, "text": str(err), "attrs": attrs}
    if isinstance(err, OSError):
        payload["os"] = [err.errno, err.strerror, err.filename]
    return payload


def decode_error(payload: Mapping[str, Any]) -> Exception:
    """The exception :func:`encode_error` described: a ``ckptd.errors`` class, an OSError, else
    RuntimeError with the same text (never a class named by the child outside those)."""
    name, text = str(payload.get("type", "")), str(payload.get("text", ""))
    os_args = payload.get("os")
    if os_args is not None:
        code, strerror, filename = os_args
        if strerror is None:
            return OSError(code or errno.EIO, text)
        # OSError(errno, ...) picks the subclass itself (ENOENT -> FileNotFoundError).
        return (
            OSError(code, strerror, filename) if filename is not None else OSError(code, strerror)
        )
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.CkptdError):
        err = cls.__new__(cls)
        Exception.__init__(err, text)
        vars(err).update(payload.get("attrs", {}))
        return err
    return _ERROR_FALLBACK(f"{name}: {text}" if name else text)
