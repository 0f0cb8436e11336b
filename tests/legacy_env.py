"""The stable-baselines-era interpreter for compatibility tests: Python 3.7, numpy 1.16, cloudpickle 1.2.

Converted zips must load where their users load them (README: SB2 2.8-2.10 on its own stack;
docs/compatibility.md). The environment is built once into ``.venv37`` at the repository root (pip
from the package index); tests that need it skip with a clear reason only when no Python 3.7
interpreter exists here.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "legacy37"
ENV_DIR = REPO / ".venv37"
PINS = ("numpy==1.16.6", "cloudpickle==1.2.2")


def find_python37() -> str | None:
    """A working python3.7: $CKPTD_PYTHON37, pyenv's versions, or python3.7 on PATH."""
    candidates = [os.environ.get("CKPTD_PYTHON37", "")]
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/3.7*/bin/python3.7"), reverse=True)
    candidates.append(shutil.which("python3.7") or "")
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 7))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


def legacy_python() -> Path:
    """The venv's interpreter, building the venv on first use; raises LookupError without Python 3.7."""
    python = ENV_DIR / "bin" / "python"
    marker = ENV_DIR / ".ckptd-pins"
    if python.exists() and marker.exists() and marker.read_text() == " ".join(PINS):
        return python
    base = find_python37()
    if base is None:
        raise LookupError("no Python 3.7 interpreter on this machine (set CKPTD_PYTHON37 to one)")
    shutil.rmtree(ENV_DIR, ignore_errors=True)
    subprocess.run([base, "-m", "venv", str(ENV_DIR)], check=True, timeout=300)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PINS],
        check=True,
        timeout=600,
    )
    marker.write_text(" ".join(PINS))
    return python


def run_script(python: Path, script: str, *args: str) -> str:
    """Run one of tests/legacy37/*.py under the legacy interpreter and return its stdout."""
    # Run from the repository root with a relative script path: code objects pickled by the old
    # cloudpickle embed co_filename, and this keeps it the same in every checkout.
    result = subprocess.run(
        [str(python), str((SCRIPTS / script).relative_to(REPO)), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    if result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout
