"""The README's commands match what ckptd does: every ``ckptd`` line parses, every option exists.

The quick start, the examples and the install blocks are what a new user copies; the synopsis
under "Commands" is what they read. Each ``ckptd ...`` line of a ``sh`` block is parsed by the real
argument parser, each option of the synopsis must be one the command accepts, and every file the
install blocks copy must be in the checkout. The install blocks themselves run, as written, on a
booted Debian 12 in tests/test_install_nspawn.py.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from ckptd.cli.main import build_parser
from tests.nspawn_env import readme_blocks

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SH_BLOCKS = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
SYNOPSIS = re.search(r"## Commands\n\n```\n(.*?)```", README, re.DOTALL)


def ckptd_lines() -> list[str]:
    """Every command line of the README's sh blocks that runs ckptd (split on && and pipes)."""
    found = []
    for block in SH_BLOCKS:
        for line in block.splitlines():
            for part in re.split(r"&&|\|\||;", line.split(" #", 1)[0]):
                words = shlex.split(part.split(" > ", 1)[0])
                if words and words[0].endswith("ckptd") and not words[0].endswith("/ckptd/venv"):
                    found.append(" ".join(words))
    return found


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> set[str]:
    found = {opt for action in parser._actions for opt in action.option_strings}
    for child in subparsers(parser).values():
        found |= options(child)
    return found


def test_the_readme_has_the_commands_and_blocks_these_tests_read() -> None:
    assert SYNOPSIS is not None
    assert list(readme_blocks()) == ["software", "start", "shared-group"]
    assert len(ckptd_lines()) >= 10


@pytest.mark.parametrize("line", ckptd_lines())
def test_every_ckptd_line_of_the_readme_parses(line: str) -> None:
    parser = build_parser()
    try:
        parser.parse_args(shlex.split(line)[1:])
    except SystemExit as exit_:
        pytest.fail(f"README line does not parse ({exit_.code}): {line}")


def synopsis_rows() -> list[tuple[str, str]]:
    assert SYNOPSIS is not None
    rows: list[tuple[str, str]] = []
    for line in SYNOPSIS.group(1).splitlines():
        if line[:1].isspace() and rows:
            # A long row goes on, indented, on the next line: `ckptd prune ...` and its description.
            command, row = rows[-1]
            rows[-1] = (command, f"{row} {line.strip()}")
            continue
        # Several commands may share a row: `ckptd pin ... | ckptd unpin PATH`.
        for piece in re.split(r"\|\s*(?=ckptd )", line):
            words = piece.split()
            if len(words) >= 2 and words[0] == "ckptd":
                rows.append((words[1], piece))
    return rows


@pytest.mark.parametrize(("command", "row"), synopsis_rows(), ids=lambda value: value.split()[0])
def test_every_option_in_the_synopsis_exists(command: str, row: str) -> None:
    commands = subparsers(build_parser())
    assert command in commands, f"the synopsis names a command ckptd lacks: {command}"
    named = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", row))
    missing = named - options(commands[command])
    assert not missing, f"{command}: the synopsis names {sorted(missing)}, which it does not accept"


def test_every_command_is_in_the_synopsis() -> None:
    listed = {command for command, _ in synopsis_rows()}
    assert set(subparsers(build_parser())) == listed


def test_every_file_the_install_blocks_copy_is_in_the_checkout() -> None:
    for name, block in readme_blocks().items():
        for line in block.splitlines():
            words = shlex.split(line.split(" #", 1)[0].split("&&", 1)[0])
            if words[:1] != ["install"] or "-d" in words:
                continue
            # install [-m MODE] [-D] [-t DIR] SOURCE... [DEST]: the relative words are sources.
            sources = [w for w in words[1:] if not w.startswith(("-", "/")) and w != "0644"]
            assert sources, f"{name}: {line}"
            for source in sources:
                assert list(ROOT.glob(source)), f"{name}: {source} is not in the checkout"
