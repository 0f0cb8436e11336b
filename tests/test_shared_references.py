"""A value referenced from several data keys re-emits as what a real unpickle gives for each key.

cloudpickle writes the second reference to a function or class by value as a memo reference to
its *skeleton* (``_make_skel_func`` / ``_make_skeleton_class``), which a later call
(``_fill_function`` / ``_rehydrate_skeleton_class``) fills in place and returns. The unpickler's
memo slot therefore holds the filled object; ckptd's re-emitted pickle for the second key must too
(stable-baselines >= 2.9's PPO2 stores ``cliprange_vf = cliprange`` exactly like this). Lists,
dicts and objects updated after they are memoized (APPENDS, SETITEMS, BUILD) are checked the same
way. The checkpoints are written by cloudpickle 1.2 on Python 3.7 (tests/legacy37/shared_refs.py)
and the re-emitted values loaded there, next to a trusted load of the original.
"""

from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from ckptd.convert.legacy import read_legacy_file
from ckptd.errors import UnsafeCheckpoint
from ckptd.formats.model import OpaqueValue
from ckptd.pickles.emit import emit_pickle
from ckptd.pickles.graph import build_graph
from ckptd.pickles.nodes import Call, Const, DictNode, TupleNode, completed
from ckptd.pickles.ops import parse_ops
from tests.legacy_env import legacy_python, run_script

SHARED_KEYS = (
    "closure",
    "closure_again",
    "lambda",
    "lambda_again",
    "recursive",
    "recursive_again",
    "klass",
    "klass_again",
    "list",
    "list_again",
    "dict",
    "dict_again",
    "other_again",
    "pair",
    "cyclic",
    "cyclic_again",
    "space",
    "space_again",
)


@pytest.fixture(scope="module")
def old_stack() -> Path:
    try:
        return legacy_python()
    except (LookupError, subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"needs the SB2-era interpreter: {err}")


@pytest.fixture(scope="module")
def compared(old_stack: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("shared")
    original = work / "shared.pkl"
    run_script(old_stack, "shared_refs.py", "make", str(original))
    checkpoint, _ = read_legacy_file(original)
    pairs = []
    for key, value in checkpoint.data.items():
        assert isinstance(value, OpaqueValue), key
        path = work / f"{key}.pkl"
        path.write_bytes(value.pickled)
        pairs.append(f"{key}={path}")
    result: dict[str, Any] = json.loads(
        run_script(old_stack, "shared_refs.py", "check", str(original), *pairs)
    )
    return result


@pytest.mark.slow
def test_every_shared_value_is_written(compared: dict[str, Any]) -> None:
    assert sorted(compared) == sorted(SHARED_KEYS)


@pytest.mark.slow
@pytest.mark.parametrize("key", SHARED_KEYS)
def test_each_key_loads_as_the_original_does(compared: dict[str, Any], key: str) -> None:
    original, emitted = compared[key]
    assert "raises" not in json.dumps(original)  # the oracle itself works
    assert emitted == original


@pytest.mark.slow
def test_the_oracle_sees_an_empty_closure_cell(compared: dict[str, Any]) -> None:
    """What the comparison catches: a bare skeleton raises NameError when it is called."""
    closure = compared["closure"][0]
    assert closure["function"] == "linear.<locals>.func"
    assert closure["calls"][0] == repr(0.3)


GENUINE = Path(__file__).parent / "data" / "sb2-genuine"
CP = "cloudpickle.cloudpickle"


def test_a_memo_reference_to_a_skeleton_is_written_as_its_filler() -> None:
    """stable-baselines 2.9's PPO2 ``cliprange_vf = cliprange``, from the genuine file itself."""
    blob = (GENUINE / "ppo2-mlp-cartpole-schedules-sb2.9.0.pkl").read_bytes()
    graph = build_graph(parse_ops(blob))
    data = graph.root.items[0] if isinstance(graph.root, TupleNode) else None
    assert isinstance(data, DictNode)
    nodes = {k.value: v for k, v in data.items if isinstance(k, Const)}
    cliprange, cliprange_vf = nodes["cliprange"], nodes["cliprange_vf"]
    assert isinstance(cliprange_vf, Call) and cliprange_vf.func_is(CP, "_make_skel_func")
    assert cliprange_vf.filled_by is cliprange and completed(cliprange_vf) is cliprange
    assert completed(cliprange) is cliprange
    emitted = emit_pickle(cliprange_vf).data
    assert emitted == emit_pickle(cliprange).data
    again = build_graph(parse_ops(emitted))
    assert isinstance(again.root, Call) and again.root.func_is(CP, "_fill_function")
    assert emit_pickle(again.root).data == emitted  # still a fixed point
    checkpoint, _ = read_legacy_file(GENUINE / "ppo2-mlp-cartpole-schedules-sb2.9.0.pkl")
    first, second = checkpoint.data["cliprange"], checkpoint.data["cliprange_vf"]
    assert isinstance(first, OpaqueValue) and isinstance(second, OpaqueValue)
    assert second == first


def _by_value() -> Any:
    scale = 4.0

    def schedule(progress: float) -> float:
        return scale * progress

    return schedule


def test_cloudpickle_3_functions_shared_by_two_keys() -> None:
    """cloudpickle 3 (the host's) fills with a state setter, attached to the object it updates."""
    schedule = _by_value()
    blob = cloudpickle.dumps({"a": schedule, "b": [schedule]}, protocol=4)
    graph = build_graph(parse_ops(blob))
    assert isinstance(graph.root, DictNode)
    for _, node in graph.root.items:
        loaded = pickle.loads(emit_pickle(node).data)
        function = loaded[0] if isinstance(loaded, list) else loaded
        assert function(0.5) == 2.0


def test_cloudpickle_3_classes_shared_by_two_keys() -> None:
    """A class by value (cloudpickle 3: skeleton plus ``_class_setstate``) referenced twice."""

    class Local:
        scale = 3

        def apply(self, x: float) -> float:
            return self.scale * x

    blob = cloudpickle.dumps({"a": Local, "b": [Local]}, protocol=4)
    graph = build_graph(parse_ops(blob))
    assert isinstance(graph.root, DictNode)
    for _, node in graph.root.items:
        # As in a fresh process: cloudpickle would otherwise hand back Local itself by tracker id.
        cloudpickle.cloudpickle._DYNAMIC_CLASS_TRACKER_BY_ID.clear()
        cloudpickle.cloudpickle._DYNAMIC_CLASS_TRACKER_BY_CLASS.clear()
        loaded = pickle.loads(emit_pickle(node).data)
        cls = loaded[0] if isinstance(loaded, list) else loaded
        assert cls is not Local
        assert cls.scale == 3 and cls().apply(2) == 6


def test_a_second_filler_on_one_skeleton_is_refused() -> None:
    """Two fills would both update one object; no pickler writes that, the graph refuses it."""
    fill = f"c{CP}\n_fill_function\n".encode()
    skeleton = f"c{CP}\n_make_skel_func\n)R".encode()
    stream = b"\x80\x02" + fill + b"(" + skeleton + b"q\x00}tR" + fill + b"(h\x00}tR\x86."
    with pytest.raises(UnsafeCheckpoint, match="second cloudpickle filler"):
        build_graph(parse_ops(stream))
    single = b"\x80\x02" + fill + b"(" + skeleton + b"q\x00}tRh\x00\x86."
    pair = build_graph(parse_ops(single)).root
    assert isinstance(pair, TupleNode)
    assert pair.items[1].filled_by is pair.items[0]  # type: ignore[attr-defined]
