"""scrub and status on directory checkpoints the trainers wrote: every file re-hashed against its
recorded sha256, the changed file named, the directory kept out of retention until it heals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.hostile_helpers import ckptd
from tests.ops_helpers import flip_byte, manifest_of
from tests.trainer_runs import copy_trainer_run, trainer_document

pytestmark = pytest.mark.timeout(120)


def _scrub(config: Path) -> tuple[int, dict[str, object]]:
    done = ckptd("scrub", "-c", config, "--json", "--max-rate", "0")
    assert done.stderr == "" or done.returncode == 1, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_scrub_names_the_file_that_changed_in_a_directory(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run = copy_trainer_run("deepspeed-zero2", root / "zero2")
    config = tmp_path / "ckptd.yaml"
    config.write_text(yaml.safe_dump(trainer_document(root)))
    assert ckptd("manifest", "-c", config).returncode == 0
    code, report = _scrub(config)
    assert (code, report["checked"], report["corrupt"]) == (0, 2, 0)  # global_step6 is pending
    assert report["bytes"] == sum(
        entry.size for entry in manifest_of(run).checkpoints if entry.state == "kept"
    )

    optim = run / "global_step4" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    flip_byte(optim, 2000)  # bit rot: the mtime is put back, no listing changes
    code, report = _scrub(config)
    assert code == 1
    (finding,) = report["runs"][0]["corrupt"]  # type: ignore[index]
    assert finding["path"] == "global_step4/"
    assert finding["problems"][0].startswith(
        "zero_pp_rank_0_mp_rank_00_optim_states.pt: sha256 mismatch"
    )
    entry = manifest_of(run).by_path()["global_step4/"]
    assert entry.state == "broken" and "corrupt" in entry.extra
    # Broken: retention never touches it, and status counts it as corrupt.
    pruned = ckptd("prune", "-c", config, "--json", "--dry-run")
    rows = {row["path"]: row for row in json.loads(pruned.stdout)["runs"][0]["decisions"]}
    assert rows["global_step4/"]["action"] == "skip"
    status = json.loads(ckptd("status", "-c", config, "--json").stdout)["runs"][0]
    assert status["counts"]["corrupt"] == 1

    flip_byte(optim, 2000)  # repaired: the next scrub says so and it is kept again
    code, report = _scrub(config)
    assert code == 0 and report["runs"][0]["healed"] == ["global_step4/"]  # type: ignore[index]
    assert manifest_of(run).by_path()["global_step4/"].state == "kept"


def test_scrub_reports_missing_and_added_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run = copy_trainer_run("hf", root / "gpt")
    config = tmp_path / "ckptd.yaml"
    config.write_text(yaml.safe_dump(trainer_document(root)))
    assert ckptd("manifest", "-c", config).returncode == 0
    (run / "checkpoint-2" / "rng_state.pth").unlink()
    (run / "checkpoint-2" / "notes.txt").write_text("added by hand")
    code, report = _scrub(config)
    assert code == 1
    (finding,) = report["runs"][0]["corrupt"]  # type: ignore[index]
    assert finding["path"] == "checkpoint-2/"
    assert finding["problems"] == [
        "rng_state.pth: missing",
        "notes.txt: not recorded (added behind ckptd's back)",
    ]


def test_status_counts_directories_like_checkpoints(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run = copy_trainer_run("hf", root / "gpt")
    config = tmp_path / "ckptd.yaml"
    config.write_text(yaml.safe_dump(trainer_document(root)))
    assert ckptd("prune", "-c", config).returncode == 0
    status = json.loads(ckptd("status", "-c", config, "--json").stdout)["runs"][0]
    kept = manifest_of(run).by_path()["checkpoint-6/"]
    assert (status["kept"], status["bytes"]) == (1, kept.size)
    assert status["newest"]["path"] == "checkpoint-6/" and status["newest"]["step"] == 6
    trashed = sum(entry.size or 0 for entry in manifest_of(run).removed)
    assert status["trash"] == {"files": 2, "bytes": trashed}
    assert not [p for p in status["problems"] if "directories" in p]
