"""Nothing inside a directory checkpoint is a checkpoint of its own: watch events, the
reconciliation scan, a new directory's scan and the daemon's run queue (the pure and the
file-system parts; tests/test_daemon_dirs.py runs the real daemon)."""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
)

from ckptd.config.load import parse_config
from ckptd.config.model import Config
from ckptd.daemon.directories import DirectoryCheckpoints
from ckptd.daemon.jobs import RunBatch, RunManifest
from ckptd.daemon.run_queue import RunQueues
from ckptd.formats import Format
from ckptd.fs.runfs import RunFS
from ckptd.manifest.model import ManifestEntry
from ckptd.pipeline.discovery import (
    checkpoint_dir_of,
    directory_needs_work,
    directory_summary,
    files_below,
    matcher_for,
    scan_run,
)
from ckptd.runs.dir_listing import list_directory
from ckptd.runs.roots import RunRef
from ckptd.watch.events import NameFilter, WatchEvent, translate_event
from tests.trainer_replay import FIXTURES

ROOT = Path("/data/runs")
FILTER = NameFilter(
    ("*.pt", "*.bin", "*.safetensors"),
    ("*.tmp", "*.part", "tmp-*"),
    ".ckptd",
    ("checkpoint-*", "global_step*", "[0-9]*"),
    ((ROOT, 1),),
)
DS = "/data/runs/r/global_step5"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        # Files inside: the directory changed, whatever the file's name (temp and dot files too).
        (FileClosedEvent(f"{DS}/mp_rank_00_model_states.pt"), [("dir_changed", DS, True)]),
        (FileCreatedEvent(f"{DS}/mp_rank_00_model_states.pt"), [("dir_changed", DS, False)]),
        (FileDeletedEvent(f"{DS}/mp_rank_00_model_states.pt"), [("dir_changed", DS, False)]),
        (FileClosedEvent(f"{DS}/.metadata.tmp"), [("dir_changed", DS, True)]),
        (FileMovedEvent(f"{DS}/.metadata.tmp", f"{DS}/.metadata"), [("dir_changed", DS, True)]),
        (
            FileClosedEvent(f"{DS}/sub/deeper/x.pt"),
            [("dir_changed", DS, True)],
        ),
        # The outermost checkpoint directory below the run is the unit.
        (
            FileClosedEvent("/data/runs/r/checkpoint-7/global_step7/x.pt"),
            [("dir_changed", "/data/runs/r/checkpoint-7", True)],
        ),
        # The directory itself.
        (DirCreatedEvent(DS), [("dir_changed", DS, False)]),
        (DirCreatedEvent(f"{DS}/zero"), [("dir_changed", DS, False)]),
        (DirDeletedEvent(DS), [("dir_gone", DS, False)]),
        (DirDeletedEvent(f"{DS}/zero"), [("dir_changed", DS, False)]),
        # Orbax renames its temporary directory into place.
        (
            DirMovedEvent("/data/runs/r/6.orbax-checkpoint-tmp", "/data/runs/r/6"),
            [
                ("dir_gone", "/data/runs/r/6.orbax-checkpoint-tmp", False),
                ("dir_changed", "/data/runs/r/6", True),
            ],
        ),
        # Trashed whole (into the state dir), restored whole.
        (
            DirMovedEvent(DS, "/data/runs/r/.ckptd/trash/global_step5"),
            [("dir_gone", DS, False)],
        ),
        (
            DirMovedEvent("/data/runs/r/.ckptd/trash/global_step5", DS),
            [("dir_changed", DS, True)],
        ),
        # A file moved out of a checkpoint into the run is a file again, and the other way.
        (
            FileMovedEvent(f"{DS}/a.pt", "/data/runs/r/a.pt"),
            [("dir_changed", DS, False), ("moved", "/data/runs/r/a.pt", True)],
        ),
        (
            FileMovedEvent("/data/runs/r/a.pt", f"{DS}/a.pt"),
            [("deleted", "/data/runs/r/a.pt", False), ("dir_changed", DS, True)],
        ),
        # DeepSpeed's latest beside its tags: judge them again.
        (FileClosedEvent("/data/runs/r/latest"), [("dir_marker", "/data/runs/r", True)]),
        (
            FileMovedEvent("/data/runs/r/latest.tmp", "/data/runs/r/latest"),
            [("dir_marker", "/data/runs/r", True)],
        ),
        (FileDeletedEvent("/data/runs/r/latest"), []),
        (FileClosedEvent("/data/runs/r/.ckptd/latest"), []),
        # A run named like a checkpoint is still a run; files outside checkpoints as before.
        (
            FileClosedEvent("/data/runs/checkpoint-1/model.pt"),
            [("closed", "/data/runs/checkpoint-1/model.pt", True)],
        ),
        (
            DirCreatedEvent("/data/runs/checkpoint-1"),
            [("dir_created", "/data/runs/checkpoint-1", False)],
        ),
        (FileClosedEvent("/data/runs/r/model.pt"), [("closed", "/data/runs/r/model.pt", True)]),
        (DirCreatedEvent("/data/runs/r/logs"), [("dir_created", "/data/runs/r/logs", False)]),
        # Ignored and state-dir names are never checkpoints.
        (DirCreatedEvent("/data/runs/r/checkpoint-3.tmp"), []),
        (FileClosedEvent("/data/runs/r/.ckptd/trash/global_step5/x.pt"), []),
        # Not a checkpoint directory inside a dot-directory (the daemon drops such files later).
        (
            FileClosedEvent("/data/runs/r/.hidden/global_step5/x.pt"),
            [("closed", "/data/runs/r/.hidden/global_step5/x.pt", True)],
        ),
    ],
)
def test_translate_event_inside_directory_checkpoints(
    event: FileSystemEvent, expected: list[tuple[str, str, bool]]
) -> None:
    got = translate_event(event, ROOT, FILTER)
    assert [(e.kind, str(e.path), e.closed) for e in got] == expected


