"""Every performance target in one table, each figure beside its anchor, measured in one run.

Runs ``convert.py`` (200 MB legacy checkpoint: ckptd vs stable-baselines' own path vs ``cp`` +
``openssl dgst -sha256``), ``scale.py`` (``prune --dry-run`` over 100,000 checkpoints in 1,000
runs, cold and warm, beside ``find``) and ``daemon.py`` (a real ``ckptd run`` on inotify: a
10,000-file burst, and closed checkpoint -> manifest in an existing and a brand-new run directory)
one after the other, and prints the rows of the targets in docs/architecture.md ("Performance
targets") with the load average seen by each part: the machine is shared, so read wall times with
it. Not part of the test run.

    .venv/bin/python benchmarks/targets.py [--only convert,scale,daemon] [--scale-dir DIR]
        [--baseline CHECKOUT]
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


def run_part(
    part: str, out: Path, scale_dir: Path | None, checkout: Path | None = None
) -> dict[str, object]:
    argv = [sys.executable, str(HERE / f"{part}.py"), "--json", str(out)]
    if checkout is not None:
        argv += ["--checkout", str(checkout)]
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
        "--baseline",
        type=Path,
        default=None,
        help="also measure this checkout (e.g. a worktree of main): convert side by side, "
        "prune and the daemon right after each other",
    )
    parser.add_argument(
        "--scale-dir", type=Path, default=None, help="keep (and reuse) the 100k tree here"
    )
    args = parser.parse_args()
    parts = [part for part in args.only.split(",") if part]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    results: list[tuple[str, dict[str, object]]] = []
    baseline: list[tuple[str, dict[str, object]]] = []
    with tempfile.TemporaryDirectory(prefix="ckptd-targets-") as tmp:
        for part in parts:
            out = Path(tmp) / f"{part}.json"
            if part != "convert" and args.baseline is not None:
                before = Path(tmp) / f"{part}-baseline.json"
                baseline.append((part, run_part(part, before, args.scale_dir, args.baseline)))
            if part == "convert" and args.baseline is not None:
                results.append((part, run_baseline_convert(out, args.baseline)))
            else:
                results.append((part, run_part(part, out, args.scale_dir)))
    if baseline:
        print(f"\nbaseline ({args.baseline}):")
        print_table(baseline)
    print(f"\n{os.cpu_count()} cores; every figure measured in this run\n")
    return 0 if print_table(results) else 1


def run_baseline_convert(out: Path, baseline: Path) -> dict[str, object]:
    """convert.py with the baseline's ckptd timed in the same rounds (its rows printed there)."""
    argv = [
        sys.executable,
        str(HERE / "convert.py"),
        "--json",
        str(out),
        "--baseline",
        str(baseline),
    ]
    print(f"== convert: {' '.join(argv[1:])}", flush=True)
    subprocess.run(argv, check=False, timeout=3600)
    result: dict[str, object] = json.loads(out.read_text())
    return result


def print_table(results: list[tuple[str, dict[str, object]]]) -> bool:
    """The Markdown table of ``results``' rows and the load of each part; whether all are met."""
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
    return all_met


if __name__ == "__main__":
    raise SystemExit(main())
