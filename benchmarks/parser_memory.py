"""Peak address space of the daemon's parser process (ckptd.isolation.supervisor) per file, against its cap.

RLIMIT_AS counts virtual memory, so the cap (``Limits.address_space``: ``limits.max_memory`` plus
headroom, plus the file's size while it is parsed) must hold the interpreter, numpy, BLAS arenas and streamed buffers as well as the counted
content. This converts each file given (and every genuine fixture in tests/data/sb2-genuine) in a
fresh capped child, as the daemon would, and prints the child's VmPeak (what RLIMIT_AS limits),
VmHWM (peak resident) and wall time. ``--make MB`` first writes a PPO2-shaped legacy checkpoint
with MB MiB of parameters (benchmarks/convert.py's generator). Not part of the test run.

Usage: .venv/bin/python benchmarks/parser_memory.py [--make 200] [--dir DIR] [FILE ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ckptd.isolation.supervisor import Isolation
from ckptd.limits import Limits

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmPeak", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def measure(path: Path, out_dir: Path, limits: Limits) -> str:
    isolation = Isolation(limits)
    try:
        started = time.monotonic()
        isolation.identify(path)
        child = isolation._state().child
        assert child is not None
        try:
            outcome = isolation.convert(path, output=out_dir / (path.stem + ".zip"))
            result = outcome.status
        except Exception as err:  # reported, not raised
            result = str(err)[-120:]
        seconds = time.monotonic() - started
        if not child.alive():
            return f"{path.name}: {result} (child gone) {seconds:.1f}s"
        peaks = status(child.pid)
        size = path.stat().st_size
        cap = limits.address_space + size  # what the child sets while parsing this file
        return (
            f"{path.name} ({size / MIB:.1f} MiB): {result}; VmPeak {peaks['VmPeak'] / MIB:.0f}"
            f" MiB, VmHWM {peaks['VmHWM'] / MIB:.0f} MiB of a {cap / MIB:.0f} MiB cap; {seconds:.1f}s"
        )
    finally:
        isolation.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--make", type=int, help="also a legacy checkpoint of MB MiB parameters")
    parser.add_argument("--dir", type=Path, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    limits = Limits()
    files = sorted((REPO / "tests" / "data" / "sb2-genuine").glob("*.pkl")) + list(args.files)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        out_dir = Path(tmp)
        if args.make:
            source = out_dir / f"legacy-{args.make}mb.pkl"
            subprocess.run(
                [sys.executable, str(REPO / "benchmarks" / "convert.py"), "--make", str(source),
                 str(args.make)],
                check=True,
            )  # fmt: skip
            files.append(source)
        for path in files:
            print(measure(path, out_dir, limits), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
