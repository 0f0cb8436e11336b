"""``ckptd inspect`` and ``ckptd verify`` through ``ckptd.cli.main`` (and once as a real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptd.cli.main import main
from ckptd.convert.conversion import convert_file
from tests.sb2_fixtures import Exploit, MlpPolicy, make_ppo2_checkpoint, stand_ins, write_checkpoint
from tests.sb2zip_helpers import make_sb3_zip


@pytest.fixture
def ppo2_pickle(tmp_path: Path) -> Path:
    with stand_ins():
        return make_ppo2_checkpoint(tmp_path / "ppo2.pkl", protocol=4)


def _hostile(path: Path, marker: Path) -> Path:
    data = {"gamma": 0.99, "policy": MlpPolicy, "learning_rate": Exploit(marker)}
    with stand_ins():
        return write_checkpoint(path, data, OrderedDict(w=np.zeros(2, dtype=np.float32)))


def _flip_in_member(path: Path, member: str, offset: int) -> None:
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    raw = bytearray(path.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    raw[info.header_offset + 30 + name_len + extra_len + offset] ^= 0xFF
    path.write_bytes(bytes(raw))


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_json(ppo2_pickle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(ppo2_pickle), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["verdict"] == "safe" and document["format"] == "sb2-pickle"
    assert document["carries_code"] == ["learning_rate", "cliprange"]
    assert document["algorithm"] == "PPO2"


def test_inspect_text_report(ppo2_pickle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(ppo2_pickle)]) == 0
    out = capsys.readouterr().out
    for text in (
        "Verdict",
        "safe",
        "PPO2",
        "stable-baselines version",
        "carries code: learning_rate, cliprange",
        "model/pi_fc0/w:0",
        "observation_space",
        "space",
        "stable_baselines.common.policies.MlpPolicy",
    ):
        assert text in out, text


def test_inspect_hostile_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    path = _hostile(tmp_path / "evil.pkl", marker)
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "refused" in out and "system" in out and "data['learning_rate']" in out
    assert "not allowed" in out
    assert main(["inspect", str(path), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["refusals"][0]["global"] in ("posix.system", "os.system")
    assert not marker.exists()


def test_inspect_truncates_long_param_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = OrderedDict((f"model/layer{i}/w:0", np.zeros(2, dtype=np.float32)) for i in range(55))
    with stand_ins():
        path = write_checkpoint(tmp_path / "many.pkl", {"policy": MlpPolicy}, params)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "model/layer39/w:0" in out and "model/layer40/w:0" not in out
    assert "and 15 more" in out and "55 arrays" in out


def test_inspect_zips(
    ppo2_pickle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zipped = convert_file(ppo2_pickle).output
    assert main(["inspect", str(zipped)]) == 0
    out = capsys.readouterr().out
    assert "sb2-zip" in out and "parameter_list" in out and "members (3)" in out
    sb3 = tmp_path / "sb3.zip"
    make_sb3_zip(sb3)
    assert main(["inspect", str(sb3)]) == 0
    out = capsys.readouterr().out
    assert "unchecked" in out and "2.3.2" in out and "policy.pth" in out


def test_inspect_broken_file(ppo2_pickle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ppo2_pickle.write_bytes(ppo2_pickle.read_bytes()[:500])
    assert main(["inspect", str(ppo2_pickle)]) == 1
    captured = capsys.readouterr()
    assert "broken" in captured.out
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and str(ppo2_pickle) in errors[0] and "truncated" in errors[0]


# --- verify ----------------------------------------------------------------------------------


def test_verify_good_files(ppo2_pickle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zipped = convert_file(ppo2_pickle).output
    assert main(["verify", str(ppo2_pickle), str(zipped)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{ppo2_pickle}: ok (sb2-pickle, 15 params")
    assert lines[1].startswith(f"{zipped}: ok (sb2-zip, 15 params")


def test_verify_damaged_zip_names_file_and_member(
    ppo2_pickle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zipped = convert_file(ppo2_pickle).output
    _flip_in_member(zipped, "parameter_list", 3)
    assert main(["verify", str(zipped)]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors and all(line.startswith(f"ckptd: {zipped}: ") for line in errors)
    assert any("parameter_list" in line for line in errors), errors


def test_verify_refused_and_unknown_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    evil = _hostile(tmp_path / "evil.pkl", marker)
    text = tmp_path / "notes.pkl"
    text.write_text("not a checkpoint\n")
    assert main(["verify", str(evil), str(text), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    statuses = {Path(r["path"]).name: r["status"] for r in document["results"]}
    assert statuses == {"evil.pkl": "refused", "notes.pkl": "not-a-checkpoint"}
    assert document["ok"] is False
    assert not marker.exists()


def _run_dir(tmp_path: Path, ppo2_pickle: Path) -> dict[str, Path]:
    run = tmp_path / "run"
    (run / ".ckptd" / "trash").mkdir(parents=True)
    good_zip = convert_file(ppo2_pickle, output=run / "rl_model_100_steps.zip").output
    legacy = run / "rl_model_50_steps.pkl"
    legacy.write_bytes(ppo2_pickle.read_bytes())
    truncated = run / "sub" / "rl_model_200_steps.zip"
    truncated.parent.mkdir()
    truncated.write_bytes(good_zip.read_bytes()[:-40])
    np.savez(run / "evaluations.npz", timesteps=np.arange(3))  # a zip, not a checkpoint
    (run / "notes.txt").write_text("hello")
    (run / ".ckptd" / "trash" / "old.zip").write_bytes(b"PK\x03\x04broken")  # state dir: skipped
    return {"good": good_zip, "legacy": legacy, "truncated": truncated}


def test_verify_directory_by_content(
    tmp_path: Path, ppo2_pickle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _run_dir(tmp_path, ppo2_pickle)
    assert main(["verify", str(tmp_path / "run"), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    results = {r["path"]: r for r in document["results"]}
    assert set(results) == {str(path) for path in files.values()}
    assert results[str(files["good"])]["ok"] and results[str(files["legacy"])]["ok"]
    assert results[str(files["truncated"])]["status"] == "damaged"
    files["truncated"].unlink()
    assert main(["verify", str(tmp_path / "run")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_verify_nothing_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path)]) == 1
    assert "no checkpoints found" in capsys.readouterr().err


def test_verify_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "gone.zip"
    assert main(["verify", str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"{missing}: cannot read" in err


def test_verify_as_a_process(tmp_path: Path, ppo2_pickle: Path) -> None:
    files = _run_dir(tmp_path, ppo2_pickle)
    env: dict[str, Any] = {**os.environ, "PYTHONWARNINGS": "error"}
    result = subprocess.run(
        [sys.executable, "-m", "ckptd", "verify", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{files['truncated']}: " in result.stderr
    assert f"{files['good']}: ok" in result.stdout
