"""A warm ``ckptd prune --dry-run --json`` (manifests present, nothing changed) prints exactly what
the cold one (no manifests: every file identified by content) printed, on a tree that exercises
every rule: keep_last, keep_within, hourly to monthly buckets in a time zone, keep_every_steps,
keep_best, protect, pins, min_age, a size budget, the guard, unstepped, unknown and young files,
and files in a subdirectory. The warm pass reads no checkpoint (the fast paths were taken)."""

from __future__ import annotations

import json
import os
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ckptd.cli.exits import ExitStatus
from ckptd.cli.main import main

NOW = datetime.now(UTC)  # the CLI reads the real clock


def _age(path: Path, age: timedelta) -> Path:
    ns = int((NOW - age).timestamp()) * 1_000_000_000 + 123_456_789  # sub-second mtimes too
    os.utime(path, ns=(ns, ns))
    return path


def _zip(path: Path, age: timedelta, payload: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", "{}")
        archive.writestr("parameters", b"x" * payload)
        archive.writestr("parameter_list", "[]")
    return _age(path, age)


def _tree(tmp_path: Path, legacy: bytes) -> Path:
    calendar, steps = tmp_path / "calendar", tmp_path / "steps"
    for run in ("a", "b"):
        for i in range(40):  # one every 5 hours over ~8 days, some in a subdirectory
            where = calendar / run / ("sub" if i % 7 == 3 else "")
            name = f"rl_model_{i * 1000}_steps.{'pkl' if i % 5 == 1 else 'zip'}"
            if name.endswith(".pkl"):
                (where / name).parent.mkdir(parents=True, exist_ok=True)
                _age(_write(where / name, legacy), timedelta(hours=5 * (40 - i)))
            else:
                _zip(where / name, timedelta(hours=5 * (40 - i)))
        _zip(calendar / run / "best_model.zip", timedelta(days=20))  # no step, protected
        _zip(calendar / run / "rl_model_99000_steps.zip", timedelta(minutes=10))  # min_age
        _age(_write(calendar / run / "rl_model_500_steps.pkl", b"junk"), timedelta(days=2))
        future = _zip(calendar / run / "rl_model_77000_steps.zip", timedelta(0))
        os.utime(future, (NOW.timestamp() + 3600, NOW.timestamp() + 3600))  # still being written
    for run in ("c", "d", "e"):
        for i in range(30):
            _zip(steps / run / f"rl_model_{i * 700}_steps.zip", timedelta(hours=30 - i), 50 + i)
        metrics = [
            {"step": s, "mean_reward": float((s * 7919) % 1000)} for s in range(0, 21000, 700)
        ]
        (steps / run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    config = tmp_path / "ckptd.yaml"
    config.write_text(
        "version: 1\n"
        "roots:\n"
        "  - {path: ./calendar, run_depth: 1, policy: calendar}\n"
        "  - {path: ./steps, run_depth: 1, policy: steps}\n"
        "policies:\n"
        "  calendar:\n"
        "    keep_last: 2\n    keep_within: 12h\n    keep_hourly: 3\n    keep_daily: 3\n"
        "    keep_weekly: 2\n    keep_monthly: 2\n    timezone: Europe/Berlin\n"
        "    protect: [best_model.zip, 'sub/rl_model_10000_steps.zip']\n    min_age: 30m\n"
        "  steps:\n"
        "    keep_last: 3\n    keep_every_steps: 5000\n"
        "    keep_best: {metric: mean_reward, source: metrics.jsonl, count: 3, mode: max}\n"
        "    max_run_size: 4KiB\n    protect: []\n    min_age: 0s\n"
        "delete:\n  max_fraction: 0.65\n"
    )
    return config


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _prune_json(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    status = main(["prune", "-c", str(config), "--dry-run", "--json"])
    out = capsys.readouterr().out
    assert status == ExitStatus.OK, out
    return out


def test_warm_dry_run_json_equals_the_cold_one(
    tmp_path: Path,
    legacy_bytes: bytes,
    capsys: pytest.CaptureFixture[str],
    opened: list[str],
) -> None:
    config = _tree(tmp_path, legacy_bytes)
    assert main(["pin", "-c", str(config), str(tmp_path / "steps/d/rl_model_700_steps.zip")]) == 0
    assert main(["pin", "-c", str(config), str(tmp_path / "calendar/a/rl_model_0_steps.zip")]) == 0
    capsys.readouterr()
    cold = _prune_json(config, capsys)
    assert main(["manifest", "-c", str(config)]) == ExitStatus.OK
    capsys.readouterr()
    assert len(list(tmp_path.glob("*/*/ckptd-manifest.json"))) == 5
    opened.clear()
    warm = _prune_json(config, capsys)
    assert warm == cold
    # Warm: no checkpoint was opened, only manifests, pins and the metrics.
    assert [p for p in opened if p.endswith((".zip", ".pkl"))] == []
    assert sum(p.endswith("ckptd-manifest.json") for p in opened) == 5

    document = json.loads(warm)
    decisions = [d for run in document["runs"] for d in run["decisions"]]
    reasons = {reason.split(" ")[0].rstrip(":[") for d in decisions for reason in d["reasons"]}
    assert {
        "keep_last",
        "keep_within",
        "keep_hourly",
        "keep_daily",
        "keep_weekly",
        "keep_every_steps",
        "keep_best",
        "protect",
        "pinned",
        "min_age",
        "budget",
        "no",
        "newest",
        "skip",
        "guard",
    } <= reasons, reasons
    assert {d["action"] for d in decisions} == {"keep", "delete", "skip"}
    assert [run["guard"] is None for run in document["runs"]] == [True, True, False, False, False]
    assert {d["format"] for d in decisions} >= {"sb2-zip", "sb2-pickle"}
    assert any(d["path"].startswith("sub/") for d in decisions)
