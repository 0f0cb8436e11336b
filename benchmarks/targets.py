"""Every performance target in one table, each figure beside its anchor, measured in one run.

Runs ``convert.py`` (200 MB legacy checkpoint: ckptd vs stable-baselines' own path vs ``cp`` +
``openssl dgst -sha256``), ``scale.py`` (``prune --dry-run`` over 100,000 checkpoints in 1,000
runs, cold and warm, beside ``find``) and ``daemon.py`` (a real ``ckptd run`` on inotify: a
10,000-file burst, and closed checkpoint -> manifest in an existing and a brand-new run directory)
one after the other, and prints the rows of the targets in docs/architecture.md ("Performance
targets") with the load average seen by each part: the machine is shared, so read wall times with
it. Not part of the test run.

    .venv/bin/python benchmarks/targets.py [--only convert,scale,daemon] [--scale-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = ("convert", "scale", "daemon")


def run_part(part: str, out: Path, scale_dir: Path | None) -> dict[str, object]:
    argv = [sys.executable, str(HERE / f"{part}.py"), "--json", str(out)]
    if part == "scale" and scale_dir is not None:
        reuse = (scale_dir / "runs").is_dir()
        argv += ["--dir", str(scale_dir), "--keep"] + (["--reuse"] if reuse else [])
    print(f"== {part}: {' '.join(argv[1:])}", flush=True)
    subprocess.run(argv, check=False, timeout=3600)  # a missed target exits 1: still a result
    if not out.exists():
        raise SystemExit(f"{part}.py wrote no results")
    result: dict[str, object] = json.loads(out.read_text())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts to run")
    parser.add_argument(
        "--scale-dir", type=Path, default=None, help="keep (and reuse) the 100k tree here"
    )
    args = parser.parse_args()
    parts = [part for part in args.only.split(",") if part]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    results: list[tuple[str, dict[str, object]]] = []
    with tempfile.TemporaryDirectory(prefix="ckptd-targets-") as tmp:
        for part in parts:
            results.append((part, run_part(part, Path(tmp) / f"{part}.json", args.scale_dir)))
    print(f"\n{os.cpu_count()} cores; every figure measured in this run\n")
    print("| | ckptd | anchor | result | target | |")
    print("|---|---:|---:|---:|---:|---|")
    all_met = True
    for _part, result in results:
        rows = result["rows"]
        assert isinstance(rows, list)
        for row in rows:
            all_met = all_met and bool(row["met"])
            print(
                f"| {row['row']} | {row['ckptd']} | {row['anchor']} | {row['result']} "
                f"| {row['target']} | {'met' if row['met'] else 'MISS'} |"
            )
    print()
    for part, result in results:
        print(f"{part}: {result['load']}")
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
