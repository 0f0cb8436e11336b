"""The parameter-name inference against the genuine fixtures of tests/data/sb2-genuine.

Every fixture there was written by a real stable-baselines release (2.4.1 ... 2.10.2) and its
index records the names the model really had. A <= 2.5.1 file (an unnamed list) must be named
exactly so (DDPG's critic output as the loading releases name it, ``qf/qf_output``), or held with
a reason for GAIL. A >= 2.6.0 file saved a dict: treated as the list an older release would have
saved, its keys are what the inference must give (the same graph code names the same variables),
a free proof across releases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ckptd.convert.legacy import read_naming_input
from ckptd.convert.sb2names import ParamNames, Unnamed, infer_param_names
from ckptd.formats.model import OpaqueValue

GENUINE = Path(__file__).parent / "data" / "sb2-genuine"
INDEX = GENUINE / "index.json"
FIXTURES: list[dict[str, Any]] = (
    json.loads(INDEX.read_text())["fixtures"] if INDEX.is_file() else []
)
HELD = {"GAIL", "TD3", "HER"}  # TD3 and the HER wrapper came after 2.5.1: never a list


@pytest.mark.skipif(not FIXTURES, reason="tests/data/sb2-genuine is not on this branch yet")
@pytest.mark.parametrize("fixture", FIXTURES, ids=[f["id"] for f in FIXTURES])
def test_inferred_names_are_the_genuine_names(fixture: dict[str, Any]) -> None:
    path = GENUINE / fixture["file"]
    found = read_naming_input(path.read_bytes(), source=str(path))
    truth = found.names if found.names is not None else fixture["param_names"]
    assert found.shapes == [tuple(shape) for shape in fixture["param_shapes"]]
    result = infer_param_names(found.data, found.shapes)
    if fixture["algorithm"] == "DDPG":
        check_ddpg(result, found.names is not None, truth)
        return
    if fixture["algorithm"] == "HER" and isinstance(result, ParamNames):
        # HER (>= 2.6) always saved a dict, so the inference never runs on its files; where it
        # names the wrapped model anyway, the names must be the real ones.
        assert list(result.names) == truth
        return
    if fixture["algorithm"] in HELD:
        # HER wraps another algorithm; the note names the one it could not model.
        wrapped = fixture.get("her_model") or fixture["algorithm"]
        assert isinstance(result, Unnamed) and wrapped in result.note
        return
    assert isinstance(result, ParamNames), result
    count = len(result.names)
    assert list(result.names) == truth[:count]
    # SAC <= 2.5.1: the rest of the list is the same variables again.
    assert truth[count:] == truth[:count] * (len(truth) // count - 1)


def check_ddpg(result: ParamNames | Unnamed, was_dict: bool, truth: list[str]) -> None:
    """One name per array, the loader's (2.6-2.10) names: ``qf/qf_output`` also for 2.4.1."""
    truth = [name.replace("/qf/qf/", "/qf/qf_output/") for name in truth]
    if was_dict and any("_rms/" in name for name in truth):
        # >= 2.6 holds the statistics once after the variables: a layout no list ever had.
        assert isinstance(result, Unnamed) and "arrays where it has" in result.note
        return
    assert isinstance(result, ParamNames), result
    assert list(result.names) == truth


@pytest.mark.skipif(not FIXTURES, reason="tests/data/sb2-genuine is not on this branch yet")
def test_every_pre_26_family_is_in_the_fixtures() -> None:
    lists = {f["algorithm"] for f in FIXTURES if f["sb2_version"] in ("2.4.1", "2.5.1")}
    assert {"A2C", "ACER", "ACKTR", "DDPG", "DQN", "PPO1", "PPO2", "SAC", "TRPO"} <= lists


@pytest.mark.skipif(not FIXTURES, reason="tests/data/sb2-genuine is not on this branch yet")
def test_ddpg_memory_policy_is_a_plain_class() -> None:
    """DDPG <= 2.5.1 stores ``memory_policy = stable_baselines.ddpg.memory.Memory``, a plain class:
    stable-baselines' own ``data_to_json`` records its type as ``type``, so must ckptd."""
    path = GENUINE / "ddpg-mlp-pendulum-sb2.4.1.pkl"
    found = read_naming_input(path.read_bytes(), source=str(path))
    memory = found.data["memory_policy"]
    assert isinstance(memory, OpaqueValue)
    assert memory.globals == ("stable_baselines.ddpg.memory.Memory",)
    assert memory.type_name == "<class 'type'>"
