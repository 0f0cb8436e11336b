"""The cached stable-baselines environment is used only once complete (tests/sb2tf_env.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import sb2tf_env
from tests.cached_env import COMPLETE

FAKE_PYTHON = """#!/bin/sh
# Stands in for python3.7: reports a version, makes a venv whose python always fails (so the
# build dies at its first pip install, like a build killed part-way).
if [ "$1" = "-c" ]; then echo "3.7.99 (fake)"; exit 0; fi
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin" && ln -s /bin/false "$3/bin/python"; exit 0; fi
exit 1
"""


@pytest.fixture
def fake_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "python3.7"
    script.write_text(FAKE_PYTHON)
    script.chmod(0o755)
    monkeypatch.setattr(sb2tf_env, "find_python37", lambda: str(script))
    monkeypatch.setenv("CKPTD_TEST_CACHE", str(tmp_path / "cache"))
    return script


def test_a_failed_build_leaves_nothing_that_looks_usable(fake_python: Path, tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        sb2tf_env.sb2tf_env()
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_incomplete_leftover_is_rebuilt_not_used(fake_python: Path, tmp_path: Path) -> None:
    key = sb2tf_env.env_key(str(fake_python), sb2tf_env.CONSUMER_RELEASES, sb2tf_env.has_openmpi())
    leftover = tmp_path / "cache" / f"sb2tf-{key}"
    (leftover / "bin").mkdir(parents=True)
    with pytest.raises(subprocess.CalledProcessError):
        sb2tf_env.sb2tf_env()
    # The leftover without the completion marker was never returned; a complete one is.
    (leftover / COMPLETE).write_text("done\n")
    assert sb2tf_env.sb2tf_env() == leftover
