"""A Lightning run under config/examples/lightning.yaml: kept, pruned, restored and scrubbed.

The checkpoints are the ones Lightning's own ModelCheckpoint wrote (tests/data/trainers), a
hostile torch file sits beside them, and every step goes through the real CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import yaml

from tests.hostile_helpers import ckptd

HERE = Path(__file__).resolve().parent
LIGHTNING = HERE / "data" / "trainers" / "lightning"
MALICIOUS = HERE / "data" / "verdicts" / "malicious" / "os_system.pt"
EXAMPLE = HERE.parent / "config" / "examples" / "lightning.yaml"
DAY = 86_400


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    """The example config pointed at a root in tmp_path, and one run of Lightning checkpoints
    (a day apart, old enough for min_age; more steps made by copying the real files)."""
    root = tmp_path / "lightning-runs"
    run = root / "tiny-gpt"
    run.mkdir(parents=True)
    sources = sorted(LIGHTNING.glob("epoch=*.ckpt"))
    names = [f"epoch={step // 2}-step={step}.ckpt" for step in (2, 4, 6, 10000, 10002, 10004)]
    start = 1_700_000_000
    for index, name in enumerate(names):
        shutil.copyfile(sources[index % len(sources)], run / name)
        os.utime(run / name, (start + index * DAY, start + index * DAY))
    shutil.copyfile(LIGHTNING / "last.ckpt", run / "last.ckpt")
    os.utime(run / "last.ckpt", (start, start))
    shutil.copyfile(MALICIOUS, run / "epoch=9-step=99.ckpt")
    os.utime(run / "epoch=9-step=99.ckpt", (start + 10 * DAY, start + 10 * DAY))
    config = yaml.safe_load(EXAMPLE.read_text())
    config["roots"][0]["path"] = str(root)
    path = tmp_path / "ckptd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, run


def _decisions(config: Path, *extra: str) -> dict[str, tuple[str, list[str]]]:
    done = ckptd("prune", "-c", config, "--json", *extra)
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["runs"]
    return {row["path"]: (row["action"], row["reasons"]) for row in run["decisions"]}


def test_kept_pruned_restored_and_scrubbed(tmp_path: Path) -> None:
    config, run = _setup(tmp_path)
    before = sorted(path.name for path in run.iterdir())
    planned = _decisions(config, "--dry-run")
    assert sorted(path.name for path in run.iterdir()) == before  # a dry run changes nothing
    deleted = sorted(path for path, (action, _) in planned.items() if action == "delete")
    assert deleted == ["epoch=2-step=4.ckpt", "epoch=3-step=6.ckpt"]
    assert planned["epoch=1-step=2.ckpt"][1] == ["keep_every_steps #1"]
    assert planned["epoch=5000-step=10000.ckpt"][1] == ["keep_last #3", "keep_every_steps #2"]
    assert "protect: last.ckpt" in planned["last.ckpt"][1]
    assert planned["epoch=9-step=99.ckpt"][0] == "skip"  # refused: never counted, never touched
    assert _decisions(config) == planned
    trash = run / ".ckptd" / "trash"
    assert sorted(path.name for path in trash.iterdir() if path.suffix == ".ckpt") == deleted
    assert (run / "epoch=9-step=99.ckpt").exists()

    restored = ckptd("trash", "restore", trash / "epoch=2-step=4.ckpt", "-c", config)
    assert restored.returncode == 0, restored.stderr
    assert (run / "epoch=2-step=4.ckpt").read_bytes() == (
        LIGHTNING / "epoch=0-step=4.ckpt"
    ).read_bytes()
    again = _decisions(config, "--dry-run")
    assert again["epoch=2-step=4.ckpt"][0] == "keep"
    assert any(reason.startswith("pinned") for reason in again["epoch=2-step=4.ckpt"][1])

    manifest = json.loads((run / "ckptd-manifest.json").read_text())
    formats = {
        entry["path"]: (entry["format"], entry["state"]) for entry in manifest["checkpoints"]
    }
    assert formats["last.ckpt"] == ("torch-zip", "kept")
    assert formats["epoch=9-step=99.ckpt"] == ("torch-zip", "refused")
    scrubbed = ckptd("scrub", "-c", config)
    assert scrubbed.returncode == 0, scrubbed.stdout + scrubbed.stderr


def test_scrub_finds_a_storage_cut_short(tmp_path: Path) -> None:
    """A .ckpt whose zip is sound (CRCs match) but one storage holds less than data.pkl declares,
    as it was when first seen: its hash is recorded as is, so only the storage check finds it."""
    config, run = _setup(tmp_path)
    victim = run / "epoch=5001-step=10002.ckpt"
    stamp = victim.stat().st_mtime_ns
    cut = tmp_path / "cut.ckpt"
    with zipfile.ZipFile(victim) as old, zipfile.ZipFile(cut, "w") as new:
        for info in old.infolist():
            data = old.read(info.filename)
            new.writestr(info.filename, data[:-4] if info.filename.endswith("/data/0") else data)
    shutil.copyfile(cut, victim)
    os.utime(victim, ns=(stamp, stamp))
    _decisions(config)
    scrubbed = ckptd("scrub", "-c", config)
    assert scrubbed.returncode == 1, scrubbed.stdout
    output = scrubbed.stdout + scrubbed.stderr
    assert "epoch=5001-step=10002.ckpt" in output and "data.pkl declares" in output
