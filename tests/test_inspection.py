"""``inspect_path`` on real files: genuine-shaped legacy pickles, hostile pickles, SB2/SB3 zips, junk.

Expectations come from the fixtures' own values (the arrays and data dicts the files were made
from), never from the code under test. Hostile files carry a ``touch marker`` payload: the marker
must never appear.
"""

from __future__ import annotations

import json
import math
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptd.convert.conversion import convert_file
from ckptd.formats import Format
from ckptd.ops.inspect_report import InspectReport
from ckptd.ops.inspection import inspect_path
from tests.sb2_fixtures import (
    Exploit,
    MlpPolicy,
    make_dqn_checkpoint,
    make_ppo2_checkpoint,
    ppo2_data,
    ppo2_params,
    stand_ins,
    write_checkpoint,
)
from tests.sb2zip_helpers import make_sb3_zip

SB2_ERA = Path(__file__).parent / "data" / "sb2-era"
PPO2_KINDS = {
    "gamma": "plain",
    "learning_rate": "function",
    "cliprange": "function",
    "cliprange_vf": "plain",
    "policy": "class",
    "observation_space": "space",
    "action_space": "space",
    "policy_kwargs": "plain",
    "target_entropy": "numpy-scalar",
    "float64": "plain",  # np.float64 is a float: SB2 stores it as JSON
    "act_kwargs": "other",
    "raw_bytes": "other",
    "action_noise": "other",
    "int64": "numpy-scalar",
    "bool_": "numpy-scalar",
}


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


@pytest.fixture
def ppo2_pickle(tmp_path: Path) -> Path:
    with stand_ins():
        return make_ppo2_checkpoint(tmp_path / "ppo2.pkl", protocol=4)


def _expected_param_rows(
    params: OrderedDict[str, np.ndarray],
) -> list[tuple[str, str, tuple[int, ...], int]]:
    # Protocols 2-4 hand back non-native arrays in native order (numpy's __setstate__).
    return [
        (
            name,
            array.dtype.newbyteorder("=").str if array.dtype.byteorder == ">" else array.dtype.str,
            array.shape,
            array.nbytes,
        )
        for name, array in params.items()
    ]


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param({"protocol": 4}, id="p4"),
        pytest.param({"protocol": 2}, id="p2"),
        pytest.param({"protocol": 4, "cloudpickle1": True, "numpy_core_names": True}, id="cp1"),
    ],
)
def test_ppo2_pickle_is_described_completely(tmp_path: Path, variant: dict[str, Any]) -> None:
    with stand_ins():
        path = make_ppo2_checkpoint(tmp_path / "ppo2.pkl", **variant)
    before = _snapshot(path)
    report = inspect_path(path)
    assert report.format is Format.SB2_PICKLE
    assert report.verdict == "safe", report.refusals or report.error
    assert report.sound and report.error is None and report.refusals == ()
    assert report.protocol == variant["protocol"]
    assert report.algorithm == "PPO2"
    assert report.sb2_version is not None and report.sb2_version.minimum == "2.9.0"
    assert report.carries_code == ("learning_rate", "cliprange")
    with stand_ins():
        expected_keys = list(ppo2_data())
    assert [entry.key for entry in report.data] == expected_keys
    kinds = {entry.key: entry.kind for entry in report.data}
    assert {key: kinds[key] for key in PPO2_KINDS} == PPO2_KINDS
    policy = next(entry for entry in report.data if entry.key == "policy")
    assert policy.globals == ("stable_baselines.common.policies.MlpPolicy",)
    assert policy.type_name == "<class 'abc.ABCMeta'>" and policy.safety == "ok"
    rows = [(p.name, p.dtype, p.shape, p.nbytes) for p in report.params]
    assert rows == _expected_param_rows(ppo2_params())
    assert report.params_bytes == sum(a.nbytes for a in ppo2_params().values())
    names = {ref.name: ref for ref in report.globals}
    assert names["stable_baselines.common.policies.MlpPolicy"].allowed is True
    assert all(ref.allowed for ref in report.globals)
    assert _snapshot(path) == before


