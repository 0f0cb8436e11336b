"""prune_all / write_manifests on real trees with the real retention planner."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ckptd.config.model import CheckpointsConfig, Config, DeleteConfig, KeepBest, Policy, RootConfig
from ckptd.manifest.model import Manifest
from ckptd.manifest.store import load_index, load_manifest, write_manifest
from ckptd.manifest.updates import with_state
from ckptd.retention.manifest_pass import write_manifests
from ckptd.retention.passes import PassOptions
from ckptd.retention.plan import Candidate, Evaluation, RunPlan, plan_run
from ckptd.retention.prune import prune_all
from ckptd.runs.statedir import Pin, StateLayout, run_lock, write_pins

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SB2_PICKLE = b"\x80\x02cstable_baselines.ppo2\nPPO2\nq\x00}q\x01\x86q\x02."
MANIFEST = "ckptd-manifest.json"


def set_mtime(path: Path, when: datetime) -> None:
    ns = int(when.timestamp()) * 1_000_000_000
    os.utime(path, ns=(ns, ns))


def make_zip(path: Path, when: datetime, payload: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", "{}")
        archive.writestr("parameters", payload)
        archive.writestr("parameter_list", "[]")
    set_mtime(path, when)
    return path


def make_run(run: Path, steps: Sequence[int], *, hours_apart: float = 1.0) -> list[Path]:
    """Checkpoints ``rl_model_<step>_steps.zip``, the last one an hour before NOW."""
    count = len(steps)
    return [
        make_zip(
            run / f"rl_model_{step}_steps.zip", NOW - timedelta(hours=hours_apart * (count - i))
        )
        for i, step in enumerate(steps)
    ]


def config_for(
    root: Path, *, run_depth: int = 1, max_fraction: float = 1.0, **policy: object
) -> Config:
    return Config(
        roots=(RootConfig(path=root, run_depth=run_depth),),
        checkpoints=CheckpointsConfig(stable_for=timedelta(seconds=5)),
        policies={"default": Policy(name="default", **policy)},  # type: ignore[arg-type]
        delete=DeleteConfig(mode="trash", trash_ttl=timedelta(days=7), max_fraction=max_fraction),
    )


def tree_state(directory: Path) -> dict[str, tuple[str, int, int, str]]:
    """Everything observable about a tree: kind, size, mtime and content of every entry."""
    state = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            state[str(path)] = ("link", 0, st.st_mtime_ns, os.readlink(path))
        elif path.is_dir():
            state[str(path)] = ("dir", 0, st.st_mtime_ns, "")
        else:
            state[str(path)] = (
                "file",
                st.st_size,
                st.st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return state


def decisions_of(report_run: object) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {d.path: (d.action, d.reasons) for d in report_run.decisions}  # type: ignore[attr-defined]


# ---- dry run ------------------------------------------------------------------------------------


def test_dry_run_changes_nothing_at_all(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root / "known", range(0, 5000, 1000))
    config = config_for(root, keep_last=2)
    write_manifests(config, now=NOW)  # "known" now has a manifest, a lock file and the index
    make_run(root / "fresh", range(0, 10_000, 1000))  # never seen by ckptd: no state dir at all
    make_zip(
        root / "known" / "rl_model_9000_steps.zip", NOW - timedelta(minutes=1)
    )  # not cached yet
    make_zip(root / "known" / "rl_model_9999_steps.zip", NOW)  # incomplete
    before = tree_state(tmp_path)
    report = prune_all(config, now=NOW, dry_run=True)
    assert tree_state(tmp_path) == before
    assert report.ok and report.dry_run
    fresh = next(run for run in report.runs if run.run == "fresh")
    assert [d.action for d in fresh.decisions].count("delete") == 8
    assert fresh.bytes_freed == 0 and fresh.deleted == ()
    assert not (root / "fresh" / ".ckptd").exists()


# ---- real passes --------------------------------------------------------------------------------


def test_prune_keeps_what_the_policy_says_and_records_removals(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    paths = make_run(root / "lab" / "ppo-1", range(1000, 11_000, 1000))
    make_zip(root / "lab" / "ppo-1" / "best_model.zip", NOW - timedelta(hours=30))
    config = config_for(root, run_depth=2, keep_last=3, protect=("best_model.zip",))
    report = prune_all(config, now=NOW, dry_run=False)
    assert report.ok
    (run,) = report.runs
    assert run.run == "lab/ppo-1"
    decisions = decisions_of(run)
    assert decisions["rl_model_10000_steps.zip"] == ("keep", ("keep_last #1", "newest"))
    assert decisions["rl_model_8000_steps.zip"] == ("keep", ("keep_last #3",))
    assert decisions["best_model.zip"] == ("keep", ("no step", "protect: best_model.zip"))
    assert decisions["rl_model_1000_steps.zip"] == ("delete", ("no rule keeps it",))
    assert [p.exists() for p in paths] == [False] * 7 + [True] * 3
    trash = root / "lab" / "ppo-1" / ".ckptd" / "trash"
    assert sorted(p.name for p in trash.iterdir() if p.name != ".index.json") == sorted(
        p.name for p in paths[:7]
    )
    assert run.bytes_freed == sum(len(trash.joinpath(p.name).read_bytes()) for p in paths[:7])

    manifest = load_manifest(root / "lab" / "ppo-1" / MANIFEST)
    assert manifest.run == "lab/ppo-1" and manifest.policy == "default"
    assert [e.path for e in manifest.checkpoints] == [
        "best_model.zip",
        "rl_model_10000_steps.zip",
        "rl_model_8000_steps.zip",
        "rl_model_9000_steps.zip",
    ]
    assert manifest.by_path()["rl_model_9000_steps.zip"].reasons == ("keep_last #2",)
    assert all(e.state == "kept" and e.sha256 for e in manifest.checkpoints)
    removed = {r.path: r for r in manifest.removed}
    assert sorted(removed) == sorted(p.name for p in paths[:7])
    first = removed["rl_model_1000_steps.zip"]
    assert (first.trash, first.reasons, first.removed_at) == (
        ".ckptd/trash/rl_model_1000_steps.zip",
        ("no rule keeps it",),
        NOW,
    )
    assert (
        first.sha256
        == hashlib.sha256(trash.joinpath("rl_model_1000_steps.zip").read_bytes()).hexdigest()
    )

    index = load_index(root / "ckptd-index.json")
    assert [(r.run, r.manifest, r.checkpoints, r.newest_step) for r in index.runs] == [
        ("lab/ppo-1", "lab/ppo-1/ckptd-manifest.json", 4, 10_000)
    ]

    again = prune_all(config, now=NOW + timedelta(minutes=1), dry_run=False)
    assert [d.action for d in again.runs[0].decisions] == ["keep"] * 4  # idempotent


def test_max_fraction_guard_deletes_nothing_and_says_why(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    paths = make_run(root / "run", range(8))
    report = prune_all(config_for(root, keep_last=2, max_fraction=0.5), now=NOW, dry_run=False)
    (run,) = report.runs
    assert run.guard == "guard: max_fraction 0.5 (would delete 6 of 8)"
    assert all(p.exists() for p in paths)
    assert decisions_of(run)["rl_model_0_steps.zip"] == (
        "keep",
        ("guard: max_fraction 0.5 (would delete 6 of 8)", "no rule keeps it"),
    )
    assert load_manifest(root / "run" / MANIFEST).removed == ()


def test_archived_original_travels_to_the_trash_with_its_zip(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run_dir = root / "run"
    make_run(run_dir, [1000, 2000, 3000])
    layout = StateLayout(run_dir)
    original = layout.legacy_path("rl_model_1000_steps.pkl")
    original.parent.mkdir(parents=True)
    original.write_bytes(SB2_PICKLE)
    config = config_for(root, keep_last=2)
    write_manifests(config, now=NOW)
    manifest = load_manifest(run_dir / MANIFEST)
    entries = manifest.by_path()
    assert entries["rl_model_1000_steps.zip"].converted_from == "rl_model_1000_steps.pkl"
    assert entries[".ckptd/legacy/rl_model_1000_steps.pkl"].state == "converted"

    report = prune_all(config, now=NOW, dry_run=False)
    (deleted,) = report.runs[0].deleted
    assert deleted.legacy_trash == ".ckptd/trash/rl_model_1000_steps.pkl"
    assert not original.exists()
    assert (run_dir / ".ckptd" / "trash" / "rl_model_1000_steps.pkl").read_bytes() == SB2_PICKLE
    after = load_manifest(run_dir / MANIFEST)
    assert ".ckptd/legacy/rl_model_1000_steps.pkl" not in after.by_path()
    (removed,) = after.removed
    assert (removed.converted_from, removed.converted_from_trash) == (
        ".ckptd/legacy/rl_model_1000_steps.pkl",
        ".ckptd/trash/rl_model_1000_steps.pkl",
    )
    assert removed.converted_from_sha256 == hashlib.sha256(SB2_PICKLE).hexdigest()


def test_incomplete_and_unknown_files_are_skipped_never_deleted(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root / "run", [1, 2, 3])
    young = make_zip(root / "run" / "rl_model_0_steps.zip", NOW - timedelta(seconds=1))
    junk = root / "run" / "rl_model_00_steps.zip"
    junk.write_bytes(b"garbage")
    set_mtime(junk, NOW - timedelta(days=3))
    report = prune_all(config_for(root, keep_last=1), now=NOW, dry_run=False)
    decisions = decisions_of(report.runs[0])
    assert decisions["rl_model_0_steps.zip"] == ("skip", ("skip: incomplete",))
    assert decisions["rl_model_00_steps.zip"] == ("skip", ("skip: unknown",))
    assert young.exists() and junk.exists()
    entries = load_manifest(root / "run" / MANIFEST).by_path()
    assert (entries["rl_model_0_steps.zip"].state, entries["rl_model_0_steps.zip"].sha256) == (
        "pending",
        None,
    )


def test_pinned_checkpoint_is_kept_with_its_reason(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    paths = make_run(root / "run", [1, 2, 3, 4])
    layout = StateLayout(root / "run")
    layout.ensure()
    write_pins(layout, {"rl_model_1_steps.zip": Pin("paper figure 3", NOW)})
    report = prune_all(config_for(root, keep_last=1), now=NOW, dry_run=False)
    assert decisions_of(report.runs[0])["rl_model_1_steps.zip"] == (
        "keep",
        ("pinned: paper figure 3",),
    )
    assert paths[0].exists() and not paths[1].exists()


class PinWhileJudging:
    """A planner that, like a user racing the pass, pins a file right after the first plan."""

    def __init__(self, layout: StateLayout, path: str) -> None:
        self.layout, self.path, self.calls = layout, path, 0

    def __call__(
        self,
        candidates: Sequence[Candidate],
        policy: Policy,
        *,
        now: datetime,
        evaluations: Sequence[Evaluation] | None = None,
        max_fraction: float = 1.0,
    ) -> RunPlan:
        plan = plan_run(
            candidates, policy, now=now, evaluations=evaluations, max_fraction=max_fraction
        )
        self.calls += 1
        if self.calls == 1:
            write_pins(self.layout, {self.path: Pin("just pinned")})
        return plan


def test_pins_are_read_again_right_before_deleting(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    paths = make_run(root / "run", [1, 2, 3])
    planner = PinWhileJudging(StateLayout(root / "run"), "rl_model_1_steps.zip")
    report = prune_all(
        config_for(root, keep_last=1), now=NOW, dry_run=False, options=PassOptions(planner=planner)
    )
    assert planner.calls == 2
    assert paths[0].exists() and not paths[1].exists()
    assert decisions_of(report.runs[0])["rl_model_1_steps.zip"] == (
        "keep",
        ("pinned: just pinned",),
    )


class ChangeAfterJudging:
    """A planner after which a training job rewrites a checkpoint the plan deletes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(
        self, candidates: Sequence[Candidate], policy: Policy, **kwargs: object
    ) -> RunPlan:
        plan = plan_run(candidates, policy, **kwargs)  # type: ignore[arg-type]
        make_zip(self.path, NOW - timedelta(hours=2), payload=b"rewritten by the trainer")
        return plan


