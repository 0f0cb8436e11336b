"""A directory checkpoint's manifest entry: its files, their verdicts and the directory digest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ckptd.errors import ManifestError
from ckptd.formats import Format
from ckptd.manifest.model import (
    FileRecord,
    Manifest,
    ManifestEntry,
    RemovedEntry,
    directory_digest,
)
from ckptd.manifest.parse import manifest_from_json
from ckptd.pickles.verdict import Verdict

HERE = Path(__file__).resolve().parent
HF = HERE / "data" / "trainers" / "hf" / "checkpoint-2"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
UNSAFE = Verdict(False, ("transformers.training_args.TrainingArguments",), "not allowed")


def directory_entry(**changes: object) -> ManifestEntry:
    base = ManifestEntry(
        path="checkpoint-500/",
        step=500,
        size=30,
        mtime=datetime(2026, 12, 7, 11, 0, tzinfo=UTC),
        sha256="cd" * 32,
        format=Format.HF_TRAINER,
        state="kept",
        mtime_ns=1_796_641_200_000_000_000,
        files=(
            FileRecord("model.safetensors", 10, "aa" * 32),
            FileRecord("training_args.bin", 20, "bb" * 32, UNSAFE),
        ),
        signature="ef" * 32,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def manifest(*entries: ManifestEntry, removed: tuple[RemovedEntry, ...] = ()) -> Manifest:
    return Manifest(run="hf", generated_at=NOW, policy="p", checkpoints=entries, removed=removed)


def test_directory_entry_round_trips_with_files_verdicts_and_unknown_keys() -> None:
    entry = directory_entry()
    removed = RemovedEntry("checkpoint-400/", "12" * 32, NOW, ("no rule keeps it",), None, size=9)
    original = manifest(entry, removed=(removed,))
    obj = json.loads(original.to_json_bytes())
    written = obj["checkpoints"][0]
    assert written["path"] == "checkpoint-500/"
    assert written["files"][1] == {
        "path": "training_args.bin",
        "size": 20,
        "sha256": "bb" * 32,
        "verdict": {"safe": False, "globals": list(UNSAFE.globals), "reason": "not allowed"},
    }
    assert "verdict" not in written["files"][0]
    assert manifest_from_json(original.to_json_bytes(), source="m") == original
    # Keys a newer ckptd adds, on the entry and on a file, survive a rewrite.
    written["layout_version"] = 3
    written["files"][0]["dtype_summary"] = {"f32": 2}
    parsed = manifest_from_json(json.dumps(obj), source="m")
    assert parsed.checkpoints[0].extra == {"layout_version": 3}
    rewritten = json.loads(parsed.to_json_bytes())["checkpoints"][0]
    assert rewritten["layout_version"] == 3
    assert rewritten["files"][0]["dtype_summary"] == {"f32": 2}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"path": "checkpoint-500/", "format": "torch-zip"}, "goes with a directory format"),
        ({"path": "checkpoint-500", "format": "hf-trainer"}, "goes with a directory format"),
        ({"path": "a//"}, "empty component"),
        ({"path": "../x/"}, "'..' component"),
        ({"files": [{"path": "../../etc/passwd", "size": 1, "sha256": None}]}, "'..' component"),
        ({"files": {"model": 1}}, "must be a list"),
        ({"files": [{"path": "a", "size": -1 + 0.5, "sha256": None}]}, "size"),
    ],
)
def test_bad_directory_entries_are_refused_naming_the_field(
    change: dict[str, object], problem: str
) -> None:
    obj = json.loads(manifest(directory_entry()).to_json_bytes())
    obj["checkpoints"][0].update(change)
    with pytest.raises(ManifestError, match=problem):
        manifest_from_json(json.dumps(obj), source="/runs/hf/ckptd-manifest.json")


def test_directory_digest_is_the_digest_of_sha256sum_output(tmp_path: Path) -> None:
    """The documented definition, checked against coreutils' own sha256sum."""
    directory = tmp_path / "checkpoint-2"
    shutil.copytree(HF, directory)
    (directory / "sub").mkdir()
    (directory / "sub" / "B").write_bytes(b"upper case sorts first in byte order")
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    listing = subprocess.run(
        ["sha256sum", "--", *files],
        cwd=directory,
        capture_output=True,
        check=True,
        env={**os.environ, "LC_ALL": "C"},
    ).stdout
    pairs = [(path, hashlib.sha256((directory / path).read_bytes()).hexdigest()) for path in files]
    assert directory_digest(reversed(pairs)) == hashlib.sha256(listing).hexdigest()