def test_json_document_is_complete_and_serializable(ppo2_pickle: Path) -> None:
    document = json.loads(json.dumps(inspect_path(ppo2_pickle).as_json()))
    assert document["format"] == "sb2-pickle" and document["verdict"] == "safe"
    assert document["carries_code"] == ["learning_rate", "cliprange"]
    assert document["params"]["count"] == len(ppo2_params())
    assert document["params"]["arrays"][0] == {
        "name": "model/pi_fc0/w:0",
        "dtype": "<f4",
        "shape": [4, 64],
        "bytes": 4 * 64 * 4,
    }
    assert document["sb2_version"]["min"] == "2.9.0" and document["sb2_version"]["evidence"]
    assert document["algorithm"] == "PPO2" and document["protocol"] == 4
    assert {"name", "allowed", "opcode", "offset"} <= set(document["globals"][0])
    assert document["sb3"] is None and document["members"] == []


@pytest.mark.parametrize(("kind", "algorithm"), [("ppo2", "PPO2"), ("dqn", "DQN"), ("sac", "SAC")])
def test_committed_sb2_era_files(kind: str, algorithm: str) -> None:
    """Files written by Python 3.7 + numpy 1.16 + cloudpickle 1.2, as SB2 2.7 did."""
    report = inspect_path(SB2_ERA / f"{kind}.pkl")
    assert report.format is Format.SB2_PICKLE and report.protocol == 4
    assert report.algorithm == algorithm
    assert report.params and report.params_bytes > 0
    for param in report.params:
        assert param.nbytes == math.prod(param.shape) * np.dtype(param.dtype).itemsize
    assert {"policy", "observation_space", "action_space"} <= {e.key for e in report.data}
    assert report.verdict == "safe", [refusal.line() for refusal in report.refusals]


def test_list_params_of_old_releases_need_no_names(tmp_path: Path) -> None:
    with stand_ins():
        path = make_ppo2_checkpoint(tmp_path / "old.pkl", list_params=True)
    report = inspect_path(path)
    assert report.verdict == "safe", report.error
    assert report.params_were_list
    assert [p.name for p in report.params] == [f"#{i}" for i in range(len(ppo2_params()))]
    assert report.sb2_version is not None and report.sb2_version.maximum == "2.5.1"


def _hostile_checkpoint(path: Path, marker: Path, *, in_params: bool = False) -> Path:
    data: dict[str, Any] = {
        "gamma": 0.99,
        "nminibatches": 4,
        "noptepochs": 4,
        "policy": MlpPolicy,
        "learning_rate": 2.5e-4 if in_params else Exploit(marker),
    }
    params: OrderedDict[str, Any] = OrderedDict(w=np.zeros(3, dtype=np.float32))
    if in_params:
        params["b"] = Exploit(marker)
    with stand_ins():
        return write_checkpoint(path, data, params, protocol=4)


