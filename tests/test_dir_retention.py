"""Directory checkpoints through retention: one decision, one move to the trash, one restore, one
purge; never one being written, never one that changed since it was judged, never through a link.

Runs are the real trainers' checkpoints (tests/data/trainers) copied into tmp_path; the commands
are the real CLI where the operator would use it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from ckptd.config.model import Policy
from ckptd.retention.passes import PassOptions
from ckptd.retention.plan import Candidate, Evaluation, RunPlan, plan_run
from ckptd.retention.prune import prune_all
from tests.hostile_helpers import ckptd, snapshot
from tests.ops_helpers import decisions, manifest_of, run_report
from tests.trainer_runs import (
    ORDER,
    TRAINERS,
    age_tree,
    copy_trainer_run,
    trainer_config,
    trainer_document,
)


def _tree(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _inside(tree: dict[str, bytes], directory: str) -> dict[str, bytes]:
    prefix = directory + "/"
    return {path[len(prefix) :]: data for path, data in tree.items() if path.startswith(prefix)}


def _three_roots(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A Hugging Face, a DeepSpeed and a Lightning run, each under its own root and policy."""
    runs = {
        "hf": copy_trainer_run("hf", tmp_path / "hf-root" / "gpt"),
        "deepspeed": copy_trainer_run("deepspeed-zero2", tmp_path / "ds-root" / "zero2"),
        "lightning": copy_trainer_run("lightning", tmp_path / "pl-root" / "tiny"),
    }
    document = trainer_document(tmp_path / "hf-root")
    document["roots"] = [
        {"path": str(tmp_path / "hf-root"), "run_depth": 1, "policy": "hf"},
        {"path": str(tmp_path / "ds-root"), "run_depth": 1, "policy": "deepspeed"},
        {"path": str(tmp_path / "pl-root"), "run_depth": 1, "policy": "lightning"},
    ]
    document["policies"] = {
        "hf": {"keep_last": 1, "min_age": "0s"},
        "deepspeed": {"keep_last": 1, "min_age": "0s"},
        "lightning": {"keep_last": 2, "protect": ["last.ckpt"], "min_age": "0s"},
    }
    config = tmp_path / "ckptd.yaml"
    config.write_text(yaml.safe_dump(document))
    return config, runs


def _prune_json(config: Path, *extra: str) -> dict[str, dict[str, dict[str, object]]]:
    done = ckptd("prune", "-c", config, "--json", *extra)
    assert done.returncode == 0, done.stderr
    return {
        run["run"]: {row["path"]: row for row in run["decisions"]}
        for run in json.loads(done.stdout)["runs"]
    }


