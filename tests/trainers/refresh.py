"""Regenerate ``tests/data/trainers/`` with the real trainers (one-off, not part of the test run).

    .venv/bin/python -m tests.trainers.refresh

Builds (or reuses) the trainers env of ``tests/trainers_env.py``, runs ``generate.py`` in it into a
temporary directory and replaces the committed fixtures with its output. PROVENANCE.md beside the
fixtures says what made each file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.trainers_env import trainers_environ, trainers_python

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "data" / "trainers"
KEEP = ("PROVENANCE.md", ".gitattributes")  # written by hand


def generate(out: Path) -> None:
    """Run the generator under the trainers' interpreter into ``out``."""
    subprocess.run(
        [str(trainers_python()), str(HERE / "generate.py"), str(out)],
        check=True,
        timeout=600,
        env=trainers_environ(),
        capture_output=True,
    )


CONSUMED_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".metadata")


def consumed(root: Path) -> list[Path]:
    """The files whose real consumers' answers are recorded: torch, safetensors, DCP metadata."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(CONSUMED_SUFFIXES))


def consume(paths: list[Path], cwd: Path) -> dict[str, dict[str, object]]:
    """``consume.py``'s answers (torch.load(weights_only=True), safe_open) keyed by path."""
    done = subprocess.run(
        [
            str(trainers_python()),
            str(HERE / "consume.py"),
            *(str(p.relative_to(cwd)) for p in paths),
        ],
        check=True,
        timeout=600,
        env=trainers_environ(),
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    answers: dict[str, dict[str, object]] = json.loads(done.stdout)
    return answers


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "trainers"
        generate(out)
        for child in FIXTURES.iterdir() if FIXTURES.exists() else ():
            if child.name not in KEEP:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        shutil.copytree(out, FIXTURES, dirs_exist_ok=True)
    answers = consume(consumed(FIXTURES), FIXTURES)
    (FIXTURES / "consumers.json").write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
