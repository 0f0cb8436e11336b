"""A batch examines ahead only the files it will identify: a file whose manifest entry is current
(a rescan's or a repeated event's, recorded meanwhile) is not sent to the parser again."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from ckptd.config.load import parse_config
from ckptd.config.model import Config
from ckptd.pipeline.batch import process_batch
from ckptd.pipeline.discovery import run_of
from ckptd.pipeline.types import PipelineDeps
from tests.sb2zip_helpers import make_sb3_zip

pytestmark = pytest.mark.timeout(60)


def one_run(tmp_path: Path) -> tuple[Path, Config]:
    """A root with one run directory, ``ppo-1``, and a config that takes files at once."""
    run_dir = tmp_path / "runs" / "ppo-1"
    run_dir.mkdir(parents=True)
    config = parse_config(
        {
            "roots": [{"path": str(tmp_path / "runs"), "run_depth": 1, "observer": "polling"}],
            "checkpoints": {"stable_for": "0s"},
        }
    )
    return run_dir, config


def test_only_files_whose_entry_is_not_current_are_examined_ahead(tmp_path: Path) -> None:
    run_dir, config = one_run(tmp_path)
    root = config.roots[0]
    recorded, changed, new = run_dir / "a.zip", run_dir / "b.zip", run_dir / "c.zip"
    make_sb3_zip(recorded)
    make_sb3_zip(changed)
    located = run_of(root, recorded, config.state_dir)
    assert located is not None
    run = located[0]
    first = process_batch(config, root, run, [recorded, changed])
    assert [outcome.action for outcome in first.outcomes] == ["kept", "kept"]

    make_sb3_zip(new)
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    ahead: list[list[Path]] = []

    def examine_ahead(paths: Sequence[Path]) -> None:
        ahead.append(list(paths))

    deps = PipelineDeps(examine_ahead=examine_ahead)
    paths = [recorded, changed, new, run_dir / "absent.zip", run_dir / "notes.txt"]
    result = process_batch(config, root, run, paths, deps=deps)

    assert ahead == [[changed, new]]
    actions = [outcome.action for outcome in result.outcomes]
    assert actions == ["unchanged", "kept", "kept", "vanished", "ignored"]


def test_a_path_queued_again_after_its_conversion_is_not_reported_as_vanished(
    tmp_path: Path, legacy_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A repeated event or a cluster node's hint can queue a legacy file again after the batch
    that converted (and archived) it: the later batch finds nothing to do and says nothing."""
    run_dir, config = one_run(tmp_path)
    root = config.roots[0]
    legacy = run_dir / "rl_model_100_steps.pkl"
    legacy.write_bytes(legacy_bytes)
    located = run_of(root, legacy, config.state_dir)
    assert located is not None
    first = process_batch(config, root, located[0], [legacy])
    assert [outcome.action for outcome in first.outcomes] == ["converted"]
    assert not legacy.exists()
    caplog.clear()
    with caplog.at_level("INFO", logger="ckptd"):
        again = process_batch(config, root, located[0], [legacy])
    assert [outcome.action for outcome in again.outcomes] == ["vanished"]
    assert not [r for r in caplog.records if "vanished" in r.getMessage()], caplog.text
    assert (run_dir / "rl_model_100_steps.zip").is_file()
