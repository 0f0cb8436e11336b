"""Parameter names for stable-baselines <= 2.5.1 lists, proven against real stable-baselines.

``data/sb2-names/oracle-<version>.json`` holds, for each model variant built and saved by the real
stable-baselines (TF 1.14, Python 3.7; see sb2names_oracle.py), what ckptd's static reader got
from the saved file (its ``data`` values without pickled payloads, and the array shapes) and the
names ``model.params`` really had (2.2.1 ... 2.5.1). The inference must give exactly those names,
except DDPG's critic output, named as the loading release names it (``qf/qf_output``; <= 2.5.0
wrote ``qf/qf``); GAIL, a DDPG file saved without its normalization statistics, a custom policy,
an unknown keyword or one shape off is held.

``data/sb2-names/consumer-2.10.2.json`` holds ``get_parameter_list()`` of the same variants built
by stable-baselines 2.10.2, the release whose loader reads the zips: a zip's names are matched
against exactly those, so every inferred list must equal them, name for name and shape for shape.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ckptd.convert.sb2names import HOW_TO_NAME, ParamNames, Unnamed, infer_param_names
from ckptd.formats.model import DataValue, OpaqueValue
from ckptd.manifest.store import load_manifest
from tests.daemon_harness import DaemonProcess, NotifySocket, daemon_config, write_config
from tests.helpers import wait_until

DATA = Path(__file__).parent / "data" / "sb2-names"
ORACLE = sorted(DATA.glob("oracle-*.json"))
CASES = [case for path in ORACLE for case in json.loads(path.read_text())]
CONSUMER = {case["id"]: case for case in json.loads((DATA / "consumer-2.10.2.json").read_text())}


def _value(obj: Any) -> DataValue:
    if isinstance(obj, dict) and "__opaque__" in obj:
        opaque = obj["__opaque__"]
        return OpaqueValue(opaque["type_name"], b"", opaque["extras"], tuple(opaque["globals"]))
    return obj  # type: ignore[no-any-return]


def _inputs(case: dict[str, Any]) -> tuple[dict[str, DataValue], list[tuple[int, ...]]]:
    data = {key: _value(value) for key, value in case["data"].items()}
    return data, [tuple(shape) for shape in case["shapes"]]


def test_the_oracle_covers_every_family() -> None:
    algorithms = {case["spec"]["algo"] for case in CASES}
    assert {
        "PPO2",
        "A2C",
        "ACER",
        "ACKTR",
        "PPO1",
        "TRPO",
        "DQN",
        "SAC",
        "DDPG",
        "GAIL",
    } <= algorithms
    assert {case["version"] for case in CASES} == {"2.2.1", "2.3.0", "2.4.1", "2.5.1"}
    assert len(CASES) >= 90


@pytest.mark.parametrize("case", CASES, ids=[f"{c['version']}-{c['id']}" for c in CASES])
def test_names_equal_what_stable_baselines_gave(case: dict[str, Any]) -> None:
    data, shapes = _inputs(case)
    result = infer_param_names(data, shapes)
    if case["spec"]["algo"] == "GAIL":  # held, with the reason (docs/param-names.md)
        assert isinstance(result, Unnamed) and "GAIL" in result.note
        return
    if case["spec"]["algo"] == "DDPG" and _ddpg_statistics_missing(case):
        assert isinstance(result, Unnamed) and "without its running statistics" in result.note
        return
    assert isinstance(result, ParamNames), result
    names = case["names"]
    if case["spec"]["algo"] == "DDPG":
        names = [name.replace("/qf/qf/", "/qf/qf_output/") for name in names]
    assert list(result.names[: len(names)]) == names
    if case["spec"]["algo"] == "SAC":
        assert len(shapes) == 2 * len(result.names)  # params + target_params, both everything
    if case["spec"]["algo"] == "DDPG":
        # One name per array: 2.2/2.3 saved the variables once, 2.4/2.5 twice, 2.5 then the
        # running statistics.
        assert len(result.names) == len(shapes)
        assert list(result.names[len(names) : 2 * len(names)]) in ([], names)


def _ddpg_statistics_missing(case: dict[str, Any]) -> bool:
    """Saved with normalization by a release that did not save the statistics (<= 2.4.x)."""
    normalized = case["data"].get("normalize_observations") or case["data"].get("normalize_returns")
    return bool(normalized) and len(case["shapes"]) in (len(case["names"]), 2 * len(case["names"]))


@pytest.mark.parametrize("case", CASES, ids=[f"{c['version']}-{c['id']}" for c in CASES])
def test_names_are_those_of_the_loading_release(case: dict[str, Any]) -> None:
    """What matters for a zip: stable-baselines 2.10.2 loads it by matching every name against its
    own graph (``load_parameters``, exact_match), so the names, without repeats, must be exactly
    its ``get_parameter_list()`` for the same variant, and each array the shape it has there."""
    data, shapes = _inputs(case)
    result = infer_param_names(data, shapes)
    if isinstance(result, Unnamed):
        assert case["spec"]["algo"] == "GAIL" or _ddpg_statistics_missing(case)
        return
    consumer = CONSUMER[case["id"]]
    names = list(result.names)
    if len(names) < len(shapes):  # SAC: the names cover the first of two identical copies
        names = names * (len(shapes) // len(names))
    assert list(dict.fromkeys(names)) == consumer["names"]
    want = dict(zip(consumer["names"], consumer["shapes"], strict=True))
    for name, shape in zip(names, shapes, strict=True):
        assert list(shape) == want[name], name


def _case(case_id: str) -> dict[str, Any]:
    return next(c for c in CASES if c["id"] == case_id)


def test_unknown_policy_kwargs_are_held() -> None:
    data, shapes = _inputs(_case("ppo2-netarch-split"))
    data["policy_kwargs"] = {"net_arch": [{"pi": [32], "vf": [16, 16]}], "cnn_extractor": "x"}
    result = infer_param_names(data, shapes)
    assert isinstance(result, Unnamed)
    assert "cnn_extractor" in result.note and result.note.endswith(HOW_TO_NAME)


def test_a_custom_policy_class_is_held() -> None:
    data, shapes = _inputs(_case("ppo2-mlp-cartpole"))
    data["policy"] = OpaqueValue(
        "<class 'abc.ABCMeta'>", b"", {"__module__": "lab.nets"}, ("lab.nets.Wide",)
    )
    result = infer_param_names(data, shapes)
    assert isinstance(result, Unnamed)
    assert result.note == (
        "pre-2.6 parameter list of a custom policy (lab.nets.Wide): " + HOW_TO_NAME
    )


@pytest.mark.parametrize("index", [0, 5, -1])
def test_one_shape_off_is_held(index: int) -> None:
    data, shapes = _inputs(_case("ppo2-mlplnlstm"))
    shapes[index] = (*shapes[index], 1)
    result = infer_param_names(data, shapes)
    assert isinstance(result, Unnamed) and "has shape" in result.note


def test_a_missing_array_is_held() -> None:
    data, shapes = _inputs(_case("dqn-lnmlp"))
    result = infer_param_names(data, shapes[:-1])
    assert isinstance(result, Unnamed) and "arrays where its policy has" in result.note


def _ckptd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckptd", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_convert_names_a_genuine_251_file(tmp_path: Path) -> None:
    source = tmp_path / "ppo2.pkl"
    shutil.copy(DATA / "ppo2-lstm-netarch-2.5.1.pkl", source)
    result = _ckptd("convert", str(source), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "ppo2.zip") as archive:
        names = json.loads(archive.read("parameter_list"))
    assert names == _case("ppo2-lstm-netarch")["names"]


# model.params of the custom policy in data/sb2-names/custom-policy-ppo2-2.5.1.pkl (a
# FeedForwardPolicy subclass defined in the training script, saved by stable-baselines 2.5.1).
CUSTOM_NAMES = [
    "model/pi_fc0/w:0",
    "model/pi_fc0/b:0",
    "model/vf_fc0/w:0",
    "model/vf_fc0/b:0",
    "model/vf/w:0",
    "model/vf/b:0",
    "model/pi/w:0",
    "model/pi/b:0",
    "model/q/w:0",
    "model/q/b:0",
]


@pytest.mark.parametrize(
    ("fixture", "what"),
    [
        (
            "custom-policy-ppo2-2.5.1.pkl",
            "a custom policy (a class defined in __main__, pickled by value)",
        ),
    ],
)
def test_convert_exits_1_with_the_note_for_a_held_file(
    tmp_path: Path, fixture: str, what: str
) -> None:
    source = tmp_path / "old.pkl"
    shutil.copy(DATA / fixture, source)
    before = source.read_bytes()
    result = _ckptd("convert", str(source), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ckptd: {source}: held: pre-2.6 parameter list of {what}")
    assert lines[0].endswith(HOW_TO_NAME)
    result = _ckptd("convert", "--json", str(source), cwd=tmp_path)
    assert result.returncode == 1
    (entry,) = json.loads(result.stdout)["results"]
    assert entry["status"] == "held" and entry["note"].endswith(HOW_TO_NAME)
    assert source.read_bytes() == before and not (tmp_path / "old.zip").exists()


def test_convert_names_a_ddpg_file_as_its_loader_does(tmp_path: Path) -> None:
    """DDPG 2.5.1 with both normalizations: named by stable-baselines 2.10.2's graph (issue 8)."""
    source = tmp_path / "ddpg.pkl"
    shutil.copy(DATA / "ddpg-norm-2.5.1.pkl", source)
    result = _ckptd("convert", str(source), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "ddpg.zip") as archive:
        names = json.loads(archive.read("parameter_list"))
    assert names == CONSUMER["ddpg-norm"]["names"]


