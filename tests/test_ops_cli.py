"""The operator commands through ``ckptd.cli.main``: exit codes, --json shapes, one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ckptd.cli.main import main
from ckptd.config.load import load_config
from ckptd.config.model import Config
from ckptd.pipeline.batch import process_path
from tests.ops_helpers import converted_run, flip_byte, prune_now, write_ops_config
from tests.sb2_fixtures import Exploit, ppo2_data, ppo2_params, write_checkpoint

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("sb2_stand_ins")]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "runs").mkdir()
    return write_ops_config(tmp_path, tmp_path / "runs", scrub={"max_rate": "1GiB"})


@pytest.fixture
def config(config_file: Path) -> Config:
    return load_config(config_file)


@pytest.fixture
def run(config: Config) -> Path:
    return converted_run(config)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # rich folds table cells to the terminal width (80 under capture); tests read whole words.
    monkeypatch.setenv("COLUMNS", "300")


def json_out(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def test_status_json_and_table(
    config_file: Path, run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "-c", str(config_file), "--json"]) == 0
    document = json_out(capsys)
    (ppo,) = document["runs"]
    assert ppo["run"] == "ppo-1" and ppo["kept"] == 3 and ppo["manifest"] == "ok"
    assert set(ppo) >= {"newest", "last_prune", "counts", "trash", "quarantine", "pins", "problems"}

    (run / "rl_model_1000_steps.zip").unlink()
    (run / "x_steps.zip").write_bytes(b"x")
    old = 10**9 * 1_000_000_000
    os.utime(run / "x_steps.zip", ns=(old, old))
    assert main(["status", "-c", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "ppo-1" in out and "manifest is behind" in out


def test_scrub_exit_codes_and_json(
    config_file: Path, run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scrub", "-c", str(config_file), "--json"]) == 0
    assert json_out(capsys)["ok"] is True

    flip_byte(run / "rl_model_2000_steps.zip", 700)
    assert main(["scrub", "-c", str(config_file), "--run", "ppo-*", "--json"]) == 1
    document = json_out(capsys)
    assert document["corrupt"] == 1
    assert document["runs"][0]["corrupt"][0]["path"] == "rl_model_2000_steps.zip"

    assert main(["scrub", "-c", str(config_file), "--max-rate", "0"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_pin_unpin_cli(config_file: Path, run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = run / "rl_model_1000_steps.zip"
    assert main(["pin", str(target), "--reason", "keep me", "--json"]) == 0
    assert json_out(capsys)["reason"] == "keep me"
    assert main(["prune", "-c", str(config_file), "--json"]) == 0
    capsys.readouterr()
    assert target.exists()
    assert main(["unpin", str(target)]) == 0
    assert "unpinned" in capsys.readouterr().out

    assert main(["pin", str(run / "nope.zip")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(run / "nope.zip") in err and "no such file" in err


def test_trash_commands(
    config: Config, config_file: Path, run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prune_now(config)
    assert main(["trash", "list", "-c", str(config_file), "--json"]) == 0
    items = json_out(capsys)["items"]
    assert {item["original"] for item in items} >= {"rl_model_1000_steps.zip"}
    assert all(item["expires_at"] for item in items)

    assert main(["trash", "list", "--run", str(run)]) == 0
    assert "rl_model_1000_steps.zip" in capsys.readouterr().out

    assert main(["trash", "restore", str(run / "rl_model_1000_steps.zip"), "--json"]) == 0
    restored = json_out(capsys)
    assert restored["restored"][0]["to"] == "rl_model_1000_steps.zip"
    assert restored["pinned"].startswith("restored from trash")

    assert main(["trash", "restore", str(run / "rl_model_1000_steps.zip")]) == 1
    assert "is not in the trash" in capsys.readouterr().err

    assert main(["trash", "purge", "-c", str(config_file), "--json"]) == 0  # ttl 7d: nothing yet
    assert json_out(capsys)["runs"][0]["purged"] == []
    assert main(["trash", "purge", "--run", str(run), "--older-than", "0s"]) == 0
    assert "purged 2 files" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["trash", "purge", "--older-than", "soon"])
    assert exit_info.value.code == 2  # bad usage
    assert 'expected a duration like 10s, got "soon"' in capsys.readouterr().err


def test_quarantine_commands(
    config: Config, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = config.roots[0].path / "ppo-1"
    run.mkdir()
    marker = tmp_path / "pwned"
    source = write_checkpoint(
        run / "bad.pkl", {**ppo2_data(), "evil": Exploit(marker)}, ppo2_params()
    )
    assert process_path(config, config.roots[0], source).action == "refused"
    jailed = run / ".ckptd" / "quarantine" / "bad.pkl"

    assert main(["quarantine", "list", "-c", str(config_file), "--json"]) == 0
    (item,) = json_out(capsys)["items"]
    assert item["original"] == "bad.pkl" and "system" in item["refusal"]

    assert main(["quarantine", "show", str(jailed)]) == 0
    out = capsys.readouterr().out
    assert "REFUSED" in out and "refused:" in out and "bad.pkl" in out

    assert main(["quarantine", "show", str(jailed), "--json"]) == 0
    assert json_out(capsys)["inspect"]["verdict"] == "refused"

    with pytest.raises(SystemExit) as exit_info:
        main(["quarantine", "release", str(jailed)])  # the trust flag is required
    assert exit_info.value.code == 2
    capsys.readouterr()
    assert jailed.exists()

    assert main(["quarantine", "release", str(jailed), "--i-trust-this-file", "--json"]) == 0
    assert json_out(capsys)["to"] == "bad.pkl"
    assert (run / "bad.pkl").exists() and not marker.exists()

    assert main(["quarantine", "show", str(jailed)]) == 1
    assert "is not a quarantined file" in capsys.readouterr().err
