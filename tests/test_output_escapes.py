"""Output that came from a file is shown literally: no terminal escapes, no markup, no forged lines.

File names, module names inside pickles, refusal reasons and pin reasons are attacker-chosen text.
These tests put escape sequences (title, clear screen, colours, 8-bit CSI), bidi overrides, lone
surrogates and rich markup into them, run the real commands as subprocesses, and read the raw
bytes of stdout and stderr: no ESC, no C0 control but newline, no C1 control, no bidi override
appears, and the markup is printed as written.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from ckptd.cli.output import lit
from ckptd.config.load import parse_config
from ckptd.config.model import LogConfig
from ckptd.logs.configure import configure_logging
from ckptd.pipeline.batch import process_path
from ckptd.textsafe import shown
from tests.daemon_harness import REPO, NotifySocket
from tests.sb2_fixtures import make_ppo2_checkpoint, stand_ins
from tests.test_hostile_names import checkpoint

# Title, clear screen, colour, 8-bit CSI (C1), DEL, bidi override and isolate, a line separator.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[31m\x9b31m\x7f\u202e\u2066\u2028"
MARKUP = "[bold]"

_FORBIDDEN = {chr(c) for c in range(0x20) if chr(c) not in "\n"} | {chr(0x7F)}
_FORBIDDEN |= {chr(c) for c in range(0x80, 0xA0)} | {"\u202e", "\u2066", "\u2028", "\u2029"}


def assert_clean(raw: bytes, what: str) -> str:
    """``raw`` is UTF-8 (no lone surrogate got through) without a control or bidi character."""
    text = raw.decode("utf-8")  # strict: a lone surrogate would not even encode
    bad = sorted({char for char in text if char in _FORBIDDEN})
    assert not bad, f"{what} printed raw control characters {bad!r}:\n{text}"
    return text


def ckptd(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, COLUMNS="400")
    return subprocess.run(
        [sys.executable, "-m", "ckptd", *args], capture_output=True, timeout=120, cwd=REPO, env=env
    )


# --- the helper --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\x1b[2J", "\\x1b[2J"),
        ("a\nb\rc\td\x00", "a\\x0ab\\x0dc\\x09d\\x00"),
        ("\x7f\x85\x9b", "\\x7f\\x85\\x9b"),
        ("\u202e\u2066\u200f\ufeff", "\\u202e\\u2066\\u200f\\ufeff"),
        ("\udc80\ud800", "\\udc80\\ud800"),
        ("\u2028\u2029", "\\u2028\\u2029"),
        ("\U000e0001", "\\U000e0001"),
        ("rl_model_1_steps.zip é 日本 \u00a0", "rl_model_1_steps.zip é 日本 \u00a0"),
    ],
)
def test_shown_escapes_controls_and_keeps_the_rest(raw: str, expected: str) -> None:
    assert shown(raw) == expected


def test_lit_shows_markup_literally() -> None:
    console = Console(file=io.StringIO(), width=200, highlight=False)
    console.print(f"[bold]name[/bold]: {lit('rl_model_[bold]_1_steps.zip')} {lit(HOSTILE)}")
    printed = console.file.getvalue()  # type: ignore[attr-defined]
    assert "rl_model_[bold]_1_steps.zip" in printed
    assert_clean(printed.encode(), "rich")


# --- the commands on a hostile file ---------------------------------------------------------------


@pytest.fixture
def hostile_file(tmp_path: Path) -> Path:
    """A legacy checkpoint named with escapes and markup whose policy global's module is hostile."""
    run = tmp_path / "runs" / f"run{HOSTILE}{MARKUP}"
    run.mkdir(parents=True)
    source = run / f"rl_model_{MARKUP}{HOSTILE}_1_steps.pkl"
    source.write_bytes(checkpoint(f"gym.spaces.box{HOSTILE}", "Box", "STACK_GLOBAL"))
    return source


def test_inspect_convert_verify_print_hostile_names_literally(hostile_file: Path) -> None:
    inspected = ckptd("inspect", str(hostile_file))
    assert inspected.returncode == 1
    out = assert_clean(inspected.stdout, "inspect") + assert_clean(inspected.stderr, "inspect")
    assert f"rl_model_{MARKUP}\\x1b]0;pwned\\x07" in out
    assert "gym.spaces.box\\x1b]0;pwned" in out
    converted = ckptd("convert", str(hostile_file.parent))
    assert converted.returncode == 1
    assert "refused" in assert_clean(converted.stderr, "convert")
    assert_clean(converted.stdout, "convert")
    verified = ckptd("verify", str(hostile_file))
    assert verified.returncode == 1
    assert_clean(verified.stdout + verified.stderr, "verify")


def _config(tmp_path: Path, **policy: object) -> Path:
    path = tmp_path / "ckptd.yaml"
    settings = {
        "version": 1,
        "roots": [{"path": str(tmp_path / "runs"), "run_depth": 1, "observer": "polling"}],
        "checkpoints": {"stable_for": "0s"},
        "policies": {"default": {"keep_last": 1, "min_age": "0s", **policy}},
        "delete": {"max_fraction": 1.0},
    }
    path.write_text(json.dumps(settings))
    return path


