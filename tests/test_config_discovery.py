"""Commands that need a config find it without ``-c``: ``$CKPTD_CONFIG``, else the system config.

README, "Commands": an operator on the daemon's host types ``ckptd status`` and gets the config the
service runs with; when no config is found the one-line error names every place looked at.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ckptd.cli import config_path
from ckptd.cli.config_path import ENV_VAR, resolve_config
from ckptd.cli.main import main
from ckptd.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

GENUINE = Path(__file__).resolve().parent / "data" / "sb2-genuine" / "a2c-mlp-cartpole-sb2.8.0.pkl"

# Every command whose config is required, with arguments that make it print JSON where it can.
NEEDS_CONFIG = [
    ["status", "--json"],
    ["scrub", "--json"],
    ["prune", "--dry-run", "--json"],
    ["manifest"],
    ["config", "validate"],
    ["config", "show", "--json"],
    ["config", "dropin"],
]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    (runs / "ppo").mkdir(parents=True)
    shutil.copyfile(GENUINE, runs / "ppo" / "rl_model_10_steps.pkl")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "roots": [{"path": "runs"}]}))
    return path


@pytest.fixture
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    missing = tmp_path / "etc" / "ckptd.yaml"
    monkeypatch.setattr(config_path, "SYSTEM_CONFIG", missing)
    monkeypatch.delenv(ENV_VAR, raising=False)
    return missing


def test_resolution_order(tmp_path: Path) -> None:
    system = tmp_path / "system.yaml"
    system.write_text("")
    env_file = tmp_path / "env.yaml"
    env_file.write_text("")
    given = tmp_path / "given.yaml"  # not checked: loading it names it if it is missing
    env = {ENV_VAR: str(env_file)}
    assert resolve_config(given, environ=env, system_config=system) == given
    assert resolve_config(None, environ=env, system_config=system) == env_file
    assert resolve_config(None, environ={ENV_VAR: ""}, system_config=system) == system
    assert resolve_config(None, environ={}, system_config=system) == system


def test_nothing_found_names_every_place_looked(tmp_path: Path) -> None:
    system = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as caught:
        resolve_config(None, environ={}, system_config=system)
    message = str(caught.value)
    assert "-c CONFIG" in message and f"${ENV_VAR} is not set" in message
    assert f"{system} does not exist" in message


def test_a_missing_file_named_by_the_variable_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "typo.yaml"
    with pytest.raises(ConfigError) as caught:
        resolve_config(None, environ={ENV_VAR: str(missing)}, system_config=tmp_path / "x")
    assert str(caught.value) == f"{missing}: no such file (named by ${ENV_VAR})"


@pytest.mark.parametrize("argv", NEEDS_CONFIG, ids=" ".join)
def test_commands_read_the_config_named_by_the_variable(
    argv: list[str],
    config_file: Path,
    no_system_config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(ENV_VAR, str(config_file))
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    # Proof that the config was read: its one root shows up (or, for manifest, its files).
    root = config_file.parent / "runs"
    if argv == ["manifest"]:
        assert (root / "ppo" / "ckptd-manifest.json").is_file()
    elif argv[-1] == "--json":
        assert json.loads(out)
        assert "ppo" in out or str(root) in out
    else:
        assert str(config_file) in out or str(root) in out


@pytest.mark.parametrize("argv", [["run"], *NEEDS_CONFIG], ids=" ".join)
def test_commands_without_any_config_exit_2_naming_where_they_looked(
    argv: list[str], no_system_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"${ENV_VAR} is not set, and {no_system_config} does not exist" in err


def test_the_system_config_is_the_last_resort(
    config_file: Path, no_system_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_system_config.parent.mkdir()
    no_system_config.write_text(
        config_file.read_text().replace("runs", str(config_file.parent / "runs"))
    )
    assert main(["config", "validate"]) == 0
    assert capsys.readouterr().out == f"{no_system_config}: ok (1 root, 1 policy)\n"


def test_pin_of_a_run_not_seen_yet_uses_the_config_named_by_the_variable(
    config_file: Path, no_system_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A state dir other than the default: the pin lands there only if the config was read.
    config_file.write_text(
        yaml.safe_dump({"version": 1, "roots": [{"path": "runs"}], "state_dir": ".lab-state"})
    )
    checkpoint = config_file.parent / "runs" / "ppo" / "rl_model_10_steps.pkl"
    monkeypatch.setenv(ENV_VAR, str(config_file))
    assert main(["pin", str(checkpoint), "--reason", "paper figure 3"]) == 0
    pins = json.loads((checkpoint.parent / ".lab-state" / "pins.json").read_text())
    assert pins["pins"]["rl_model_10_steps.pkl"]["reason"] == "paper figure 3"
    assert not (checkpoint.parent / ".ckptd").exists()


def test_quarantine_and_trash_lists_cover_the_roots_of_the_config_named_by_the_variable(
    config_file: Path,
    no_system_config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not in a run: only the config can name the runs
    monkeypatch.setenv(ENV_VAR, str(config_file))
    for argv in (["quarantine", "list", "--json"], ["trash", "list", "--json"]):
        assert main(argv) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out) is not None
    monkeypatch.delenv(ENV_VAR)
    assert main(["quarantine", "list", "--json"]) == 1  # no config and not in a run: says so
    assert "run" in capsys.readouterr().err


def test_a_variable_naming_a_missing_file_stops_pin_too(
    config_file: Path, no_system_config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere.yaml"))
    checkpoint = config_file.parent / "runs" / "ppo" / "rl_model_10_steps.pkl"
    assert main(["pin", str(checkpoint)]) == 2
