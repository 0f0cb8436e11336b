"""trash list / restore / purge on runs pruned by the real prune."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ckptd.cli.main import main
from ckptd.config.model import Config
from ckptd.errors import CkptdError
from ckptd.retention.deletion import read_trash_index
from ckptd.retention.trash import list_trash, purge, restore
from ckptd.runs.access import locate_run_dir
from ckptd.runs.statedir import StateLayout, read_pins
from tests.helpers import sha256_file
from tests.ops_helpers import (
    converted_run,
    decisions,
    flip_byte,
    manifest_of,
    ops_config,
    prune_now,
    run_report,
)

pytestmark = pytest.mark.timeout(60)

OLD = "rl_model_1000_steps.zip"
OLD_PKL = ".ckptd/legacy/rl_model_1000_steps.pkl"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return ops_config(tmp_path / "runs")


@pytest.fixture
def pruned(config: Config) -> tuple[Path, dict[str, str]]:
    """A run whose two older checkpoints (zip + archived original each) a prune moved to the trash;
    returns the run and the sha256 of every file before the prune."""
    run = converted_run(config)
    before = {
        rel: sha256_file(run / rel)
        for rel in (
            OLD,
            OLD_PKL,
            "rl_model_2000_steps.zip",
            ".ckptd/legacy/rl_model_2000_steps.pkl",
        )
    }
    report = run_report(prune_now(config), "ppo-1")
    assert decisions(report)[OLD][0] == "delete"
    assert not (run / OLD).exists() and not (run / OLD_PKL).exists()
    return run, before


def test_list_shows_each_file_with_origin_companion_and_expiry(
    config: Config, pruned: tuple[Path, dict[str, str]]
) -> None:
    run, before = pruned
    items = {item.name: item for item in list_trash(locate_run_dir(run), ttl=timedelta(days=7))}

    assert set(items) == {
        "rl_model_1000_steps.zip",
        "rl_model_1000_steps.pkl",
        "rl_model_2000_steps.zip",
        "rl_model_2000_steps.pkl",
    }
    zip_item, pkl_item = items["rl_model_1000_steps.zip"], items["rl_model_1000_steps.pkl"]
    assert zip_item.original == OLD and zip_item.sha256 == before[OLD]
    assert pkl_item.original == OLD_PKL and pkl_item.companion_of == "rl_model_1000_steps.zip"
    assert zip_item.expires_at == zip_item.trashed_at + timedelta(days=7)
    assert zip_item.size == (run / ".ckptd/trash/rl_model_1000_steps.zip").stat().st_size


def test_restore_then_prune_keeps_the_restored_checkpoint(
    config: Config, pruned: tuple[Path, dict[str, str]]
) -> None:
    run, before = pruned
    now = datetime.now(UTC)

    result = restore(run / OLD, now=now)  # by the checkpoint's original path

    assert [f.path for f in result.files] == [OLD, OLD_PKL]
    assert sha256_file(run / OLD) == before[OLD] and sha256_file(run / OLD_PKL) == before[OLD_PKL]
    assert not (run / ".ckptd/trash/rl_model_1000_steps.zip").exists()
    assert set(read_trash_index(StateLayout(run))) == {
        "rl_model_2000_steps.zip",
        "rl_model_2000_steps.pkl",
    }
    pins = read_pins(StateLayout(run))
    assert pins[OLD].reason == result.pin_reason and result.pin_reason.startswith(
        "restored from trash 20"
    )
    entries = manifest_of(run).by_path()
    assert entries[OLD].state == "kept" and entries[OLD].sha256 == before[OLD]
    assert entries[OLD].converted_from == "rl_model_1000_steps.pkl"
    assert entries[OLD].params is not None  # verified on the way back
    assert entries[OLD_PKL].state == "converted" and entries[OLD_PKL].sha256 == before[OLD_PKL]
    removed = [r for r in manifest_of(run).removed if r.path == OLD]
    assert removed and "restored_at" in removed[-1].extra

    report = run_report(prune_now(config), "ppo-1")

    action, reasons = decisions(report)[OLD]
    assert action == "keep" and f"pinned: {result.pin_reason}" in reasons
    assert (run / OLD).exists() and (run / OLD_PKL).exists()


def test_restore_by_trash_path_of_the_archived_original_restores_the_pair(
    pruned: tuple[Path, dict[str, str]],
) -> None:
    run, _ = pruned
    result = restore(run / ".ckptd/trash/rl_model_1000_steps.pkl", now=datetime.now(UTC))
    assert {f.path for f in result.files} == {OLD, OLD_PKL}
    assert (run / OLD).exists() and (run / OLD_PKL).exists()


def test_restore_refuses_to_overwrite_a_live_file(pruned: tuple[Path, dict[str, str]]) -> None:
    run, _ = pruned
    (run / OLD).write_bytes(b"a new checkpoint with the old name")
    trash_before = sorted(p.name for p in (run / ".ckptd/trash").iterdir())

    with pytest.raises(CkptdError, match="refusing to overwrite") as err:
        restore(run / ".ckptd/trash/rl_model_1000_steps.zip", now=datetime.now(UTC))

    assert str(run / OLD) in str(err.value)
    assert (run / OLD).read_bytes() == b"a new checkpoint with the old name"
    assert sorted(p.name for p in (run / ".ckptd/trash").iterdir()) == trash_before
    assert not (run / OLD_PKL).exists()  # nothing of the pair was moved
    assert OLD not in read_pins(StateLayout(run))


def test_restore_refuses_a_trash_copy_that_no_longer_matches(
    pruned: tuple[Path, dict[str, str]],
) -> None:
    run, _ = pruned
    flip_byte(run / ".ckptd/trash/rl_model_1000_steps.pkl", 100)
    with pytest.raises(CkptdError, match=r"differs from .* recorded when it was deleted"):
        restore(run / OLD, now=datetime.now(UTC))
    assert not (run / OLD).exists() and not (run / OLD_PKL).exists()


def test_restore_of_something_not_in_the_trash_is_a_clear_error(
    pruned: tuple[Path, dict[str, str]],
) -> None:
    run, _ = pruned
    with pytest.raises(CkptdError, match="is not in the trash of its run"):
        restore(run / "rl_model_3000_steps.zip", now=datetime.now(UTC))
    with pytest.raises(CkptdError, match="no such file in the trash"):
        restore(run / ".ckptd/trash/nothing.zip", now=datetime.now(UTC))


def test_purge_removes_only_entries_older_than_asked(
    pruned: tuple[Path, dict[str, str]],
) -> None:
    run, _ = pruned
    handle = locate_run_dir(run)
    now = datetime.now(UTC)

    assert purge(handle, older_than=timedelta(hours=1), now=now).removed == ()
    outcome = purge(handle, older_than=timedelta(hours=1), now=now + timedelta(hours=2))

    assert len(outcome.removed) == 4 and outcome.bytes > 0
    assert list_trash(handle) == []
    assert read_trash_index(StateLayout(run)) == {}
    assert (run / "rl_model_3000_steps.zip").exists()


def test_purge_dry_run_names_what_would_go_and_changes_nothing(
    pruned: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = pruned
    trash = run / ".ckptd" / "trash"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in trash.iterdir())
    later = datetime.now(UTC) + timedelta(hours=2)
    outcome = purge(locate_run_dir(run), older_than=timedelta(hours=1), now=later, dry_run=True)
    assert len(outcome.removed) == 4 and outcome.bytes > 0
    assert main(["trash", "purge", "--run", str(run), "--older-than", "0s", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(out[:-1]) == sorted(f"would purge {trash / name}" for name in outcome.removed)
    assert out[-1].startswith(f"{run}: would purge 4 files (")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in trash.iterdir()) == before
    assert len(list_trash(locate_run_dir(run))) == 4


def test_purge_of_a_run_without_trash_does_nothing(config: Config) -> None:
    run = config.roots[0].path / "empty"
    (run / ".ckptd").mkdir(parents=True)
    outcome = purge(locate_run_dir(run), older_than=timedelta(0), now=datetime.now(UTC))
    assert outcome.removed == () and not (run / ".ckptd" / "trash").exists()
