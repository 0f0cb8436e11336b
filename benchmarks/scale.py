"""Scale benchmark: ``ckptd prune --dry-run`` over 1,000 runs x 100 checkpoints, cold and warm.

Builds the tree in a temp dir (or ``--dir``): small real files, half SB2 zips and half SB2 legacy
pickles (real magic and structure, so content identification does real work), named
``rl_model_<step>_steps.{zip,pkl}``, with mtimes spread over the last ~4 days. Then it runs, each
as a fresh process whose wall time and peak RSS are measured (``resource.getrusage(RUSAGE_CHILDREN)``
inside a one-child wrapper, so each figure is that command's own):

1. ``ckptd prune --dry-run --json`` cold (no manifests: every file is identified by content);
2. ``ckptd manifest`` (hashes every file, writes 1,000 manifests and the index);
3. ``ckptd prune --dry-run --json`` warm (manifests present, nothing changed: stat only);
4. ``find ROOT -type f -printf '%s %T@\\n'`` over the same tree (one stat per file, in C).

CPU seconds (user + system, the command and its forked workers) are printed beside wall time:
on a shared machine they say more than the wall clock. The CLI forks one worker per core.

The script checks the first targets: cold < 10 s and < 300 MB, warm < 2 s (the current ones,
cold < 5 s and warm < 1 s, are in docs/architecture.md, "Performance targets"). Page caches are
warm in every case (the tree was just written); ``--drop-caches`` (root only) drops them before the
cold run.

    .venv/bin/python benchmarks/scale.py [--runs 1000] [--per-run 100] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

WRAPPER = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
result = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
elapsed = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": elapsed, "peak_mib": usage.ru_maxrss / 1024, "rc": result.returncode,
                  "cpu": usage.ru_utime + usage.ru_stime,
                  "stderr": result.stderr.decode(errors="replace")[-2000:]}))
"""


def legacy_pickle_bytes() -> bytes:
    """A legacy SB2 checkpoint in miniature: ``pickle.dumps((data, params), protocol=4)`` with the
    policy class referenced from a stand-in ``stable_baselines`` module (what the sniffer looks for)
    and an OrderedDict of one small float32 array, as SB2 1.x-2.x saved them."""
    import pickle
    import types
    from collections import OrderedDict

    import numpy as np

    module = types.ModuleType("stable_baselines.common.policies")

    class MlpPolicy:
        pass

    MlpPolicy.__module__ = module.__name__
    MlpPolicy.__qualname__ = "MlpPolicy"
    module.MlpPolicy = MlpPolicy  # type: ignore[attr-defined]
    stand_ins = {
        name: types.ModuleType(name) for name in ("stable_baselines", "stable_baselines.common")
    }
    stand_ins[module.__name__] = module
    sys.modules.update(stand_ins)
    try:
        data = {"gamma": 0.99, "n_steps": 128, "policy": MlpPolicy}
        params = OrderedDict([("model/pi_fc0/w:0", np.arange(16, dtype=np.float32).reshape(4, 4))])
        return pickle.dumps((data, params), protocol=4)
    finally:
        for name in stand_ins:
            del sys.modules[name]


def sb2_zip_bytes() -> bytes:
    """A small SB2 zip (data, parameters, parameter_list), built once and written 50,000 times."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data", json.dumps({"gamma": 0.99, "n_steps": 128}, indent=4))
        archive.writestr("parameters", b"PK\x05\x06" + b"\x00" * 18)  # an empty npz
        archive.writestr("parameter_list", "[]")
    return buffer.getvalue()


def build_tree(root: Path, runs: int, per_run: int) -> int:
    zipped, pickled = sb2_zip_bytes(), legacy_pickle_bytes()
    newest = datetime.now(UTC) - timedelta(hours=1)
    files = 0
    for run_index in range(runs):
        run_dir = root / f"exp-{run_index // 100:02d}" / f"run-{run_index:04d}"
        run_dir.mkdir(parents=True)
        for i in range(per_run):
            step = (i + 1) * 10_000
            is_zip = i % 2 == 0
            path = run_dir / f"rl_model_{step}_steps.{'zip' if is_zip else 'pkl'}"
            path.write_bytes(zipped if is_zip else pickled)
            when = newest - timedelta(hours=per_run - i)  # ~4 days, one checkpoint an hour
            ns = int(when.timestamp()) * 1_000_000_000
            os.utime(path, ns=(ns, ns))
            files += 1
    return files


def write_config(directory: Path, root: Path) -> Path:
    config = directory / "ckptd.yaml"
    config.write_text(
        "version: 1\n"
        f"roots:\n  - path: {root}\n    run_depth: 2\n"
        "policies:\n  default:\n    keep_last: 3\n    keep_within: 6h\n    keep_daily: 7\n"
        "    keep_weekly: 4\n    protect: [best_model.zip]\n"
    )
    return config


def measure(command: list[str]) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-c", WRAPPER, *command],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    result: dict[str, float] = json.loads(output)
    if result["rc"] not in (0,):
        print(
            f"  ! {' '.join(command[:4])}... exited {result['rc']}: {result['stderr']}",
            file=sys.stderr,
        )
    return result


def results_table(
    rows: list[tuple[str, dict[str, float]]], *, files: int, runs: int, load_before: float
) -> str:
    """The figures as a Markdown table, ready to paste into the README, with the machine load
    (1-minute load average before and after: on a shared machine it explains the wall times)."""
    lines = [
        f"{files:,} checkpoints in {runs:,} runs, {os.cpu_count()} cores, "
        f"load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after",
        "",
        "| command | wall s | CPU s | peak MiB |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| `{name}` | {r['seconds']:.2f} | {r['cpu']:.2f} | {r['peak_mib']:.0f} |"
        for name, r in rows
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--per-run", type=int, default=100)
    parser.add_argument("--dir", type=Path, help="build the tree here (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the tree afterwards")
    parser.add_argument(
        "--drop-caches", action="store_true", help="drop page caches before the cold run"
    )
    args = parser.parse_args()

    base = args.dir or Path(tempfile.mkdtemp(prefix="ckptd-scale-"))
    root = base / "runs"
    ckptd = [sys.executable, "-m", "ckptd"]
    try:
        start = time.perf_counter()
        files = build_tree(root, args.runs, args.per_run)
        print(
            f"built {files} checkpoints in {args.runs} runs under {root} in {time.perf_counter() - start:.1f} s"
        )
        config = write_config(base, root)
        load_before = os.getloadavg()[0]
        if args.drop_caches:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        rows = [
            (
                "prune --dry-run (cold)",
                measure([*ckptd, "prune", "-c", str(config), "--dry-run", "--json"]),
            ),
            ("manifest (writes all)", measure([*ckptd, "manifest", "-c", str(config)])),
            (
                "prune --dry-run (warm)",
                measure([*ckptd, "prune", "-c", str(config), "--dry-run", "--json"]),
            ),
            (
                "find -type f -printf",
                measure(["find", str(root), "-type", "f", "-printf", "%s %T@\n"]),
            ),
        ]
        cold, warm = rows[0][1], rows[2][1]
        verdict = cold["seconds"] < 10 and cold["peak_mib"] < 300 and warm["seconds"] < 2
        print()
        print(results_table(rows, files=files, runs=args.runs, load_before=load_before))
        print(
            f"\ntargets (cold < 10 s and < 300 MB, warm < 2 s): {'met' if verdict else 'NOT met'}"
        )
        return 0 if verdict else 1
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
