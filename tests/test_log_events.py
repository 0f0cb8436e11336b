"""Events on a file in the JSON logs name their ``run`` (relative to its root), ``file`` (relative
to the run) and ``node`` (docs/operations.md, "Logs and metrics"): deletions by a prune and
restores from the trash too, while their text lines keep naming the path in the message alone; the
commands that act on runs log them as the daemon does, on stderr, beside a pure ``--json`` stdout."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from ckptd.config.load import parse_config
from ckptd.config.model import LogConfig
from ckptd.logs.configure import configure_logging
from ckptd.retention.trash import restore
from tests.hostile_helpers import ckptd
from tests.ops_helpers import converted_run, ops_config, ops_document, prune_now
from tests.trainer_runs import copy_trainer_run, trainer_config

pytestmark = pytest.mark.usefixtures("restored_root_logger")


def logged(fmt: str, node: str | None = "n7") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(LogConfig(level="info", format=fmt), stream=stream, node=node)
    return stream


def objects(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_prune_deletions_and_a_restore_carry_run_file_and_node(tmp_path: Path) -> None:
    config = ops_config(tmp_path / "root")
    converted_run(config, "ppo-1", steps=(1000, 2000))
    stream = logged("json")
    prune_now(config)
    removed = [obj for obj in objects(stream) if obj.get("event") in ("trashed", "deleted")]
    assert sorted((o["event"], o["run"], o["file"], o["node"]) for o in removed) == [
        ("trashed", "ppo-1", ".ckptd/legacy/rl_model_1000_steps.pkl", "n7"),
        ("trashed", "ppo-1", "rl_model_1000_steps.zip", "n7"),
    ]
    stream = logged("json")
    restore(tmp_path / "root/ppo-1/rl_model_1000_steps.zip", now=datetime.now(UTC), config=config)
    back = [obj for obj in objects(stream) if obj.get("event") == "restored"]
    assert sorted((o["run"], o["file"], o["node"]) for o in back) == [
        ("ppo-1", ".ckptd/legacy/rl_model_1000_steps.pkl", "n7"),
        ("ppo-1", "rl_model_1000_steps.zip", "n7"),
    ]


@pytest.mark.parametrize("mode", ["trash", "unlink"])
def test_a_directory_checkpoints_deletion_and_restore_carry_run_and_file(
    tmp_path: Path, mode: str
) -> None:
    """A directory checkpoint's events name it as its manifest entry does (``checkpoint-2/``), as
    a file checkpoint's name the file."""
    config = trainer_config(tmp_path / "root", delete={"mode": mode, "max_fraction": 1.0})
    copy_trainer_run("hf", tmp_path / "root" / "gpt")
    stream = logged("json")
    prune_now(config)
    removed = [obj for obj in objects(stream) if obj.get("event") in ("trashed", "deleted")]
    event = "trashed" if mode == "trash" else "deleted"
    assert sorted((o["event"], o["run"], o["file"], o["node"]) for o in removed) == [
        (event, "gpt", "checkpoint-2/", "n7"),
        (event, "gpt", "checkpoint-4/", "n7"),
    ]
    if mode == "unlink":
        return
    stream = logged("json")
    restore(tmp_path / "root/gpt/checkpoint-4", now=datetime.now(UTC), config=config)
    back = [obj for obj in objects(stream) if obj.get("event") == "restored"]
    assert [(o["run"], o["file"], o["node"]) for o in back] == [("gpt", "checkpoint-4/", "n7")]


def test_text_lines_of_deletions_name_the_path_once(tmp_path: Path) -> None:
    config = ops_config(tmp_path / "root")
    run = converted_run(config, "ppo-1", steps=(1000, 2000))
    stream = logged("text")
    prune_now(config)
    lines = [line for line in stream.getvalue().splitlines() if " deleted " in line]
    assert lines, stream.getvalue()
    for line in lines:
        assert "ckptd.retention.deletion deleted " + str(run) in line
        assert "run=" not in line and "file=" not in line


def test_every_json_line_names_the_node() -> None:
    stream = logged("json", node="n3")
    logging.getLogger("ckptd.coordination.coordinator").error("coordination unavailable")
    logging.getLogger("ckptd.pipeline.batch").info("x", extra={"event": "converted"})
    assert [obj["node"] for obj in objects(stream)] == ["n3", "n3"]


def _cli_run(tmp_path: Path, fmt: str) -> Path:
    """A converted run under a config (written for the CLI) that logs in ``fmt`` as node n7."""
    document = ops_document(
        tmp_path / "root", log={"level": "info", "format": fmt}, coordination={"node": "n7"}
    )
    converted_run(parse_config(document), "ppo-1", steps=(1000, 2000))
    config = tmp_path / "ckptd.yaml"
    config.write_text(yaml.safe_dump(document))
    return config


def test_prune_and_restore_commands_log_their_events_as_configured(tmp_path: Path) -> None:
    config = _cli_run(tmp_path, "json")
    pruned = ckptd("prune", "-c", config, "--json")
    assert pruned.returncode == 0, pruned.stderr
    decisions = json.loads(pruned.stdout)["runs"][0]["decisions"]  # one document, nothing else
    assert {d["path"]: d["action"] for d in decisions}["rl_model_1000_steps.zip"] == "delete"
    lines = [json.loads(line) for line in pruned.stderr.splitlines()]
    assert sorted((o["event"], o["run"], o["file"], o["node"]) for o in lines) == [
        ("trashed", "ppo-1", ".ckptd/legacy/rl_model_1000_steps.pkl", "n7"),
        ("trashed", "ppo-1", "rl_model_1000_steps.zip", "n7"),
    ]
    restored = ckptd(
        "trash", "restore", tmp_path / "root/ppo-1/rl_model_1000_steps.zip", "-c", config, "--json"
    )
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["restored"][0]["to"] == "rl_model_1000_steps.zip"
    lines = [json.loads(line) for line in restored.stderr.splitlines()]
    assert sorted((o["event"], o["run"], o["file"], o["node"]) for o in lines) == [
        ("restored", "ppo-1", ".ckptd/legacy/rl_model_1000_steps.pkl", "n7"),
        ("restored", "ppo-1", "rl_model_1000_steps.zip", "n7"),
    ]
    assert all(o["level"] == "INFO" and o["logger"] == "ckptd.retention.trash" for o in lines)


def test_a_command_logs_its_events_in_text_and_only_its_events(tmp_path: Path) -> None:
    config = _cli_run(tmp_path, "text")
    pruned = ckptd("prune", "-c", config)
    assert pruned.returncode == 0, pruned.stderr
    run = tmp_path / "root" / "ppo-1"
    lines = pruned.stderr.splitlines()
    assert len(lines) == 2, pruned.stderr  # the two moves; the pass's account is on stdout
    for line in lines:
        assert " INFO ckptd.retention.deletion deleted " + str(run) in line
    # Config-less, from the run alone: the defaults (text, info), as the daemon has them.
    restored = ckptd("trash", "restore", run / "rl_model_1000_steps.zip")
    assert restored.returncode == 0, restored.stderr
    assert "restored " + str(run / "rl_model_1000_steps.zip") in restored.stdout
    lines = restored.stderr.splitlines()
    assert len(lines) == 2 and all(" INFO ckptd.retention.trash restored " in x for x in lines)
