"""The re-emitter: fresh protocol-2 pickles that load to the same objects, on the checked graph."""

from __future__ import annotations

import json
import pickle
import pickletools
import subprocess
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptd.convert.legacy import read_legacy_file
from ckptd.formats.model import OpaqueValue
from ckptd.pickles.emit import emit_pickle, emitted_name
from ckptd.pickles.graph import build_graph
from ckptd.pickles.graph_check import check_pickle_bytes
from ckptd.pickles.ops import parse_ops
from tests.legacy_env import REPO, legacy_python
from tests.sb2_fixtures import same_value, trusted_loads


def reemit(blob: bytes) -> bytes:
    return emit_pickle(build_graph(parse_ops(blob)).root).data


def _shared_and_cyclic() -> Any:
    shared = {"x": 1}
    cyclic: list[Any] = ["head"]
    cyclic.append(cyclic)
    recursive_tuple: list[Any] = []
    holder = (recursive_tuple, "t")
    recursive_tuple.append(holder)
    return [shared, shared, cyclic, holder]


VALUES = [
    None,
    (True, False, 0, 255, 256, 65536, -1, 2**31, -(2**31) - 1, 2**70, -(2**300)),
    (0.5, float("inf"), float("-inf"), -0.0, 1e-310),
    ("", "ünïcödé", "\U0001f600", "surrogate \udc80", "x" * 70_000),
    (b"", b"\x00\xff bytes", bytearray(b""), bytearray(b"ba")),
    [list(range(2500)), {str(i): i for i in range(1500)}],
    {(1, "a"): frozenset({1, 2}), 2.5: {3, 4}, None: ()},
    ((1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)),
    OrderedDict([("b", 1), ("a", 2)]),
    np.arange(6, dtype=">i4").reshape(2, 3),
    np.asfortranarray(np.ones((2, 3), dtype=np.float32)),
    np.float32(1.5),
    complex(1, -2),
]


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_round_trip(value: Any, protocol: int) -> None:
    emitted = reemit(pickle.dumps(value, protocol=protocol))
    assert emitted[:2] == b"\x80\x02"
    assert same_value(trusted_loads(emitted), trusted_loads(pickle.dumps(value, protocol=protocol)))
    assert reemit(emitted) == emitted  # canonical: re-emitting our own output is a fixed point


def test_identity_and_cycles_survive() -> None:
    loaded = pickle.loads(reemit(pickle.dumps(_shared_and_cyclic(), protocol=4)))
    shared_a, shared_b, cyclic, holder = loaded
    assert shared_a is shared_b
    assert cyclic[1] is cyclic
    assert holder[0][0] is holder


def test_only_protocol_2_opcodes_and_portable_numpy_names() -> None:
    blob = pickle.dumps({"a": np.arange(3), "s": np.float32(2)}, protocol=5)
    assert b"numpy._core" in blob
    emitted = reemit(blob)
    assert max(op.proto for op, _, _ in pickletools.genops(emitted)) <= 2
    assert b"numpy._core" not in emitted
    report = check_pickle_bytes(emitted, source="emitted")
    assert "numpy.core.numeric._frombuffer" in report.globals
    assert "numpy.core.multiarray.scalar" in report.globals
    assert emitted_name("numpy._core.multiarray", "_reconstruct") == (
        "numpy.core.multiarray",
        "_reconstruct",
    )


def test_python2_spellings_for_builtins() -> None:
    emitted = reemit(pickle.dumps((b"", bytearray(b"x")), protocol=4))
    assert b"c__builtin__\nbytes\n" in emitted
    assert b"c__builtin__\nbytearray\n" in emitted
    assert pickle.loads(emitted) == (b"", bytearray(b"x"))
    assert emit_pickle(build_graph(parse_ops(emitted)).root).globals == (
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.bytes",
    )


_OLD_STACK_LOADER = r"""
import json, sys
sys.path.insert(0, "tests/legacy37")
import cloudpickle, standins
standins.install()
results = {}
for path in sys.argv[1:]:
    with open(path, "rb") as handle:
        value = cloudpickle.load(handle)
    called = value(0.5) if callable(value) and not isinstance(value, type) else None
    results[path] = [str(type(value)), repr(called)]
print(json.dumps(results))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ppo2", "dqn", "sac"])
def test_emitted_values_load_on_the_sb2_era_stack(kind: str, tmp_path: Path) -> None:
    """Python 3.7 + numpy 1.16 + cloudpickle 1.2 load every re-emitted value, with the type we report."""
    try:
        python = legacy_python()
    except (LookupError, subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"needs the SB2-era interpreter: {err}")
    checkpoint, _ = read_legacy_file(Path(__file__).parent / "data" / "sb2-era" / f"{kind}.pkl")
    blobs = {}
    for key, value in checkpoint.data.items():
        if isinstance(value, OpaqueValue):
            path = tmp_path / f"{key}.pkl"
            path.write_bytes(value.pickled)
            blobs[str(path)] = value
    assert blobs
    result = subprocess.run(
        [str(python), "-c", _OLD_STACK_LOADER, *blobs],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO,
    )
    loaded = json.loads(result.stdout)
    for path, value in blobs.items():
        type_name, called = loaded[path]
        assert type_name == value.type_name, path
        if value.carries_code:
            assert called != "None", path  # the schedule ran and returned a value
