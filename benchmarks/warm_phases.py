"""Where a warm ``prune --dry-run --json`` spends its CPU, phase by phase, in one process.

Runs, per run of the tree and in the order the pass makes them, the calls of one dry-run pass
(``ckptd.retention.passes`` and ``ckptd.retention.prune``): the run lock, reading and parsing
the manifest, the inventory, keep_best's evaluations and the pins, the candidates, the plan, the
report and its JSON text, each timed with ``time.process_time()``; no workers, the cyclic GC
paused as the CLI pauses it. The tree is the one ``benchmarks/scale.py --dir DIR --keep`` leaves
(with its manifests: warm). ``--baseline CHECKOUT`` measures another checkout (e.g. main)
alternately in the same run. Each figure is the median over ``--repeat`` passes, CPU seconds per
pass; the load average is printed with them.

    .venv/bin/python benchmarks/warm_phases.py --dir DIR [--repeat 5] [--baseline CHECKOUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench_bytecode import REPO, compile_package

PHASES = (
    "lock",
    "manifest read",
    "manifest decode + parse",
    "inventory",
    "evaluations + pins",
    "candidates",
    "plan",
    "report",
    "JSON text",
)

CHILD = r"""
import gc, json, sys, time
from datetime import UTC, datetime
from pathlib import Path
from ckptd.cli.prune_cmds import run_json
from ckptd.config.load import load_config
from ckptd.manifest.parse import manifest_from_json
from ckptd.manifest.store import _read_capped
from ckptd.retention import prune
from ckptd.retention.passes import _matcher
from ckptd.retention.plan import plan_run
from ckptd.runs.checkpoints import InventoryOptions
from ckptd.runs.inventory import default_identifier, inventory_run
from ckptd.runs.roots import find_runs
from ckptd.runs.statedir import StateLayout, read_pins, run_lock

config = load_config(Path(sys.argv[1]))
now = datetime.now(UTC)
clock = time.process_time


def one_pass():
    spent = [0.0] * 9
    for root in config.roots:
        policy = config.policy_for(root)
        for run in find_runs(root.path, root.run_depth, config.state_dir).runs:
            t0 = clock()
            layout = StateLayout(run.run_dir, config.state_dir)
            options = InventoryOptions(
                matcher=_matcher(config.checkpoints, config.manifest.filename),
                state_dir=config.state_dir,
                stable_for_ns=int(config.checkpoints.stable_for.total_seconds() * 1e9),
                hash_files=False,
                identify=default_identifier(),
            )
            with run_lock(layout, timeout=30, shared=True, create=False):
                t1 = clock()
                data = _read_capped(run.run_dir / config.manifest.filename)
                t2 = clock()
                manifest = manifest_from_json(data, source="manifest")
                t3 = clock()
                inventory = inventory_run(run, options, now=now, previous=manifest.by_path())
                t4 = clock()
                evaluations = prune._evaluations(run.run_dir, policy, config)
                pins = read_pins(layout)
                t5 = clock()
                candidates = prune.candidates_of(inventory, pins)
                t6 = clock()
                plan = plan_run(candidates, policy, now=now, evaluations=evaluations,
                                max_fraction=config.delete.max_fraction)
                t7 = clock()
                report = prune._report(root.path, run.relpath, plan, inventory)
                t8 = clock()
                run_json(report)
                t9 = clock()
            for index, (start, end) in enumerate(
                zip((t0, t1, t2, t3, t4, t5, t6, t7, t8), (t1, t2, t3, t4, t5, t6, t7, t8, t9))
            ):
                spent[index] += end - start
    return spent


gc.disable()
one_pass()  # page cache, lazily built tables
print(json.dumps([one_pass() for _ in range(int(sys.argv[2]))]))
"""


def measure(checkout: Path, config: Path, repeat: int) -> list[list[float]]:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(config), str(repeat)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        cwd=checkout,
        env=env,
    ).stdout
    passes: list[list[float]] = json.loads(out.splitlines()[-1])
    return passes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="the tree of scale.py --keep")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout, measured alternately")
    args = parser.parse_args()
    config = args.dir / "ckptd.yaml"
    checkouts = [REPO] + ([args.baseline.resolve()] if args.baseline else [])
    for checkout in checkouts:
        compile_package(checkout)
    results: dict[Path, list[list[float]]] = {checkout: [] for checkout in checkouts}
    loads = [os.getloadavg()[0]]
    for _ in range(args.repeat):  # alternately, one pass of each at a time
        for checkout in checkouts:
            results[checkout] += measure(checkout, config, 1)
        loads.append(os.getloadavg()[0])
    print(
        f"CPU s per warm pass (median of {args.repeat}), load average {min(loads):.1f}-{max(loads):.1f}"
    )
    print("| phase | " + " | ".join(c.name for c in checkouts) + " |")
    print("|---|" + "---:|" * len(checkouts))
    for index, phase in enumerate((*PHASES, "total")):
        cells = []
        for checkout in checkouts:
            values = [sum(p) if phase == "total" else p[index] for p in results[checkout]]
            cells.append(f"{statistics.median(values):.3f}")
        print(f"| {phase} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