def test_file_changed_after_judging_is_skipped_and_reported(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    paths = make_run(root / "run", [1, 2, 3])
    options = PassOptions(planner=ChangeAfterJudging(paths[0]))  # type: ignore[arg-type]
    report = prune_all(config_for(root, keep_last=1), now=NOW, dry_run=False, options=options)
    assert decisions_of(report.runs[0])["rl_model_1_steps.zip"] == (
        "skip",
        ("skip: changed since judged", "no rule keeps it"),
    )
    assert paths[0].read_bytes() != b"" and not paths[1].exists()
    assert [r.path for r in load_manifest(root / "run" / MANIFEST).removed] == [
        "rl_model_2_steps.zip"
    ]


def test_keep_best_uses_the_runs_evaluations(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    paths = make_run(root / "run", [1000, 2000, 3000, 4000])
    lines = [
        {"step": 1000, "mean_reward": 5.0},
        {"step": 2000, "mean_reward": 212.4},
        {"step": 3000, "mean_reward": 7},
    ]
    (root / "run" / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    best = KeepBest(metric="mean_reward", source="metrics.jsonl", count=1, mode="max")
    report = prune_all(config_for(root, keep_last=1, keep_best=best), now=NOW, dry_run=False)
    assert decisions_of(report.runs[0])["rl_model_2000_steps.zip"] == (
        "keep",
        ("keep_best #1 (mean_reward=212.4)",),
    )
    assert [p.exists() for p in paths] == [False, True, False, True]


def test_corrupt_manifest_is_logged_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "runs"
    make_run(root / "run", [1, 2])
    (root / "run" / MANIFEST).write_text('{"schema": "ckptd.manifest/1", "run": 3}')
    caplog.set_level(logging.ERROR)
    report = prune_all(config_for(root, keep_last=5), now=NOW, dry_run=False)
    assert report.ok
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"{root / 'run' / MANIFEST}: run: expected a string, got 3; rebuilding it from the files"
    ]
    assert len(load_manifest(root / "run" / MANIFEST).checkpoints) == 2


def test_failing_runs_are_reported_and_the_others_go_on(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    good = make_run(root / "a-good", [1, 2, 3])
    locked = make_run(root / "b-locked", [1, 2, 3])
    bad_pins = make_run(root / "c-bad-pins", [1, 2, 3])
    (root / "c-bad-pins" / ".ckptd").mkdir()
    (root / "c-bad-pins" / ".ckptd" / "pins.json").write_text("[]")
    linked = make_run(root / "d-linked-state", [1, 2, 3])
    (tmp_path / "elsewhere").mkdir()
    (root / "d-linked-state" / ".ckptd").symlink_to(tmp_path / "elsewhere")
    config = config_for(root, keep_last=1)
    with run_lock(StateLayout(root / "b-locked"), timeout=1):
        report = prune_all(config, now=NOW, dry_run=False, options=PassOptions(lock_timeout=0.1))
    assert not report.ok
    errors = {run.run: run.error for run in report.runs}
    assert errors["a-good"] is None
    assert (
        errors["b-locked"]
        == f"{root / 'b-locked/.ckptd/lock'}: run is locked by another ckptd process (waited 0.1s)"
    )
    assert (
        errors["c-bad-pins"]
        == f'{root / "c-bad-pins/.ckptd/pins.json"}: pins file must be {{"pins": {{"<path>": {{"reason": ...}}}}}}'
    )
    assert "ckptd state directory is a symlink" in (errors["d-linked-state"] or "")
    assert not good[0].exists()
    assert all(p.exists() for p in locked + bad_pins + linked)
    assert list((tmp_path / "elsewhere").iterdir()) == []
    index = {r.run: r for r in load_index(root / "ckptd-index.json").runs}
    assert index["b-locked"].error is not None and index["a-good"].checkpoints == 1


def test_missing_root_is_reported_and_other_roots_are_pruned(tmp_path: Path) -> None:
    make_run(tmp_path / "present" / "run", [1, 2])
    base = config_for(tmp_path / "present", keep_last=1)
    config = Config(
        roots=(RootConfig(path=tmp_path / "absent"), RootConfig(path=tmp_path / "present")),
        checkpoints=base.checkpoints,
        policies=base.policies,
        delete=base.delete,
    )
    report = prune_all(config, now=NOW, dry_run=False)
    assert [(str(p.root), p.message) for p in report.problems] == [
        (
            str(tmp_path / "absent"),
            f"cannot list root: {tmp_path / 'absent'}: root is not a directory",
        )
    ]
    assert [run.run for run in report.runs] == ["run"] and report.runs[0].count("delete") == 1


def test_prune_purges_expired_trash(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root / "run", [1, 2])
    config = config_for(root, keep_last=1)
    prune_all(config, now=NOW, dry_run=False)
    assert (root / "run" / ".ckptd" / "trash" / "rl_model_1_steps.zip").exists()
    report = prune_all(config, now=NOW + timedelta(days=8), dry_run=False)
    assert report.runs[0].purged == ("rl_model_1_steps.zip",)
    assert not (root / "run" / ".ckptd" / "trash" / "rl_model_1_steps.zip").exists()


# ---- manifests and warm passes ------------------------------------------------------------------


def test_write_manifests_carries_daemon_states_and_skips_unchanged_rewrites(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root / "run", [1, 2])
    config = config_for(root, keep_last=1)
    report = write_manifests(config, now=NOW)
    assert [run.manifest_written for run in report.runs] == [True]
    path = root / "run" / MANIFEST
    manifest = load_manifest(path)
    entry = manifest.by_path()["rl_model_1_steps.zip"]
    write_manifest(
        path,
        Manifest(
            manifest.run,
            manifest.generated_at,
            manifest.policy,
            (
                with_state(entry, "refused", refusal="global os.system"),
                manifest.by_path()["rl_model_2_steps.zip"],
            ),
        ),
    )
    before = path.stat().st_mtime_ns
    second = write_manifests(config, now=NOW + timedelta(minutes=1))
    assert [run.manifest_written for run in second.runs] == [False]
    assert path.stat().st_mtime_ns == before
    assert load_manifest(path).by_path()["rl_model_1_steps.zip"].refusal == "global os.system"
    pruned = prune_all(config, now=NOW, dry_run=False)
    assert decisions_of(pruned.runs[0])["rl_model_1_steps.zip"] == ("skip", ("skip: refused",))


def test_warm_pass_reads_no_checkpoint_contents(tmp_path: Path, opened: list[str]) -> None:
    root = tmp_path / "runs"
    for name in ("a", "b"):
        make_run(root / name, range(0, 5000, 1000))
    config = config_for(root, keep_last=10)
    write_manifests(config, now=NOW)
    opened.clear()
    dry = prune_all(config, now=NOW, dry_run=True)
    real = prune_all(config, now=NOW, dry_run=False)
    assert dry.ok and real.ok
    checkpoint_reads = [p for p in opened if p.endswith(".zip")]
    assert checkpoint_reads == []
    assert str(root / "a" / MANIFEST) in opened  # the cache itself is read
    opened.clear()
    cold = write_manifests(config_for(tmp_path / "runs", keep_last=10), now=NOW)
    assert (
        cold.ok and [p for p in opened if p.endswith(".zip")] == []
    )  # still warm: nothing changed
    (root / "a" / MANIFEST).unlink()
    opened.clear()
    write_manifests(config, now=NOW)
    assert len([p for p in opened if p.endswith(".zip")]) >= 5  # a cold run does read them
    json.loads((root / "ckptd-index.json").read_text())


def test_forked_workers_give_the_same_report_as_one_process(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for index in range(120):
        make_run(root / f"run-{index:03d}", [1, 2, 3])
    config = config_for(root, keep_last=1)
    serial = prune_all(config, now=NOW, dry_run=True)
    forked = prune_all(config, now=NOW, dry_run=True, options=PassOptions(workers=2))
    assert forked == serial
    assert len(forked.runs) == 120 and forked.runs[0].count("delete") == 2
