"""status: per-run summary from manifests and state dirs, with problems flagged."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ckptd.cli.main import main
from ckptd.config.model import Config
from ckptd.formats import Format
from ckptd.manifest.model import Manifest, ManifestEntry, RemovedEntry
from ckptd.ops.status import RunFacts, Usage, record_lag, status_all, summarize
from ckptd.retention.pins import pin
from ckptd.runs.roots import RunRef
from ckptd.runs.statedir import Pin
from tests.ops_helpers import converted_run, flip_byte, ops_config, prune_now
from tests.test_cli_output import make_zip

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def entry(path: str, state: str = "kept", hours_old: float = 1, **kw: object) -> ManifestEntry:
    return ManifestEntry(
        path,
        None,
        100,
        NOW - timedelta(hours=hours_old),
        "ab",
        Format.SB2_ZIP,
        state,
        **kw,  # type: ignore[arg-type]
    )


def facts(**kw: object) -> RunFacts:
    base: dict[str, object] = {
        "pins": {},
        "trash": Usage(),
        "quarantine": Usage(),
        "unrecorded": 0,
        "last_prune_bytes": None,
    }
    base.update(kw)
    return RunFacts(**base)  # type: ignore[arg-type]


RUN = RunRef(Path("/r"), Path("/r/ppo"), "ppo")


def test_summarize_counts_newest_last_prune_and_problems(tmp_path: Path) -> None:
    config = ops_config(tmp_path, monitor={"stale_after": "2h"})
    manifest = Manifest(
        "ppo",
        NOW,
        "default",
        (
            entry("a.zip", hours_old=5),
            entry("b.zip", hours_old=3),
            entry("c.zip", "pending", hours_old=0.1),
            entry("d.zip", "broken", error="bad crc"),
            entry(".ckptd/legacy/a.pkl", "converted"),
            entry("e.pkl", "refused", refusal="refused: os.system"),
        ),
        (
            RemovedEntry("x.zip", None, NOW - timedelta(days=1), ("r",), ".ckptd/trash/x.zip"),
            RemovedEntry("y.zip", None, NOW - timedelta(hours=2), ("r",), ".ckptd/trash/y.zip"),
            RemovedEntry("z.zip", None, NOW - timedelta(hours=2), ("r",), ".ckptd/trash/z.zip"),
        ),
    )
    status = summarize(
        RUN,
        manifest,
        facts(pins={"a.zip": Pin("paper")}, quarantine=Usage(2, 10), last_prune_bytes=300),
        config,
        now=NOW,
    )

    assert (status.kept, status.pending, status.broken, status.refused) == (2, 1, 1, 3)
    assert status.bytes == 600
    assert status.newest is not None and status.newest.path == "c.zip"
    assert status.last_prune is not None
    assert (status.last_prune.removed, status.last_prune.bytes) == (2, 300)
    assert status.pins == (("a.zip", Pin("paper")),)
    assert "3 refused (unsafe) files" in status.problems
    assert "1 broken file" in status.problems
    assert not any("no new checkpoint" in p for p in status.problems)  # c.zip is 6 minutes old


def test_summarize_flags_a_stale_run_and_a_manifest_behind(tmp_path: Path) -> None:
    config = ops_config(tmp_path, monitor={"stale_after": "2h"})
    manifest = Manifest("ppo", NOW, "default", (entry("a.zip", hours_old=5),))

    status = summarize(RUN, manifest, facts(unrecorded=4), config, now=NOW)

    assert "no new checkpoint for 5h (monitor.stale_after 2h)" in status.problems
    assert any(p.startswith("manifest is behind: 4 complete") for p in status.problems)
    quiet = summarize(RUN, manifest, facts(), ops_config(tmp_path), now=NOW)
    assert quiet.problems == ()  # no stale_after: a finished run is not a problem


def test_summarize_flags_unreadable_files(tmp_path: Path) -> None:
    manifest = Manifest(
        "ppo",
        NOW,
        "default",
        (
            entry("a.zip", hours_old=5),
            entry("b.pkl", "pending", error="cannot read: Permission denied"),
            entry("c.zip", "pending", hours_old=0.1),  # just written: not a problem
        ),
    )
    status = summarize(RUN, manifest, facts(), ops_config(tmp_path), now=NOW)
    assert status.problems == ("1 unreadable file (permissions?)",)


def test_record_lag_follows_the_schedule(tmp_path: Path) -> None:
    config = ops_config(tmp_path, schedule={"manifest": "5m"}, checkpoints={"stable_for": "10s"})
    assert record_lag(config) == timedelta(minutes=6, seconds=10)


def test_status_of_real_runs(tmp_path: Path) -> None:
    config: Config = ops_config(tmp_path / "runs")
    run = converted_run(config)
    prune_now(config)  # two checkpoints (with their originals) go to the trash
    pin(run / "rl_model_3000_steps.zip", reason="best", now=datetime.now(UTC))
    (tmp_path / "runs" / "fresh").mkdir()  # a run ckptd never saw
    report = status_all(config, now=datetime.now(UTC))

    by_run = {status.run: status for status in report.runs}
    ppo = by_run["ppo-1"]
    assert ppo.manifest == "ok" and ppo.kept == 1 and ppo.problems == ()
    assert ppo.newest is not None and ppo.newest.path == "rl_model_3000_steps.zip"
    assert ppo.trash.files == 4 and ppo.trash.bytes > 0
    assert ppo.last_prune is not None and ppo.last_prune.removed == 2
    assert ppo.last_prune.bytes == ppo.trash.bytes
    assert [path for path, _ in ppo.pins] == ["rl_model_3000_steps.zip"]
    assert by_run["fresh"].manifest == "missing" and by_run["fresh"].problems == ()
    json_doc = report.to_json_obj()
    assert json_doc["runs"][0]["counts"] == {  # type: ignore[index]
        "pending": 0,
        "refused": 0,
        "broken": 0,
        "held": 0,
        "corrupt": 0,
    }


def test_status_flags_unrecorded_files_and_scrub_corruption(tmp_path: Path) -> None:
    from ckptd.ops.ratelimit import RateLimiter
    from ckptd.ops.scrub import scrub_all

    config = ops_config(tmp_path / "runs")
    run = converted_run(config)
    flip_byte(run / "rl_model_1000_steps.zip", 300)
    scrub_all(config, None, datetime.now(UTC), RateLimiter(None))
    old = run / "rl_model_7000_steps.zip"
    old.write_bytes(b"never recorded")
    hours_ago = int((datetime.now(UTC) - timedelta(hours=3)).timestamp()) * 10**9
    os.utime(old, ns=(hours_ago, hours_ago))
    (run / "rl_model_8000_steps.zip").write_bytes(b"just written")  # in flight: not a problem

    (status,) = status_all(config, now=datetime.now(UTC)).runs

    assert status.corrupt == 1 and status.broken == 0
    assert status.unrecorded == 1
    assert "1 corrupt (scrub found a mismatch)" in status.problems
    assert any(p.startswith("manifest is behind: 1 complete") for p in status.problems)
    assert status.last_scrub is not None and status.last_scrub["corrupt"] == 1


def test_status_warns_when_run_depth_merges_two_series(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for seed in ("seed1", "seed2"):
        for step in (1000, 2000):
            make_zip(tmp_path / "runs" / "ppo" / seed / f"rl_model_{step}_steps.zip", timedelta(1))
    make_zip(tmp_path / "runs" / "sac" / "rl_model_1000_steps.zip", timedelta(1))
    config = tmp_path / "ckptd.yaml"
    config.write_text("version: 1\nroots: [{path: runs}]\n")
    assert main(["manifest", "-c", str(config)]) == 0
    capsys.readouterr()
    assert main(["status", "-c", str(config), "--json"]) == 0
    runs = {run["run"]: run["problems"] for run in json.loads(capsys.readouterr().out)["runs"]}
    assert runs["ppo"] == [
        "checkpoints with a step in 2 directories (seed1/, seed2/) are pruned as one series:"
        " is run_depth 1 too shallow?"
    ]
    assert runs["sac"] == []
