"""The stabilizer with literal times: (what happened, when) → which paths are ready, when."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ckptd.watch.stabilize import Stabilizer


@dataclass(frozen=True)
class Obs:
    """One observation: at time ``t`` the file had ``size``/``mtime`` (and maybe a close event)."""

    t: float
    size: int
    mtime: int
    closed: bool = False
    expect_close: bool = False


# stable_for = 5 s; unclosed_after defaults to 4 * 5 = 20 s.
CASES = [
    pytest.param(
        [Obs(0, 10, 1)], {0: False, 5: False}, id="one look is not enough: stability must be seen"
    ),
    pytest.param(
        [Obs(0, 10, 1), Obs(5, 10, 1)], {5: True}, id="polling: unchanged after stable_for"
    ),
    pytest.param([Obs(0, 10, 1), Obs(4.9, 10, 1)], {4.9: False}, id="polling: not yet"),
    pytest.param(
        [Obs(0, 10, 1), Obs(3, 20, 2), Obs(6, 20, 2), Obs(8, 20, 2)],
        {6: False, 8: True},
        id="a change restarts the clock",
    ),
    pytest.param(
        [Obs(0, 10, 1), Obs(3, 10, 2), Obs(7, 10, 2), Obs(8, 10, 2)],
        {7: False, 8: True},
        id="an mtime change alone restarts the clock",
    ),
    pytest.param(
        [Obs(0, 10, 1, expect_close=True), Obs(10, 10, 1, expect_close=True)],
        {10: False},
        id="inotify without a close event: quiet period is not enough",
    ),
    pytest.param(
        [
            Obs(0, 10, 1, expect_close=True),
            Obs(10, 10, 1, closed=True, expect_close=True),
            Obs(14, 10, 1, expect_close=True),
            Obs(15, 10, 1, expect_close=True),
        ],
        {14: False, 15: True},
        id="inotify: the clock starts at the close event",
    ),
    pytest.param(
        [Obs(0, 10, 1, closed=True, expect_close=True), Obs(5, 10, 1, expect_close=True)],
        {5: True},
        id="inotify: rename into place then quiet",
    ),
    pytest.param(
        [
            Obs(0, 10, 1, closed=True, expect_close=True),
            Obs(2, 30, 3, expect_close=True),
            Obs(8, 30, 3, expect_close=True),
        ],
        {8: False},
        id="inotify: writing again after a close cancels it",
    ),
    pytest.param(
        [Obs(0, 10, 1, expect_close=True), Obs(19, 10, 1), Obs(20, 10, 1)],
        {19: False, 20: True},
        id="inotify: no close ever (found by a scan) is accepted after unclosed_after",
    ),
    pytest.param(
        [Obs(0, 10, 1), Obs(2, 10, 1, closed=True), Obs(6, 10, 1), Obs(7, 10, 1)],
        {6: False, 7: True},
        id="a close event restarts the clock even without a change",
    ),
]


@pytest.mark.parametrize(("observations", "expected_ready_at"), CASES)
def test_stabilizer_table(observations: list[Obs], expected_ready_at: dict[float, bool]) -> None:
    """At each check time, feed every observation made so far, then ask ``ready``."""
    stabilizer: Stabilizer[str] = Stabilizer(5.0)
    remaining = sorted(observations, key=lambda obs: obs.t)
    verdicts: dict[float, bool] = {}
    for check_time in sorted(expected_ready_at):
        while remaining and remaining[0].t <= check_time:
            obs = remaining.pop(0)
            stabilizer.observe(
                "ckpt.zip",
                obs.size,
                obs.mtime,
                obs.t,
                closed=obs.closed,
                expect_close=obs.expect_close,
            )
        verdicts[check_time] = stabilizer.ready(check_time) == ["ckpt.zip"]
    assert verdicts == expected_ready_at


def test_ready_returns_each_path_once_then_forgets_it() -> None:
    stabilizer: Stabilizer[str] = Stabilizer(1.0)
    stabilizer.observe("a", 1, 1, 0.0)
    stabilizer.observe("b", 1, 1, 0.0)
    stabilizer.observe("a", 1, 1, 1.0)
    assert stabilizer.ready(1.0) == ["a"]
    assert stabilizer.ready(1.5) == []
    assert stabilizer.pending() == 1


def test_due_lists_paths_whose_quiet_period_ran_out_without_a_new_look() -> None:
    stabilizer: Stabilizer[str] = Stabilizer(2.0)
    stabilizer.observe("old", 1, 1, 0.0)
    stabilizer.observe("new", 1, 1, 1.5)
    assert stabilizer.due(2.0) == ["old"]
    assert stabilizer.ready(2.0) == []  # due, but nobody has looked again yet
    stabilizer.observe("old", 1, 1, 2.0)
    assert stabilizer.due(2.0) == []
    assert stabilizer.ready(2.0) == ["old"]


def test_zero_stable_for_is_ready_at_first_sight() -> None:
    stabilizer: Stabilizer[str] = Stabilizer(0.0)
    stabilizer.observe("a", 1, 1, 3.0)
    assert stabilizer.ready(3.0) == ["a"]


def test_forget_drops_a_path_and_ignores_unknown_ones() -> None:
    stabilizer: Stabilizer[str] = Stabilizer(1.0)
    stabilizer.observe("a", 1, 1, 0.0)
    stabilizer.forget("a")
    stabilizer.forget("never-seen")
    stabilizer.observe("a", 1, 1, 5.0)  # tracked anew: its clock starts now
    assert stabilizer.ready(5.0) == []
    assert stabilizer.pending() == 1


def test_memory_is_bounded_new_paths_are_refused_and_counted() -> None:
    stabilizer: Stabilizer[str] = Stabilizer(1.0, max_tracked=2)
    assert stabilizer.observe("a", 1, 1, 0.0)
    assert stabilizer.observe("b", 1, 1, 0.0)
    assert not stabilizer.observe("c", 1, 1, 0.0)
    assert stabilizer.observe("a", 2, 2, 0.5)  # known paths still update
    assert (stabilizer.pending(), stabilizer.dropped) == (2, 1)


def test_unclosed_after_is_never_shorter_than_stable_for() -> None:
    assert Stabilizer(5.0, unclosed_after=1.0).unclosed_after == 5.0
    assert Stabilizer(5.0, unclosed_after=30.0).unclosed_after == 30.0


@pytest.mark.parametrize("kwargs", [{"stable_for": -1.0}, {"stable_for": 1.0, "max_tracked": 0}])
def test_invalid_settings_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be >="):
        Stabilizer(**kwargs)  # type: ignore[arg-type]