def test_three_trainers_pruned_restored_and_purged_by_the_cli(tmp_path: Path) -> None:
    config, runs = _three_roots(tmp_path)
    hf, ds, pl = runs["hf"], runs["deepspeed"], runs["lightning"]
    before = {name: _tree(run) for name, run in runs.items()}
    planned = _prune_json(config, "--dry-run")
    assert {name: _tree(run) for name, run in runs.items()} == before

    gpt = planned["gpt"]
    assert sorted(gpt) == ["checkpoint-2/", "checkpoint-4/", "checkpoint-6/"]
    assert [gpt[p]["action"] for p in sorted(gpt)] == ["delete", "delete", "keep"]
    six = gpt["checkpoint-6/"]
    assert (six["step"], six["format"]) == (6, "hf-trainer")
    assert six["size"] == sum(len(data) for data in _tree(hf / "checkpoint-6").values())
    zero2 = planned["zero2"]
    assert sorted(zero2) == ["global_step2/", "global_step4/", "global_step6/"]
    assert zero2["global_step2/"]["action"] == "delete"
    assert zero2["global_step4/"]["reasons"] == ["keep_last #1", "newest"]
    # latest does not name global_step6: a save the marker does not call finished.
    assert zero2["global_step6/"]["action"] == "skip"
    assert zero2["global_step6/"]["reasons"] == ["skip: incomplete"]
    tiny = planned["tiny"]
    assert tiny["epoch=0-step=2.ckpt"]["action"] == "delete"
    assert "protect: last.ckpt" in tiny["last.ckpt"]["reasons"]

    done = _prune_json(config)
    for name, rows in planned.items():
        assert {path: row["action"] for path, row in done[name].items()} == {
            path: row["action"] for path, row in rows.items()
        }
    hf_trash, ds_trash = hf / ".ckptd" / "trash", ds / ".ckptd" / "trash"
    # Moved whole: the same files, byte for byte, under the directory's name in the trash.
    assert sorted(p.name for p in hf_trash.iterdir()) == [
        ".index.json",
        "checkpoint-2",
        "checkpoint-4",
    ]
    for name in ("checkpoint-2", "checkpoint-4"):
        assert not (hf / name).exists()
        assert _tree(hf_trash / name) == _inside(before["hf"], name)
    assert sorted(p.name for p in ds_trash.iterdir()) == [".index.json", "global_step2"]
    assert (ds / "global_step6").is_dir() and (ds / "latest").exists()
    assert not (pl / "epoch=0-step=2.ckpt").exists()

    removed = {entry.path: entry for entry in manifest_of(hf).removed}
    assert removed["checkpoint-4/"].trash == ".ckptd/trash/checkpoint-4"
    assert removed["checkpoint-4/"].size == planned["gpt"]["checkpoint-4/"]["size"]

    listed = ckptd("trash", "list", "-c", config, "--json")
    assert listed.returncode == 0, listed.stderr
    sizes = {row["name"]: row["size"] for row in json.loads(listed.stdout)["items"]}
    assert sizes["checkpoint-4"] == planned["gpt"]["checkpoint-4/"]["size"]

    restored = ckptd("trash", "restore", hf / "checkpoint-4", "-c", config)
    assert restored.returncode == 0, restored.stderr
    assert _tree(hf / "checkpoint-4") == _inside(before["hf"], "checkpoint-4")
    entry = manifest_of(hf).by_path()["checkpoint-4/"]
    assert entry.state == "kept" and entry.files is not None and "pinned" in entry.extra
    again = _prune_json(config, "--dry-run")["gpt"]
    assert again["checkpoint-4/"]["action"] == "keep"
    assert again["checkpoint-4/"]["reasons"][0].startswith("pinned: restored from trash")

    purged = ckptd("trash", "purge", "-c", config, "--older-than", "0s")
    assert purged.returncode == 0, purged.stderr
    assert sorted(p.name for p in hf_trash.iterdir()) == [".index.json"]
    assert sorted(p.name for p in ds_trash.iterdir()) == [".index.json"]


