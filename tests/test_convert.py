"""``convert_file`` and ``ckptd convert``: safe, verified, atomic conversion that never loses the input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import pytest

from ckptd.cli.main import main
from ckptd.convert.conversion import convert_file
from ckptd.errors import (
    ConversionError,
    FormatError,
    HeldCheckpoint,
    UnsafeCheckpoint,
    VerifyError,
)
from ckptd.formats.storedzip import Piece
from ckptd.formats.verify import verify_zip
from ckptd.fs import files as fsio
from ckptd.fs.runfs import RunFS
from tests.helpers import sha256_file
from tests.sb2_fixtures import dumps, make_ppo2_checkpoint, stand_ins

SB2_ERA = Path(__file__).parent / "data" / "sb2-era"


def listing(directory: Path) -> dict[str, str]:
    """Every file below ``directory`` with its sha256: the whole observable state."""
    return {
        str(path.relative_to(directory)): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("ppo2", "dqn", "sac"):
        shutil.copy(SB2_ERA / f"{name}.pkl", run / f"rl_model_{name}_1000_steps.pkl")
    return run


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    """A genuine-looking (data, params) whose data runs os.system on load."""

    class Payload:
        def __reduce__(self) -> tuple[object, ...]:
            return os.system, (f"touch {marker}",)

    with stand_ins():
        from tests.sb2_fixtures import dqn_data, dqn_params

        data = dqn_data()
        data["learning_rate"] = Payload()
        path.write_bytes(dumps((data, dqn_params()), 4))
    return path


def test_converts_sb2_era_files_and_keeps_originals_by_default(run_dir: Path) -> None:
    before = listing(run_dir)
    for source in sorted(run_dir.glob("*.pkl")):
        outcome = convert_file(source)
        assert outcome.status == "converted"
        assert outcome.output == source.with_suffix(".zip")
        assert outcome.original == "kept"
        assert outcome.output_sha256 == sha256_file(outcome.output)
        assert outcome.output_size == outcome.output.stat().st_size
        assert verify_zip(outcome.output).ok
    after = listing(run_dir)
    assert {k: v for k, v in after.items() if k.endswith(".pkl")} == before


def test_reports_algorithm_params_and_code_keys(run_dir: Path) -> None:
    outcome = convert_file(run_dir / "rl_model_ppo2_1000_steps.pkl")
    assert outcome.algorithm == "PPO2"
    assert outcome.carries_code == ("learning_rate", "cliprange")
    assert outcome.params_count == 10
    with zipfile.ZipFile(outcome.output) as archive:
        assert archive.namelist() == ["data", "parameters", "parameter_list"]
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        data = json.loads(archive.read("data"))
    assert set(data["learning_rate"]) >= {":type:", ":serialized:"}
    assert data["gamma"] == 0.99


def test_archive_moves_the_original_under_the_state_dir_after_the_zip_exists(run_dir: Path) -> None:
    source = run_dir / "rl_model_dqn_1000_steps.pkl"
    original = sha256_file(source)
    outcome = convert_file(source, original="archive")
    assert outcome.original == "archived"
    assert outcome.archived_to == run_dir / ".ckptd" / "legacy" / source.name
    assert not source.exists()
    assert sha256_file(outcome.archived_to) == original
    assert verify_zip(outcome.output).ok


def test_archive_to_an_explicit_path_never_overwrites(run_dir: Path) -> None:
    source = run_dir / "rl_model_dqn_1000_steps.pkl"
    target = run_dir / ".ckptd" / "legacy" / "sub" / source.name
    target.parent.mkdir(parents=True)
    target.write_bytes(b"an older archived original")
    outcome = convert_file(source, original="archive", archive_path=target)
    assert outcome.archived_to == target.with_name(source.name + ".1")
    assert target.read_bytes() == b"an older archived original"


def test_delete_removes_the_original_only_after_verification(run_dir: Path) -> None:
    source = run_dir / "rl_model_sac_1000_steps.pkl"
    outcome = convert_file(source, original="delete")
    assert outcome.original == "deleted" and not source.exists()
    assert verify_zip(outcome.output).ok


def test_refused_file_is_left_untouched_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    source = hostile_checkpoint(tmp_path / "evil_100_steps.pkl", marker)
    before = listing(tmp_path)
    with pytest.raises(UnsafeCheckpoint, match=r"posix\.system|os\.system"):
        convert_file(source, original="delete")
    assert not marker.exists()
    assert listing(tmp_path) == before


def test_allow_code_false_refuses_schedules(run_dir: Path) -> None:
    source = run_dir / "rl_model_ppo2_1000_steps.pkl"
    with pytest.raises(UnsafeCheckpoint, match="learning_rate, cliprange"):
        convert_file(source, allow_code=False)
    assert not source.with_suffix(".zip").exists()
    # A file without functions converts either way.
    assert (
        convert_file(run_dir / "rl_model_dqn_1000_steps.pkl", allow_code=False).status
        == "converted"
    )


def test_truncated_file_is_broken_and_untouched(tmp_path: Path) -> None:
    whole = (SB2_ERA / "dqn.pkl").read_bytes()
    source = tmp_path / "cut_100_steps.pkl"
    source.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FormatError):
        convert_file(source, original="delete")
    assert source.read_bytes() == whole[: len(whole) // 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut_100_steps.pkl"]


def test_not_a_checkpoint_is_reported_with_its_format(tmp_path: Path) -> None:
    source = tmp_path / "notes.pkl"
    source.write_bytes(b"just text")
    with pytest.raises(FormatError, match="not a legacy stable-baselines pickle"):
        convert_file(source)


def test_existing_zip_is_verified_not_converted(run_dir: Path) -> None:
    converted = convert_file(run_dir / "rl_model_dqn_1000_steps.pkl").output
    outcome = convert_file(converted)
    assert outcome.status == "already sb2-zip"
    damaged = bytearray(converted.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    converted.write_bytes(bytes(damaged))
    with pytest.raises(VerifyError):
        convert_file(converted)


def test_rerun_after_a_crash_finishes_the_archive_step(run_dir: Path) -> None:
    """A kill between "zip renamed into place" and "original archived" leaves both; a rerun completes."""
    source = run_dir / "rl_model_ppo2_1000_steps.pkl"
    first = convert_file(source)  # as if killed right after the rename
    outcome = convert_file(source, original="archive")
    assert outcome.status == "already-converted"
    assert outcome.output_sha256 == first.output_sha256
    assert outcome.original == "archived" and not source.exists()


def test_a_foreign_zip_under_the_output_name_is_never_overwritten(run_dir: Path) -> None:
    source = run_dir / "rl_model_dqn_1000_steps.pkl"
    foreign = source.with_suffix(".zip")
    shutil.copy(convert_file(run_dir / "rl_model_sac_1000_steps.pkl").output, foreign)
    foreign_bytes = foreign.read_bytes()
    with pytest.raises(ConversionError, match="not this checkpoint's conversion"):
        convert_file(source, original="delete")
    assert foreign.read_bytes() == foreign_bytes
    assert source.exists()


def test_output_may_not_overwrite_the_input(run_dir: Path) -> None:
    source = run_dir / "rl_model_dqn_1000_steps.pkl"
    with pytest.raises(ConversionError, match="overwrite the input"):
        convert_file(source, output=source)


def test_list_params_need_names(tmp_path: Path) -> None:
    with stand_ins():
        source = make_ppo2_checkpoint(tmp_path / "old_100_steps.pkl", list_params=True)
    # Its stand-in shapes are not what a real MlpPolicy builds: held, never guessed.
    with pytest.raises(HeldCheckpoint, match="--param-names FILE"):
        convert_file(source)
    names = [f"model/p{i}:0" for i in range(15)]
    outcome = convert_file(source, param_names=names)
    with zipfile.ZipFile(outcome.output) as archive:
        assert json.loads(archive.read("parameter_list")) == names


def test_write_failure_leaves_no_file_under_the_checkpoint_name(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full mid-write: the original is untouched and no partial zip or temp file remains."""
    import ckptd.formats.sb2zip as sb2zip

    def full_disk(handle: BinaryIO, pieces: object) -> None:
        handle.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sb2zip, "copy_pieces", full_disk)
    source = run_dir / "rl_model_dqn_1000_steps.pkl"
    before = listing(run_dir)
    with pytest.raises(OSError, match="No space"):
        convert_file(source, original="delete")
    assert listing(run_dir) == before


