"""``ckptd convert`` run as a program ends without the interpreter's teardown (``EXIT_AT_ONCE``):
its output and exit status must be exactly what a normal exit gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.test_cli_output import ckptd
from tests.test_convert_source_digest import REPO, checkpoint_of, sha256sum


def test_a_conversion_prints_all_its_output_and_exits_zero(tmp_path: Path) -> None:
    sources = [checkpoint_of(tmp_path / f"m{index}.pkl", 1 << 20) for index in range(3)]
    result = ckptd("convert", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [entry["source_sha256"] for entry in document["results"]] == [
        sha256sum(source) for source in sources
    ]
    for source in sources:
        assert sha256sum(source.with_suffix(".zip")) == next(
            entry["sha256"] for entry in document["results"] if entry["source"] == str(source)
        )


def test_a_failed_conversion_exits_one_with_its_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(b"\x80\x04not a pickle at all")
    result = ckptd("convert", str(broken))
    assert result.returncode == 1
    assert f"ckptd: {broken}" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("0 converted, 0 already converted, 1 broken, 0 skipped;")


def test_a_reader_that_goes_away_gets_no_traceback(tmp_path: Path) -> None:
    for index in range(3):
        checkpoint_of(tmp_path / f"m{index}.pkl", 1 << 10)
    pipeline = subprocess.run(
        f"{sys.executable} -m ckptd convert {tmp_path} --json | head -c 5",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert pipeline.stdout == '{\n  "'[:5]
    assert "Traceback" not in pipeline.stderr
