"""Conversion keeps the checkpoint's meaning: what stable-baselines' own
``_save_to_file_zip(*_load_from_file_cloudpickle(path))`` would have written (docs/conversion.md).

Shapes of genuine files: numpy scalars as parameters (TensorFlow's ``sess.run`` returns them for
0-d variables), SAC's duplicated parameter list (SB2 <= 2.5.1), HER's enum, dicts whose keys
Python treats as equal, and non-string keys ``json.dumps`` renames. The ``tests/data/sb2-era``
files were written by the SB2-era stack (Python 3.7, numpy 1.16, cloudpickle 1.2;
tests/legacy37/make_legacy.py); the others here by today's.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import functools
import io
import itertools
import json
import pickle
import random
import shutil
import sys
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptd.cli.main import main
from ckptd.config.load import parse_config
from ckptd.convert.conversion import convert_file
from ckptd.errors import FormatError, UnsafeCheckpoint
from ckptd.manifest.store import load_manifest
from ckptd.pickles.dictkeys import merged_pairs
from ckptd.pickles.nodes import Const, Node, TupleNode
from ckptd.pipeline.batch import process_path
from ckptd.pipeline.types import PipelineDeps
from tests.sb2_fixtures import (
    MlpPolicy,
    dqn_data,
    dqn_params,
    stand_ins,
    trusted_loads,
    write_checkpoint,
)

SB2_ERA = Path(__file__).parent / "data" / "sb2-era"
SAC_251_NAMES = ["model/pi/fc0/kernel:0", "model/pi/fc0/bias:0", "model/log_ent_coef:0"]


def npz_of(zip_path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """(parameter_list, arrays) as SB2's bytes_to_params reads them."""
    with zipfile.ZipFile(zip_path) as archive:
        names = json.loads(archive.read("parameter_list"))
        npz = np.load(io.BytesIO(archive.read("parameters")))
        return names, {name: npz[name] for name in names}


