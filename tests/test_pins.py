"""pin/unpin on real runs, with the real prune: kept by every prune, races with a running prune."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ckptd.cli.exits import ExitStatus
from ckptd.cli.main import main
from ckptd.config.model import Config, Policy
from ckptd.errors import CkptdError, UnsafePathError
from ckptd.retention.passes import PassOptions
from ckptd.retention.pins import pin, unpin
from ckptd.retention.plan import Candidate, Evaluation, RunPlan, plan_run
from ckptd.retention.prune import prune_all
from ckptd.runs.access import locate
from ckptd.runs.statedir import StateLayout, read_pins, run_lock
from tests.helpers import blocked_in, wait_until
from tests.ops_helpers import (
    converted_run,
    decisions,
    manifest_of,
    ops_config,
    prune_now,
    run_report,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_thread_leaks")]

NOW = datetime.now(UTC)
OLD = "rl_model_1000_steps.zip"
MIDDLE = "rl_model_2000_steps.zip"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return ops_config(tmp_path / "runs")


@pytest.fixture
def run(config: Config) -> Path:
    return converted_run(config)


def test_pinned_checkpoint_survives_prune_with_its_reason_and_shows_in_manifest(
    config: Config, run: Path
) -> None:
    result = pin(run / OLD, reason="paper figure 3", now=NOW)

    assert result.path == OLD and result.manifest_updated
    assert read_pins(StateLayout(run))[OLD].reason == "paper figure 3"
    assert manifest_of(run).by_path()[OLD].extra["pinned"]["reason"] == "paper figure 3"
    report = run_report(prune_now(config), "ppo-1")
    action, reasons = decisions(report)[OLD]
    assert action == "keep" and "pinned: paper figure 3" in reasons
    assert (run / OLD).exists()
    assert decisions(report)[MIDDLE][0] == "delete"  # the policy still works around the pin


def test_unpin_lets_the_next_prune_delete_it(config: Config, run: Path) -> None:
    pin(run / OLD, reason="for now", now=NOW)
    result = unpin(run / OLD, now=NOW)

    assert result.previous is not None and result.previous.reason == "for now"
    assert OLD not in read_pins(StateLayout(run))
    assert "pinned" not in manifest_of(run).by_path()[OLD].extra
    prune_now(config)
    assert not (run / OLD).exists()
    with pytest.raises(CkptdError, match="is not pinned"):
        unpin(run / OLD, now=NOW)


def test_pin_without_reason_and_repin_replaces(run: Path) -> None:
    first = pin(run / OLD, reason=None, now=NOW)
    second = pin(run / OLD, reason="  keep  ", now=NOW)

    assert first.pin is not None and first.pin.reason == "pinned by operator"
    assert second.previous == first.pin
    assert read_pins(StateLayout(run))[OLD].reason == "keep"


def test_repin_without_a_reason_keeps_the_existing_reason(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = pin(run / OLD, reason="paper figure 3", now=NOW)
    again = pin(run / OLD, reason=None, now=NOW)

    assert again.pin == again.previous == first.pin
    assert read_pins(StateLayout(run))[OLD].reason == "paper figure 3"
    assert main(["pin", str(run / OLD)]) == ExitStatus.OK
    assert capsys.readouterr().out == f"already pinned {run / OLD} (paper figure 3)\n"
    assert read_pins(StateLayout(run))[OLD].reason == "paper figure 3"


def test_pin_an_archived_original_keeps_its_checkpoint(config: Config, run: Path) -> None:
    pin(run / ".ckptd" / "legacy" / "rl_model_1000_steps.pkl", reason="source", now=NOW)
    report = run_report(prune_now(config), "ppo-1")
    assert decisions(report)[OLD][0] == "keep"


def test_pin_refuses_unknown_paths_with_one_line_errors(tmp_path: Path, run: Path) -> None:
    outside = tmp_path / "elsewhere" / "x.zip"
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    with pytest.raises(UnsafePathError, match="not inside a ckptd run") as err:
        pin(outside, reason=None, now=NOW)
    assert str(outside) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CkptdError, match=r"no such file$"):
        pin(run / "rl_model_9_steps.zip", reason=None, now=NOW)
    (run / "link.zip").symlink_to(run / OLD)
    with pytest.raises(UnsafePathError, match="symlink"):
        pin(run / "link.zip", reason=None, now=NOW)
    with pytest.raises(UnsafePathError, match="state directory"):
        pin(run / ".ckptd" / "lock", reason=None, now=NOW)
    assert read_pins(StateLayout(run)) == {}


def test_pin_of_a_trashed_file_points_at_trash_restore(config: Config, run: Path) -> None:
    prune_now(config)
    with pytest.raises(CkptdError, match=r"in the trash as \.ckptd/trash/rl_model_1000_steps\.zip"):
        pin(run / OLD, reason=None, now=NOW)


def test_pin_with_config_finds_the_run_by_run_depth(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    config = ops_config(root, state_dir=".state", manifest={"filename": "m.json"})
    nested = root / "ppo-1" / "sub"
    nested.mkdir(parents=True)
    (nested / "a.zip").write_bytes(b"x")

    handle, relpath = locate(nested / "a.zip", config)
    assert handle.run_dir == root / "ppo-1" and relpath == "sub/a.zip"
    pin(nested / "a.zip", reason="r", now=NOW, config=config)
    assert "sub/a.zip" in read_pins(StateLayout(root / "ppo-1", ".state"))
    with pytest.raises(UnsafePathError, match="not inside a run of any configured root"):
        pin(tmp_path / "a.zip", reason=None, now=NOW, config=config)


def test_concurrent_pins_are_all_kept(run: Path) -> None:
    names = [f"extra_{i}.zip" for i in range(8)]
    for name in names:
        (run / name).write_bytes(b"x")
    threads = [
        threading.Thread(target=pin, args=(run / name,), kwargs={"reason": name, "now": NOW})
        for name in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert set(read_pins(StateLayout(run))) == set(names)


def test_pin_placed_while_a_prune_is_judging_the_run_is_honoured(config: Config, run: Path) -> None:
    """A real prune holds the run lock; the pin lands in its own thread between planning and
    deleting (the planner hook waits for it), and the prune re-reads pins before deleting."""
    layout = StateLayout(run)
    pin_errors: list[BaseException] = []
    pin_done = threading.Event()

    def pin_in_thread() -> None:
        try:
            pin(run / OLD, reason="landed mid-prune", now=NOW, lock_timeout=20)
        except BaseException as err:  # reported below
            pin_errors.append(err)
        finally:
            pin_done.set()

    calls: list[int] = []

    def planner(
        candidates: Sequence[Candidate],
        policy: Policy,
        *,
        now: datetime,
        evaluations: Sequence[Evaluation] | None = None,
        max_fraction: float = 1.0,
    ) -> RunPlan:
        calls.append(len(calls))
        plan = plan_run(
            candidates, policy, now=now, evaluations=evaluations, max_fraction=max_fraction
        )
        if len(calls) == 1:
            assert {d.path: d.action for d in plan.decisions}[OLD] == "delete"
            threading.Thread(target=pin_in_thread, daemon=True).start()
            wait_until(lambda: OLD in read_pins(layout), what="the pin")  # the prune still runs
            assert not pin_done.is_set()  # the pin command waits for the prune's run lock
        return plan

    report = prune_all(
        config, now=datetime.now(UTC), dry_run=False, options=PassOptions(planner=planner)
    )
    assert pin_done.wait(20)

    assert pin_errors == []
    assert len(calls) == 2  # planned again with the new pin
    action, reasons = decisions(run_report(report, "ppo-1"))[OLD]
    assert action == "keep" and "pinned: landed mid-prune" in reasons
    assert (run / OLD).exists() and (run / ".ckptd/legacy/rl_model_1000_steps.pkl").exists()
    assert manifest_of(run).by_path()[OLD].extra["pinned"]["reason"] == "landed mid-prune"


def test_prune_waiting_on_the_lock_sees_a_pin_made_before_it(config: Config, run: Path) -> None:
    layout = StateLayout(run)
    results: list[object] = []
    with run_lock(layout, timeout=5):  # a daemon batch holds the run
        thread = threading.Thread(target=lambda: results.append(prune_now(config)))
        thread.start()
        wait_until(lambda: blocked_in(thread, "run_lock"), what="the prune to wait for the lock")
        assert results == []
        # The pin lands at once (the run lock is not needed for that) and then waits.
        pinner = threading.Thread(
            target=pin,
            args=(run / OLD,),
            kwargs={"reason": "early", "now": NOW, "lock_timeout": 20},
        )
        pinner.start()
        wait_until(lambda: OLD in read_pins(layout), what="the pin")
    thread.join(20)
    pinner.join(20)
    assert (run / OLD).exists()


def test_pin_that_loses_the_race_with_a_deletion_says_so(run: Path) -> None:
    """The prune deleted the file after its last re-read of the pins: the pin command fails loudly."""
    layout = StateLayout(run)
    errors: list[BaseException] = []

    def pin_in_thread() -> None:
        try:
            pin(run / OLD, reason="too late", now=NOW, lock_timeout=20)
        except BaseException as err:
            errors.append(err)

    with run_lock(layout, timeout=5):  # stands for a prune between its re-read and its delete
        thread = threading.Thread(target=pin_in_thread)
        thread.start()
        wait_until(lambda: OLD in read_pins(layout), what="the pin")
        (run / ".ckptd" / "trash").mkdir(exist_ok=True)
        os.rename(run / OLD, run / ".ckptd" / "trash" / OLD)
    thread.join(20)

    assert len(errors) == 1 and isinstance(errors[0], CkptdError)
    assert "deleted by a prune" in str(errors[0]) and "(the pin is kept)" in str(errors[0])
    assert OLD in read_pins(layout)