def test_without_directory_globs_files_inside_are_files() -> None:
    plain = NameFilter(FILTER.patterns, FILTER.ignore, FILTER.state_dir)
    got = translate_event(FileClosedEvent(f"{DS}/a.pt"), ROOT, plain)
    assert [(e.kind, str(e.path)) for e in got] == [("closed", f"{DS}/a.pt")]


def test_the_run_depth_of_each_root_decides_what_is_below_a_run() -> None:
    deep = NameFilter(("*.pt",), (), ".ckptd", ("checkpoint-*",), ((ROOT, 2),))
    inside = translate_event(FileClosedEvent("/data/runs/g/checkpoint-1/a.pt"), ROOT, deep)
    assert [e.kind for e in inside] == ["closed"]  # checkpoint-1 is the run at depth 2
    inside = translate_event(FileClosedEvent("/data/runs/g/r/checkpoint-1/a.pt"), ROOT, deep)
    assert [(e.kind, str(e.path)) for e in inside] == [
        ("dir_changed", "/data/runs/g/r/checkpoint-1")
    ]


# ---- the reconciliation scan and a new directory's scan ------------------------------------------


def _config(root: Path, **checkpoints: object) -> Config:
    return parse_config(
        {
            "roots": [{"path": str(root), "run_depth": 1}],
            "checkpoints": {
                "patterns": ["*.pt", "*.bin", "*.safetensors", "*.pth"],
                "directories": ["checkpoint-*", "global_step*"],
                "step_pattern": r"(?:_|-|global_step)(\d+)",
                **checkpoints,
            },
        }
    )


def _trainer_run(root: Path) -> Path:
    run = root / "r"
    shutil.copytree(FIXTURES / "deepspeed", run / "ds")
    shutil.copytree(FIXTURES / "hf" / "checkpoint-2", run / "checkpoint-2")
    shutil.copyfile(FIXTURES / "torch" / "state_dict.pt", run / "model_10.pt")
    return run