def _touching_planner(target: Path) -> PassOptions:
    """A pass whose planner, once it has judged, writes one more file into ``target`` (a trainer
    still at work, or a person copying into it) before the deletions run."""

    def planner(
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
        (target / "late.bin").write_bytes(b"written after the directory was judged")
        os.utime(target / "late.bin", (1_700_000_000, 1_700_000_000))
        return plan

    return PassOptions(planner=planner)


def test_a_directory_changed_after_it_was_judged_is_not_moved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = trainer_config(tmp_path / "root")
    run = copy_trainer_run("hf", tmp_path / "root" / "gpt")
    before = _tree(run / "checkpoint-2")
    report = prune_all(
        config,
        now=datetime.now(UTC),
        dry_run=False,
        options=_touching_planner(run / "checkpoint-2"),
    )
    found = decisions(run_report(report, "gpt"))
    assert found["checkpoint-2/"][0] == "skip"
    assert found["checkpoint-2/"][1][0] == "skip: changed since judged"
    assert found["checkpoint-4/"][0] == "delete"  # the unchanged one goes as planned
    assert _tree(run / "checkpoint-2") == {
        **before,
        "late.bin": _tree(run / "checkpoint-2")["late.bin"],
    }
    lines = [r.getMessage() for r in caplog.records if "checkpoint-2" in r.getMessage()]
    assert any("changed since it was judged" in line and "\n" not in line for line in lines)


def test_directories_written_slowly_in_the_trainers_order_are_never_touched(
    tmp_path: Path,
) -> None:
    """A Hugging Face and a DeepSpeed save replayed file by file in the order each trainer wrote
    them (order.json), a prune pass after every file, under a policy that keeps one checkpoint:
    the save in progress is skipped every time and never moved, and never counts as the newest
    (so the last complete checkpoint stays)."""
    config = trainer_config(tmp_path / "root")
    hf = copy_trainer_run("hf", tmp_path / "root" / "gpt")
    ds = copy_trainer_run("deepspeed", tmp_path / "root" / "zero0")
    shutil.rmtree(ds / "global_step6")  # a save started from scratch below
    hf_steps = [
        (hf / "checkpoint-8", TRAINERS / "hf" / "checkpoint-6", name)
        for name in [*ORDER["hf"]["checkpoint-6"], "trainer_state.json"]
    ]
    ds_writes = [
        (ds / "global_step8", TRAINERS / "deepspeed" / "global_step6", name)
        for name in ORDER["deepspeed"]["deepspeed"][-1]["global_step4"]
    ]
    for target, source, name in [*hf_steps, *ds_writes]:
        target.mkdir(exist_ok=True)
        shutil.copyfile(source / name, target / name)
        report = prune_all(config, now=datetime.now(UTC), dry_run=False)
        for run, pending, newest in (
            (hf, "checkpoint-8/", "checkpoint-6/"),
            (ds, "global_step8/", "global_step4/"),
        ):
            if not (run / pending).exists():
                continue
            found = decisions(run_report(report, run.name))
            assert found[pending] == ("skip", ("skip: incomplete",)), found
            assert found[newest][0] == "keep"
    assert _tree(hf / "checkpoint-8") == _tree(TRAINERS / "hf" / "checkpoint-6")
    assert _tree(ds / "global_step8") == _tree(TRAINERS / "deepspeed" / "global_step6")
    # DeepSpeed's marker comes last, beside the tag: the save is complete once it names it.
    (ds / "latest").write_text("global_step8")
    age_tree(ds / "global_step8", 1_750_000_000)
    age_tree(hf / "checkpoint-8", 1_750_000_000)
    report = prune_all(config, now=datetime.now(UTC), dry_run=False)
    assert decisions(run_report(report, "zero0"))["global_step8/"][1] == ("keep_last #1", "newest")
    assert decisions(run_report(report, "gpt"))["checkpoint-8/"][1] == ("keep_last #1", "newest")
    assert not (ds / "global_step4").exists() and not (hf / "checkpoint-6").exists()


@pytest.mark.parametrize("mode", ["trash", "unlink"])
def test_a_symlink_inside_moves_with_its_directory_and_nothing_outside_is_touched(
    tmp_path: Path, mode: str
) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.pt").write_bytes(b"outside the run")
    (outside / "sub" / "more.bin").write_bytes(b"also outside")
    bait = snapshot(outside)
    config = trainer_config(tmp_path / "root", delete={"mode": mode, "max_fraction": 1.0})
    run = copy_trainer_run("hf", tmp_path / "root" / "gpt")
    (run / "checkpoint-2" / "weights.pt").symlink_to(outside / "secret.pt")
    (run / "checkpoint-2" / "shards").symlink_to(outside / "sub")
    age_tree(run / "checkpoint-2", 1_700_000_000)
    report = prune_all(config, now=datetime.now(UTC), dry_run=False)
    assert decisions(run_report(report, "gpt"))["checkpoint-2/"][0] == "delete"
    assert not (run / "checkpoint-2").exists()
    trashed = run / ".ckptd" / "trash" / "checkpoint-2"
    if mode == "trash":
        assert os.readlink(trashed / "weights.pt") == str(outside / "secret.pt")
        done = prune_all(
            trainer_config(
                tmp_path / "root", delete={"mode": "trash", "trash_ttl": "0s", "max_fraction": 1.0}
            ),
            now=datetime.now(UTC),
            dry_run=False,
        )
        assert "checkpoint-2" in run_report(done, "gpt").purged
    assert not trashed.exists() and not trashed.is_symlink()
    assert snapshot(outside) == bait


def test_pins_hold_a_directory_named_with_or_without_its_slash(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run = copy_trainer_run("hf", root / "gpt")
    config = tmp_path / "ckptd.yaml"
    config.write_text(yaml.safe_dump(trainer_document(root)))
    assert ckptd("pin", f"{run}/checkpoint-2/", "-c", config, "--reason", "paper").returncode == 0
    assert ckptd("pin", run / "checkpoint-4", "-c", config).returncode == 0
    pins = json.loads((run / ".ckptd" / "pins.json").read_text())["pins"]
    assert sorted(pins) == ["checkpoint-2/", "checkpoint-4/"]
    found = _prune_json(config)["gpt"]
    assert found["checkpoint-2/"]["reasons"] == ["pinned: paper"]
    assert [found[p]["action"] for p in sorted(found)] == ["keep", "keep", "keep"]
    assert ckptd("unpin", run / "checkpoint-4", "-c", config).returncode == 0
    assert _prune_json(config)["gpt"]["checkpoint-4/"]["action"] == "delete"
    # A directory no checkpoints.directories glob names is not a checkpoint to pin.
    (run / "logs").mkdir()
    refused = ckptd("pin", run / "logs", "-c", config)
    assert refused.returncode == 1 and "does not name a checkpoint" in refused.stderr


def test_protect_globs_match_a_directory_by_its_name_or_path(tmp_path: Path) -> None:
    config = trainer_config(
        tmp_path / "root",
        policies={
            "default": {
                "keep_last": 1,
                "min_age": "0s",
                "protect": ["checkpoint-2", "gpt2/checkpoint-4/"],
            }
        },
    )
    policy = config.policy_for(config.roots[0])
    mtime = datetime(2026, 1, 1, tzinfo=UTC)
    candidates = [
        Candidate("checkpoint-2/", 2, mtime, 10),
        Candidate("gpt2/checkpoint-4/", 4, mtime, 10),
        Candidate("checkpoint-5/", 5, mtime, 10),
        Candidate("checkpoint-6/", 6, mtime, 10),
    ]
    plan = {d.path: d for d in plan_run(candidates, policy, now=mtime).decisions}
    assert plan["checkpoint-2/"].reasons == ("protect: checkpoint-2",)
    assert plan["gpt2/checkpoint-4/"].reasons == ("protect: gpt2/checkpoint-4/",)
    assert plan["checkpoint-5/"].action == "delete"


def test_a_trainer_directory_holding_a_deepspeed_tag_is_one_checkpoint(tmp_path: Path) -> None:
    """The Trainer under DeepSpeed saves global_step<N>/ inside checkpoint-<N>/: both names match
    checkpoints.directories, and the outer one is the checkpoint."""
    config = trainer_config(tmp_path / "root")
    run = copy_trainer_run("hf", tmp_path / "root" / "gpt")
    shutil.copytree(TRAINERS / "deepspeed" / "global_step2", run / "checkpoint-2" / "global_step2")
    (run / "checkpoint-2" / "latest").write_text("global_step2")
    age_tree(run / "checkpoint-2", 1_700_000_000)
    report = prune_all(config, now=datetime.now(UTC), dry_run=False)
    found = decisions(run_report(report, "gpt"))
    assert sorted(found) == ["checkpoint-2/", "checkpoint-4/", "checkpoint-6/"]
    assert found["checkpoint-2/"][0] == "delete"
    trashed = run / ".ckptd" / "trash" / "checkpoint-2" / "global_step2"
    assert (trashed / "mp_rank_00_model_states.pt").is_file()


def test_restore_refuses_a_trashed_directory_that_is_not_what_was_deleted(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    run = copy_trainer_run("hf", root / "gpt")
    config = tmp_path / "ckptd.yaml"
    config.write_text(yaml.safe_dump(trainer_document(root)))
    assert ckptd("prune", "-c", config).returncode == 0
    trashed = run / ".ckptd" / "trash" / "checkpoint-4"
    (trashed / "optimizer.pt").write_bytes(b"swapped while in the trash")
    before = snapshot(run)
    refused = ckptd("trash", "restore", run / "checkpoint-4", "-c", config)
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    assert "differs from" in line and "checkpoint-4" in line
    assert snapshot(run) == before  # nothing moved
    # A link planted where the trashed directory was is never followed either.
    outside = tmp_path / "outside"
    shutil.copytree(TRAINERS / "hf" / "checkpoint-4", outside)
    shutil.rmtree(trashed)
    trashed.symlink_to(outside)
    refused = ckptd("trash", "restore", run / "checkpoint-4", "-c", config)
    assert refused.returncode == 1 and "symlink" in refused.stderr
    assert not (run / "checkpoint-4").exists() and (outside / "optimizer.pt").is_file()
