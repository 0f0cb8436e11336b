"""A pin never slips between prune's last re-read of the pins and its deletions (real threads).

Prune holds the pins lock from that re-read through the deletions (lock order: run lock, then pins
lock), and ``pin`` checks its file under the pins lock: a pin is honoured, or it fails loudly
because the file was already deleted; it is never recorded for a file that is gone. Every wait
here has a timeout, so a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ckptd.config.model import Config, Policy
from ckptd.errors import CkptdError
from ckptd.retention.deletion import DeleteMode, delete_checkpoints
from ckptd.retention.passes import DeleteOutcome, PassOptions
from ckptd.retention.pins import pin, pins_lock, unpin
from ckptd.retention.plan import Candidate, Evaluation, RunPlan, plan_run
from ckptd.retention.prune import prune_all
from ckptd.retention.report import PruneReport
from ckptd.retention.trash import restore
from ckptd.runs.checkpoints import Checkpoint
from ckptd.runs.statedir import Pin, StateLayout, read_pins, write_pins
from tests.helpers import blocked_in, wait_until
from tests.ops_helpers import converted_run, decisions, manifest_of, ops_config, run_report

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_thread_leaks")]

OLD = "rl_model_1000_steps.zip"
MIDDLE = "rl_model_2000_steps.zip"
NEWEST = "rl_model_3000_steps.zip"
JOIN = 20.0  # seconds; far beyond what any step here needs


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return ops_config(tmp_path / "runs")


@pytest.fixture
def run(config: Config) -> Path:
    return converted_run(config)  # keep_last 1: OLD and MIDDLE are to be deleted


def now() -> datetime:
    return datetime.now(UTC)


class CountingPlanner:
    """The real planner; says when it first ran (the prune holds the run lock by then)."""

    def __init__(self) -> None:
        self.calls = 0
        self.planned = threading.Event()

    def __call__(
        self,
        candidates: Sequence[Candidate],
        policy: Policy,
        *,
        now: datetime,
        evaluations: Sequence[Evaluation] | None = None,
        max_fraction: float = 1.0,
    ) -> RunPlan:
        self.calls += 1
        plan = plan_run(
            candidates, policy, now=now, evaluations=evaluations, max_fraction=max_fraction
        )
        self.planned.set()
        return plan


class HookedDeleter:
    """The real deleter, with ``before`` run first (inside the prune, about to delete)."""

    def __init__(self, before: Callable[[Sequence[Checkpoint]], None] | None = None) -> None:
        self.before = before
        self.calls: list[list[str]] = []

    def __call__(
        self,
        layout: StateLayout,
        checkpoints: Sequence[Checkpoint],
        *,
        mode: DeleteMode,
        now: datetime,
        run: str | None = None,
    ) -> list[DeleteOutcome]:
        self.calls.append([c.path for c in checkpoints])
        if self.before is not None:
            self.before(checkpoints)
        return delete_checkpoints(layout, checkpoints, mode=mode, now=now, run=run)


class Background:
    """Run ``target`` in a thread, keeping its result or exception."""

    def __init__(self, target: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self._target = target
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._target()
        except BaseException as err:  # examined by the test
            self.error = err

    def join(self) -> None:
        self.thread.join(JOIN)
        assert not self.thread.is_alive(), "deadlock: the thread did not finish"


def test_pin_landing_while_the_prune_is_about_to_delete_is_honoured(
    config: Config, run: Path
) -> None:
    """The prune has judged OLD doomed and holds the run lock; a pin command is in the middle of
    writing pins.json (it holds the pins lock). The prune must wait and see that pin."""
    layout = StateLayout(run)
    planner = CountingPlanner()
    deleter = HookedDeleter()
    options = PassOptions(planner=planner, deleter=deleter)
    with pins_lock(layout, timeout=5):  # what set_pin holds while it read-modify-writes
        pruning = Background(lambda: prune_all(config, now=now(), dry_run=False, options=options))
        assert planner.planned.wait(JOIN)
        # The prune is past planning, waiting for the pins lock on its way to delete...
        wait_until(lambda: blocked_in(pruning.thread, "pins_lock"), JOIN, "the prune to wait")
        assert deleter.calls == []  # ...and it cannot delete while a pin is being written
        write_pins(layout, {OLD: Pin("landed mid-prune", now())})
    pruning.join()

    assert pruning.error is None
    assert isinstance(pruning.result, PruneReport)
    report = run_report(pruning.result, "ppo-1")
    assert planner.calls == 2  # planned again with the pin
    assert deleter.calls == [[MIDDLE]]
    action, reasons = decisions(report)[OLD]
    assert action == "keep" and "pinned: landed mid-prune" in reasons
    assert (run / OLD).exists() and (run / ".ckptd/legacy/rl_model_1000_steps.pkl").exists()
    assert OLD in manifest_of(run).by_path() and MIDDLE not in manifest_of(run).by_path()


def test_pin_command_during_the_deletions_waits_and_then_never_pins_a_deleted_file(
    config: Config, run: Path
) -> None:
    """``ckptd pin`` run while the prune deletes: it waits for the deletions; on the doomed file
    it then fails naming the trash entry (and pins nothing); on a kept file it succeeds."""
    layout = StateLayout(run)
    pinners: dict[str, Background] = {}

    def pin_late(path: Path) -> object:
        return pin(path, reason="too late?", now=now(), lock_timeout=JOIN)

    def pin_while_deleting(checkpoints: Sequence[Checkpoint]) -> None:
        assert OLD in [c.path for c in checkpoints]
        for name in (OLD, NEWEST):
            pinners[name] = Background(functools.partial(pin_late, run / name))
        for pinner in pinners.values():  # both wait for the deletions to finish
            wait_until(lambda p=pinner: blocked_in(p.thread, "pins_lock"), JOIN, "a pin to wait")
        assert read_pins(layout) == {}

    deleter = HookedDeleter(pin_while_deleting)
    report = prune_all(config, now=now(), dry_run=False, options=PassOptions(deleter=deleter))
    for pinner in pinners.values():
        pinner.join()

    assert sorted(d.path for d in run_report(report, "ppo-1").deleted) == [OLD, MIDDLE]
    error = pinners[OLD].error
    assert isinstance(error, CkptdError)
    assert "not pinned" in str(error) and "trash restore" in str(error)
    assert pinners[NEWEST].error is None
    assert set(read_pins(layout)) == {NEWEST}  # no pin recorded for a file that is gone
    assert manifest_of(run).by_path()[NEWEST].extra["pinned"]["reason"] == "too late?"

    restore(run / OLD, now=now())  # what the error says to do: back, and pinned
    assert (run / OLD).exists() and OLD in read_pins(layout)
    report = prune_all(config, now=now(), dry_run=False)
    assert decisions(run_report(report, "ppo-1"))[OLD][0] == "keep"


def test_pins_restores_and_prunes_running_together_never_deadlock(
    config: Config, run: Path
) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn_pins() -> None:
        try:
            while not stop.is_set():
                pin(run / NEWEST, reason="churn", now=now(), lock_timeout=JOIN)
                unpin(run / NEWEST, now=now(), lock_timeout=JOIN)
        except BaseException as err:
            errors.append(err)

    churner = Background(churn_pins)

    def contended(_: Sequence[Checkpoint]) -> None:
        # Every pass deletes while the churner waits for the lock the prune holds (pins, or the
        # run lock its manifest update takes): the locks are really contended, not by luck.
        wait_until(
            lambda: (
                not churner.thread.is_alive()
                or blocked_in(churner.thread, "pins_lock")
                or blocked_in(churner.thread, "run_lock")
            ),
            JOIN,
            "the churner to wait for a lock",
        )

    deleter = HookedDeleter(contended)
    for _ in range(3):
        pruning = Background(
            lambda: prune_all(
                config, now=now(), dry_run=False, options=PassOptions(deleter=deleter)
            )
        )
        pruning.join()
        assert pruning.error is None
        assert isinstance(pruning.result, PruneReport) and pruning.result.ok
        trashed = sorted((run / ".ckptd" / "trash").glob("rl_model_*_steps.zip"))
        if trashed:
            # run lock, then pins lock: the same order as prune
            restoring = Background(
                functools.partial(restore, trashed[0], now=now(), lock_timeout=JOIN)
            )
            restoring.join()
            assert restoring.error is None
    stop.set()
    churner.join()
    assert errors == []
    assert (run / NEWEST).exists()
