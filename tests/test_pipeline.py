"""The per-file pipeline on real files: convert, quarantine, broken, verify, unreadable, disk full."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from ckptd.config.load import parse_config
from ckptd.config.model import Config
from ckptd.convert.conversion import ConversionOutcome, convert_file
from ckptd.formats import Format
from ckptd.formats.sniff import Identification, identify
from ckptd.formats.verify import verify_zip
from ckptd.fs import files as fsio
from ckptd.fs.files import FileIdentity
from ckptd.manifest.model import Manifest
from ckptd.manifest.store import load_manifest
from ckptd.pipeline.batch import process_batch, process_path
from ckptd.pipeline.discovery import find_work, needs_processing, run_of
from ckptd.pipeline.types import PipelineDeps
from tests.sb2_fixtures import (
    Exploit,
    make_ppo2_checkpoint,
    ppo2_data,
    ppo2_params,
    write_checkpoint,
)
from tests.sb2zip_helpers import make_sb3_zip

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("sb2_stand_ins")]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    (tmp_path / "runs" / "ppo-1").mkdir(parents=True)
    return tmp_path / "runs"


def make_config(runs: Path, **convert: Any) -> Config:
    return parse_config(
        {
            "roots": [{"path": str(runs), "run_depth": 1, "observer": "polling"}],
            "checkpoints": {"stable_for": "0s"},
            "convert": convert,
        }
    )


@pytest.fixture
def config(runs: Path) -> Config:
    return make_config(runs)


def manifest_of(run_dir: Path) -> Manifest:
    return load_manifest(run_dir / "ckptd-manifest.json")


def legacy(path: Path) -> Path:
    return make_ppo2_checkpoint(path)


def test_legacy_pickle_is_converted_archived_and_recorded(config: Config, runs: Path) -> None:
    run = runs / "ppo-1"
    source = legacy(run / "rl_model_5000_steps.pkl")
    source_bytes = source.read_bytes()

    outcome = process_path(config, config.roots[0], source)

    assert outcome.action == "converted", outcome.message
    zip_path = run / "rl_model_5000_steps.zip"
    archived = run / ".ckptd" / "legacy" / "rl_model_5000_steps.pkl"
    assert not source.exists()
    assert archived.read_bytes() == source_bytes
    assert verify_zip(zip_path).ok
    entries = manifest_of(run).by_path()
    assert set(entries) == {"rl_model_5000_steps.zip", ".ckptd/legacy/rl_model_5000_steps.pkl"}
    zip_entry = entries["rl_model_5000_steps.zip"]
    assert (zip_entry.state, zip_entry.format, zip_entry.step) == ("kept", Format.SB2_ZIP, 5000)
    assert zip_entry.converted_from == "rl_model_5000_steps.pkl"
    assert zip_entry.algorithm == "PPO2"
    assert zip_entry.params is not None and zip_entry.params.count == len(ppo2_params())
    assert zip_entry.params.bytes == sum(a.nbytes for a in ppo2_params().values())
    assert zip_entry.carries_code == ("learning_rate", "cliprange")
    assert zip_entry.sha256 == fsio.sha256_file(zip_path)[0]
    assert zip_entry.size == zip_path.stat().st_size
    original = entries[".ckptd/legacy/rl_model_5000_steps.pkl"]
    assert (original.state, original.format) == ("converted", Format.SB2_PICKLE)
    assert original.sha256 == fsio.sha256_file(archived)[0]

    # The zip's own close/rename event brings it back: already recorded, nothing to do.
    assert process_path(config, config.roots[0], zip_path).action == "unchanged"


def test_a_conversion_is_logged_once_with_its_run_and_file(
    config: Config, runs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = legacy(runs / "ppo-1" / "rl_model_5000_steps.pkl")
    with caplog.at_level("INFO", logger="ckptd"):
        assert process_path(config, config.roots[0], source).action == "converted"
    converted = [r for r in caplog.records if "converted" in r.getMessage()]
    assert len(converted) == 1, [r.getMessage() for r in caplog.records]
    assert converted[0].__dict__["file"] == "rl_model_5000_steps.pkl"


def test_a_pickle_in_a_run_subfolder_is_archived_where_inventory_finds_it(
    config: Config, runs: Path
) -> None:
    """Regression: the archive went to <sub>/.ckptd/legacy/, where nothing links it to its zip."""
    run = runs / "ppo-1"
    (run / "sub").mkdir()
    source = legacy(run / "sub" / "rl_model_7000_steps.pkl")
    outcome = process_path(config, config.roots[0], source)
    assert outcome.action == "converted", outcome.message
    archived = run / ".ckptd" / "legacy" / "sub" / "rl_model_7000_steps.pkl"
    assert archived.is_file()
    assert not (run / "sub" / ".ckptd").exists()
    entries = manifest_of(run).by_path()
    assert entries["sub/rl_model_7000_steps.zip"].converted_from == "sub/rl_model_7000_steps.pkl"


def test_original_keep_records_the_pickle_as_converted(runs: Path) -> None:
    config = make_config(runs, original="keep")
    run = runs / "ppo-1"
    source = legacy(run / "rl_model_7_steps.pkl")
    assert process_path(config, config.roots[0], source).action == "converted"
    entries = manifest_of(run).by_path()
    assert entries["rl_model_7_steps.pkl"].state == "converted"
    assert entries["rl_model_7_steps.zip"].converted_from == "rl_model_7_steps.pkl"
    assert process_path(config, config.roots[0], source).action == "unchanged"


def malicious(path: Path, marker: Path) -> Path:
    return write_checkpoint(path, {**ppo2_data(), "evil": Exploit(marker)}, ppo2_params())


def test_malicious_pickle_is_quarantined_with_a_reason_and_never_run(
    config: Config, runs: Path, tmp_path: Path
) -> None:
    run = runs / "ppo-1"
    marker = tmp_path / "pwned"
    source = malicious(run / "rl_model_9_steps.pkl", marker)
    digest = fsio.sha256_file(source)[0]
    content = source.read_bytes()

    outcome = process_path(config, config.roots[0], source)

    assert outcome.action == "refused"
    assert not marker.exists()
    assert not source.exists()
    assert not (run / "rl_model_9_steps.zip").exists()
    jailed = run / ".ckptd" / "quarantine" / "rl_model_9_steps.pkl"
    assert jailed.read_bytes() == content
    assert stat.S_IMODE(jailed.stat().st_mode) == 0o400
    reason = json.loads((jailed.parent / "rl_model_9_steps.pkl.reason.json").read_text())
    assert reason["original_path"] == str(source)
    assert reason["sha256"] == digest
    assert "system" in reason["refusal"]
    assert reason["quarantined_at"].endswith("Z")
    entry = manifest_of(run).by_path()["rl_model_9_steps.pkl"]
    assert entry.state == "refused"
    assert entry.refusal == reason["refusal"]
    assert entry.extra["quarantine"] == ".ckptd/quarantine/rl_model_9_steps.pkl"

    # A second file of the same name never overwrites the first in quarantine.
    malicious(run / "rl_model_9_steps.pkl", marker)
    assert process_path(config, config.roots[0], source).action == "refused"
    assert (jailed.parent / "rl_model_9_steps.pkl.1").exists()
    assert (jailed.parent / "rl_model_9_steps.pkl.1.reason.json").exists()
    assert not marker.exists()


def test_on_unsafe_leave_records_refused_and_leaves_the_file(runs: Path, tmp_path: Path) -> None:
    config = make_config(runs, on_unsafe="leave")
    run = runs / "ppo-1"
    marker = tmp_path / "pwned"
    source = malicious(run / "x.pkl", marker)
    content = source.read_bytes()
    assert process_path(config, config.roots[0], source).action == "refused"
    assert source.read_bytes() == content
    assert not (run / ".ckptd" / "quarantine" / "x.pkl").exists()
    assert manifest_of(run).by_path()["x.pkl"].state == "refused"
    assert process_path(config, config.roots[0], source).action == "unchanged"
    assert not marker.exists()


def test_broken_pickle_is_recorded_and_not_retried_until_it_changes(
    config: Config, runs: Path, tmp_path: Path
) -> None:
    run = runs / "ppo-1"
    whole = legacy(tmp_path / "whole.pkl").read_bytes()
    source = run / "rl_model_3_steps.pkl"
    source.write_bytes(whole[: len(whole) // 2])
    calls: list[Path] = []

    def counting_identify(path: Path) -> Identification:
        calls.append(path)
        return identify(path)

    deps = PipelineDeps(identify=counting_identify)
    assert process_path(config, config.roots[0], source, deps=deps).action == "broken"
    entry = manifest_of(run).by_path()["rl_model_3_steps.pkl"]
    assert entry.state == "broken" and entry.error
    assert source.read_bytes() == whole[: len(whole) // 2]  # untouched

    assert process_path(config, config.roots[0], source, deps=deps).action == "unchanged"
    assert len(calls) == 1  # not even opened again

    source.write_bytes(whole)  # the writer finished after all: size and mtime change
    assert process_path(config, config.roots[0], source, deps=deps).action == "converted"
    assert "rl_model_3_steps.pkl" not in manifest_of(run).by_path()


def test_zips_are_verified_and_recorded(config: Config, runs: Path, tmp_path: Path) -> None:
    run = runs / "ppo-1"
    converted = convert_file(legacy(tmp_path / "m.pkl"))
    good = run / "rl_model_10_steps.zip"
    good.write_bytes(converted.output.read_bytes())
    sb3 = run / "sb3_model_20_steps.zip"
    make_sb3_zip(sb3)
    bad = run / "rl_model_30_steps.zip"
    damaged = bytearray(good.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # inside the parameters member: its CRC no longer matches
    bad.write_bytes(bytes(damaged))
    truncated = run / "rl_model_40_steps.zip"
    truncated.write_bytes(good.read_bytes()[:-200])  # no central directory: not identifiable
    located = run_of(config.roots[0], good, ".ckptd")
    assert located is not None

    result = process_batch(config, config.roots[0], located[0], [good, sb3, bad, truncated])

    assert [o.action for o in result.outcomes] == ["kept", "kept", "broken", "kept"]
    assert result.manifest_written
    entries = manifest_of(run).by_path()
    assert entries["rl_model_10_steps.zip"].params is not None
    assert entries["rl_model_10_steps.zip"].format is Format.SB2_ZIP
    assert entries["sb3_model_20_steps.zip"].format is Format.SB3_ZIP
    assert entries["rl_model_30_steps.zip"].state == "broken"
    assert entries["rl_model_30_steps.zip"].error
    assert entries["rl_model_40_steps.zip"].format is Format.UNKNOWN


def test_unreadable_file_is_reported_and_the_others_continue(config: Config, runs: Path) -> None:
    """Fault hook: as root, chmod 000 does not stop reads, so identify raises EACCES for one file."""
    run = runs / "ppo-1"
    locked = legacy(run / "rl_model_1_steps.pkl")
    fine = legacy(run / "rl_model_2_steps.pkl")

    def denying_identify(path: Path) -> Identification:
        if path == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return identify(path)

    run_ref = run_of(config.roots[0], locked, ".ckptd")
    assert run_ref is not None
    result = process_batch(
        config,
        config.roots[0],
        run_ref[0],
        [locked, fine],
        deps=PipelineDeps(identify=denying_identify),
    )
    assert [o.action for o in result.outcomes] == ["failed", "converted"]
    assert "Permission denied" in result.outcomes[0].message
    entry = manifest_of(run).by_path()["rl_model_1_steps.pkl"]
    assert entry.state == "pending" and entry.error == "cannot read: Permission denied"
    assert locked.exists()
    # Readable again: the next look (a rescan finds it, it is not final) converts it.
    assert [f.path for f in find_work(config, run_ref[0])] == [locked]
    assert process_path(config, config.roots[0], locked).action == "converted"


def test_disk_full_during_conversion_leaves_the_original_and_is_retried(
    config: Config, runs: Path
) -> None:
    """Fault hook: the writer fails with ENOSPC half-way through the temp file."""
    run = runs / "ppo-1"
    source = legacy(run / "rl_model_4_steps.pkl")
    content = source.read_bytes()

    def full_disk_convert(source: Path, **_: Any) -> ConversionOutcome:
        with fsio.atomic_write(source.with_suffix(".zip")) as handle:
            handle.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    outcome = process_path(
        config, config.roots[0], source, deps=PipelineDeps(convert=full_disk_convert)
    )

    assert outcome.action == "failed"
    assert source.read_bytes() == content
    assert sorted(p.name for p in run.iterdir()) == [
        ".ckptd",
        "ckptd-manifest.json",
        "rl_model_4_steps.pkl",
    ]
    entry = manifest_of(run).by_path()["rl_model_4_steps.pkl"]
    assert entry.state == "kept" and entry.error is not None and "No space left" in entry.error
    assert needs_processing(entry, FileIdentity.of(source.stat()), config)
    assert process_path(config, config.roots[0], source).action == "converted"


def test_a_file_that_changed_after_settling_is_not_read(config: Config, runs: Path) -> None:
    run = runs / "ppo-1"
    source = legacy(run / "rl_model_6_steps.pkl")
    st = source.stat()
    run_ref = run_of(config.roots[0], source, ".ckptd")
    assert run_ref is not None
    result = process_batch(
        config,
        config.roots[0],
        run_ref[0],
        [source],
        expected={source: (st.st_size - 1, st.st_mtime_ns)},
    )
    assert result.outcomes[0].action == "changed"
    assert source.exists() and not (run / "rl_model_6_steps.zip").exists()


def test_gone_paths_drop_their_entries_only_when_absent(config: Config, runs: Path) -> None:
    run = runs / "ppo-1"
    zip_a = run / "a_1_steps.zip"
    zip_b = run / "b_2_steps.zip"
    make_sb3_zip(zip_a)
    make_sb3_zip(zip_b)
    run_ref = run_of(config.roots[0], zip_a, ".ckptd")
    assert run_ref is not None
    process_batch(config, config.roots[0], run_ref[0], [zip_a, zip_b])
    zip_a.unlink()
    process_batch(config, config.roots[0], run_ref[0], [], gone=[zip_a, zip_b])
    assert set(manifest_of(run).by_path()) == {"b_2_steps.zip"}


def test_find_work_lists_unrecorded_and_changed_files_and_removes_stale_temps(
    config: Config, runs: Path
) -> None:
    run = runs / "ppo-1"
    done = run / "done_1_steps.zip"
    make_sb3_zip(done)
    run_ref = run_of(config.roots[0], done, ".ckptd")
    assert run_ref is not None
    process_batch(config, config.roots[0], run_ref[0], [done])
    new = run / "sub" / "new_2_steps.zip"
    new.parent.mkdir()
    make_sb3_zip(new)
    (run / "notes.txt").write_text("not a checkpoint")
    stale = fsio.temp_path_for(run / "x.zip")
    stale.write_bytes(b"partial")
    os.utime(stale, (1, 1))
    fresh = fsio.temp_path_for(run / "y.zip")
    fresh.write_bytes(b"being written")

    found = find_work(config, run_ref[0], stale_temp_age=30.0)

    assert [f.path for f in found] == [new]
    assert not stale.exists() and fresh.exists()
    with done.open("ab") as handle:
        handle.write(b"x")
    assert {f.path for f in find_work(config, run_ref[0])} == {new, done}


@pytest.mark.parametrize(
    ("depth", "relative", "expected"),
    [
        (1, "ppo-1/a.zip", ("ppo-1", "a.zip")),
        (1, "ppo-1/sub/a.zip", ("ppo-1", "sub/a.zip")),
        (1, "a.zip", None),  # above the runs
        (1, "ppo-1/.ckptd/legacy/a.pkl", None),  # the state dir
        (1, "ppo-1/.hidden/a.zip", None),
        (0, "a.zip", (".", "a.zip")),
        (2, "team/ppo-1/a.zip", ("team/ppo-1", "a.zip")),
    ],
)
def test_run_of(runs: Path, depth: int, relative: str, expected: tuple[str, str] | None) -> None:
    config = parse_config({"roots": [{"path": str(runs), "run_depth": depth}]})
    located = run_of(config.roots[0], runs / relative, ".ckptd")
    if expected is None:
        assert located is None
    else:
        assert located is not None
        assert (located[0].relpath, located[1]) == expected
    assert run_of(config.roots[0], runs.parent / "elsewhere.zip", ".ckptd") is None


def test_an_unexpected_exception_is_one_broken_entry_not_a_dead_worker(
    config: Config, runs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The last resort: a reader bug (here a fake that overflows the stack) on one file records
    that file ``broken`` with the exception's type in one line; the traceback is debug-only."""
    run = runs / "ppo-1"
    source = legacy(run / "rl_model_4_steps.pkl")
    content = source.read_bytes()

    def recursing_convert(source: Path, **_: Any) -> ConversionOutcome:
        raise RecursionError("maximum recursion depth exceeded\nwhile walking")

    with caplog.at_level("INFO"):
        outcome = process_path(
            config, config.roots[0], source, deps=PipelineDeps(convert=recursing_convert)
        )

    assert outcome.action == "broken"
    assert outcome.message == "unexpected RecursionError: maximum recursion depth exceeded"
    entry = manifest_of(run).by_path()["rl_model_4_steps.pkl"]
    assert (entry.state, entry.error) == ("broken", outcome.message)
    assert source.read_bytes() == content
    assert not any(record.exc_info for record in caplog.records)  # no traceback above debug
    assert process_path(config, config.roots[0], source).action == "unchanged"
