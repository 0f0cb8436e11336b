"""quarantine list / show / release on files the real pipeline refused; nothing is ever executed."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ckptd.config.model import Config
from ckptd.errors import CkptdError
from ckptd.ops.quarantine import find, list_quarantine, release, show
from ckptd.pipeline.batch import process_path
from ckptd.pipeline.discovery import find_work
from ckptd.retention.manifest_pass import write_manifests
from ckptd.runs.access import locate_run_dir
from tests.ops_helpers import flip_byte, manifest_of, ops_config
from tests.sb2_fixtures import Exploit, ppo2_data, ppo2_params, write_checkpoint

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("sb2_stand_ins")]

NAME = "rl_model_9_steps.pkl"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return ops_config(tmp_path / "runs")


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


@pytest.fixture
def jailed(config: Config, marker: Path) -> Path:
    """A malicious checkpoint the daemon's pipeline refused and quarantined."""
    run = config.roots[0].path / "ppo-1"
    run.mkdir(parents=True)
    source = write_checkpoint(run / NAME, {**ppo2_data(), "evil": Exploit(marker)}, ppo2_params())
    assert process_path(config, config.roots[0], source).action == "refused"
    path = run / ".ckptd" / "quarantine" / NAME
    assert path.exists() and not source.exists()
    return path


def test_list_gives_each_file_with_its_refusal(jailed: Path) -> None:
    run = jailed.parents[2]
    (item,) = list_quarantine(locate_run_dir(run))

    assert item.name == NAME and item.original == NAME
    assert item.path == f".ckptd/quarantine/{NAME}"
    assert item.refusal is not None and "system" in item.refusal
    assert item.quarantined_at is not None and item.problem is None
    assert item.size == jailed.stat().st_size


def test_list_reports_a_file_without_its_reason_file(jailed: Path) -> None:
    (jailed.parent / f"{NAME}.reason.json").unlink()
    (item,) = list_quarantine(locate_run_dir(jailed.parents[2]))
    assert item.problem == "no reason file" and item.original is None


def test_show_names_the_globals_and_why_without_executing(jailed: Path, marker: Path) -> None:
    shown = show(jailed)

    assert shown.intact and shown.report.verdict == "refused"
    names = {ref.name: ref.allowed for ref in shown.report.globals}
    system = next(name for name in names if name.endswith(".system"))
    assert names[system] is False
    assert any("evil" in (r.where or "") for r in shown.report.refusals)
    document = shown.to_json_obj()
    assert document["original"] == NAME and document["inspect"]["verdict"] == "refused"  # type: ignore[index]
    assert not marker.exists()


def test_show_finds_the_file_by_its_original_path_and_reason_file(jailed: Path) -> None:
    run = jailed.parents[2]
    assert find(run / NAME).name == NAME
    assert find(jailed.parent / f"{NAME}.reason.json").name == NAME
    with pytest.raises(CkptdError, match="is not in the quarantine"):
        find(run / "other.pkl")


def test_release_needs_explicit_trust(jailed: Path) -> None:
    with pytest.raises(CkptdError, match="--i-trust-this-file"):
        release(jailed, trusted=False, now=datetime.now(UTC))
    assert jailed.exists()


def test_release_moves_it_back_and_the_daemon_leaves_it_refused(
    config: Config, jailed: Path, marker: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = jailed.parents[2]
    content = jailed.read_bytes()
    mtime = jailed.stat().st_mtime_ns

    result = release(jailed, trusted=True, now=datetime.now(UTC))

    assert result.path == NAME and (run / NAME).read_bytes() == content
    assert (run / NAME).stat().st_mtime_ns == mtime
    assert stat.S_IMODE((run / NAME).stat().st_mode) == 0o644
    assert not jailed.exists() and not (jailed.parent / f"{NAME}.reason.json").exists()
    assert any("released" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    entry = manifest_of(run).by_path()[NAME]
    assert entry.state == "refused" and "quarantine" not in entry.extra
    assert entry.extra["released"]["sha256"] == result.sha256
    # The daemon's reconciliation does not pick it up again, so it is never re-quarantined...
    assert all(found.path != run / NAME for found in find_work(config, locate_run(config, run)))
    # ...and handing it to the pipeline anyway leaves it where it is, unconverted.
    assert process_path(config, config.roots[0], run / NAME).action == "unchanged"
    assert (run / NAME).exists() and not (run / "rl_model_9_steps.zip").exists()
    assert not marker.exists()


def locate_run(config: Config, run: Path) -> Any:
    from ckptd.runs.roots import find_runs

    return next(r for r in find_runs(config.roots[0].path, 1, ".ckptd").runs if r.run_dir == run)


def test_release_after_a_manifest_pass_dropped_the_entry_records_it_again(
    config: Config, jailed: Path
) -> None:
    run = jailed.parents[2]
    write_manifests(config, now=datetime.now(UTC))
    assert manifest_of(run).by_path()[NAME].state == "refused"  # kept while it is quarantined
    (run / "ckptd-manifest.json").unlink()  # lost: rebuilt from the files alone, without it
    write_manifests(config, now=datetime.now(UTC))
    assert NAME not in manifest_of(run).by_path()  # the file is not in the run any more

    release(jailed, trusted=True, now=datetime.now(UTC))

    entry = manifest_of(run).by_path()[NAME]
    assert entry.state == "refused" and entry.refusal and "system" in entry.refusal
    assert process_path(config, config.roots[0], run / NAME).action == "unchanged"


def test_release_refuses_to_overwrite_and_refuses_a_changed_file(jailed: Path) -> None:
    run = jailed.parents[2]
    (run / NAME).write_bytes(b"a new file with that name")
    with pytest.raises(CkptdError, match="refusing to overwrite"):
        release(jailed, trusted=True, now=datetime.now(UTC))
    assert jailed.exists() and (run / NAME).read_bytes() == b"a new file with that name"

    (run / NAME).unlink()
    flip_byte(jailed, 50)
    with pytest.raises(CkptdError, match="not releasing a file that is not the one judged"):
        release(jailed, trusted=True, now=datetime.now(UTC))
    assert jailed.exists() and not (run / NAME).exists()
