"""Safe deletion on real files: trash naming, re-check before acting, symlinks, pairs, purging."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ckptd.config.model import CheckpointsConfig
from ckptd.errors import FileChangedError, StateError, UnsafePathError
from ckptd.fs.files import TEMP_PREFIX, TEMP_SUFFIX
from ckptd.manifest.model import ManifestEntry
from ckptd.retention.deletion import (
    TRASH_INDEX,
    Deleted,
    delete_checkpoint,
    delete_checkpoints,
    purge_trash,
    read_trash_index,
)
from ckptd.retention.trash_journal import TRASH_PENDING, PendingMove, write_pending
from ckptd.runs.checkpoints import Checkpoint, InventoryOptions
from ckptd.runs.inventory import default_identifier, inventory_run
from ckptd.runs.listing import CheckpointMatcher
from ckptd.runs.roots import RunRef
from ckptd.runs.statedir import StateLayout

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SB2_PICKLE = b"\x80\x02cstable_baselines.ppo2\nPPO2\nq\x00}q\x01\x86q\x02."


def make_zip(path: Path, payload: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", "{}")
        archive.writestr("parameters", payload)
        archive.writestr("parameter_list", "[]")
    when = int((NOW - timedelta(hours=1)).timestamp()) * 1_000_000_000
    os.utime(path, ns=(when, when))
    return path


def judge(run: Path, converted_from: dict[str, str] | None = None) -> dict[str, Checkpoint]:
    """Inventory ``run`` as prune would (hashing), optionally with converted_from links."""
    options = InventoryOptions(
        CheckpointMatcher(CheckpointsConfig(), "ckptd-manifest.json"),
        ".ckptd",
        0,
        True,
        default_identifier(),
    )
    ref = RunRef(run.parent, run, run.name)
    previous: dict[str, ManifestEntry] = {}
    for path, source in (converted_from or {}).items():
        checkpoint = {
            c.path: c for c in inventory_run(ref, options, now=NOW, previous={}).checkpoints
        }[path]
        previous[path] = ManifestEntry(
            path,
            checkpoint.step,
            checkpoint.size,
            checkpoint.mtime,
            checkpoint.sha256,
            checkpoint.format,
            "kept",
            converted_from=source,
            mtime_ns=checkpoint.identity.mtime_ns,
        )
    return {c.path: c for c in inventory_run(ref, options, now=NOW, previous=previous).checkpoints}


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if not p.is_dir())


def test_trash_moves_the_file_keeps_its_mtime_and_records_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    path = make_zip(run / "rl_model_1_steps.zip")
    mtime_ns = path.stat().st_mtime_ns
    checkpoint = judge(run)["rl_model_1_steps.zip"]
    layout = StateLayout(run)
    result = delete_checkpoint(layout, checkpoint, mode="trash", now=NOW)
    assert result == Deleted(
        "rl_model_1_steps.zip", ".ckptd/trash/rl_model_1_steps.zip", None, None, checkpoint.size
    )
    assert not path.exists()
    assert (run / result.trash).stat().st_mtime_ns == mtime_ns  # restore and retention need it
    (record,) = read_trash_index(layout).values()
    assert (record.name, record.original, record.trashed_at, record.sha256) == (
        "rl_model_1_steps.zip",
        "rl_model_1_steps.zip",
        NOW,
        checkpoint.sha256,
    )


def test_trash_names_take_a_numeric_suffix_when_taken(tmp_path: Path) -> None:
    run = tmp_path / "run"
    layout = StateLayout(run)
    trash_paths = []
    for _ in range(3):
        make_zip(run / "sub" / "model_1_steps.zip")
        checkpoint = judge(run)["sub/model_1_steps.zip"]
        trash_paths.append(delete_checkpoint(layout, checkpoint, mode="trash", now=NOW).trash)
    assert trash_paths == [
        ".ckptd/trash/model_1_steps.zip",
        ".ckptd/trash/model_1_steps.zip.1",
        ".ckptd/trash/model_1_steps.zip.2",
    ]
    assert sorted(read_trash_index(layout)) == [
        "model_1_steps.zip",
        "model_1_steps.zip.1",
        "model_1_steps.zip.2",
    ]


@pytest.mark.parametrize(
    "change",
    [
        lambda p: make_zip(p, payload=b"grown while we judged"),  # size
        lambda p: os.utime(p, ns=(1, 1)),  # mtime
        # Same size and mtime, another inode (made while the old one exists, so never reused).
        lambda p: os.replace(make_zip(p.with_name("replacement.zip")), p),
    ],
    ids=["size", "mtime", "inode"],
)
def test_file_changed_since_judged_is_not_deleted(tmp_path: Path, change) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    path = make_zip(run / "rl_model_1_steps.zip")
    checkpoint = judge(run)["rl_model_1_steps.zip"]
    change(path)
    before = path.read_bytes()
    with pytest.raises(
        FileChangedError, match=r"rl_model_1_steps\.zip: changed since it was judged"
    ):
        delete_checkpoint(StateLayout(run), checkpoint, mode="unlink", now=NOW)
    assert path.read_bytes() == before


def test_symlink_swapped_in_is_never_deleted_through(tmp_path: Path) -> None:
    run = tmp_path / "run"
    path = make_zip(run / "rl_model_1_steps.zip")
    checkpoint = judge(run)["rl_model_1_steps.zip"]
    precious = make_zip(tmp_path / "precious.zip")
    path.unlink()
    path.symlink_to(precious)
    for mode in ("trash", "unlink"):
        with pytest.raises(UnsafePathError, match="is a symlink"):
            delete_checkpoint(StateLayout(run), checkpoint, mode=mode, now=NOW)  # type: ignore[arg-type]
    assert path.is_symlink() and precious.exists()


def test_directory_swapped_for_a_symlink_out_of_the_run_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_zip(run / "sub" / "rl_model_1_steps.zip")
    checkpoint = judge(run)["sub/rl_model_1_steps.zip"]
    outside = tmp_path / "outside"
    precious = make_zip(outside / "rl_model_1_steps.zip")
    os.rename(run / "sub", tmp_path / "moved-away")
    (run / "sub").symlink_to(outside)
    # Same name, and even the same inode as judged would not matter: the link is never entered.
    with pytest.raises(UnsafePathError, match=r"run/sub: is a symlink; refusing"):
        delete_checkpoint(StateLayout(run), checkpoint, mode="unlink", now=NOW)
    assert precious.exists()


def test_paths_that_climb_out_of_the_run_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_zip(run / "rl_model_1_steps.zip")
    victim = make_zip(tmp_path / "victim_1_steps.zip")
    checkpoint = judge(run)["rl_model_1_steps.zip"]
    import dataclasses

    climbing = dataclasses.replace(checkpoint, path="../victim_1_steps.zip")
    with pytest.raises(UnsafePathError, match=r"has a '\.\.' component"):
        delete_checkpoint(StateLayout(run), climbing, mode="unlink", now=NOW)
    assert victim.exists()


def test_archived_original_goes_to_the_trash_with_its_zip(tmp_path: Path) -> None:
    run = tmp_path / "run"
    layout = StateLayout(run)
    make_zip(run / "rl_model_5_steps.zip")
    original = layout.legacy_path("rl_model_5_steps.pkl")
    original.parent.mkdir(parents=True)
    original.write_bytes(SB2_PICKLE)
    checkpoint = judge(run)["rl_model_5_steps.zip"]
    assert checkpoint.legacy is not None
    result = delete_checkpoint(layout, checkpoint, mode="trash", now=NOW)
    assert result.legacy_path == ".ckptd/legacy/rl_model_5_steps.pkl"
    assert result.legacy_trash == ".ckptd/trash/rl_model_5_steps.pkl"
    assert result.bytes == checkpoint.total_size
    assert (run / result.legacy_trash).read_bytes() == SB2_PICKLE
    assert not original.exists()
    records = read_trash_index(layout)
    assert records["rl_model_5_steps.pkl"].companion_of == "rl_model_5_steps.zip"
    assert records["rl_model_5_steps.pkl"].original == ".ckptd/legacy/rl_model_5_steps.pkl"


def test_changed_original_keeps_both_files_in_place(tmp_path: Path) -> None:
    run = tmp_path / "run"
    layout = StateLayout(run)
    zipped = make_zip(run / "rl_model_5_steps.zip")
    original = layout.legacy_path("rl_model_5_steps.pkl")
    original.parent.mkdir(parents=True)
    original.write_bytes(SB2_PICKLE)
    checkpoint = judge(run)["rl_model_5_steps.zip"]
    original.write_bytes(SB2_PICKLE + b"more")
    with pytest.raises(FileChangedError, match=r"legacy/rl_model_5_steps\.pkl: changed"):
        delete_checkpoint(layout, checkpoint, mode="trash", now=NOW)
    assert zipped.exists() and original.exists()


def test_unlink_removes_the_zip_and_its_original(tmp_path: Path) -> None:
    run = tmp_path / "run"
    layout = StateLayout(run)
    make_zip(run / "rl_model_5_steps.zip")
    original = layout.legacy_path("rl_model_5_steps.pkl")
    original.parent.mkdir(parents=True)
    original.write_bytes(SB2_PICKLE)
    checkpoint = judge(run)["rl_model_5_steps.zip"]
    result = delete_checkpoint(layout, checkpoint, mode="unlink", now=NOW)
    assert (result.trash, result.legacy_trash) == (None, None)
    assert listing(run) == []
    assert not (layout.trash / TRASH_INDEX).exists()


def test_batch_reports_each_failure_in_its_slot_and_deletes_the_rest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_zip(run / "a_1_steps.zip")
    changed = make_zip(run / "b_2_steps.zip")
    judged = judge(run)
    make_zip(changed, payload=b"rewritten")
    outcomes = delete_checkpoints(
        StateLayout(run), [judged["a_1_steps.zip"], judged["b_2_steps.zip"]], mode="trash", now=NOW
    )
    assert isinstance(outcomes[0], Deleted)
    assert isinstance(outcomes[1], FileChangedError)
    assert changed.exists()


def _trash_at(layout: StateLayout, name: str, when: datetime) -> None:
    make_zip(layout.run_dir / name)
    checkpoint = judge(layout.run_dir)[name]
    delete_checkpoint(layout, checkpoint, mode="trash", now=when)


def test_purge_removes_only_entries_older_than_the_ttl(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path / "run")
    _trash_at(layout, "old_1_steps.zip", NOW - timedelta(days=8))
    _trash_at(layout, "new_2_steps.zip", NOW - timedelta(days=1))
    result = purge_trash(layout, timedelta(days=7), NOW)
    assert result.removed == ("old_1_steps.zip",)
    assert result.bytes > 0
    assert sorted(p.name for p in layout.trash.iterdir()) == [TRASH_INDEX, "new_2_steps.zip"]
    assert sorted(read_trash_index(layout)) == ["new_2_steps.zip"]


def test_purge_uses_ctime_for_entries_missing_from_the_index(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path / "run")
    layout.run_dir.mkdir()
    layout.ensure()
    make_zip(layout.trash / "crashed_before_index.zip")  # as if the index write never happened
    real_now = datetime.fromtimestamp(time.time(), UTC)
    assert purge_trash(layout, timedelta(days=7), real_now + timedelta(days=6)).removed == ()
    assert purge_trash(layout, timedelta(days=7), real_now + timedelta(days=8)).removed == (
        "crashed_before_index.zip",
    )


def test_corrupt_trash_index_is_logged_and_never_purges_early(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = StateLayout(tmp_path / "run")
    _trash_at(layout, "a_1_steps.zip", NOW - timedelta(days=30))
    (layout.trash / TRASH_INDEX).write_text("{not json")
    with pytest.raises(StateError, match=r"\.index\.json: trash index unreadable"):
        read_trash_index(layout)
    caplog.set_level(logging.ERROR)
    # The index said 30 days ago; without it the ctime (just now) rules: nothing is purged yet.
    assert purge_trash(layout, timedelta(days=7), NOW).removed == ()
    assert "trash times fall back to ctime" in caplog.text
    _trash_at(layout, "b_2_steps.zip", NOW)  # deletions still work and rewrite the index
    assert sorted(json.loads((layout.trash / TRASH_INDEX).read_text())["entries"]) == [
        "b_2_steps.zip"
    ]


def test_purge_removes_symlinks_as_links_only(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path / "run")
    layout.run_dir.mkdir()
    layout.ensure()
    precious = make_zip(tmp_path / "precious.zip")
    (layout.trash / "link.zip").symlink_to(precious)
    later = datetime.fromtimestamp(time.time(), UTC) + timedelta(days=30)
    assert purge_trash(layout, timedelta(days=7), later).removed == ("link.zip",)
    assert precious.exists()


_KILLED_MID_DELETION = """
import os, signal, sys
from pathlib import Path
from ckptd.retention import deletion
from tests.test_deletion import NOW, judge
from ckptd.runs.statedir import StateLayout

