"""``ckptd config validate | show | schema`` through the real CLI entry point."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from ckptd.cli.main import main
from ckptd.config.load import load_config

CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = CHECKOUT / "config" / "ckptd.yaml"
EXAMPLES = sorted((CHECKOUT / "config" / "examples").glob("*.yaml"))


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ckptd.yaml"
    path.write_text(text)
    return path


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "more").mkdir()
    path = write_config(
        tmp_path,
        "version: 1\nroots: [{path: runs}, {path: more, policy: b}]\n"
        "policies: {default: {keep_last: 1}, b: {keep_daily: 1}}\n",
    )
    assert main(["config", "validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{path}: ok (2 roots, 2 policies)\n"
    assert captured.err == ""


def test_validate_a_missing_root_is_an_error_naming_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo'd root used to pass with a note, and the daemon then served 0 runs for months."""
    path = write_config(tmp_path, "version: 1\nroots:\n  - path: rnus\n")
    assert main(["config", "validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"ckptd: {path}: roots[0].path (line 3): {tmp_path / 'rnus'} does not exist (fix the path,"
        " or set optional: true on this root for a mount that comes later)\n"
    )
    (tmp_path / "afile").write_text("")
    path.write_text("version: 1\nroots: [{path: afile}]\n")
    assert main(["prune", "-c", str(path), "--dry-run"]) == 2
    assert "afile is not a directory" in capsys.readouterr().err


def test_validate_notes_a_missing_optional_root_and_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "version: 1\nroots: [{path: runs, optional: true}]\n")
    assert main(["config", "validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{path}: ok (1 root, 1 policy)\n"
    assert captured.err == f"{path}: note: optional root {tmp_path / 'runs'} is not there (yet)\n"
    assert main(["config", "show", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["roots"][0]["optional"] is True


def test_the_daemon_will_not_start_on_a_missing_root(tmp_path: Path) -> None:
    path = write_config(tmp_path, "version: 1\nroots: [{path: rnus}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "ckptd", "run", "-c", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"roots[0].path (line 2): {tmp_path / 'rnus'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_warns_when_run_depth_merges_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for seed in ("seed1", "seed2"):
        for step in (1000, 2000):
            checkpoint = tmp_path / "runs" / "ppo" / seed / f"rl_model_{step}_steps.zip"
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.write_bytes(b"PK")
    (tmp_path / "runs" / "ppo" / "best").mkdir()
    (tmp_path / "runs" / "ppo" / "best" / "best_model.zip").write_bytes(b"PK")  # no step: fine
    (tmp_path / "runs" / "sac" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "sac" / "checkpoints" / "rl_model_1_steps.zip").write_bytes(b"PK")
    path = write_config(tmp_path, "version: 1\nroots: [{path: runs}]\n")
    assert main(["config", "validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        f"{path}: warning: run {tmp_path / 'runs' / 'ppo'}: checkpoints with a step in 2"
        " directories (seed1/, seed2/) are pruned as one series: is run_depth 1 too shallow?\n"
    )
    path.write_text("version: 1\nroots: [{path: runs, run_depth: 2}]\n")
    assert main(["config", "validate", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_validate_reports_every_issue_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = "version: 1\nroots:\n  - path: runs\n    polcy: x\nlog: {level: loud}\n"
    path = write_config(tmp_path, original)
    assert main(["config", "validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f'ckptd: {path}: roots[0].polcy (line 4): unknown key; did you mean "policy"?',
        f'ckptd: {path}: log.level (line 5): expected one of debug, info, warning, error, got "loud"',
    ]
    assert path.read_text() == original


def test_validate_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == f"ckptd: {tmp_path / 'nope.yaml'}: no such file\n"


def test_the_default_config_validates_from_a_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", str(DEFAULT_CONFIG)]) == 0
    assert capsys.readouterr().out == f"{DEFAULT_CONFIG}: ok (1 root, 1 policy)\n"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_examples_validate_but_for_their_roots(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The examples name roots of other machines: on this one, those are the only issue."""
    config = load_config(path, check_roots=False)
    assert (len(config.roots), len(config.policies)) == (1, 1)
    assert main(["config", "validate", str(path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "roots[0].path (line " in line and f"{config.roots[0].path} does not exist" in line


@pytest.mark.parametrize("path", [DEFAULT_CONFIG, *EXAMPLES], ids=lambda path: path.name)
def test_show_yaml_round_trips(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "show", str(path)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"# effective config of {path}\n")
    # The printed config is itself a valid config with the same meaning, wherever it is saved.
    saved = tmp_path / "shown.yaml"
    saved.write_text(shown)
    original = load_config(path, check_roots=False)
    assert (
        dataclasses.replace(load_config(saved, check_roots=False), source=original.source)
        == original
    )


def test_show_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, "version: 1\nroots: [{path: runs, run_depth: 0}]\n")
    assert main(["config", "show", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["roots"] == [
        {
            "path": str(tmp_path / "runs"),
            "run_depth": 0,
            "observer": "auto",
            "poll_interval": "10s",
            "policy": "default",
            "optional": False,
        }
    ]
    assert shown["policies"]["default"]["keep_within"] == "6h"
    assert shown["delete"]["trash_ttl"] == "1w"


def test_show_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, "version: 1\nroots: [{path: runs}]\nstate_dir: a/b\n")
    assert main(["config", "show", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err
        == f'ckptd: {path}: state_dir (line 3): expected a plain name without /, got "a/b"\n'
    )


def test_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(yaml.safe_load(DEFAULT_CONFIG.read_text()))
    assert not validator.is_valid({"version": 1, "roots": [{"path": "r"}], "colour": "blue"})


def test_config_without_action_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["config"])
    assert caught.value.code == 2
    assert "ACTION" in capsys.readouterr().err


def test_subprocess_validate(tmp_path: Path) -> None:
    bad = write_config(tmp_path, "version: 1\nroots: [{path: runs, poll_interval: ten}]\n")
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    good = subprocess.run(
        [sys.executable, "-m", "ckptd", "config", "validate", str(DEFAULT_CONFIG)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert (good.returncode, good.stdout) == (0, f"{DEFAULT_CONFIG}: ok (1 root, 1 policy)\n")
    result = subprocess.run(
        [sys.executable, "-m", "ckptd", "config", "validate", str(bad)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f'ckptd: {bad}: roots[0].poll_interval (line 2): expected a duration like 10s, got "ten"\n'
    )