def data_json(zip_path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(zip_path) as archive:
        loaded: dict[str, Any] = json.loads(archive.read("data"))
        return loaded


def copy_fixture(kind: str, tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    target = tmp_path / f"rl_model_{kind}_1000_steps.pkl"
    shutil.copyfile(SB2_ERA / f"{kind}.pkl", target)
    return target


# --- numpy scalars as parameters ---------------------------------------------------------------


def test_genuine_dqn_scalar_eps_becomes_a_0d_float32_array(tmp_path: Path) -> None:
    source = copy_fixture("dqn-tf", tmp_path)
    outcome = convert_file(source)
    names, arrays = npz_of(outcome.output)
    eps = arrays["deepq/eps:0"]
    assert names[0] == "deepq/eps:0"
    assert (eps.shape, eps.dtype.str) == ((), "<f4")
    assert eps.tobytes() == np.float32(0.05).tobytes()


def test_genuine_ddpg_scalars_keep_dtype_and_every_bit(tmp_path: Path) -> None:
    outcome = convert_file(copy_fixture("ddpg-tf", tmp_path))
    _, arrays = npz_of(outcome.output)
    count = arrays["obs_rms/count:0"]
    assert (count.shape, count.dtype.str, count.tobytes()) == (
        (),
        "<f8",
        np.float64(1e-4).tobytes(),
    )
    nan = arrays["obs_rms/nan_payload:0"]  # a NaN with a payload: bytes, not the value, survive
    assert (nan.shape, nan.dtype.str, nan.tobytes()) == ((), "<f4", b"\x01\x00\xc0\x7f")


@pytest.mark.parametrize("as_list", [False, True])
def test_todays_numpy_scalars_become_0d_arrays_in_dicts_and_lists(
    tmp_path: Path, as_list: bool
) -> None:
    scalars = OrderedDict(
        [
            ("a/f32:0", np.float32(-0.5)),
            ("a/f64:0", np.float64(3.25)),
            ("a/i64:0", np.int64(-7)),
            ("a/bool:0", np.bool_(True)),
            ("a/u8:0", np.uint8(200)),
        ]
    )
    with stand_ins():
        params: Any = list(scalars.values()) if as_list else scalars
        source = write_checkpoint(tmp_path / "m.pkl", dqn_data(), params)
    outcome = convert_file(source, param_names=list(scalars) if as_list else None)
    names, arrays = npz_of(outcome.output)
    assert names == list(scalars)
    for name, value in scalars.items():
        expected = np.asanyarray(value)  # what np.savez (SB2's own save) stores
        got = arrays[name]
        assert (got.shape, got.dtype, got.tobytes()) == ((), expected.dtype, expected.tobytes())


def test_a_big_endian_scalar_becomes_the_native_0d_array_a_trusted_load_gives(
    tmp_path: Path,
) -> None:
    with stand_ins():
        source = write_checkpoint(
            tmp_path / "m.pkl",
            {"gamma": 0.99, "policy": MlpPolicy},
            OrderedDict([("s:0", np.float32(1.5)), ("t:0", np.float64(-2.25))]),
        )
    blob = source.read_bytes()
    # The byte-order string of the dtype states, written once and shared through the memo.
    assert blob.count(b"\x8c\x01<") == 1
    source.write_bytes(blob.replace(b"\x8c\x01<", b"\x8c\x01>"))
    expected = trusted_loads(source.read_bytes())[1]
    _, arrays = npz_of(convert_file(source).output)
    for name in ("s:0", "t:0"):
        want = np.asanyarray(expected[name])  # numpy: a scalar is native, its bytes swapped
        got = arrays[name]
        assert (got.shape, got.dtype.str, got.tobytes()) == ((), want.dtype.str, want.tobytes())
    # The stored bytes of 1.5 (little-endian) read as big-endian, as numpy reads them.
    assert arrays["s:0"][()] == np.frombuffer(b"\x00\x00\xc0\x3f", ">f4")[0]


# --- SAC's duplicated parameter list (SB2 <= 2.5.1) -------------------------------------------------


def test_genuine_sac_251_duplicates_are_dropped_and_said(tmp_path: Path) -> None:
    outcome = convert_file(copy_fixture("sac-251", tmp_path), param_names=SAC_251_NAMES)
    names, arrays = npz_of(outcome.output)
    assert names == SAC_251_NAMES
    assert arrays["model/log_ent_coef:0"].shape == ()
    assert outcome.params_count == 3
    assert len(outcome.notes) == 1
    assert "6 arrays for 3 names" in outcome.notes[0]
    assert "exact copies" in outcome.notes[0]


def duplicated_list(tmp_path: Path, second_half: list[Any]) -> Path:
    first = [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros(3, np.float32), np.float32(1)]
    with stand_ins():
        return write_checkpoint(tmp_path / "sac.pkl", dqn_data(), first + second_half)


@pytest.mark.parametrize(
    "second_half",
    [
        # one element differs
        [np.array([[0, 1, 2], [3, 4, 6]], np.float32), np.zeros(3, np.float32), np.float32(1)],
        # same values, other dtype
        [np.arange(6, dtype=np.float64).reshape(2, 3), np.zeros(3, np.float32), np.float32(1)],
        # same bytes, other shape
        [np.arange(6, dtype=np.float32).reshape(3, 2), np.zeros(3, np.float32), np.float32(1)],
        # same values, other memory order
        [np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)), np.zeros(3), 1.0],
        # only part of a copy
        [np.arange(6, dtype=np.float32).reshape(2, 3)],
    ],
    ids=["value", "dtype", "shape", "order", "partial"],
)
def test_extra_arrays_that_are_not_exact_copies_stay_an_error(
    tmp_path: Path, second_half: list[Any]
) -> None:
    source = duplicated_list(tmp_path, second_half)
    before = source.read_bytes()
    with pytest.raises(FormatError, match="parameter names given for"):
        convert_file(source, param_names=SAC_251_NAMES)
    assert source.read_bytes() == before
    assert not source.with_suffix(".zip").exists()


def test_true_names_repeating_a_variable_keep_its_first_array(tmp_path: Path) -> None:
    """DDPG <= 2.5.1 with normalized observations: every variable twice, then obs_rms once; its
    true names (as sess.run fetched them) repeat where the variable repeats."""
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros(3, np.float32)]
    count = np.float64(4.0)  # obs_rms/count: a numpy scalar, as sess.run returns it
    names = ["model/pi/w:0", "model/pi/b:0"] * 2 + ["input/obs_rms/count:0"]
    with stand_ins():
        source = write_checkpoint(
            tmp_path / "ddpg.pkl", dqn_data(), [*weights, *(w.copy() for w in weights), count]
        )
    outcome = convert_file(source, param_names=names)
    listed, arrays = npz_of(outcome.output)
    assert listed == ["model/pi/w:0", "model/pi/b:0", "input/obs_rms/count:0"]
    assert arrays["input/obs_rms/count:0"].shape == ()
    assert len(outcome.notes) == 1 and "2 arrays of repeated names" in outcome.notes[0]


