"""Shared setup for the operator-command tests: real runs made by the real pipeline and prune."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from ckptd.config.load import parse_config
from ckptd.config.model import Config
from ckptd.manifest.model import Manifest
from ckptd.manifest.store import load_manifest
from ckptd.pipeline.batch import process_path
from ckptd.retention.prune import prune_all
from ckptd.retention.report import PruneReport, RunReport
from tests.sb2_fixtures import make_ppo2_checkpoint, stand_ins

MANIFEST = "ckptd-manifest.json"


def ops_document(root: Path, **sections: Any) -> dict[str, Any]:
    """A config document over ``root`` (run_depth 1) that keeps one checkpoint and deletes to the
    trash; ``sections`` replace whole sections."""
    document: dict[str, Any] = {
        "roots": [{"path": str(root), "run_depth": 1, "observer": "polling"}],
        "checkpoints": {"stable_for": "0s"},
        "policies": {"default": {"keep_last": 1, "min_age": "0s"}},
        "delete": {"mode": "trash", "max_fraction": 1.0},
    }
    document.update(sections)
    return document


def ops_config(root: Path, **sections: Any) -> Config:
    """``ops_document`` parsed, for the library calls."""
    return parse_config(ops_document(root, **sections))


def write_ops_config(directory: Path, root: Path, **sections: Any) -> Path:
    """``ops_document`` written to ``directory/ckptd.yaml``, for the CLI; ``root`` is created (a
    missing root is a config error)."""
    root.mkdir(parents=True, exist_ok=True)
    path = directory / "ckptd.yaml"
    path.write_text(yaml.safe_dump(ops_document(root, **sections)))
    return path


def converted_run(
    config: Config, name: str = "ppo-1", steps: Sequence[int] = (1000, 2000, 3000)
) -> Path:
    """A run whose legacy checkpoints the daemon's pipeline converted (zips + archived originals,
    all recorded in the manifest); retention orders them by step."""
    root = config.roots[0]
    run = root.path / name
    run.mkdir(parents=True, exist_ok=True)
    with stand_ins():
        for step in steps:
            source = make_ppo2_checkpoint(run / f"rl_model_{step}_steps.pkl")
            outcome = process_path(config, root, source)
            assert outcome.action == "converted", outcome.message
    return run


def prune_now(config: Config) -> PruneReport:
    return prune_all(config, now=datetime.now(UTC), dry_run=False)


def run_report(report: PruneReport, run: str) -> RunReport:
    return next(item for item in report.runs if item.run == run)


def decisions(report: RunReport) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {d.path: (d.action, d.reasons) for d in report.decisions}


def manifest_of(run: Path) -> Manifest:
    return load_manifest(run / MANIFEST)


def flip_byte(path: Path, offset: int) -> None:
    """Change one byte in place and put the mtime back, as bit rot would (no write is visible)."""
    st = path.stat()
    mode = st.st_mode
    os.chmod(path, 0o600)
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.chmod(path, mode & 0o7777)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