def test_bytes_damaged_on_disk_before_the_rename_are_caught(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verification re-reads the temp file: a byte that differs on disk stops the rename."""
    import ckptd.formats.sb2zip as sb2zip

    real_write = sb2zip.copy_pieces

    def write_then_corrupt(handle: BinaryIO, pieces: Sequence[Piece]) -> int:
        size = real_write(handle, pieces)
        handle.flush()
        os.pwrite(handle.fileno(), b"\xff", size // 2)  # bit rot between write and re-read
        return size

    monkeypatch.setattr(sb2zip, "copy_pieces", write_then_corrupt)
    source = run_dir / "rl_model_ppo2_1000_steps.pkl"
    before = listing(run_dir)
    with pytest.raises(VerifyError, match="differ"):
        convert_file(source, original="delete")
    assert listing(run_dir) == before


# --- the command line -------------------------------------------------------------------------


def test_cli_converts_a_directory_and_reports_json(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["convert", str(run_dir), "--original", "archive", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    statuses = {Path(r["source"]).name: r["status"] for r in document["results"]}
    assert set(statuses.values()) == {"converted"} and len(statuses) == 3
    ppo2 = next(r for r in document["results"] if "ppo2" in r["source"])
    assert ppo2["carries_code"] == ["learning_rate", "cliprange"]
    assert sorted(p.name for p in (run_dir / ".ckptd" / "legacy").iterdir()) == sorted(statuses)


def test_cli_refused_input_exits_1_with_one_line_and_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    source = hostile_checkpoint(tmp_path / "evil_100_steps.pkl", marker)
    before = sha256_file(source)
    assert main(["convert", str(source), "--original", "delete"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(source) in err[0] and "refused" in err[0]
    assert sha256_file(source) == before and not marker.exists()


def test_cli_output_option_needs_one_file(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["convert", str(run_dir), "-o", str(run_dir / "x.zip")]) == 2
    assert "single input" in capsys.readouterr().err


def test_cli_mixed_inputs_exit_1_but_convert_the_good_ones(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = run_dir / "broken_5_steps.pkl"
    broken.write_bytes(b"\x80\x04\x95garbage")
    assert main(["convert", *map(str, sorted(run_dir.glob("*.pkl")))]) == 1
    assert len(list(run_dir.glob("*.zip"))) == 3
    assert "broken_5_steps.pkl" in capsys.readouterr().err


def test_cli_convert_of_a_converted_directory_exits_0_with_a_summary(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir / "notes.txt").write_text("not a checkpoint")
    assert main(["convert", str(run_dir), "--original", "archive"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("3 converted, 0 already converted, 1 skipped; ") and last.endswith("s")
    assert main(["convert", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.startswith("0 converted, 3 already converted, 1 skipped; 0B in ")
    assert main(["convert", str(run_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert (summary["converted"], summary["already_converted"], summary["skipped"]) == (0, 3, 1)


def test_cli_summary_counts_refused_and_broken(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile_checkpoint(run_dir / "evil_100_steps.pkl", tmp_path / "pwned")
    (run_dir / "broken_5_steps.pkl").write_bytes(b"\x80\x04\x95garbage")
    assert main(["convert", *map(str, sorted(run_dir.glob("*.pkl")))]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("3 converted, 0 already converted, 1 refused, 1 broken, 0 skipped; ")


def test_cli_help_states_the_default_original(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "keep it (the default)" in text and "default archive" in text


@pytest.fixture
def read_only_run(tmp_path: Path) -> Iterator[Path]:
    """A run on a real read-only mount (tmpfs remounted ro): needs root and mount rights."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a read-only file system needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=False
    )
    if made.returncode != 0:
        pytest.skip("this environment does not allow mounting a tmpfs")
    try:
        run = mount / "run"
        run.mkdir()
        shutil.copy(SB2_ERA / "ppo2.pkl", run / "rl_model_1000_steps.pkl")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield run
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_cli_convert_on_a_read_only_run_says_the_original_was_kept(
    read_only_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = read_only_run / "rl_model_1000_steps.pkl"
    before = sha256_file(source)
    output = tmp_path / "elsewhere" / "x.zip"
    output.parent.mkdir()
    args = ["convert", str(source), "-o", str(output), "--original", "archive"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"{source} -> {output}: converted" in out
    assert "note: original kept, not archived: its directory is read-only here" in out
    assert "Read-only file system" in out and out.splitlines()[-1].startswith("1 converted")
    assert sha256_file(source) == before and verify_zip(output).ok
    assert main(args) == 0  # a rerun: the zip is this file's conversion, the original stays
    out = capsys.readouterr().out
    assert ": already-converted" in out and "original kept, not archived" in out


def test_status_flags_a_run_on_a_read_only_file_system(
    read_only_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = read_only_run.parent.parent / "ckptd.yaml"
    config.write_text(f"version: 1\nroots: [{{path: {read_only_run.parent}}}]\n")
    assert main(["status", "-c", str(config), "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert any(p.startswith("read-only file system") for p in run["problems"]), run["problems"]


def test_kill_9_during_conversion_never_leaves_a_partial_zip(tmp_path: Path) -> None:
    """SIGKILL the converter at random instants: the original survives, no partial zip is ever visible."""
    with stand_ins():
        from collections import OrderedDict

        import numpy as np

        from tests.sb2_fixtures import ppo2_data

        params = OrderedDict(
            (f"model/layer{i}/w:0", np.full((1024, 1024), i, dtype=np.float32)) for i in range(24)
        )
        blob = dumps((ppo2_data(), params), 4)
    source = tmp_path / "big_100_steps.pkl"
    source.write_bytes(blob)
    original = hashlib.sha256(blob).hexdigest()
    output = source.with_suffix(".zip")
    delays = [0.05, 0.15, 0.25, 0.35, 0.45, 0.6]
    for delay in delays:
        process = subprocess.Popen(
            [sys.executable, "-m", "ckptd", "convert", str(source)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)  # the kill lands at a different stage each time: under test
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert sha256_file(source) == original
        if output.exists():
            assert verify_zip(output).ok, f"partial zip after a kill at {delay}s"
            output.unlink()
    leftovers = [p.name for p in tmp_path.iterdir() if fsio.is_temp_name(p.name)]
    removed = RunFS(tmp_path).remove_stale_temps("", older_than_s=0, now=time.time() + 1)
    assert sorted(removed) == sorted(leftovers)


def test_a_parameter_name_with_a_nul_byte_is_refused_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the coverage-guided fuzzer: zipfile ends a member name at its first NUL, so the
    zip ckptd wrote for such a name failed its own verify while convert exited 0."""
    source = tmp_path / "rl_model_1_steps.pkl"
    corpus = Path(__file__).parent / "fuzz" / "corpus" / "param-name-nul.pkl"
    shutil.copyfile(corpus, source)
    before = source.read_bytes()
    assert main(["convert", str(source)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(source) in err and "NUL byte" in err
    assert not source.with_suffix(".zip").exists()
    assert source.read_bytes() == before
