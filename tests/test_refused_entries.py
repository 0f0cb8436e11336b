"""Refused and broken verdicts survive manifest and prune passes (real pipeline, real passes).

A refused file the daemon quarantined is no longer at its path, so a pass that rebuilds the manifest
from the files on disk must carry its entry over while the quarantined file exists, and drop it
once that file is gone; ``quarantine release`` and the passes must agree on what the entry is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from ckptd.config.model import Config
from ckptd.errors import CkptdError
from ckptd.formats import Format
from ckptd.formats.sniff import identify_format
from ckptd.manifest.model import ManifestEntry
from ckptd.manifest.store import load_index
from ckptd.ops.quarantine import release
from ckptd.ops.status import status_all
from ckptd.pipeline.batch import process_batch, process_path
from ckptd.retention.manifest_pass import write_manifests
from ckptd.retention.passes import PassOptions
from ckptd.retention.prune import prune_all
from ckptd.runs.roots import find_runs
from tests.ops_helpers import converted_run, decisions, manifest_of, ops_config, run_report
from tests.sb2_fixtures import (
    Exploit,
    make_ppo2_checkpoint,
    ppo2_data,
    ppo2_params,
    write_checkpoint,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("sb2_stand_ins")]

EVIL = "rl_model_9_steps.pkl"
JAILED = f".ckptd/quarantine/{EVIL}"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return ops_config(tmp_path / "runs")


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


@pytest.fixture
def run(config: Config, marker: Path) -> Path:
    """Three converted checkpoints (a prune deletes two) and one malicious pickle the pipeline
    refused and quarantined."""
    run = converted_run(config)
    source = write_checkpoint(run / EVIL, {**ppo2_data(), "evil": Exploit(marker)}, ppo2_params())
    assert process_path(config, config.roots[0], source).action == "refused"
    assert (run / JAILED).is_file() and not source.exists()
    return run


def now() -> datetime:
    return datetime.now(UTC)


def assert_refused_and_quarantined(entry: ManifestEntry | None) -> None:
    assert entry is not None
    assert entry.state == "refused" and entry.format is Format.SB2_PICKLE
    assert entry.refusal is not None and "posix.system" in entry.refusal
    assert entry.extra["quarantine"] == JAILED


@pytest.mark.parametrize("dropping_pass", ["manifest", "prune"])
def test_refused_entry_survives_passes_while_quarantined_and_goes_with_the_file(
    config: Config, run: Path, marker: Path, dropping_pass: str
) -> None:
    recorded = manifest_of(run).by_path()[EVIL]
    assert_refused_and_quarantined(recorded)

    write_manifests(config, now=now())
    assert manifest_of(run).by_path()[EVIL] == recorded

    report = run_report(prune_all(config, now=now(), dry_run=False), "ppo-1")
    assert report.error is None and len(report.deleted) == 2  # a real pass that deleted things
    assert EVIL not in decisions(report)  # not in the run: never judged, never touched
    after_prune = manifest_of(run).by_path()
    assert after_prune[EVIL] == recorded
    assert "rl_model_1000_steps.zip" not in after_prune
    # A quarantined file is not a checkpoint of the run: the root index does not count it.
    (indexed,) = load_index(config.roots[0].path / "ckptd-index.json").runs
    assert indexed.checkpoints == 1

    write_manifests(config, now=now())  # passes again, unchanged
    assert manifest_of(run).by_path()[EVIL] == recorded

    (run / JAILED).unlink()  # the operator deleted the quarantined file by hand
    if dropping_pass == "manifest":
        write_manifests(config, now=now())
    else:
        prune_all(config, now=now(), dry_run=False)
    assert EVIL not in manifest_of(run).by_path()
    assert not marker.exists()


def test_the_daemon_does_not_drop_the_entry_when_its_own_quarantine_move_reports_it_gone(
    config: Config, run: Path
) -> None:
    """inotify reports the move into the quarantine as the path being deleted."""
    (ref,) = find_runs(config.roots[0].path, 1, ".ckptd").runs
    process_batch(config, config.roots[0], ref, [], gone=[run / EVIL])
    assert_refused_and_quarantined(manifest_of(run).by_path().get(EVIL))

    (run / JAILED).unlink()
    process_batch(config, config.roots[0], ref, [], gone=[run / EVIL])
    assert EVIL not in manifest_of(run).by_path()


def test_release_and_the_passes_agree(config: Config, run: Path, marker: Path) -> None:
    write_manifests(config, now=now())
    release(run / JAILED, trusted=True, now=now())
    released = manifest_of(run).by_path()[EVIL]
    assert released.state == "refused" and "quarantine" not in released.extra
    assert released.extra["released"]["from"] == JAILED

    write_manifests(config, now=now())
    assert manifest_of(run).by_path()[EVIL] == released
    report = run_report(prune_all(config, now=now(), dry_run=False), "ppo-1")
    assert decisions(report)[EVIL] == ("skip", ("skip: refused",))
    assert (run / EVIL).exists() and not marker.exists()
    entry = manifest_of(run).by_path()[EVIL]
    assert (entry.state, entry.refusal, entry.extra["released"]) == (
        "refused",
        released.refusal,
        released.extra["released"],
    )


def test_status_counts_a_quarantined_file_once_and_not_in_the_run_bytes(
    config: Config, run: Path
) -> None:
    write_manifests(config, now=now())
    (status,) = status_all(config, now=now()).runs
    manifest = manifest_of(run)
    assert status.refused == 1 and status.quarantine.files == 1
    assert "1 refused (unsafe) file" in status.problems
    assert status.bytes == sum(e.size for e in manifest.checkpoints if e.path != EVIL)


def test_broken_pickle_keeps_its_error_across_passes_until_it_changes(
    config: Config, tmp_path: Path
) -> None:
    run = config.roots[0].path / "ppo-1"
    run.mkdir(parents=True)
    whole = make_ppo2_checkpoint(tmp_path / "whole.pkl").read_bytes()
    broken = run / "rl_model_3_steps.pkl"
    broken.write_bytes(whole[: len(whole) // 2])
    assert process_path(config, config.roots[0], broken).action == "broken"
    recorded = manifest_of(run).by_path()[broken.name]
    assert recorded.state == "broken" and recorded.error and "truncated" in recorded.error

    write_manifests(config, now=now())
    assert manifest_of(run).by_path()[broken.name] == recorded
    report = run_report(prune_all(config, now=now(), dry_run=False), "ppo-1")
    assert decisions(report)[broken.name][0] == "skip"
    entry = manifest_of(run).by_path()[broken.name]
    assert (entry.state, entry.error, entry.sha256) == ("broken", recorded.error, recorded.sha256)

    broken.write_bytes(b"not a pickle at all, and a different size")  # the file changed
    write_manifests(config, now=now())
    changed = manifest_of(run).by_path()[broken.name]
    assert changed.error is None and changed.state == "kept"


def test_a_file_that_could_not_be_read_stays_pending_with_its_error_until_it_can_be_read(
    config: Config,
) -> None:
    """A read error is no verdict on the content: unlike ``broken``, it is tried again each pass."""
    run = config.roots[0].path / "ppo-1"
    run.mkdir(parents=True)
    (run / "a_1_steps.zip").write_bytes(b"PK")
    identified: list[str] = []

    def unreadable(path: Path) -> Format:
        identified.append(path.name)
        raise PermissionError(13, "Permission denied", str(path))

    write_manifests(config, now=now(), options=PassOptions(identify=unreadable))
    first = manifest_of(run).by_path()["a_1_steps.zip"]
    assert (first.state, first.error) == ("pending", "cannot read: Permission denied")
    prune_all(config, now=now(), dry_run=False, options=PassOptions(identify=unreadable))
    write_manifests(config, now=now(), options=PassOptions(identify=unreadable))
    assert identified == ["a_1_steps.zip"] * 3
    entry = manifest_of(run).by_path()["a_1_steps.zip"]
    assert (entry.state, entry.error) == ("pending", first.error)

    def counting(path: Path) -> Format:
        identified.append(path.name)
        return identify_format(path)

    write_manifests(config, now=now(), options=PassOptions(identify=counting))
    readable = manifest_of(run).by_path()["a_1_steps.zip"]
    assert (readable.state, readable.error) == ("kept", None)
    write_manifests(config, now=now(), options=PassOptions(identify=counting))
    assert identified == ["a_1_steps.zip"] * 4  # judged now: not read again while unchanged


def test_release_of_a_file_no_longer_quarantined_fails_cleanly(config: Config, run: Path) -> None:
    (run / JAILED).unlink()
    with pytest.raises(CkptdError):
        release(run / JAILED, trusted=True, now=now())
    write_manifests(config, now=now())
    assert EVIL not in manifest_of(run).by_path()