def test_hostile_pickle_is_refused_naming_the_global_and_where(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _hostile_checkpoint(tmp_path / "evil.pkl", marker)
    before = _snapshot(path)
    report = inspect_path(path)
    assert report.verdict == "refused" and not report.sound
    first = report.refusals[0]
    assert first.where == "data['learning_rate']"
    assert first.global_name in ("posix.system", "os.system")
    assert first.opcode == "STACK_GLOBAL"
    assert first.offset is not None
    raw = path.read_bytes()
    assert raw[first.offset] == pickle.STACK_GLOBAL[0]  # the offset points at the opcode
    refs = {ref.name: ref for ref in report.globals}
    assert refs[first.global_name].allowed is False
    assert refs["stable_baselines.common.policies.MlpPolicy"].allowed is True
    entry = next(e for e in report.data if e.key == "learning_rate")
    assert entry.safety.startswith("refused: ") and first.global_name in entry.safety
    assert next(e for e in report.data if e.key == "policy").safety == "ok"
    assert report.algorithm == "PPO2"  # still guessed: the keys are read statically
    assert [p.name for p in report.params] == ["w"]
    assert not marker.exists()
    assert _snapshot(path) == before


def test_hostile_parameter_is_located(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    report = inspect_path(_hostile_checkpoint(tmp_path / "evil.pkl", marker, in_params=True))
    assert report.verdict == "refused"
    assert [r.where for r in report.refusals] == ["parameters"]
    assert all(e.safety in ("n/a", "ok") for e in report.data)
    assert not marker.exists()


def test_refused_opcode_still_lists_globals(tmp_path: Path) -> None:
    """INST (a protocol-0 call by name) stops the graph builder; globals come from the opcodes."""
    marker = tmp_path / "pwned"
    command = f"touch {marker}".encode()
    blob = b"\x80\x02(X" + len(command).to_bytes(4, "little") + command + b"ios\nsystem\n."
    path = tmp_path / "inst.pkl"
    path.write_bytes(blob)
    report = inspect_path(path)
    assert report.verdict == "refused" and report.format is Format.PICKLE
    assert report.refusals[0].opcode == "INST"
    assert [g.name for g in report.globals] == ["os.system"]
    assert report.pickle_verdict is not None and not report.pickle_verdict.safe
    assert not marker.exists()


def test_converted_zip_matches_the_pickles_description(ppo2_pickle: Path) -> None:
    outcome = convert_file(ppo2_pickle)
    from_pickle = inspect_path(ppo2_pickle)
    report = inspect_path(outcome.output)
    assert report.format is Format.SB2_ZIP and report.verdict == "safe", report.problems
    assert report.algorithm == "PPO2"
    assert report.sb2_version is not None and report.sb2_version.minimum == "2.9.0"
    assert report.carries_code == from_pickle.carries_code
    assert [(e.key, e.kind) for e in report.data] == [(e.key, e.kind) for e in from_pickle.data]
    assert report.params == from_pickle.params
    assert [m.name for m in report.members] == ["data", "parameters", "parameter_list"]
    parameters = next(m for m in report.members if m.name == "parameters")
    assert parameters.size > from_pickle.params_bytes
    assert report.protocol is None and report.sb3_version is None


def test_sb3_zip(tmp_path: Path) -> None:
    path = tmp_path / "ppo_sb3.zip"
    make_sb3_zip(path)
    report = inspect_path(path)
    assert report.format is Format.SB3_ZIP
    # Its .pth members and :serialized: entries are judged (docs/security.md, "Verdicts").
    assert report.verdict == "safe" and report.sound
    assert report.pickle_verdict is not None and report.pickle_verdict.safe
    assert report.sb3_version == "2.3.2"
    assert dict(report.system_info)["PyTorch"] == "2.3.1+cpu"
    assert "policy.pth" in [m.name for m in report.members]
    assert report.data[0].key == "policy_class" and report.data[0].kind == "class"
    assert report.algorithm is None and report.sb2_version is None
    assert report.as_json()["sb3"]["version"] == "2.3.2"


def _assert_broken(report: InspectReport, path: Path, text: str) -> None:
    assert report.verdict == "broken", report
    assert report.error is not None and str(path) in report.error and text in report.error
    assert "\n" not in report.error


def test_truncated_pickle_is_broken(ppo2_pickle: Path) -> None:
    raw = ppo2_pickle.read_bytes()
    ppo2_pickle.write_bytes(raw[: len(raw) // 2])
    _assert_broken(inspect_path(ppo2_pickle), ppo2_pickle, "truncated")


def test_wrong_array_size_is_broken(tmp_path: Path) -> None:
    """An array whose bytes do not match its shape: the reader's size check names it."""
    with stand_ins():
        path = make_dqn_checkpoint(tmp_path / "dqn.pkl")
    raw = path.read_bytes()
    # The 2x64 float32 weights: shrink the shape tuple (2, 64) to (2, 63) without touching the bytes.
    shape = b"K\x02K@\x86"  # BININT1 2, BININT1 64, TUPLE2
    assert shape in raw
    path.write_bytes(raw.replace(shape, b"K\x02K?\x86", 1))
    _assert_broken(inspect_path(path), path, "bytes but shape")


def test_truncated_zip_is_broken(ppo2_pickle: Path) -> None:
    zipped = convert_file(ppo2_pickle).output
    raw = zipped.read_bytes()
    zipped.write_bytes(raw[: len(raw) - 30])
    report = inspect_path(zipped)
    _assert_broken(report, zipped, "zip")


@pytest.mark.parametrize(
    ("content", "verdict"),
    [
        (b"", "unknown"),
        (b"hello, world\n", "unknown"),
    ],
)
def test_non_checkpoints(tmp_path: Path, content: bytes, verdict: str) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(content)
    report = inspect_path(path)
    assert report.format is Format.UNKNOWN and report.verdict == verdict
    assert report.error is not None and report.error.startswith(f"{path}: ")


def test_missing_file(tmp_path: Path) -> None:
    report = inspect_path(tmp_path / "nope.pkl")
    assert report.verdict == "broken" and report.error is not None
    assert "nope.pkl" in report.error and "cannot read" in report.error
