"""Coverage-guided fuzz target (atheris/libFuzzer) for every entry point that reads a checkpoint.

Run by tests/test_fuzz.py for a bounded time, from the repository root:

    python -m tests.fuzz.atheris_target WORK_CORPUS tests/fuzz/corpus -max_total_time=60

Any exception other than a CkptdError, any broken invariant of tests/fuzz_checks.py, a slow input
(``-timeout``) or memory past ``-rss_limit_mb`` is a crash: libFuzzer writes the input to
``-artifact_prefix`` and exits non-zero. Save such an input into tests/fuzz/corpus/ once fixed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["ckptd", "tests.fuzz_checks"]):
    from tests.fuzz_checks import check_bytes

WORKDIR = Path(tempfile.mkdtemp(prefix="ckptd-fuzz-"))


def one_input(data: bytes) -> None:
    check_bytes(data, WORKDIR)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