def test_a_repeated_name_with_a_different_array_is_an_error(tmp_path: Path) -> None:
    with stand_ins():
        source = write_checkpoint(
            tmp_path / "m.pkl", dqn_data(), [np.zeros(3, np.float32), np.ones(3, np.float32)]
        )
    with pytest.raises(FormatError, match="'x:0' is named twice, and array 2 differs"):
        convert_file(source, param_names=["x:0", "x:0"])
    assert not source.with_suffix(".zip").exists()


def test_cli_prints_and_reports_the_duplicate_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = copy_fixture("sac-251", tmp_path)
    names = tmp_path / "names.json"
    names.write_text(json.dumps(SAC_251_NAMES))
    assert main(["convert", str(source), "--param-names", str(names)]) == 0
    text = capsys.readouterr().out
    assert "exact copies of the first 3" in text
    source.with_suffix(".zip").unlink()
    assert main(["convert", str(source), "--param-names", str(names), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["params"]["count"] == 3
    assert len(result["notes"]) == 1 and "6 arrays for 3 names" in result["notes"][0]


def test_the_daemon_records_the_note_in_the_zips_manifest_entry(tmp_path: Path) -> None:
    """The daemon's pipeline with a converter that knows the names (as name inference will)."""
    runs = tmp_path / "runs"
    source = copy_fixture("sac-251", runs / "sac-1")
    config = parse_config(
        {
            "roots": [{"path": str(runs), "run_depth": 1, "observer": "polling"}],
            "checkpoints": {"stable_for": "0s"},
        }
    )
    deps = PipelineDeps(convert=functools.partial(convert_file, param_names=SAC_251_NAMES))
    assert process_path(config, config.roots[0], source, deps=deps).action == "converted"
    manifest = load_manifest(runs / "sac-1" / "ckptd-manifest.json")
    entry = manifest.by_path()[source.with_suffix(".zip").name]
    (note,) = entry.extra["notes"]
    assert "6 arrays for 3 names" in note
    document = json.loads((runs / "sac-1" / "ckptd-manifest.json").read_text())
    (recorded,) = [e for e in document["checkpoints"] if e["path"].endswith(".zip")]
    assert recorded["notes"] == [note]


# --- HER's GoalSelectionStrategy ---------------------------------------------------------------------


class GoalSelectionStrategy(enum.Enum):
    """stable_baselines/her/replay_buffer.py's enum (same members in 2.6.0-2.10.2)."""

    FUTURE = 0
    FINAL = 1
    EPISODE = 2
    RANDOM = 3


@contextlib.contextmanager
def her_module(module_name: str = "stable_baselines.her.replay_buffer") -> Iterator[None]:
    module = types.ModuleType(module_name)
    module.__file__ = f"/stand-in/{module_name.replace('.', '/')}.py"
    saved_module, saved_qualname = (
        GoalSelectionStrategy.__module__,
        GoalSelectionStrategy.__qualname__,
    )
    GoalSelectionStrategy.__module__ = module_name
    module.GoalSelectionStrategy = GoalSelectionStrategy  # type: ignore[attr-defined]
    parts = module_name.split(".")
    packages = [".".join(parts[:depth]) for depth in range(1, len(parts))]
    saved = {name: sys.modules.get(name) for name in [*packages, module_name]}
    for name in packages:
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = []
            sys.modules[name] = package
    sys.modules[module_name] = module
    try:
        yield
    finally:
        GoalSelectionStrategy.__module__, GoalSelectionStrategy.__qualname__ = (
            saved_module,
            saved_qualname,
        )
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def test_genuine_her_checkpoint_converts_and_its_enum_loads_back(tmp_path: Path) -> None:
    outcome = convert_file(copy_fixture("her", tmp_path))
    entry = data_json(outcome.output)["goal_selection_strategy"]
    assert entry[":type:"] == "<enum 'GoalSelectionStrategy'>"
    # vars() of an Enum member on Python 3.7, in order, as SB2's data_to_json lists it.
    assert {key: value for key, value in entry.items() if not key.startswith(":")} == {
        "_value_": 0,
        "_name_": "FUTURE",
        "__objclass__": "<enum 'GoalSelectionStrategy'>",
    }
    assert list(entry)[2:] == ["_value_", "_name_", "__objclass__"]
    with her_module():
        loaded = pickle.loads(base64.b64decode(entry[":serialized:"]))
    assert loaded is GoalSelectionStrategy.FUTURE


@pytest.mark.parametrize("member", list(GoalSelectionStrategy))
def test_every_goal_selection_strategy_member_converts(
    tmp_path: Path, member: GoalSelectionStrategy
) -> None:
    with stand_ins(), her_module():
        data = {**dqn_data(), "goal_selection_strategy": member}
        source = write_checkpoint(tmp_path / "her.pkl", data, dqn_params())
    entry = data_json(convert_file(source).output)["goal_selection_strategy"]
    assert (entry["_value_"], entry["_name_"]) == (member.value, member.name)
    with her_module():
        assert pickle.loads(base64.b64decode(entry[":serialized:"])) is member


def test_goal_selection_strategy_only_from_its_real_module_and_members(tmp_path: Path) -> None:
    with stand_ins(), her_module("stable_baselines.her.utils"):
        data = {**dqn_data(), "goal_selection_strategy": GoalSelectionStrategy.FINAL}
        wrong_module = write_checkpoint(tmp_path / "utils.pkl", data, dqn_params())
    with pytest.raises(
        UnsafeCheckpoint, match=r"stable_baselines\.her\.utils\.GoalSelectionStrategy"
    ):
        convert_file(wrong_module)
    with stand_ins(), her_module():
        data = {**dqn_data(), "goal_selection_strategy": GoalSelectionStrategy.FINAL}
        good = write_checkpoint(tmp_path / "member.pkl", data, dqn_params())
    # GoalSelectionStrategy(1) -> GoalSelectionStrategy(9): no such member, refused statically.
    blob = good.read_bytes()
    call = b"\x8c\x15GoalSelectionStrategy\x94\x93\x94K\x01"
    assert blob.count(call) == 1
    bad = tmp_path / "bad_member.pkl"
    bad.write_bytes(blob.replace(call, call.replace(b"K\x01", b"K\x09")))
    with pytest.raises(UnsafeCheckpoint, match="no member with value 9"):
        convert_file(bad)


# --- equal keys and json.dumps key names -------------------------------------------------------------


def test_genuine_equal_keys_merge_as_python_merges_them(tmp_path: Path) -> None:
    outcome = convert_file(copy_fixture("equal-keys", tmp_path))
    data = data_json(outcome.output)
    assert data["bool_int"] == {"true": "c"}  # {True: 'a', 1: 'b', 1.0: 'c'} -> {True: 'c'}
    assert data["zeros"] == {"0": "false"}  # {0, -0.0, False} -> {0: 'false'}
    assert data["minus_zero_first"] == {"-0.0": "int"}
    assert data["nested"] == {"inner": {"2": "w"}}
    assert data["nan_shared"] == {"NaN": 2}  # one NaN object used twice: one key
    assert data["gamma"] == 0.5 and list(data).index("gamma") == 7  # first place, last value
    # Pickled values: extras from the merged dict, and a pickle that loads to the merged dict.
    opaque = data["opaque"]
    assert [key for key in opaque if not key.startswith(":")] == ["true", "x"]
    assert opaque["x"] == 3
    blob = base64.b64decode(data["opaque_nan"][":serialized:"])
    assert len(pickle.loads(blob)) == 1  # the shared NaN key stays one key after the round trip
    assert [key for key in data["opaque_nan"] if not key.startswith(":")] == ["NaN"]


def test_genuine_distinct_nan_keys_stay_distinct_in_pickles(tmp_path: Path) -> None:
    with stand_ins():
        data = {**dqn_data(), "nans": {float("nan"): np.float32(1), float("nan"): np.float32(2)}}
        source = write_checkpoint(tmp_path / "nans.pkl", data, dqn_params())
    entry = data_json(convert_file(source).output)["nans"]
    assert len(pickle.loads(base64.b64decode(entry[":serialized:"]))) == 2


def test_genuine_extras_keys_are_named_as_json_dumps_names_them(tmp_path: Path) -> None:
    outcome = convert_file(copy_fixture("odd-keys", tmp_path))
    data = data_json(outcome.output)
    extras = [key for key in data["policy_kwargs"] if not key.startswith(":")]
    assert extras == ["true", "null", "2.5", "NaN", "layers"]
    assert data["policy_kwargs"]["layers"] == [64, 64]
    assert data["int_keys"] == {"false": 0, "7": "seven", "-0.5": "half"}


KEY_VALUES: list[object] = [True, False, 0, 1, 1.0, -0.0, 0.0, 2, 2.0, "1", None, 1.5, -1]


def node_of(value: object) -> Node:
    if isinstance(value, tuple):
        return TupleNode(tuple(node_of(item) for item in value), 0)
    assert value is None or isinstance(value, bool | int | float | str)
    return Const(value, 0)


def plain(node: Node) -> object:
    if isinstance(node, TupleNode):
        return tuple(plain(item) for item in node.items)
    assert isinstance(node, Const)
    return node.value


def test_merged_pairs_is_pythons_dict_assignment() -> None:
    rng = random.Random(8)
    keys = [*KEY_VALUES, (1,), (True,), (1.0, 2), (True, 2.0), ((0,), "a"), ((False,), "a")]
    for _ in range(2000):
        chosen = [rng.choice(keys) for _ in range(rng.randint(0, 8))]
        expected: dict[object, int] = {}
        for index, key in enumerate(chosen):
            expected[key] = index
        pairs = [(node_of(key), Const(index, 0)) for index, key in enumerate(chosen)]
        got = [(plain(key), plain(value)) for key, value in merged_pairs(pairs)]
        # Same keys (the first key object: compare type and repr), same order, last values.
        assert [(type(k), repr(k), v) for k, v in got] == [
            (type(k), repr(k), v) for k, v in expected.items()
        ], chosen


def test_nan_keys_are_equal_only_to_the_same_object() -> None:
    shared = Const(float("nan"), 0)
    other = Const(float("nan"), 0)
    pairs: list[tuple[Node, Node]] = [
        (shared, Const(1, 0)),
        (other, Const(2, 0)),
        (shared, Const(3, 0)),
        (TupleNode((shared,), 0), Const(4, 0)),
        (TupleNode((shared,), 0), Const(5, 0)),  # tuples compare items by identity first
        (TupleNode((other,), 0), Const(6, 0)),
    ]
    merged = merged_pairs(pairs)
    assert [(key, plain(value)) for key, value in merged] == [
        (shared, 3),
        (other, 2),
        (pairs[3][0], 5),
        (pairs[5][0], 6),
    ]


def test_merging_is_order_insensitive_to_hash_buckets() -> None:
    # Keys that hash alike but differ (-1 and -2 share a hash in CPython) must both survive.
    values = [-1, -2, 2**61 - 1, 0, 2**61]
    for order in itertools.permutations(values):
        pairs = [(node_of(value), Const(i, 0)) for i, value in enumerate(order)]
        assert [plain(key) for key, _ in merged_pairs(pairs)] == list(order)


# --- one cloudpickle 1.x function under two keys -------------------------------------------------


def test_a_second_reference_to_a_closure_is_written_as_the_whole_function(tmp_path: Path) -> None:
    """SB2 2.9 sets cliprange_vf = cliprange; cloudpickle 1.2 then writes cliprange_vf as a memo
    reference to the function's skeleton, which unpickling fills in place. Each key's pickle in the
    zip must fill it too (an empty skeleton raises NameError when called)."""
    outcome = convert_file(copy_fixture("shared-schedule", tmp_path))
    data = data_json(outcome.output)
    for key in ("cliprange", "cliprange_vf", "learning_rate", "learning_rate_again"):
        blob = base64.b64decode(data[key][":serialized:"])
        assert b"_fill_function" in blob, key
    assert data["cliprange_vf"][":serialized:"] == data["cliprange"][":serialized:"]
    assert data["learning_rate_again"][":serialized:"] == data["learning_rate"][":serialized:"]
