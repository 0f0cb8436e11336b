"""scrub on real converted runs: bit rot, truncation, replacement, healing, races, pacing."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ckptd.config.model import Config
from ckptd.errors import CoordinationError
from ckptd.formats import Format
from ckptd.manifest.model import ManifestEntry
from ckptd.manifest.store import write_manifest
from ckptd.manifest.updates import set_entry
from ckptd.ops.ratelimit import RateLimiter
from ckptd.ops.scrub import scheduled_scrub, scrub_all
from ckptd.runs.statedir import StateLayout, run_lock
from ckptd.timefmt import from_ns
from tests.helpers import sha256_file
from tests.ops_helpers import (
    converted_run,
    decisions,
    flip_byte,
    manifest_of,
    ops_config,
    prune_now,
    run_report,
)

pytestmark = pytest.mark.timeout(60)

OLD = "rl_model_1000_steps.zip"
OLD_PKL = ".ckptd/legacy/rl_model_1000_steps.pkl"
UNLIMITED = RateLimiter(None)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return ops_config(tmp_path / "runs", policies={"default": {"keep_last": 3}})


@pytest.fixture
def run(config: Config) -> Path:
    return converted_run(config)


def now() -> datetime:
    return datetime.now(UTC)


# ---- the token bucket ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_paces_to_the_rate_after_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1000, burst=500, clock=clock, sleep=clock.sleep)

    limiter.acquire(500)  # the full bucket: no wait
    limiter.acquire(1000)  # one second of debt
    limiter.acquire(250)
    clock.now += 10  # idle time refills at most `burst`
    limiter.acquire(500)
    limiter.acquire(100)

    assert clock.slept == [pytest.approx(1.0), pytest.approx(0.25), pytest.approx(0.1)]


def test_unlimited_limiter_never_waits_and_bad_rates_are_refused() -> None:
    assert RateLimiter(None).acquire(10**12) == 0.0
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0)


def test_scrub_rate_limit_holds_within_20_percent(config: Config) -> None:
    run = config.roots[0].path / "big"
    run.mkdir(parents=True)
    entries = []
    for index in range(2):  # 20 MiB of checkpoints ckptd knows by hash only
        path = run / f"blob_{index}_steps.zip"
        path.write_bytes(os.urandom(10 * 1024 * 1024))
        st = path.stat()
        entries.append(
            ManifestEntry(
                path.name,
                index,
                st.st_size,
                from_ns(st.st_mtime_ns),
                sha256_file(path),
                Format.UNKNOWN,
                "kept",
                mtime_ns=st.st_mtime_ns,
            )
        )
    from ckptd.manifest.model import Manifest

    write_manifest(run / "ckptd-manifest.json", Manifest("big", now(), "default", tuple(entries)))

    started = time.monotonic()
    report = scrub_all(config, "big", now(), RateLimiter(10 * 1024 * 1024))
    elapsed = time.monotonic() - started

    assert report.ok and report.bytes == 20 * 1024 * 1024
    assert 1.6 <= elapsed <= 2.4, elapsed


# ---- findings -----------------------------------------------------------------------------------


def test_clean_run_verifies_and_records_last_verified(config: Config, run: Path) -> None:
    report = scrub_all(config, None, now(), UNLIMITED)

    assert report.ok and report.corrupt_count == 0
    (result,) = report.runs
    assert result.checked == 6 and result.manifest_written  # 3 zips + 3 archived originals
    manifest = manifest_of(run)
    assert all("last_verified" in e.extra for e in manifest.checkpoints)
    assert manifest.extra["last_scrub"]["checked"] == 6
    assert manifest.extra["last_scrub"]["corrupt"] == 0


def test_flipped_byte_in_a_checkpoint_is_found_recorded_and_left_alone(
    config: Config, run: Path
) -> None:
    scrub_all(config, None, now(), UNLIMITED)
    size = (run / OLD).stat().st_size
    flip_byte(run / OLD, size // 2)
    damaged = (run / OLD).read_bytes()
    st = (run / OLD).stat()

    report = scrub_all(config, None, now(), UNLIMITED)

    assert not report.ok and report.corrupt_count == 1
    (finding,) = report.runs[0].corrupt
    assert finding.path == OLD and finding.role == "checkpoint"
    assert finding.problems[0].startswith("sha256 mismatch: recorded ")
    assert finding.actual_sha256 == sha256_file(run / OLD) != finding.expected_sha256
    entry = manifest_of(run).by_path()[OLD]
    assert entry.state == "broken" and entry.error and entry.error.startswith("scrub: sha256")
    assert entry.extra["corrupt"]["state_before"] == "kept"
    assert "last_verified" in entry.extra  # when it was last known good
    # never deleted or rewritten
    assert (run / OLD).read_bytes() == damaged and (run / OLD).stat().st_mtime_ns == st.st_mtime_ns
    # and retention keeps its hands off it
    pruning = ops_config(config.roots[0].path)  # keep_last 1
    decision = decisions(run_report(prune_now(pruning), "ppo-1"))[OLD]
    assert decision[0] == "skip" and (run / OLD).exists()


def test_flipped_byte_in_an_archived_original_is_found(config: Config, run: Path) -> None:
    flip_byte(run / OLD_PKL, 200)

    report = scrub_all(config, None, now(), UNLIMITED)

    (finding,) = report.runs[0].corrupt
    assert finding.path == OLD_PKL and finding.role == "archived original"
    assert any(p.startswith("sha256 mismatch") for p in finding.problems)
    entry = manifest_of(run).by_path()[OLD_PKL]
    assert entry.state == "converted" and "corrupt" in entry.extra


def test_truncation_and_structure_are_reported(config: Config, run: Path) -> None:
    path = run / "rl_model_2000_steps.zip"
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 100)

    (finding,) = scrub_all(config, None, now(), UNLIMITED).runs[0].corrupt

    assert any("(truncated?)" in p for p in finding.problems)
    assert any(p.startswith("structure: ") for p in finding.problems)


def test_replaced_and_missing_files_are_findings(config: Config, run: Path) -> None:
    (run / OLD).unlink()
    (run / OLD).symlink_to(run / "rl_model_3000_steps.zip")
    (run / "rl_model_2000_steps.zip").unlink()

    corrupt = {f.path: f for f in scrub_all(config, None, now(), UNLIMITED).runs[0].corrupt}

    assert "symlink" in corrupt[OLD].problems[0]
    assert corrupt["rl_model_2000_steps.zip"].problems[0].startswith("missing")


def test_a_repaired_file_is_healed(config: Config, run: Path) -> None:
    flip_byte(run / OLD, 1000)
    scrub_all(config, None, now(), UNLIMITED)
    flip_byte(run / OLD, 1000)  # flipped back: the bytes are the recorded ones again

    report = scrub_all(config, None, now(), UNLIMITED)

    assert report.ok and report.runs[0].healed == (OLD,)
    entry = manifest_of(run).by_path()[OLD]
    assert entry.state == "kept" and entry.error is None and "corrupt" not in entry.extra


def test_a_file_ckptd_changes_during_the_scrub_is_not_blamed(config: Config, run: Path) -> None:
    """The daemon re-records a file while it is being hashed: that result is dropped."""

    class Rerecord:
        def start(self, total_bytes: int, files: int) -> None:
            pass

        def advance(self, nbytes: int) -> None:
            pass

        def current(self, label: str) -> None:
            if label.endswith(OLD):
                (run / OLD).write_bytes(b"replaced by a newer checkpoint")
                with run_lock(StateLayout(run), timeout=5):
                    manifest = manifest_of(run)
                    st = (run / OLD).stat()
                    entry = dataclasses.replace(
                        manifest.by_path()[OLD],
                        size=st.st_size,
                        mtime_ns=st.st_mtime_ns,
                        sha256=sha256_file(run / OLD),
                        format=Format.UNKNOWN,
                    )
                    write_manifest(run / "ckptd-manifest.json", set_entry(manifest, entry))

    report = scrub_all(config, None, now(), UNLIMITED, progress=Rerecord())

    assert report.ok and report.runs[0].superseded == (OLD,)
    assert "corrupt" not in manifest_of(run).by_path()[OLD].extra


def test_stop_interrupts_and_keeps_what_was_checked(config: Config, run: Path) -> None:
    converted_run(config, "ppo-2")
    labels: list[str] = []

    class Count:
        def start(self, total_bytes: int, files: int) -> None:
            pass

        def advance(self, nbytes: int) -> None:
            pass

        def current(self, label: str) -> None:
            labels.append(label)

    # Asked to stop as soon as the third file is started (the daemon got SIGTERM).
    report = scrub_all(
        config, None, now(), UNLIMITED, progress=Count(), stop=lambda: len(labels) >= 3
    )

    assert report.interrupted and [r.run for r in report.runs] == ["ppo-1"]
    assert report.runs[0].checked == 2
    verified = [e.path for e in manifest_of(run).checkpoints if "last_verified" in e.extra]
    assert len(verified) == 2


def test_run_glob_selects_runs(config: Config, run: Path) -> None:
    converted_run(config, "sac-1", steps=(1000,))
    report = scrub_all(config, "sac-*", now(), UNLIMITED)
    assert [r.run for r in report.runs] == ["sac-1"]


def test_unreadable_manifest_is_an_error_not_a_crash(config: Config, run: Path) -> None:
    (run / "ckptd-manifest.json").write_text("{nope")
    report = scrub_all(config, None, now(), UNLIMITED)
    assert not report.ok and "not valid JSON" in (report.runs[0].error or "")


def test_scheduled_scrub_sets_the_corrupt_gauge(config: Config, run: Path) -> None:
    flip_byte(run / OLD, 500)
    gauge: list[int] = []
    report = scheduled_scrub(config, now=now(), set_corrupt_gauge=gauge.append)
    assert gauge == [1] and report.corrupt_count == 1


def test_cli_scrub_says_each_finding_once_and_counts_in_words(
    config: Config, run: Path, tmp_path: Path
) -> None:
    config_file = tmp_path / "ckptd.yaml"
    root = config.roots[0].path
    config_file.write_text(
        f"version: 1\nroots: [{{path: {root}}}]\npolicies: {{default: {{keep_last: 3}}}}\n"
    )
    scrub_all(config, None, now(), UNLIMITED)
    flip_byte(run / OLD, (run / OLD).stat().st_size // 2)
    result = subprocess.run(
        [sys.executable, "-m", "ckptd", "scrub", "-c", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    both = result.stdout + result.stderr
    assert both.count("sha256 mismatch") == 1, both
    assert both.count("Bad CRC-32") <= 1, both
    assert "in 1 run," in result.stdout and ": 1 mismatch\n" in result.stdout


def test_the_daemon_scrub_logs_each_finding_once(
    config: Config, run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scrub_all(config, None, now(), UNLIMITED)
    flip_byte(run / OLD, (run / OLD).stat().st_size // 2)
    with caplog.at_level(logging.INFO, logger="ckptd"):
        report = scheduled_scrub(config, now=now())
    assert report.corrupt_count == 1
    lines = [record.getMessage() for record in caplog.records]
    assert sum("sha256 mismatch" in line for line in lines) == 1, lines
    assert any(line.startswith("scrub: 1 run, ") for line in lines), lines


def test_a_scrub_whose_fence_fails_records_nothing(config: Config, run: Path) -> None:
    """A cluster node that lost the root's duties (paused past its lease) between its reads and
    the write: the fence, checked under the run lock right before the write, stops the write."""
    flip_byte(run / OLD, 500)
    before = (run / "ckptd-manifest.json").read_bytes()
    fenced: list[Path] = []

    def lost(root: Path) -> None:
        fenced.append(root)
        raise CoordinationError("the duties of this root are with n2 now")

    report = scheduled_scrub(config, now=now(), fence=lost)

    assert fenced == [config.roots[0].path]
    (result,) = report.runs
    assert result.error is not None and "with n2 now" in result.error
    assert [finding.path for finding in result.corrupt] == [OLD]  # found, just not recorded
    assert (run / "ckptd-manifest.json").read_bytes() == before
    assert scheduled_scrub(config, now=now(), fence=fenced.append).corrupt_count == 1
    assert manifest_of(run).by_path()[OLD].state == "broken"
