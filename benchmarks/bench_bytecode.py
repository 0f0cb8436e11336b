"""Give the benchmarked code its bytecode, as an installed ckptd has it.

``pip install`` compiles every module to ``__pycache__``; an editable checkout run with
``PYTHONDONTWRITEBYTECODE=1`` (as on this project's machines) compiles ckptd's ~100 modules from
source in every process instead: 0.1-0.2 s that no installation pays, in every figure. The
benchmarks therefore compile the package once up front (``compileall`` writes the files whatever
that variable says; Python reads them either way). ``__pycache__`` is ignored by git.
"""

from __future__ import annotations

import compileall
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def compile_package(checkout: Path = REPO) -> None:
    """Write the bytecode of ``checkout``'s ckptd package (quietly; up-to-date files are kept)."""
    compileall.compile_dir(str(checkout / "ckptd"), quiet=1)