run = Path(sys.argv[1])
checkpoints = judge(run)
doomed = [checkpoints["rl_model_1_steps.zip"], checkpoints["rl_model_5_steps.zip"]]

def killed(layout, records):  # the index write never happens
    os.kill(os.getpid(), signal.SIGKILL)

deletion._append_trash_records = killed
deletion.delete_checkpoints(StateLayout(run), doomed, mode="trash", now=NOW)
"""


def test_a_deletion_killed_before_its_index_write_loses_no_record(tmp_path: Path) -> None:
    """``kill -9`` between the moves into the trash and the index write: the pending note written
    before the first move records the moved files under their original paths (and companions)."""
    run = tmp_path / "run"
    layout = StateLayout(run)
    make_zip(run / "rl_model_1_steps.zip", b"one")
    make_zip(run / "rl_model_5_steps.zip", b"five")
    make_zip(run / "rl_model_9_steps.zip", b"nine")
    original = layout.legacy_path("rl_model_5_steps.pkl")
    original.parent.mkdir(parents=True)
    original.write_bytes(SB2_PICKLE)
    sha = {name: c.sha256 for name, c in judge(run).items()}
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_DELETION, str(run)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert sorted(p.name for p in layout.trash.iterdir() if not p.name.startswith(".")) == [
        "rl_model_1_steps.zip",
        "rl_model_5_steps.pkl",
        "rl_model_5_steps.zip",
    ]
    assert not (layout.trash / TRASH_INDEX).exists()  # the process died before writing it

    records = read_trash_index(layout)
    assert {name: r.original for name, r in records.items()} == {
        "rl_model_1_steps.zip": "rl_model_1_steps.zip",
        "rl_model_5_steps.zip": "rl_model_5_steps.zip",
        "rl_model_5_steps.pkl": ".ckptd/legacy/rl_model_5_steps.pkl",
    }
    assert records["rl_model_5_steps.pkl"].companion_of == "rl_model_5_steps.zip"
    assert records["rl_model_1_steps.zip"].sha256 == sha["rl_model_1_steps.zip"]
    assert {r.trashed_at for r in records.values()} == {NOW}

    # The next deletion writes them into the index for good and drops the note.
    later = NOW + timedelta(hours=1)
    delete_checkpoints(layout, [judge(run)["rl_model_9_steps.zip"]], mode="trash", now=later)
    index = json.loads((layout.trash / TRASH_INDEX).read_text())["entries"]
    assert sorted(index) == [
        "rl_model_1_steps.zip",
        "rl_model_5_steps.pkl",
        "rl_model_5_steps.zip",
        "rl_model_9_steps.zip",
    ]
    assert sorted(p.name for p in layout.trash.iterdir() if p.name.startswith(".")) == [TRASH_INDEX]


def test_a_real_purge_settles_what_a_killed_deletion_left(tmp_path: Path) -> None:
    """Killed in its last deletion (nothing left for the next prune to delete): a moved checkpoint
    the index does not list, the note, and the index's half-written temp file. The next real purge
    (every real prune makes one) records the move, removes the note and the temp file; a dry run
    changes nothing."""
    run = tmp_path / "run"
    layout = StateLayout(run)
    make_zip(run / "rl_model_1_steps.zip", b"one")
    make_zip(run / "rl_model_2_steps.zip", b"two")
    checkpoints = judge(run)
    delete_checkpoints(layout, [checkpoints["rl_model_1_steps.zip"]], mode="trash", now=NOW)
    last = checkpoints["rl_model_2_steps.zip"]
    move = PendingMove(last.path, last.identity.inode, last.identity.device, last.sha256, 0)
    write_pending(layout, [move], NOW)  # as the killed deletion did, then:
    os.rename(run / last.path, layout.trash / last.path)
    temps = [
        f"{TEMP_PREFIX}{TRASH_INDEX}.0badf00d{TEMP_SUFFIX}",
        f"{TEMP_PREFIX}{TRASH_PENDING}.1{TEMP_SUFFIX}",
    ]
    for temp in temps:
        (layout.trash / temp).write_text("{")
    left = sorted(os.listdir(layout.trash))

    assert purge_trash(layout, timedelta(days=7), NOW, dry_run=True).removed == ()
    assert sorted(os.listdir(layout.trash)) == left
    assert purge_trash(layout, timedelta(days=7), NOW).removed == ()
    assert sorted(os.listdir(layout.trash)) == [
        TRASH_INDEX,
        "rl_model_1_steps.zip",
        "rl_model_2_steps.zip",
    ]
    index = json.loads((layout.trash / TRASH_INDEX).read_text())["entries"]
    assert index["rl_model_2_steps.zip"] == {
        "original": "rl_model_2_steps.zip",
        "trashed_at": "2026-03-01T12:00:00Z",
        "sha256": last.sha256,
    }
