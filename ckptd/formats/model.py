"""The format model: what a stable-baselines checkpoint holds, as inert values (no code, no I/O).

The safe legacy reader produces these from a pickle without executing it; the SB2 zip writer
turns them into ``data`` / ``parameters`` / ``parameter_list``; inspect and the manifest report them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np

# A value SB2's data_to_json stores as plain JSON: None, bool, int, float (incl. nan/inf), str,
# and lists / str-keyed dicts of these (tuples already turned into lists, as json.dumps would).
JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None


@dataclass(frozen=True)
class OpaqueValue:
    """A ``data`` entry SB2 stores as ``{":type:": ..., ":serialized:": base64(pickle), **extras}``.

    ``pickled`` is a fresh pickle (protocol <= 4, module names that resolve on numpy 1.x and 2.x)
    re-emitted from the inert object graph, never bytes copied from the input.
    """

    type_name: str  # what str(type(value)) gives, e.g. "<class 'gym.spaces.box.Box'>"
    pickled: bytes
    extras: Mapping[str, JsonValue] = field(default_factory=dict)  # SB2's first-level attributes
    globals: tuple[str, ...] = ()  # "module.qualname" of every global the pickle references
    carries_code: bool = False  # holds a function/code object (a schedule lambda, a closure)


DataValue: TypeAlias = JsonValue | OpaqueValue


@dataclass(frozen=True)
class ParamArray:
    """One parameter array, kept as its raw bytes (a view into the source, not a copy)."""

    name: str  # TF variable name, e.g. "model/pi_fc0/w:0"
    descr: str  # numpy dtype descr with byte order, e.g. "<f4"
    shape: tuple[int, ...]
    fortran_order: bool
    raw: memoryview  # exactly prod(shape) * itemsize bytes, in the stored memory order

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes

    def as_array(self) -> np.ndarray:
        """A zero-copy, read-only ndarray over ``raw``."""
        flat = np.frombuffer(self.raw, dtype=np.dtype(self.descr))
        return flat.reshape(self.shape, order="F" if self.fortran_order else "C")


@dataclass(frozen=True)
class LegacyCheckpoint:
    """A legacy ``(data, params)`` pickle, read statically."""

    protocol: int
    data: Mapping[str, DataValue]  # insertion order = SB2's save() literal order
    params: tuple[ParamArray, ...]  # order = get_parameter_list() order
    params_were_list: bool = False  # SB2 <= 2.5.1 saved a list without names
    globals: tuple[str, ...] = ()  # every global referenced anywhere in the file, sorted

    @property
    def carries_code(self) -> tuple[str, ...]:
        """The ``data`` keys whose values hold code (schedules, lambdas)."""
        return tuple(
            key
            for key, value in self.data.items()
            if isinstance(value, OpaqueValue) and value.carries_code
        )

    @property
    def params_bytes(self) -> int:
        return sum(param.nbytes for param in self.params)
