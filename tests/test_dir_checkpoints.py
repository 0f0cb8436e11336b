"""Directory checkpoints in the inventory and the manifest pass, on the trainers' own checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ckptd.config.model import Config
from ckptd.formats import Format
from ckptd.manifest.model import ManifestEntry, directory_digest
from ckptd.retention.manifest_pass import write_manifests
from ckptd.retention.passes import PassOptions
from ckptd.runs.checkpoints import InventoryOptions
from ckptd.runs.dir_checkpoints import IRREGULAR_KEY, DirCheckpoint
from ckptd.runs.inventory import inventory_run
from ckptd.runs.listing import CheckpointMatcher
from ckptd.runs.roots import RunRef
from tests.hostile_helpers import ckptd
from tests.ops_helpers import flip_byte, manifest_of
from tests.trainer_runs import ORDER, TRAINERS, copy_trainer_run, trainer_config

HF_FILES = sorted(path.name for path in (TRAINERS / "hf" / "checkpoint-2").iterdir())


def _options(config: Config, *, hash_files: bool = True) -> InventoryOptions:
    def no_single_files(path: Path) -> Format:
        raise AssertionError(f"a single-file identification of {path}")

    return InventoryOptions(
        matcher=CheckpointMatcher(config.checkpoints, config.manifest.filename),
        state_dir=config.state_dir,
        stable_for_ns=int(config.checkpoints.stable_for.total_seconds() * 1e9),
        hash_files=hash_files,
        identify=no_single_files,  # a directory checkpoint's files are never single checkpoints
    )


def _inventory(
    config: Config, run: Path, previous: dict[str, ManifestEntry] | None = None
) -> dict[str, DirCheckpoint]:
    ref = RunRef(config.roots[0].path, run, run.name)
    found = inventory_run(ref, _options(config), now=datetime.now(UTC), previous=previous or {})
    checkpoints = {}
    for checkpoint in found.checkpoints:
        assert isinstance(checkpoint, DirCheckpoint), checkpoint.path
        checkpoints[checkpoint.path] = checkpoint
    return checkpoints


def test_hugging_face_directories_are_one_checkpoint_each(tmp_path: Path) -> None:
    config = trainer_config(tmp_path / "root")
    run = copy_trainer_run("hf", tmp_path / "root" / "gpt")
    found = _inventory(config, run)
    assert sorted(found) == ["checkpoint-2/", "checkpoint-4/", "checkpoint-6/"]
    six = found["checkpoint-6/"]
    assert (six.step, six.format, six.complete, six.status) == (6, Format.HF_TRAINER, True, "ok")
    directory = run / "checkpoint-6"
    assert six.size == sum(path.stat().st_size for path in directory.iterdir())
    assert six.files is not None
    assert [item.path for item in six.files] == HF_FILES
    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}
    assert {item.path: item.sha256 for item in six.files} == hashes
    assert six.sha256 == directory_digest(hashes.items())
    verdicts = {item.path: item.verdict for item in six.files}
    # The Trainer's pickles that torch.load(weights_only=True) refuses are refused here too; the
    # weights-only ones pass; JSON and safetensors files have no verdict.
    assert verdicts["training_args.bin"] is not None and not verdicts["training_args.bin"].safe
    assert verdicts["optimizer.pt"] is not None and verdicts["optimizer.pt"].safe
    assert verdicts["model.safetensors"] is None and verdicts["trainer_state.json"] is None


def test_interior_files_never_become_checkpoints(tmp_path: Path) -> None:
    """``*.pt`` matches DeepSpeed's mp_rank_00_model_states.pt, which is not a checkpoint of its
    own inside global_step2/; the same pattern still finds a .pt file beside the directories."""
    config = trainer_config(tmp_path / "root")
    run = copy_trainer_run("deepspeed-zero2", tmp_path / "root" / "ds")
    shutil.copyfile(TRAINERS / "torch" / "state_dict.pt", run / "export_10.pt")
    os.utime(run / "export_10.pt", (1_700_000_000, 1_700_000_000))
    write_manifests(config, now=datetime.now(UTC), options=PassOptions())
    paths = {entry.path: entry for entry in manifest_of(run).checkpoints}
    assert sorted(paths) == ["export_10.pt", "global_step2/", "global_step4/", "global_step6/"]
    assert [paths[p].state for p in ("global_step2/", "global_step4/")] == ["kept", "kept"]
    # latest names global_step4, written with save_latest=False for step 6: not complete.
    assert paths["global_step6/"].state == "pending" and paths["global_step6/"].files is None
    optim = {f.path: f for f in paths["global_step2/"].files or ()}
    loss_scaler = optim["zero_pp_rank_0_mp_rank_00_optim_states.pt"].verdict
    assert loss_scaler is not None and not loss_scaler.safe
    assert "LossScaler" in loss_scaler.reason
    # Recorded and kept, never refused as a whole (docs/security.md, "Verdicts").
    assert paths["global_step2/"].verdict is None and paths["global_step2/"].refusal is None


def test_a_warm_pass_reuses_the_entry_and_reads_nothing(tmp_path: Path) -> None:
    """Same listing, same entry: a byte flipped behind ckptd's back (mtime put back) is not seen
    by a pass (scrub's job), which proves the pass did not read the file again."""
    config = trainer_config(tmp_path / "root")
    run = copy_trainer_run("hf", tmp_path / "root" / "gpt")
    write_manifests(config, now=datetime.now(UTC))
    first = manifest_of(run)
    flip_byte(run / "checkpoint-4" / "optimizer.pt", 100)
    report = write_manifests(config, now=datetime.now(UTC))
    assert not report.runs[0].manifest_written
    assert manifest_of(run).checkpoints == first.checkpoints
    # A real change (new mtime) is a new listing: hashed again.
    (run / "checkpoint-4" / "optimizer.pt").touch()
    os.utime(run / "checkpoint-4" / "optimizer.pt", (1_700_000_000, 1_700_000_000))
    write_manifests(config, now=datetime.now(UTC))
    again = manifest_of(run).by_path()["checkpoint-4/"]
    assert again.sha256 != first.by_path()["checkpoint-4/"].sha256


def test_a_directory_changed_within_stable_for_is_pending_and_not_read(tmp_path: Path) -> None:
    config = trainer_config(tmp_path / "root")
    run = copy_trainer_run("hf", tmp_path / "root" / "gpt")
    (run / "checkpoint-6" / "scheduler.pt").touch()  # written just now
    found = _inventory(config, run)
    assert (found["checkpoint-6/"].complete, found["checkpoint-6/"].status) == (
        False,
        "incomplete",
    )
    assert found["checkpoint-6/"].files is None and found["checkpoint-6/"].sha256 is None
    assert found["checkpoint-4/"].complete


def test_written_in_the_trainers_order_it_is_complete_only_after_its_marker(
    tmp_path: Path,
) -> None:
    """A Hugging Face save replayed file by file in the order the Trainer wrote them (order.json),
    trainer_state.json last: pending at every step before the marker, and until stable_for."""
    config = trainer_config(
        tmp_path / "root",
        checkpoints={
            "directories": ["checkpoint-*"],
            "patterns": ["*.pt"],
            "stable_for": "1s",
            "step_pattern": r"-(\d+)",
        },
    )
    run = tmp_path / "root" / "gpt"
    target = run / "checkpoint-2"
    target.mkdir(parents=True)
    for name in [*ORDER["hf"]["checkpoint-2"], "trainer_state.json"]:
        assert not _inventory(config, run)["checkpoint-2/"].complete
        shutil.copyfile(TRAINERS / "hf" / "checkpoint-2" / name, target / name)
        os.utime(target / name, (1_700_000_000, 1_700_000_000))  # old mtimes: the marker decides
    assert not _inventory(config, run)["checkpoint-2/"].complete  # its directory changed just now
    time.sleep(1.1)
    assert _inventory(config, run)["checkpoint-2/"].complete


@pytest.mark.parametrize("kind", ["symlink-file", "symlink-dir"])
def test_a_symlink_inside_is_listed_never_followed(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.pt").write_bytes(b"outside the run")
    config = trainer_config(tmp_path / "root")
    run = copy_trainer_run("hf", tmp_path / "root" / "gpt")
    link = run / "checkpoint-4" / "extra.pt"
    link.symlink_to(outside / "secret.pt" if kind == "symlink-file" else outside)
    os.utime(run / "checkpoint-4", (1_700_000_000, 1_700_000_000))
    write_manifests(config, now=datetime.now(UTC))
    entry = manifest_of(run).by_path()["checkpoint-4/"]
    assert entry.state == "kept"
    assert [item.path for item in entry.files or ()] == HF_FILES  # the link is no file of it
    assert entry.extra[IRREGULAR_KEY] == ["extra.pt"]
    assert "extra.pt" not in manifest_of(run).by_path()


def test_inspect_shows_a_directory_and_its_files_verdicts(tmp_path: Path) -> None:
    run = copy_trainer_run("hf", tmp_path / "gpt")
    (run / "checkpoint-4" / "extra.pt").symlink_to(TRAINERS / "torch" / "state_dict.pt")
    done = ckptd("inspect", run / "checkpoint-4", "--json")
    assert done.returncode == 1, done.stderr  # sound only when no file is refused
    report = json.loads(done.stdout)
    assert (report["format"], report["complete"]) == ("hf-trainer", True)
    verdicts = {item["path"]: item.get("verdict") for item in report["files"]}
    assert sorted(verdicts) == HF_FILES and report["irregular"] == ["extra.pt"]
    assert verdicts["training_args.bin"]["safe"] is False
    assert "TrainingArguments" in verdicts["training_args.bin"]["reason"]
    assert verdicts["optimizer.pt"]["safe"] is True
    sound = ckptd("inspect", TRAINERS / "deepspeed" / "global_step2", "--json")
    assert sound.returncode == 0 and json.loads(sound.stdout)["sound"] is True
    text = ckptd("inspect", TRAINERS / "deepspeed" / "global_step6")
    assert text.returncode == 1 and "deepspeed directory (not complete" in text.stdout