def test_quarantine_status_prune_and_trash_print_hostile_names_literally(
    hostile_file: Path, tmp_path: Path
) -> None:
    config_path = _config(tmp_path)
    config = parse_config(json.loads(config_path.read_text()), source=config_path)
    run = hostile_file.parent
    assert process_path(config, config.roots[0], hostile_file).action == "refused"
    with stand_ins():
        for step in (2, 3, 4):
            make_ppo2_checkpoint(run / f"rl_model_{MARKUP}{HOSTILE}_{step}_steps.pkl")
    pinned = run / f"rl_model_{MARKUP}{HOSTILE}_3_steps.pkl"
    assert ckptd("pin", str(pinned), "--reason", f"why {HOSTILE}{MARKUP}").returncode == 0

    listed = ckptd("quarantine", "list", "-c", str(config_path))
    text = assert_clean(listed.stdout + listed.stderr, "quarantine list")
    assert "\\x1b]0;pwned" in text and MARKUP in text
    jailed = next((run / ".ckptd" / "quarantine").glob("*.pkl"))
    shown_ = ckptd("quarantine", "show", str(jailed))
    assert "not a dotted Python identifier" in assert_clean(shown_.stdout, "quarantine show")
    status = ckptd("status", "-c", str(config_path))
    assert_clean(status.stdout + status.stderr, "status")
    dry = ckptd("prune", "-c", str(config_path), "--dry-run")
    text = assert_clean(dry.stdout + dry.stderr, "prune --dry-run")
    assert f"rl_model_{MARKUP}\\x1b]0;pwned" in text and "why \\x1b]0;pwned" in text
    pruned = ckptd("prune", "-c", str(config_path))
    assert pruned.returncode == 0, pruned.stderr
    assert_clean(pruned.stdout + pruned.stderr, "prune")
    trash = ckptd("trash", "list", "-c", str(config_path))
    text = assert_clean(trash.stdout + trash.stderr, "trash list")
    assert f"rl_model_{MARKUP}\\x1b]0;pwned" in text


# --- log lines -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_escape_what_came_from_a_file(fmt: str) -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(level="info", format=fmt), stream=stream)
    try:
        logging.getLogger("ckptd.pipeline.batch").warning(
            "refused: global %r", f"gym{HOSTILE}\udc80", extra={"run": HOSTILE, "file": "a\nb"}
        )
    finally:
        configure_logging(LogConfig())
    raw = stream.getvalue()
    assert raw.count("\n") == 1  # one record, one line
    assert_clean(raw.encode("utf-8"), f"{fmt} log")
    if fmt == "json":
        record = json.loads(raw)
        assert record["run"] == HOSTILE and record["file"] == "a\nb"  # exact, escaped by JSON


def test_daemon_log_escapes_a_hostile_file(
    hostile_file: Path, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """The real daemon refuses and quarantines the file; its stderr has no raw control byte."""
    from tests.daemon_harness import DaemonProcess

    config_path = _config(tmp_path)
    daemon = DaemonProcess(config_path, tmp_path / "daemon.log", notify_socket)
    try:
        daemon.wait_ready(timeout=30)
        daemon.wait_log("quarantined as", timeout=30)
    finally:
        assert daemon.stop(timeout=10) == 0
    text = assert_clean((tmp_path / "daemon.log").read_bytes(), "daemon log")
    assert "gym.spaces.box\\x1b]0;pwned" in text


def test_successful_commands_print_hostile_file_names_literally(tmp_path: Path) -> None:
    run = tmp_path / f"run{HOSTILE}"
    run.mkdir()
    with stand_ins():
        source = make_ppo2_checkpoint(run / f"rl_model_{MARKUP}{HOSTILE}_1_steps.pkl")
    converted = ckptd("convert", str(source))
    assert converted.returncode == 0, converted.stderr
    text = assert_clean(converted.stdout + converted.stderr, "convert")
    assert f"rl_model_{MARKUP}\\x1b]0;pwned" in text
    output = source.with_suffix(".zip")
    for args in (("verify", str(output)), ("inspect", str(output)), ("inspect", str(source))):
        result = ckptd(*args)
        assert result.returncode == 0, result.stderr
        assert f"{MARKUP}\\x1b]0;pwned" in assert_clean(result.stdout + result.stderr, args[0])


def test_progress_bar_on_a_terminal_shows_names_literally(tmp_path: Path) -> None:
    """On a terminal rich draws the bar with its own escapes; the file's own never get through."""
    import pty
    import select

    run = tmp_path / "run"
    run.mkdir()
    with stand_ins():
        for step in (1, 2):
            make_ppo2_checkpoint(run / f"rl_model_{MARKUP}{HOSTILE}_{step}_steps.pkl")
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="300", TERM="xterm")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckptd", "convert", str(run)],
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        env=env,
    )
    os.close(slave)
    raw = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            raw += chunk
    finally:
        os.close(master)
        assert proc.wait(60) == 0
    for sequence in (b"\x1b]0;pwned", b"\x1b[2J", b"\xc2\x9b31m", b"\xe2\x80\xae"):
        assert sequence not in raw, (sequence, raw)
    assert b"\\x1b]0;pwned" in raw
