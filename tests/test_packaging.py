"""pyproject.toml claims only what the repository has: lint exceptions name existing files, and the
package ships its PEP 561 marker so code importing ckptd is type-checked against its annotations."""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def test_every_per_file_lint_exception_names_files_that_exist() -> None:
    ruff = _pyproject()["tool"]["ruff"]["lint"]  # type: ignore[index]
    patterns = ruff["per-file-ignores"]  # type: ignore[index]
    stale = [p for p in patterns if not glob.glob(str(ROOT / p), recursive=True)]
    assert not stale, f"lint exceptions for files that do not exist: {stale}"


def test_the_package_ships_py_typed() -> None:
    assert (ROOT / "ckptd" / "py.typed").is_file()
    package_data = _pyproject()["tool"]["setuptools"]["package-data"]  # type: ignore[index]
    assert "py.typed" in package_data["ckptd"]  # type: ignore[index]
