"""Runs made of the real trainers' checkpoints (tests/data/trainers), copied into tmp_path, and a
config that treats their directories as checkpoints."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from ckptd.config.load import parse_config
from ckptd.config.model import Config

TRAINERS = Path(__file__).resolve().parent / "data" / "trainers"
ORDER = json.loads((TRAINERS / "order.json").read_text())
DIRECTORIES = ["checkpoint-*", "global_step*"]
PATTERNS = ["*.zip", "*.pkl", "*.pt", "*.pth", "*.bin", "*.ckpt", "*.safetensors"]
STEP_PATTERN = r"(?:_|-|global_step|step=)(\d+)"
START = 1_700_000_000
DAY = 86_400


def trainer_document(root: Path, **sections: Any) -> dict[str, Any]:
    """A config over ``root`` (each subdirectory one run) with directory checkpoints, keeping the
    newest checkpoint, deleting to the trash with no guard; ``sections`` replace whole sections."""
    document: dict[str, Any] = {
        "roots": [{"path": str(root), "run_depth": 1, "observer": "polling"}],
        "checkpoints": {
            "patterns": PATTERNS,
            "directories": DIRECTORIES,
            "step_pattern": STEP_PATTERN,
            "stable_for": "5s",
        },
        "policies": {"default": {"keep_last": 1, "min_age": "0s"}},
        "delete": {"mode": "trash", "max_fraction": 1.0},
    }
    document.update(sections)
    return document


def trainer_config(root: Path, **sections: Any) -> Config:
    return parse_config(trainer_document(root, **sections))


def write_trainer_config(directory: Path, root: Path, **sections: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = directory / "ckptd.yaml"
    path.write_text(yaml.safe_dump(trainer_document(root, **sections)))
    return path


def age_tree(top: Path, when: float) -> None:
    """Set the mtime of ``top`` and everything below it (no link followed) to ``when``."""
    for current, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            os.utime(Path(current) / name, (when, when), follow_symlinks=False)
    os.utime(top, (when, when))


def copy_trainer_run(trainer: str, run: Path) -> Path:
    """The trainer's fixture directory copied to ``run``, its checkpoints a day apart by step
    (old enough to be complete), the run directory itself last."""
    shutil.copytree(TRAINERS / trainer, run, symlinks=True)
    entries = sorted(run.iterdir(), key=lambda path: (_step(path.name), path.name))
    for index, entry in enumerate(entries):
        when = START + index * DAY
        if entry.is_dir():
            age_tree(entry, when)
        else:
            os.utime(entry, (when, when))
    os.utime(run, (START + len(entries) * DAY,) * 2)
    return run


def _step(name: str) -> int:
    digits = "".join(ch if ch.isdigit() else " " for ch in name).split()
    return int(digits[-1]) if digits else 0
