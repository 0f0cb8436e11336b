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

The script checks the targets of docs/architecture.md ("Performance targets"): cold < 5 s and
< 300 MB, warm < 1 s (the first ones were 10 s and 2 s), each printed beside its anchor, ``find``
over the same tree. Page caches are warm in every case (the tree was just written);
``--drop-caches`` (root only) drops them before the cold run. ``--reuse`` measures an existing tree
(from ``--keep``) without building it again; its manifests are removed first, so the cold run is
cold.

    .venv/bin/python benchmarks/scale.py [--runs 1000] [--per-run 100] [--dir DIR] [--keep]
        [--reuse] [--json FILE] [--checkout CHECKOUT]
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

from bench_bytecode import REPO, compile_package

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


def measure(command: list[str], cwd: Path | None = None) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-c", WRAPPER, *command],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        cwd=cwd,
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


def target_rows(rows: list[tuple[str, dict[str, float]]], files: int) -> list[dict[str, object]]:
    """The prune rows of the targets table (``benchmarks/targets.py``)."""
    by_name = dict(rows)
    cold, warm = by_name["prune --dry-run (cold)"], by_name["prune --dry-run (warm)"]
    find = by_name["find -type f -printf"]
    anchor = f"{find['seconds']:.2f} s (find)"
    return [
        {
            "row": f"cold prune --dry-run, {files // 1000}k",
            "ckptd": f"{cold['seconds']:.2f} s",
            "anchor": anchor,
            "result": f"{cold['seconds']:.2f} s, {cold['peak_mib']:.0f} MiB",
            "target": "< 5 s, < 300 MB",
            "met": cold["seconds"] < 5 and cold["peak_mib"] < 300 and cold["rc"] == 0,
        },
        {
            "row": f"warm prune --dry-run, {files // 1000}k",
            "ckptd": f"{warm['seconds']:.2f} s",
            "anchor": anchor,
            "result": f"{warm['seconds']:.2f} s",
            "target": "< 1 s",
            "met": warm["seconds"] < 1 and warm["rc"] == 0,
        },
    ]


def remove_manifests(root: Path, manifest_name: str = "ckptd-manifest.json") -> None:
    """Make a kept tree cold again: no manifests, indexes or state dirs."""
    for path in [*root.glob(f"*/*/{manifest_name}"), *root.glob("ckptd-index.json")]:
        path.unlink()
    for state in root.glob("*/*/.ckptd"):
        shutil.rmtree(state)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--per-run", type=int, default=100)
    parser.add_argument("--dir", type=Path, help="build the tree here (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the tree afterwards")
    parser.add_argument(
        "--drop-caches", action="store_true", help="drop page caches before the cold run"
    )
    parser.add_argument("--reuse", action="store_true", help="measure the tree already in --dir")
    parser.add_argument("--json", type=Path, help="also write the target rows here as JSON")
    parser.add_argument(
        "--checkout", type=Path, help="run the ckptd of this checkout (e.g. a worktree of main)"
    )
    args = parser.parse_args()

    checkout = (args.checkout or REPO).resolve()
    compile_package(checkout)
    base = args.dir or Path(tempfile.mkdtemp(prefix="ckptd-scale-"))
    root = base / "runs"
    ckptd = [sys.executable, "-m", "ckptd"]
    try:
        start = time.perf_counter()
        if args.reuse:
            remove_manifests(root)
            files = sum(1 for path in root.rglob("rl_model_*") if path.is_file())
        else:
            files = build_tree(root, args.runs, args.per_run)
        print(
            f"{'found' if args.reuse else 'built'} {files} checkpoints in {args.runs} runs under "
            f"{root} in {time.perf_counter() - start:.1f} s"
        )
        config = write_config(base, root)
        load_before = os.getloadavg()[0]
        if args.drop_caches:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        rows = [
            (
                "prune --dry-run (cold)",
                measure([*ckptd, "prune", "-c", str(config), "--dry-run", "--json"], checkout),
            ),
            ("manifest (writes all)", measure([*ckptd, "manifest", "-c", str(config)], checkout)),
            (
                "prune --dry-run (warm)",
                measure([*ckptd, "prune", "-c", str(config), "--dry-run", "--json"], checkout),
            ),
            (
                "find -type f -printf",
                measure(["find", str(root), "-type", "f", "-printf", "%s %T@\n"]),
            ),
        ]
        print()
        print(results_table(rows, files=files, runs=args.runs, load_before=load_before))
        targets = target_rows(rows, files)
        print()
        for row in targets:
            print(
                f"{row['row']:32} {row['ckptd']:>8}  beside {row['anchor']:16}  "
                f"target {row['target']:16} {'met' if row['met'] else 'MISS'}"
            )
        if args.json is not None:
            load = f"load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after"
            args.json.write_text(json.dumps({"rows": targets, "load": load}))
        return 0 if all(row["met"] for row in targets) else 1
    finally:
        if not args.keep and not args.dir and not args.reuse:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
