"""A conversion whose own output fails verification is not redone on every pass: it is recorded
with when to try again (doubling each time), and tried at once when the file changes."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ckptd.config.load import parse_config
from ckptd.config.model import Config
from ckptd.convert.conversion import ConversionOutcome
from ckptd.errors import VerifyError
from ckptd.fs.files import FileIdentity
from ckptd.manifest.store import load_manifest
from ckptd.pipeline.batch import process_path
from ckptd.pipeline.discovery import find_work, needs_processing, run_of
from ckptd.pipeline.types import PipelineDeps
from tests.sb2_fixtures import make_ppo2_checkpoint

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("sb2_stand_ins")]

START = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class FailingVerify:
    """A converter whose output never verifies (as a converter bug would), counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, source: Path, **_: Any) -> ConversionOutcome:
        self.calls += 1
        raise VerifyError("data: not JSON (re-read of the written zip)", path=str(source))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    (tmp_path / "runs" / "ppo-1").mkdir(parents=True)
    return parse_config(
        {
            "roots": [{"path": str(tmp_path / "runs"), "run_depth": 1, "observer": "polling"}],
            "checkpoints": {"stable_for": "0s"},
        }
    )


def pending_names(config: Config, now: datetime) -> list[str]:
    root = config.roots[0]
    run = run_of(root, root.path / "ppo-1" / "x.pkl", config.state_dir)
    assert run is not None
    return [found.path.name for found in find_work(config, run[0], now=now.timestamp())]


def test_output_failing_verify_is_retried_with_backoff_not_every_pass(config: Config) -> None:
    source = make_ppo2_checkpoint(config.roots[0].path / "ppo-1" / "rl_model_4_steps.pkl")
    clock, convert = Clock(), FailingVerify()
    deps = PipelineDeps(convert=convert, clock=clock)

    outcome = process_path(config, config.roots[0], source, deps=deps)

    assert outcome.action == "failed" and "not JSON" in outcome.message
    entry = load_manifest(source.parent / "ckptd-manifest.json").by_path()[source.name]
    assert entry.state == "kept" and entry.error is not None and "not JSON" in entry.error
    assert entry.extra["attempts"] == 1
    first_wait = datetime.fromisoformat(entry.extra["retry_after"]) - START
    assert first_wait >= timedelta(minutes=30)
    identity = FileIdentity.of(os.lstat(source))
    assert not needs_processing(entry, identity, config, now=START + timedelta(seconds=1))

    # The next passes (a rescan, another batch) leave it alone while it backs off.
    clock.now = START + first_wait / 2
    assert pending_names(config, clock.now) == []
    assert process_path(config, config.roots[0], source, deps=deps).action == "unchanged"
    assert convert.calls == 1

    # Its time is up: tried once more, and the wait doubles.
    clock.now = START + first_wait + timedelta(seconds=1)
    assert pending_names(config, clock.now) == [source.name]
    assert process_path(config, config.roots[0], source, deps=deps).action == "failed"
    assert convert.calls == 2
    entry = load_manifest(source.parent / "ckptd-manifest.json").by_path()[source.name]
    assert entry.extra["attempts"] == 2
    second_wait = datetime.fromisoformat(entry.extra["retry_after"]) - clock.now
    assert second_wait == 2 * first_wait

    # A file that changed is looked at again at once, backoff or not.
    os.utime(source, ns=(entry.mtime_ns + 1_000_000_000, entry.mtime_ns + 1_000_000_000))
    assert pending_names(config, clock.now) == [source.name]
    assert process_path(config, config.roots[0], source, deps=deps).action == "failed"
    assert convert.calls == 3
    entry = load_manifest(source.parent / "ckptd-manifest.json").by_path()[source.name]
    assert entry.extra["attempts"] == 1  # a new file: the count starts over

    # A working converter converts it once the backoff has run out.
    clock.now = datetime.fromisoformat(entry.extra["retry_after"]) + timedelta(seconds=1)
    working = PipelineDeps(clock=clock)
    assert process_path(config, config.roots[0], source, deps=working).action == "converted"


def test_other_conversion_failures_are_retried_on_the_next_pass(config: Config) -> None:
    """A full disk or a planted link passes: those are retried by the next reconciliation."""
    source = make_ppo2_checkpoint(config.roots[0].path / "ppo-1" / "rl_model_8_steps.pkl")

    def full_disk(source: Path, **_: Any) -> ConversionOutcome:
        raise OSError(28, "No space left on device")

    deps = PipelineDeps(convert=full_disk, clock=Clock())
    assert process_path(config, config.roots[0], source, deps=deps).action == "failed"
    assert pending_names(config, START + timedelta(seconds=1)) == [source.name]
