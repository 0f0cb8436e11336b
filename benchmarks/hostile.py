"""Time and peak RSS of refusing hostile-but-small checkpoints (docs/security.md, "Budgets").

Writes the inputs of the Budgets table (opcode floods of about 5 MB, a 400 KB zip of stored
``:serialized:`` floods, a 1 KB shared-memo DAG used as a dict key) and runs ``ckptd convert`` /
``verify`` on each in a child process, printing wall time, peak RSS and the one-line verdict. With
``--code DIR`` the child imports ckptd from DIR instead (e.g. an export of an older commit:
``git archive --prefix=old/ <commit> ckptd | tar -x -C /tmp``, then ``--code /tmp/old``), which is
how the "before" column was measured. Not part of the test run.

Usage: .venv/bin/python benchmarks/hostile.py [--code DIR] [--timeout SECONDS] [WORKDIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import hostile_gen as gen  # the generators the tests use

BOOT = (
    "import sys; code = sys.argv.pop(1); sys.path.insert(0, code) if code else None; "
    "from ckptd.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


def none_flood(count: int) -> bytes:
    """A legacy checkpoint whose data['x'] is a list of ``count`` Nones (one opcode each)."""
    ops = gen.Ops()
    ops.raw(b"}").text("policy").raw(gen.POLICY + b"s").text("x")
    ops.raw(b"(" + b"N" * count + b"l")
    ops.raw(b"sccollections\nOrderedDict\n)R\x86")
    return ops.stop()


def inputs(workdir: Path) -> list[tuple[str, Path]]:
    stored_floods = gen.sb2_zip_bytes(
        {
            "a": gen.value_pickle("key-flood", 60_000),
            "b": gen.value_pickle("flood", 100_000),
            "c": gen.value_pickle("key-flood", 40_000),
        }
    )
    files = {
        "none-flood.pkl": none_flood(4_900_000),
        "tuple-flood.pkl": gen.legacy_pickle("flood", 5_000_000),
        "stored-floods.zip": stored_floods,
        "dag-key.pkl": gen.legacy_pickle("dag-key", 60),
    }
    commands = {".pkl": ("convert", "verify"), ".zip": ("verify",)}
    runs = []
    for name, data in files.items():
        path = gen.write(workdir / name, data)
        runs.extend((command, path) for command in commands[path.suffix])
    return runs


def measure(command: str, path: Path, code: str, timeout: float) -> str:
    """Run one command in a child; its own wall time and peak RSS (``wait4``), and its last line."""
    with tempfile.TemporaryFile("w+") as stderr:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", BOOT, code, command, str(path)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=path.parent,
        )
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - start
        stderr.seek(0)
        lines = stderr.read().strip().splitlines()
    if wall >= timeout:
        verdict, outcome = f"still running after {timeout:.0f} s (killed)", "timeout"
    else:
        verdict, outcome = (lines or ["ok"])[-1][:110], f"exit {proc.returncode}"
    peak = f"{usage.ru_maxrss / 1024:.0f} MiB"
    return f"{command:8} {path.name:18} {outcome:8} {wall:6.1f} s {peak:>9}  {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", type=Path)
    parser.add_argument("--code", default="", help="import ckptd from this directory")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        for command, path in inputs(workdir):
            print(measure(command, path, args.code, args.timeout), flush=True)
            for made in workdir.glob("*.zip"):
                if made.name != "stored-floods.zip":
                    made.unlink()  # an old build may have converted a flood


if __name__ == "__main__":
    main()