def test_param_names_win_over_the_inference(tmp_path: Path) -> None:
    source = tmp_path / "ppo2.pkl"
    shutil.copy(DATA / "ppo2-lstm-netarch-2.5.1.pkl", source)
    given = [f"mine/v{index}:0" for index in range(len(_case("ppo2-lstm-netarch")["names"]))]
    names = tmp_path / "names.json"
    names.write_text(json.dumps(given))
    result = _ckptd("convert", str(source), "--param-names", str(names), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "ppo2.zip") as archive:
        assert json.loads(archive.read("parameter_list")) == given


def test_param_names_one_per_line_convert_a_held_file(tmp_path: Path) -> None:
    source = tmp_path / "custom.pkl"
    shutil.copy(DATA / "custom-policy-ppo2-2.5.1.pkl", source)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CUSTOM_NAMES) + "\n")
    result = _ckptd("convert", str(source), "--param-names", str(names), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "custom.zip") as archive:
        assert json.loads(archive.read("parameter_list")) == CUSTOM_NAMES


def _daemon_config(root: Path, keep_last: int) -> dict[str, Any]:
    return daemon_config(
        root, stable_for="1s", keep_last=keep_last, schedule={"prune": "2s", "manifest": "1m"}
    )


def test_the_daemon_records_a_held_file_and_keeps_it(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    root = tmp_path / "runs"
    run = root / "custom-run"
    run.mkdir(parents=True)
    config = write_config(tmp_path / "ckptd.yaml", _daemon_config(root, keep_last=3))
    shutil.copy(DATA / "custom-policy-ppo2-2.5.1.pkl", run / "rl_model_100_steps.pkl")
    for step in (200, 300):
        shutil.copy(DATA / "ppo2-lstm-netarch-2.5.1.pkl", run / f"rl_model_{step}_steps.pkl")
    manifest_path = run / "ckptd-manifest.json"

    def settled() -> bool:
        if not manifest_path.exists():
            return False
        entries = load_manifest(manifest_path).by_path()
        entry = entries.get("rl_model_100_steps.pkl")
        converted = all(
            entries.get(f"rl_model_{step}_steps.zip") is not None for step in (200, 300)
        )
        return (
            converted
            and entry is not None
            and entry.state == "held"
            and entry.reasons == ("keep_last #3",)
        )

    for _start in range(2):  # a restart must not convert it or judge it again
        daemon = DaemonProcess(config, tmp_path / "daemon.log", notify_socket)
        try:
            daemon.wait_ready(timeout=30)
            wait_until(settled, 30, f"held and judged by a prune pass:\n{daemon.log_text()}")
        finally:
            assert daemon.stop() == 0
    entries = load_manifest(manifest_path).by_path()
    entry = entries["rl_model_100_steps.pkl"]
    assert entry.note is not None and entry.note.endswith(HOW_TO_NAME)
    assert "a custom policy" in entry.note and entry.format.value == "sb2-pickle"
    assert entry.sha256 is not None and entry.reasons == ("keep_last #3",)
    assert (run / "rl_model_100_steps.pkl").exists()
    assert not (run / "rl_model_100_steps.zip").exists()
    assert daemon.log_text().count("held, not converted") == 1
    status = _ckptd("status", "-c", str(config), "--json", cwd=tmp_path)
    (run_status,) = json.loads(status.stdout)["runs"]
    assert run_status["counts"]["held"] == 1 and run_status["kept"] == 3
    assert any("1 held file" in problem for problem in run_status["problems"])
    # Retention counts it as one of the run's checkpoints (in the series, not skipped).
    strict = write_config(tmp_path / "strict.yaml", _daemon_config(root, keep_last=2))
    result = _ckptd("prune", "-c", str(strict), "--dry-run", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (pruned,) = json.loads(result.stdout)["runs"]
    decisions = {d["path"]: d for d in pruned["decisions"]}
    held = decisions["rl_model_100_steps.pkl"]
    assert {key: held[key] for key in ("path", "action", "reasons", "step", "format")} == {
        "path": "rl_model_100_steps.pkl",
        "action": "delete",
        "reasons": ["no rule keeps it"],
        "step": 100,
        "format": "sb2-pickle",
    }
    # The way out (docs/param-names.md): convert it with its names, in place, daemon running.
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CUSTOM_NAMES) + "\n")
    daemon = DaemonProcess(config, tmp_path / "daemon.log", notify_socket)
    try:
        daemon.wait_ready(timeout=30)
        held_file = run / "rl_model_100_steps.pkl"
        result = _ckptd(
            "convert",
            str(held_file),
            "--param-names",
            str(names),
            "--original",
            "archive",
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr

        def recorded() -> bool:
            entries = load_manifest(manifest_path).by_path()
            entry = entries.get("rl_model_100_steps.zip")
            return (
                entry is not None
                and entry.state == "kept"
                and "rl_model_100_steps.pkl" not in entries
            )

        wait_until(recorded, 30, f"the converted zip recorded:\n{daemon.log_text()}")
    finally:
        assert daemon.stop() == 0