def test_scan_run_reports_directories_and_never_their_files(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run = _trainer_run(root)
    config = _config(root)
    work = scan_run(config, RunRef(root, run, "r"))
    assert [found.path for found in work.files] == [run / "model_10.pt"]
    assert sorted(work.directories) == [
        run / "checkpoint-2",
        run / "ds" / "global_step2",
        run / "ds" / "global_step4",
        run / "ds" / "global_step6",
    ]


def test_scan_run_without_directory_globs_lists_the_files_inside(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run = _trainer_run(root)
    work = scan_run(_config(root, directories=[]), RunRef(root, run, "r"))
    assert run / "ds" / "global_step2" / "mp_rank_00_model_states.pt" in {
        found.path for found in work.files
    }
    assert work.directories == []


def test_scan_run_never_enters_a_symlinked_checkpoint_directory(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    (root / "r").mkdir(parents=True)
    shutil.copytree(FIXTURES / "hf" / "checkpoint-2", tmp_path / "elsewhere")
    (root / "r" / "checkpoint-2").symlink_to(tmp_path / "elsewhere")
    work = scan_run(_config(root), RunRef(root, root / "r", "r"))
    assert (work.files, work.directories) == ([], [])


def test_a_recorded_directory_is_not_work_until_it_changes(tmp_path: Path) -> None:
    entry = ManifestEntry(
        "checkpoint-2/", 2, 100, datetime(2026, 1, 1, tzinfo=UTC), None, Format.HF_TRAINER,
        "kept", mtime_ns=5,
    )  # fmt: skip
    assert not directory_needs_work(entry, 100, 5)
    assert directory_needs_work(entry, 101, 5)
    assert directory_needs_work(entry, 100, 6)
    assert directory_needs_work(None, 100, 5)
    pending = ManifestEntry(
        "checkpoint-2/", 2, 100, datetime(2026, 1, 1, tzinfo=UTC), None, Format.HF_TRAINER,
        "pending", mtime_ns=5,
    )  # fmt: skip
    assert directory_needs_work(pending, 100, 5)


def test_a_new_directory_lists_its_checkpoint_directories_apart(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run = root / "checkpoint-run"  # a run named like a checkpoint is still a run
    run.mkdir(parents=True)
    shutil.copytree(FIXTURES / "hf" / "checkpoint-4", run / "checkpoint-4")
    shutil.copyfile(FIXTURES / "torch" / "model.pth", run / "model.pth")
    config = _config(root)
    below = files_below(config, config.roots[0], run)
    assert [found.path for found in below.files] == [run / "model.pth"]
    assert below.directories == [run / "checkpoint-4"]
    below = files_below(config, config.roots[0], root)  # a whole tree moved in
    assert [found.path for found in below.files] == [run / "model.pth"]
    assert below.directories == [run / "checkpoint-4"]


def test_checkpoint_dir_of_names_the_outermost_directory(tmp_path: Path) -> None:
    matcher = matcher_for(_config(tmp_path))
    assert checkpoint_dir_of(matcher, "model.pt") is None
    assert checkpoint_dir_of(matcher, "checkpoint-2/optimizer.pt") == "checkpoint-2"
    assert checkpoint_dir_of(matcher, "ds/global_step2/x.pt") == "ds/global_step2"
    assert checkpoint_dir_of(matcher, "checkpoint-2/global_step2/x.pt") == "checkpoint-2"
    assert checkpoint_dir_of(matcher, "checkpoint-2.tmp/x.pt") is None


# ---- the run queue: one manifest pass per run, after its waiting paths ---------------------------


def test_a_run_gets_one_manifest_pass_however_often_it_is_asked(tmp_path: Path) -> None:
    config = _config(tmp_path)
    root = config.roots[0]
    run = RunRef(tmp_path, tmp_path / "r", "r")
    runs = RunQueues()
    offered: list[object] = []

    def offer(item: RunBatch | RunManifest, slow: bool) -> bool:
        offered.append(item)
        return True

    runs.want_manifest(root, run)
    runs.want_manifest(root, run)
    runs.add_ready(root, run, run.run_dir / "model_1.pt", (1, 1))
    runs.dispatch(config, 0.0, offer)
    assert [type(item) for item in offered] == [RunBatch]  # the waiting files first
    runs.want_manifest(root, run)
    runs.dispatch(config, 0.0, offer)
    assert len(offered) == 1  # the run is busy with its batch
    batch = offered[0]
    assert isinstance(batch, RunBatch)
    runs.busy.discard(run.run_dir)
    runs.dispatch(config, 0.0, offer)
    runs.dispatch(config, 0.0, offer)
    assert [type(item) for item in offered] == [RunBatch, RunManifest]
    manifest = offered[1]
    assert isinstance(manifest, RunManifest) and manifest.run == run
    runs.manifest_finished(manifest)
    runs.dispatch(config, 0.0, offer)
    assert len(offered) == 2 and runs.runs == {}
    assert runs.queued_paths() == 0


def test_a_refused_manifest_pass_waits_for_the_next_dispatch(tmp_path: Path) -> None:
    config = _config(tmp_path)
    run = RunRef(tmp_path, tmp_path / "r", "r")
    runs = RunQueues()
    runs.want_manifest(config.roots[0], run)
    runs.dispatch(config, 0.0, lambda item, slow: False)
    taken: list[object] = []
    runs.dispatch(config, 0.0, lambda item, slow: taken.append(item) or True)
    assert [type(item) for item in taken] == [RunManifest]


def test_fixture_mtimes_are_old_enough_for_the_scan(tmp_path: Path) -> None:
    """copytree keeps the fixtures' mtimes: a scanned directory's quiet period is already over."""
    shutil.copytree(FIXTURES / "hf" / "checkpoint-2", tmp_path / "c")
    assert (
        os.stat(tmp_path / "c" / "trainer_state.json").st_mtime_ns
        == os.stat(FIXTURES / "hf" / "checkpoint-2" / "trainer_state.json").st_mtime_ns
    )


def test_the_scans_summary_is_the_listings_size_and_newest_mtime(tmp_path: Path) -> None:
    """What a directory's manifest entry records (its listing's size and newest mtime) is what
    the reconciliation scan compares it with, without reading a byte."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "orbax" / "4", run / "4")  # nested directories
    os.utime(run / "4" / "default", ns=(0, 2_000_000_000_000_000_000))  # a subdirectory newest
    listing = list_directory(RunFS(run), "4").listing
    assert directory_summary(run / "4") == (listing.size, listing.newest_mtime_ns)
    assert listing.newest_mtime_ns == 2_000_000_000_000_000_000


def test_a_gone_directory_asks_for_a_manifest_pass_only_when_it_was_not_being_written(
    tmp_path: Path,
) -> None:
    root = tmp_path / "runs"
    (root / "r" / "checkpoint-8").mkdir(parents=True)
    config = _config(root)
    directories = DirectoryCheckpoints(config)
    runs = RunQueues()
    now = time.time()
    directories.handle(
        WatchEvent("dir_changed", root / "r" / "checkpoint-8", False, root), runs, now
    )
    assert directories.tracker.pending() == 1
    gone = WatchEvent("dir_gone", root / "r" / "checkpoint-8", False, root)
    assert directories.handle(gone, runs, now)
    assert (directories.tracker.pending(), runs.runs) == (0, {})  # a save that never finished
    recorded = WatchEvent("dir_gone", root / "r" / "checkpoint-2", False, root)
    directories.handle(recorded, runs, now)  # not tracked: complete, maybe recorded
    assert [q.manifest for q in runs.runs.values()] == [True]
    assert not directories.handle(WatchEvent("closed", root / "r" / "a.pt", True, root), runs, now)
