"""Listing and hashing directory checkpoints from disk, never through a link."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from ckptd.errors import FileChangedError, UnsafePathError
from ckptd.formats import Format
from ckptd.formats.trainer_dirs import judge
from ckptd.fs.runfs import RunFS
from ckptd.runs.dir_listing import hash_files, list_directory

FIXTURES = Path(__file__).resolve().parent / "data" / "trainers"


def _run(tmp_path: Path, *relatives: str) -> RunFS:
    run = tmp_path / "run"
    for relative in relatives:
        shutil.copytree(FIXTURES / relative, run / Path(relative).name)
    return RunFS(run)


def test_lists_every_file_with_markers(tmp_path: Path) -> None:
    fs = _run(tmp_path, "hf/checkpoint-4")
    walked = list_directory(fs, "checkpoint-4")
    source = FIXTURES / "hf" / "checkpoint-4"
    assert {item.path: item.size for item in walked.listing.files} == {
        path.name: path.stat().st_size for path in source.iterdir()
    }
    assert set(walked.listing.markers) == {"trainer_state.json"}
    assert walked.listing.size == sum(path.stat().st_size for path in source.iterdir())
    assert judge(walked.listing).format is Format.HF_TRAINER


def test_nested_files_and_the_parents_latest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "deepspeed", run / "ds")
    shutil.copytree(FIXTURES / "orbax", run / "orbax")
    fs = RunFS(run)
    walked = list_directory(fs, "ds/global_step2")
    assert walked.listing.parent_latest == "global_step4"
    assert judge(walked.listing).complete
    orbax = list_directory(fs, "orbax/4").listing
    assert {"_CHECKPOINT_METADATA", "commit_success.txt", "default/_METADATA"} <= {
        item.path for item in orbax.files
    }
    assert judge(orbax).complete


def test_links_inside_are_listed_never_followed(tmp_path: Path) -> None:
    fs = _run(tmp_path, "dcp/step_2")
    outside = tmp_path / "secret"
    outside.write_text("outside the run")
    directory = fs.run_dir / "step_2"
    (directory / "link").symlink_to(outside)
    (directory / "sub").mkdir()
    (directory / "sub" / "dirlink").symlink_to(tmp_path)
    os.mkfifo(directory / "fifo")
    walked = list_directory(fs, "step_2")
    assert walked.irregular == ("fifo", "link", "sub/dirlink")
    assert "secret" not in str(walked.listing.files)
    hashes = hash_files(fs, "step_2", walked.listing)
    assert set(hashes) == {".metadata", "__0_0.distcp"}


def test_the_directory_itself_as_a_link_is_refused(tmp_path: Path) -> None:
    fs = _run(tmp_path, "dcp/step_2")
    (fs.run_dir / "step_9").symlink_to(fs.run_dir / "step_2")
    with pytest.raises(UnsafePathError):
        list_directory(fs, "step_9")
    with pytest.raises(FileNotFoundError):
        list_directory(fs, "step_404")


def test_hashes_and_a_change_while_hashing(tmp_path: Path) -> None:
    fs = _run(tmp_path, "hf/checkpoint-2")
    listing = list_directory(fs, "checkpoint-2").listing
    hashes = hash_files(fs, "checkpoint-2", listing)
    for name, digest in hashes.items():
        raw = (fs.run_dir / "checkpoint-2" / name).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == digest
    with (fs.run_dir / "checkpoint-2" / "optimizer.pt").open("ab") as handle:
        handle.write(b"more")
    with pytest.raises(FileChangedError, match=r"optimizer\.pt"):
        hash_files(fs, "checkpoint-2", listing)
