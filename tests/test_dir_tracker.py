"""The directory tracker on real directories written the way the trainers write them.

The clock is passed in (wall-clock seconds, as the daemon does): each step below moves it on by
more than ``stable_for``, as a trainer pausing between files would, without sleeping.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from ckptd.formats import Format
from ckptd.fs.runfs import RunFS
from ckptd.runs.dir_listing import Walked, list_directory
from ckptd.runs.roots import RunRef
from ckptd.watch.dir_tracker import MAX_LISTINGS_PER_TICK, DirTracker, TrackedDir
from tests.trainer_replay import (
    FIXTURES,
    deepspeed_files_before_latest,
    hf_files_before_marker,
)

STABLE_FOR = 2.0


def _where(run: Path, reldir: str) -> TrackedDir:
    return TrackedDir(run.parent, RunRef(run.parent, run, run.name), reldir)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    path = tmp_path / "root" / "run"
    path.mkdir(parents=True)
    return path


def test_an_hf_checkpoint_written_file_by_file_is_complete_only_after_its_state(
    run: Path,
) -> None:
    tracker = DirTracker(STABLE_FOR)
    source = FIXTURES / "hf" / "checkpoint-6"
    where = _where(run, "checkpoint-6")
    (run / "checkpoint-6").mkdir()
    now = time.time()
    for name in hf_files_before_marker("checkpoint-6"):
        shutil.copyfile(source / name, run / "checkpoint-6" / name)
        tracker.touch(where, now)
        assert tracker.tick(now) == []
        now += 5 * STABLE_FOR  # the trainer pauses; quiet, but no trainer_state.json yet
        assert tracker.tick(now) == [], name
    shutil.copyfile(source / "trainer_state.json", run / "checkpoint-6" / "trainer_state.json")
    now += 1.0
    tracker.touch(where, now)
    assert tracker.tick(now) == []  # the listing changed: quiet from now on
    assert tracker.tick(now + STABLE_FOR - 0.5) == []
    done = tracker.tick(now + STABLE_FOR)
    assert [(d.where, d.completion.format, d.completion.complete) for d in done] == [
        (where, Format.HF_TRAINER, True)
    ]
    assert done[0].files == len(list(source.iterdir()))
    assert done[0].size == sum(path.stat().st_size for path in source.iterdir())
    assert tracker.pending() == 0
    assert tracker.tick(now + 10 * STABLE_FOR) == []  # returned once


def test_a_change_while_waiting_for_quiet_restarts_the_clock(run: Path) -> None:
    shutil.copytree(FIXTURES / "hf" / "checkpoint-2", run / "checkpoint-2")
    tracker = DirTracker(STABLE_FOR)
    where = _where(run, "checkpoint-2")
    now = time.time() + 100  # every mtime is old enough
    tracker.touch(where, now)
    assert tracker.tick(now) == []
    (run / "checkpoint-2" / "extra.pt").write_bytes(b"late")  # the directory changes meanwhile
    os.utime(run / "checkpoint-2" / "extra.pt", (now - 50, now - 50))
    assert tracker.tick(now + STABLE_FOR) == []  # not the listing seen stable_for ago
    assert [d.where for d in tracker.tick(now + 2 * STABLE_FOR)] == [where]


def test_a_half_written_trainer_state_is_never_complete(run: Path) -> None:
    shutil.copytree(FIXTURES / "hf" / "checkpoint-4", run / "checkpoint-4")
    state = run / "checkpoint-4" / "trainer_state.json"
    state.write_bytes(state.read_bytes()[:100])
    tracker = DirTracker(STABLE_FOR)
    now = time.time()
    tracker.touch(_where(run, "checkpoint-4"), now)
    for step in range(10):
        assert tracker.tick(now + step * 40.0) == []
    assert tracker.pending() == 1


def test_a_deepspeed_tag_waits_for_latest_beside_it(run: Path) -> None:
    tag = "global_step4"
    (run / tag).mkdir()
    for name in deepspeed_files_before_latest("deepspeed", tag):
        shutil.copyfile(FIXTURES / "deepspeed" / tag / name, run / tag / name)
    tracker = DirTracker(STABLE_FOR)
    where = _where(run, tag)
    now = time.time()
    tracker.touch(where, now)
    for _ in range(8):  # quiet for minutes: still no latest, still not complete
        now += 20.0
        assert tracker.tick(now) == []
    (run / "latest").write_text(tag)
    tracker.marker(run, now)  # the event for latest: judged again at once, not at the next backoff
    done = tracker.tick(now)
    assert [(d.where, d.completion.format) for d in done] == [(where, Format.DEEPSPEED)]


def test_an_unmarked_directory_is_left_to_the_rescan_after_give_up(run: Path) -> None:
    (run / "global_step6").mkdir()
    shutil.copyfile(
        FIXTURES / "deepspeed" / "global_step6" / "mp_rank_00_model_states.pt",
        run / "global_step6" / "mp_rank_00_model_states.pt",
    )
    tracker = DirTracker(STABLE_FOR, give_up_after=60.0)
    where = _where(run, "global_step6")
    now = time.time()
    tracker.touch(where, now)
    while tracker.pending() and now < time.time() + 600:
        assert tracker.tick(now) == []
        now += 1.0
    assert tracker.pending() == 0
    assert time.time() + 60.0 <= now <= time.time() + 120.0
    assert tracker.touch(where, now)  # an event (or a rescan) brings it back
    assert tracker.pending() == 1


def test_a_vanished_directory_is_forgotten_quietly(
    run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copytree(FIXTURES / "hf" / "checkpoint-2", run / "checkpoint-2")
    tracker = DirTracker(STABLE_FOR)
    now = time.time()
    tracker.touch(_where(run, "checkpoint-2"), now)
    assert tracker.tick(now) == []
    shutil.rmtree(run / "checkpoint-2")  # the Trainer's save_total_limit rotated it away
    caplog.set_level(logging.DEBUG, logger="ckptd")
    tracker.touch(_where(run, "checkpoint-2"), now + 1)
    assert tracker.tick(now + 10) == []
    assert tracker.pending() == 0
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_a_checkpoint_directory_that_is_a_symlink_is_never_followed(
    run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(FIXTURES / "hf" / "checkpoint-2", elsewhere)
    (run / "checkpoint-2").symlink_to(elsewhere)
    tracker = DirTracker(STABLE_FOR)
    now = time.time() + 100
    tracker.touch(_where(run, "checkpoint-2"), now)
    assert tracker.tick(now) == []
    assert tracker.tick(now + 10) == []
    assert tracker.pending() == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(run / "checkpoint-2") in warnings[0]
    assert "\n" not in warnings[0]


def test_a_link_replacing_a_parent_directory_is_not_followed(run: Path, tmp_path: Path) -> None:
    """The run's ``out/`` swapped for a link after the event named ``out/checkpoint-2``."""
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(FIXTURES / "hf" / "checkpoint-2", elsewhere / "checkpoint-2")
    (run / "out").symlink_to(elsewhere)
    tracker = DirTracker(STABLE_FOR)
    now = time.time() + 100
    tracker.touch(_where(run, "out/checkpoint-2"), now)
    assert tracker.tick(now) == [] and tracker.tick(now + 10) == []
    assert tracker.pending() == 0


