"""Tables and plain output: names and reasons literal, never broken mid-word, a closed pipe quiet.

The commands run as real processes with stdout a pipe (as under `| less`, `| grep`, cron mail)
and, for the terminal case, through a rich console that says it is an 80-column terminal.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from ckptd.cli.exits import ExitStatus
from ckptd.cli.main import main
from ckptd.cli.output import Column, print_table
from tests.daemon_harness import REPO

NOW = datetime.now(UTC)
LONG_RUN = "ppo-cartpole-3-seed-1234-lr-0.0003-gamma-0.99"
MARKUP_NAME = "rl_model_[bold]_1_steps.zip"


def make_zip(path: Path, age: timedelta) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", "{}")
        archive.writestr("parameters", b"x" * 100)
        archive.writestr("parameter_list", "[]")
    seconds = (NOW - age).timestamp()
    os.utime(path, (seconds, seconds))
    return path


def ckptd(*args: str, columns: str = "80") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS=columns)
    return subprocess.run(
        [sys.executable, "-m", "ckptd", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A run with a long name, a file name with markup, and daily checkpoints (so one reason is
    ``keep_daily[oldest] #1``); returns the config."""
    run = tmp_path / "runs" / LONG_RUN
    make_zip(run / MARKUP_NAME, timedelta(days=8, hours=1))  # the oldest of the oldest day
    for day in range(8):
        make_zip(run / f"rl_model_{(day + 2) * 10000}_steps.zip", timedelta(days=8 - day))
    config = tmp_path / "ckptd.yaml"
    config.write_text(
        "version: 1\nroots: [{path: ./runs}]\n"
        "policies: {default: {keep_daily: 12, min_age: 0s}}\ndelete: {max_fraction: 1.0}\n"
    )
    return config


def row_of(out: str, name: str) -> str:
    (line,) = [line for line in out.splitlines() if name in line]
    return line


def test_piped_prune_shows_markup_literally_and_every_row_on_one_line(tree: Path) -> None:
    pinned = tree.parent / "runs" / LONG_RUN / "rl_model_50000_steps.zip"
    reason = "paper figure 3 [final] and the appendix table of the camera-ready version"
    assert ckptd("pin", str(pinned), "--reason", reason, "-c", str(tree)).returncode == 0
    result = ckptd("prune", "-c", str(tree), "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert LONG_RUN in out  # the title: not folded
    assert "keep_daily[oldest] #9" in row_of(out, MARKUP_NAME)
    assert "keep_daily #1; newest" in row_of(out, "rl_model_90000_steps.zip")
    assert f"pinned: {reason}" in row_of(out, pinned.name)
    for day in range(8):
        row_of(out, f"rl_model_{(day + 2) * 10000}_steps.zip")  # exactly one line each


def test_piped_status_and_trash_list_keep_names_and_sizes_whole(tree: Path) -> None:
    other = tree.parent / "runs" / (LONG_RUN + "-seed2")
    make_zip(other / "rl_model_1_steps.zip", timedelta(days=1))
    status = ckptd("status", "-c", str(tree))
    assert status.returncode == 0, status.stderr
    # The problem too: nothing wraps when piped.
    assert "no manifest yet, 1 checkpoint file unrecorded" in row_of(status.stdout, other.name)
    tree.write_text(tree.read_text().replace("keep_daily: 12", "keep_last: 1"))
    assert ckptd("prune", "-c", str(tree)).returncode == 0
    listed = ckptd("trash", "list", "-c", str(tree))
    assert listed.returncode == 0, listed.stderr
    trashed = [p for p in (tree.parent / "runs" / LONG_RUN / ".ckptd" / "trash").iterdir()]
    assert MARKUP_NAME in {path.name for path in trashed}
    for path in trashed:
        if not path.name.startswith("."):
            line = row_of(listed.stdout, f"{path.name} ")  # deleted from, and the name
            assert LONG_RUN in line and line.count(path.name) == 2


def test_a_table_on_an_80_column_terminal_breaks_no_name_and_wraps_text_at_spaces() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=80, color_system=None)
    reason = "no rule keeps it; guard would have held it; and a few more words of reasons"
    rows = [
        (LONG_RUN + "/" + MARKUP_NAME, "492.7KiB", reason),
        ("keep_daily[oldest] #1", "1B", "[red]x[/red]"),
    ]
    print_table(
        "t", [Column("name"), Column("size"), Column("reasons", wrap=True)], rows, console=console
    )
    out = buffer.getvalue()
    assert LONG_RUN + "/" + MARKUP_NAME in out
    assert "492.7KiB" in out and "keep_daily[oldest] #1" in out and "[red]x[/red]" in out
    words = {word for line in out.splitlines() for word in line.replace("│", " ").split()}
    assert set(reason.replace(";", "; ").split()) <= words | {";"}


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    for index in range(30):
        make_zip(tmp_path / "runs" / f"run-{index:03d}" / "rl_model_1_steps.zip", timedelta(1))
    config = tmp_path / "ckptd.yaml"
    config.write_text("version: 1\nroots: [{path: ./runs}]\n")
    for command in ("status --json", "status", "prune --dry-run --json", "prune --dry-run"):
        result = subprocess.run(
            [
                "bash",
                "-o",
                "pipefail",
                "-c",
                # The reader is gone before ckptd has started: its first write meets EPIPE.
                f'"$0" -m ckptd {command} -c "$1" | true',
                sys.executable,
                str(config),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, command
        assert result.stderr == "", (command, result.stderr)
        assert result.returncode == ExitStatus.PIPE_CLOSED, command


def test_empty_quarantine_and_trash_say_so_in_a_sentence(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quarantine", "list", "-c", str(tree)]) == ExitStatus.OK
    assert capsys.readouterr().out == "nothing is quarantined (1 run looked at)\n"
    assert main(["trash", "list", "-c", str(tree)]) == ExitStatus.OK
    assert capsys.readouterr().out == "the trash is empty (1 run looked at)\n"
    assert main(["quarantine", "list", "-c", str(tree), "--json"]) == ExitStatus.OK
    assert json.loads(capsys.readouterr().out) == {"items": [], "errors": []}
