"""Converting a ~200 MB legacy checkpoint: ckptd vs the plain way vs ``cp`` + ``openssl dgst``.

The targets (docs/architecture.md, "Performance targets"): ``ckptd convert`` (which also verifies
the written zip, fsyncs it and hashes both files) takes at most half the time of stable-baselines'
own path and at most 0.3x its peak memory, and at most 2x the floor: copying the file and hashing
the copy. Each measurement is a fresh process (interpreter start-up and imports included, for
all of them); the parent takes wall time around it and the child's peak RSS from ``os.wait4``
(the per-child ``ru_maxrss``; the ``cp`` + ``openssl`` shell reports the largest of its children).
The modes alternate within each repeat, so load from other work on the machine falls on all alike;
the 1-minute load average is printed before and after, and each mode's CPU seconds (user + system,
of the child and its threads) beside its wall time.

* ``ckptd``: the command a user runs, ``python -m ckptd convert SRC -o OUT`` (what it imports,
  what it prints);
* ``ckptd-lib``: ``ckptd.convert.conversion.convert_file(src, output=out)`` in a process that
  imports nothing else (``in-child s``: the conversion alone, as in the daemon's long-lived parser
  processes, which pay no start-up);
* ``plain`` (stable-baselines' own path): ``cloudpickle.load`` the file, then stable-baselines
  2.10's ``_save_to_file_zip``: ``data_to_json``, ``np.savez`` into a BytesIO, ``zipfile`` with
  ``data`` / ``parameters`` / ``parameter_list`` (no verification, no hashing, no fsync), in a
  process that imports only what that needs (numpy, cloudpickle, the stand-in classes; not
  stable-baselines and TensorFlow, which its real path imports first: a lower bound);
* ``cp+sha``: ``cp src dst && openssl dgst -sha256 dst`` (``sha256sum`` without openssl).

No child imports this script: each runs a few lines of its own (``child_argv``), so none pays for
another's imports. The source is PPO2-shaped (``tests/sb2_fixtures``' stand-in policy class, gym
spaces, a ``constfn`` closure and a lambda) with ~200 MB of float32 parameters in a few dozen
arrays, written by ``cloudpickle.dump`` at protocol 4. The page cache is warmed before every run,
so all read from memory. Not part of the test run.

Usage: .venv/bin/python benchmarks/convert.py [--mb 200] [--repeats 3] [--dir DIR] [--json FILE]
       [--baseline CHECKOUT]   (also times another checkout's ckptd, e.g. main's, in the same run)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_bytecode import compile_package

REPO = Path(__file__).resolve().parent.parent
ARRAY_COUNT = 36
MIB = 1024 * 1024


@dataclass(frozen=True)
class Run:
    wall_s: float
    inner_s: float | None  # the child's own timing of the work, without interpreter start-up
    peak_rss_mib: float
    cpu_s: float  # user + system seconds of the child (all its threads; a shell's children)


# --- the source checkpoint ----------------------------------------------------------------------


def make_source(path: Path, total_mb: int) -> int:
    """Write a PPO2-shaped legacy checkpoint with ~total_mb MiB of float32 parameters."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from tests.sb2_fixtures import ppo2_data, stand_ins, write_checkpoint

    per_array = total_mb * MIB // ARRAY_COUNT // 4
    rng = np.random.default_rng(0)
    params: OrderedDict[str, np.ndarray] = OrderedDict()
    for index in range(ARRAY_COUNT):
        rows = 256
        params[f"model/layer{index}/w:0"] = rng.standard_normal(
            (rows, per_array // rows), dtype=np.float32
        )
    with stand_ins():
        data = ppo2_data()
        write_checkpoint(path, data, params, protocol=4)
    return sum(array.nbytes for array in params.values())


# --- the children ---------------------------------------------------------------------------------

# Each child is ``python -c CODE SRC OUT`` with the checkout to measure as its working directory
# (first on sys.path); it prints its own timing of the work as {"inner_s": ...}.
_CHILD_CKPTD_LIB = """
import json, sys, time
from pathlib import Path
from ckptd.convert.conversion import convert_file
started = time.perf_counter()
convert_file(Path(sys.argv[1]), output=Path(sys.argv[2]))
print(json.dumps({"inner_s": time.perf_counter() - started}))
"""

# stable_baselines/common/save_util.py:data_to_json and BaseRLModel._save_to_file_zip (2.10),
# after BaseRLModel._load_from_file_cloudpickle; the stand-in classes replace the SB2 and gym
# classes the file references (they are what tests/sb2_fixtures pickled).
_CHILD_PLAIN = """
import base64, io, json, sys, time, zipfile
import cloudpickle
import numpy as np
sys.path.insert(0, sys.argv[3])
from tests.sb2_fixtures import stand_ins

def is_json(value):
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True

def data_to_json(data):
    serializable = {}
    for key, value in data.items():
        if is_json(value):
            serializable[key] = value
            continue
        entry = {
            ":type:": str(type(value)),
            ":serialized:": base64.b64encode(cloudpickle.dumps(value)).decode(),
        }
        attributes = getattr(value, "__dict__", value if isinstance(value, dict) else {})
        for name, attribute in attributes.items():
            entry[str(name)] = attribute if is_json(attribute) else str(attribute)
        serializable[key] = entry
    return json.dumps(serializable, indent=4)

started = time.perf_counter()
with stand_ins(), open(sys.argv[1], "rb") as handle:
    data, params = cloudpickle.load(handle)
    serialized_data = data_to_json(data)
buffer = io.BytesIO()
np.savez(buffer, **params)
serialized_params = buffer.getvalue()
serialized_param_list = json.dumps(list(params.keys()), indent=4)
with zipfile.ZipFile(sys.argv[2], "w") as archive:
    archive.writestr("data", serialized_data)
    archive.writestr("parameters", serialized_params)
    archive.writestr("parameter_list", serialized_param_list)
print(json.dumps({"inner_s": time.perf_counter() - started}))
"""


def child_argv(mode: str, source: Path, output: Path) -> list[str]:
    """The command of one measured child (the checkout it measures is its working directory)."""
    if mode in ("ckptd", "baseline"):
        return [sys.executable, "-m", "ckptd", "convert", str(source), "-o", str(output)]
    if mode in ("ckptd-lib", "baseline-lib"):
        return [sys.executable, "-c", _CHILD_CKPTD_LIB, str(source), str(output)]
    if mode == "plain":
        return [sys.executable, "-c", _CHILD_PLAIN, str(source), str(output), str(REPO)]
    hasher = f"openssl dgst -sha256 {output}" if shutil.which("openssl") else f"sha256sum {output}"
    return ["sh", "-c", f"cp {source} {output} && {hasher} > /dev/null"]


# --- the parent ---------------------------------------------------------------------------------


def _measure(argv: list[str], cwd: Path) -> Run:
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    out = process.stdout.read()
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{argv} failed ({process.returncode}): {err.decode()[-2000:]}")
    inner = None
    for line in out.decode().splitlines():
        if line.startswith("{"):
            inner = float(json.loads(line)["inner_s"])
    cpu = usage.ru_utime + usage.ru_stime
    return Run(wall, inner, usage.ru_maxrss / 1024, cpu)  # ru_maxrss is in KiB on Linux


def _warm(path: Path) -> None:
    with path.open("rb") as handle:
        while handle.read(16 * MIB):
            pass


def measure_all(
    workdir: Path, source: Path, repeats: int, baseline: Path | None = None
) -> dict[str, list[Run]]:
    modes = ["ckptd", "ckptd-lib", "plain", "cp+sha"]
    if baseline is not None:
        modes += ["baseline", "baseline-lib"]
    results: dict[str, list[Run]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode in results:
            output = workdir / f"out-{mode}.zip"
            output.unlink(missing_ok=True)
            _warm(source)
            checkout = baseline if mode.startswith("baseline") and baseline is not None else REPO
            results[mode].append(_measure(child_argv(mode, source, output), checkout.resolve()))
            output.unlink(missing_ok=True)
    return results


# A round of stable-baselines' path within this factor of its fastest is one of its fast rounds.
# Its rounds fall in two groups (0.37-0.43 s and 0.64-0.96 s on this project's machine, whatever
# ran before them: README, "Benchmarks"), so the median ratio depends on how many of each a run
# drew; this row shows ckptd against each group.
FAST_ROUND_FACTOR = 1.3


def _rounds_row(ckptd_wall: float, plain_walls: list[float]) -> dict[str, Any]:
    fastest = min(plain_walls)
    fast = [wall for wall in plain_walls if wall <= FAST_ROUND_FACTOR * fastest]
    slow = [wall for wall in plain_walls if wall > FAST_ROUND_FACTOR * fastest]

    def side(walls: list[float]) -> tuple[str, str]:
        if not walls:
            return "none", "-"
        median = statistics.median(walls)
        return f"{len(walls)} at {median:.2f} s", f"{ckptd_wall / median:.2f}x"

    (fast_anchor, fast_ratio), (slow_anchor, slow_ratio) = side(fast), side(slow)
    return {
        "row": "convert vs that path's fast / slow rounds",
        "ckptd": f"{ckptd_wall:.2f} s",
        "anchor": f"{fast_anchor} / {slow_anchor}",
        "result": f"{fast_ratio} / {slow_ratio}",
        "target": "(info)",
        "met": True,
    }


def target_rows(results: dict[str, list[Run]]) -> list[dict[str, Any]]:
    """The conversion rows of the targets table (``benchmarks/targets.py``), medians."""
    wall = {mode: statistics.median(run.wall_s for run in runs) for mode, runs in results.items()}
    cpu = {mode: statistics.median(run.cpu_s for run in runs) for mode, runs in results.items()}
    rss = {
        mode: statistics.median(run.peak_rss_mib for run in runs) for mode, runs in results.items()
    }
    time_ratio = wall["ckptd"] / wall["plain"]
    rss_ratio = rss["ckptd"] / rss["plain"]
    floor_ratio = wall["ckptd"] / wall["cp+sha"]
    rows = [
        {
            "row": "convert, time vs stable-baselines' own path",
            "ckptd": f"{wall['ckptd']:.2f} s",
            "anchor": f"{wall['plain']:.2f} s (SB2's path)",
            "result": f"{time_ratio:.2f}x",
            "target": "<= 0.5x",
            "met": time_ratio <= 0.5,
        },
        {
            "row": "convert, peak RSS vs that path",
            "ckptd": f"{rss['ckptd']:.0f} MiB",
            "anchor": f"{rss['plain']:.0f} MiB (SB2's path)",
            "result": f"{rss_ratio:.2f}x",
            "target": "<= 0.3x",
            "met": rss_ratio <= 0.3,
        },
        {
            "row": "convert vs the floor (cp + openssl dgst -sha256)",
            "ckptd": f"{wall['ckptd']:.2f} s",
            "anchor": f"{wall['cp+sha']:.2f} s (cp+sha)",
            "result": f"{floor_ratio:.2f}x",
            "target": "<= 2x",
            "met": floor_ratio <= 2,
        },
        _rounds_row(wall["ckptd"], [run.wall_s for run in results["plain"]]),
        {
            "row": "convert, CPU seconds vs SB2's path (2 cores shared)",
            "ckptd": f"{cpu['ckptd']:.2f} s",
            "anchor": f"{cpu['plain']:.2f} s (SB2's path)",
            "result": f"{cpu['ckptd'] / cpu['plain']:.2f}x",
            "target": "(info)",
            "met": True,
        },
    ]
    if "baseline" in wall:
        rows.append(
            {
                "row": "convert, the baseline checkout (same rounds)",
                "ckptd": f"{wall['baseline']:.2f} s",
                "anchor": f"{wall['plain']:.2f} s (SB2's path)",
                "result": f"{wall['baseline'] / wall['plain']:.2f}x, "
                f"{wall['baseline'] / wall['cp+sha']:.2f}x floor",
                "target": "(before)",
                "met": True,
            }
        )
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    """Rows of the targets table, each beside its anchor."""
    width = max(len(row["row"]) for row in rows)
    print(f"{'':{width}}  {'ckptd':>10}  {'anchor':>24}  {'result':>8}  {'target':>8}")
    for row in rows:
        print(
            f"{row['row']:{width}}  {row['ckptd']:>10}  {row['anchor']:>24}  "
            f"{row['result']:>8}  {row['target']:>8}  {'met' if row['met'] else 'MISS'}"
        )


def report(results: dict[str, list[Run]], size: int, params_bytes: int) -> list[dict[str, Any]]:
    print(
        f"source: {size / MIB:.1f} MiB ({params_bytes / MIB:.1f} MiB of float32 params, "
        f"{ARRAY_COUNT} arrays), {len(results['ckptd'])} runs each, medians\n"
    )
    print(
        f"{'':12} {'wall s':>8} {'CPU s':>7} {'in-child s':>11} {'peak RSS MiB':>13}   all wall s"
    )
    for mode, runs in results.items():
        wall = statistics.median(run.wall_s for run in runs)
        cpu = statistics.median(run.cpu_s for run in runs)
        rss = statistics.median(run.peak_rss_mib for run in runs)
        inner_values = [run.inner_s for run in runs if run.inner_s is not None]
        inner = f"{statistics.median(inner_values):11.2f}" if inner_values else f"{'-':>11}"
        every = " ".join(f"{run.wall_s:.2f}" for run in runs)
        print(f"{mode:12} {wall:8.2f} {cpu:7.2f} {inner} {rss:13.0f}   {every}")
    print()
    rows = target_rows(results)
    print_rows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mb", type=int, default=200, help="MiB of parameters (default 200)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=None, help="work directory (default: a temp dir)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here as JSON")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="also time ckptd imported from this checkout (e.g. a worktree of main), side by side",
    )
    parser.add_argument("--make", nargs=2, metavar=("SRC", "MB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        print(make_source(Path(args.make[0]), int(args.make[1])))
        return
    compile_package()
    if args.baseline is not None:
        compile_package(args.baseline)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ckptd-bench-") as tmp:
        workdir = Path(tmp)
        source = workdir / "rl_model_1000000_steps.pkl"
        # In a child: the parent must stay small, because Linux carries a parent's peak RSS into
        # a forked child's ru_maxrss (it survives exec), which would mask every measurement.
        made = subprocess.run(
            [sys.executable, __file__, "--make", str(source), str(args.mb)],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        params_bytes = int(made.stdout.strip().splitlines()[-1])
        load_before = os.getloadavg()[0]
        results = measure_all(workdir, source, args.repeats, args.baseline)
        rows = report(results, source.stat().st_size, params_bytes)
        load = f"load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after"
        print(f"\n{os.cpu_count()} cores, {load}")
        if args.json is not None:
            args.json.write_text(json.dumps({"rows": rows, "load": load}))


if __name__ == "__main__":
    main()