def test_tracked_directories_are_bounded(run: Path) -> None:
    tracker = DirTracker(STABLE_FOR, max_tracked=2)
    now = time.time()
    assert tracker.touch(_where(run, "checkpoint-1"), now)
    assert tracker.touch(_where(run, "checkpoint-2"), now)
    assert not tracker.touch(_where(run, "checkpoint-3"), now)
    assert tracker.touch(_where(run, "checkpoint-1"), now)  # already tracked: still fine
    assert (tracker.pending(), tracker.dropped) == (2, 1)


def test_events_while_written_list_it_at_most_every_half_second(run: Path) -> None:
    listed: list[float] = []

    def counting(fs: RunFS, reldir: str) -> Walked:
        listed.append(now)
        return list_directory(fs, reldir)

    (run / "checkpoint-2").mkdir()
    tracker = DirTracker(STABLE_FOR, lister=counting)
    where = _where(run, "checkpoint-2")
    now = time.time()
    for _ in range(40):  # 40 events over 1 s, a tick every 0.25 s
        tracker.touch(where, now)
        tracker.tick(now)
        now += 0.025
    assert 2 <= len(listed) <= 3


def test_a_tick_lists_a_bounded_number_of_directories(run: Path) -> None:
    listed: list[str] = []

    def counting(fs: RunFS, reldir: str) -> Walked:
        listed.append(reldir)
        return list_directory(fs, reldir)

    for index in range(MAX_LISTINGS_PER_TICK + 20):
        shutil.copytree(FIXTURES / "hf" / "checkpoint-2", run / f"checkpoint-{index}")
    tracker = DirTracker(STABLE_FOR, lister=counting)
    now = time.time() + 100
    for index in range(MAX_LISTINGS_PER_TICK + 20):
        tracker.touch(_where(run, f"checkpoint-{index}"), now)
    assert tracker.tick(now) == []
    assert len(listed) == MAX_LISTINGS_PER_TICK
    tracker.tick(now + 0.25)
    assert len(set(listed)) == MAX_LISTINGS_PER_TICK + 20  # the rest on the next tick
    assert len(tracker.tick(now + STABLE_FOR + 0.25)) == MAX_LISTINGS_PER_TICK
    assert len(tracker.tick(now + STABLE_FOR + 0.5)) == 20


def test_a_wall_clock_going_back_does_not_stall_a_directory(run: Path) -> None:
    shutil.copytree(FIXTURES / "hf" / "checkpoint-2", run / "checkpoint-2")
    tracker = DirTracker(STABLE_FOR)
    where = _where(run, "checkpoint-2")
    now = time.time() + 3600  # listed at a clock an hour ahead, then the clock is set right
    tracker.touch(where, now)
    assert tracker.tick(now) == []
    back = now - 3600 + 100
    assert tracker.tick(back) == []  # listed again at once: a new quiet record from here
    assert [d.where for d in tracker.tick(back + STABLE_FOR)] == [where]
