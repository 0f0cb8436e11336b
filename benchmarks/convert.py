"""Converting a ~200 MB legacy checkpoint: ckptd vs the plain way vs ``cp`` + ``openssl dgst``.

The first target: ckptd's ``convert_file`` (which also verifies the written zip and hashes both
files) takes less time than the plain way and at most half its peak memory, and stays within 3x
of copying the file and hashing the copy (the current, tighter targets are in
docs/architecture.md, "Performance targets"). Each measurement runs in a fresh child process; the
parent takes wall time around it and the child's peak RSS from ``os.wait4`` (the per-child
``ru_maxrss``; the ``cp`` + ``openssl`` shell reports the largest of its children).

* ``ckptd``: ``ckptd.convert.conversion.convert_file(src, output=out)``;
* ``plain``: ``cloudpickle.load`` the file, then stable-baselines 2.10's ``_save_to_file_zip``:
  ``data_to_json``, ``np.savez`` into a BytesIO, ``zipfile`` with ``data`` / ``parameters`` /
  ``parameter_list`` (no verification, no hashing, no fsync);
* ``cp+sha``: ``cp src dst && openssl dgst -sha256 dst`` (``sha256sum`` without openssl).

The source is PPO2-shaped (``tests/sb2_fixtures``' stand-in policy class, gym spaces, a
``constfn`` closure and a lambda) with ~200 MB of float32 parameters in a few dozen arrays,
written by ``cloudpickle.dump`` at protocol 4. The page cache is warmed before every run, so
all three read from memory. Not part of the test run.

Usage: .venv/bin/python benchmarks/convert.py [--mb 200] [--repeats 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ARRAY_COUNT = 36
MIB = 1024 * 1024


@dataclass(frozen=True)
class Run:
    wall_s: float
    inner_s: float | None  # the child's own timing of the work, without interpreter start-up
    peak_rss_mib: float


# --- the source checkpoint ----------------------------------------------------------------------


def make_source(path: Path, total_mb: int) -> int:
    """Write a PPO2-shaped legacy checkpoint with ~total_mb MiB of float32 parameters."""
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


def child_ckptd(source: Path, output: Path) -> None:
    from ckptd.convert.conversion import convert_file

    convert_file(source, output=output)


def _sb2_is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def _sb2_data_to_json(data: dict[str, Any]) -> str:
    """stable_baselines/common/save_util.py:data_to_json (2.10), for the plain way."""
    import cloudpickle

    serializable: dict[str, Any] = {}
    for key, value in data.items():
        if _sb2_is_json(value):
            serializable[key] = value
            continue
        entry: dict[str, Any] = {
            ":type:": str(type(value)),
            ":serialized:": base64.b64encode(cloudpickle.dumps(value)).decode(),
        }
        attributes = getattr(value, "__dict__", value if isinstance(value, dict) else {})
        for name, attribute in attributes.items():
            entry[str(name)] = attribute if _sb2_is_json(attribute) else str(attribute)
        serializable[key] = entry
    return json.dumps(serializable, indent=4)


def child_plain(source: Path, output: Path) -> None:
    import cloudpickle

    sys.path.insert(0, str(REPO))
    from tests.sb2_fixtures import stand_ins

    with stand_ins(), source.open("rb") as handle:
        data, params = cloudpickle.load(handle)
        serialized_data = _sb2_data_to_json(data)
    buffer = io.BytesIO()
    np.savez(buffer, **params)
    serialized_params = buffer.getvalue()
    serialized_param_list = json.dumps(list(params.keys()), indent=4)
    with zipfile.ZipFile(output, "w") as archive:
        archive.writestr("data", serialized_data)
        archive.writestr("parameters", serialized_params)
        archive.writestr("parameter_list", serialized_param_list)


CHILDREN = {"ckptd": child_ckptd, "plain": child_plain}


def run_child(mode: str, source: Path, output: Path) -> None:
    started = time.perf_counter()
    CHILDREN[mode](source, output)
    print(json.dumps({"inner_s": time.perf_counter() - started}))


# --- the parent ---------------------------------------------------------------------------------


def _measure(argv: list[str]) -> Run:
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
    return Run(wall, inner, usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


def _warm(path: Path) -> None:
    with path.open("rb") as handle:
        while handle.read(16 * MIB):
            pass


def _hash_command(source: Path, copy: Path) -> list[str]:
    hasher = f"openssl dgst -sha256 {copy}" if shutil.which("openssl") else f"sha256sum {copy}"
    return ["sh", "-c", f"cp {source} {copy} && {hasher} > /dev/null"]


def measure_all(workdir: Path, source: Path, repeats: int) -> dict[str, list[Run]]:
    results: dict[str, list[Run]] = {"ckptd": [], "plain": [], "cp+sha": []}
    for _ in range(repeats):
        for mode in results:
            output = workdir / f"out-{mode}.zip"
            output.unlink(missing_ok=True)
            _warm(source)
            if mode == "cp+sha":
                argv = _hash_command(source, output)
            else:
                argv = [sys.executable, __file__, "--child", mode, str(source), str(output)]
            results[mode].append(_measure(argv))
            output.unlink(missing_ok=True)
    return results


def report(results: dict[str, list[Run]], size: int, params_bytes: int) -> None:
    print(
        f"source: {size / MIB:.1f} MiB ({params_bytes / MIB:.1f} MiB of float32 params, "
        f"{ARRAY_COUNT} arrays), {len(results['ckptd'])} runs each, medians\n"
    )
    print(f"{'':8} {'wall s':>8} {'in-child s':>11} {'peak RSS MiB':>13}   all wall s")
    medians: dict[str, tuple[float, float]] = {}
    for mode, runs in results.items():
        wall = statistics.median(run.wall_s for run in runs)
        rss = statistics.median(run.peak_rss_mib for run in runs)
        inner_values = [run.inner_s for run in runs if run.inner_s is not None]
        inner = f"{statistics.median(inner_values):11.2f}" if inner_values else f"{'-':>11}"
        every = " ".join(f"{run.wall_s:.2f}" for run in runs)
        print(f"{mode:8} {wall:8.2f} {inner} {rss:13.0f}   {every}")
        medians[mode] = (wall, rss)
    ckptd_wall, ckptd_rss = medians["ckptd"]
    plain_wall, plain_rss = medians["plain"]
    cp_wall, _ = medians["cp+sha"]
    print()
    checks = [
        ("time < plain way", ckptd_wall < plain_wall, f"{ckptd_wall / plain_wall:.2f}x"),
        ("peak RSS <= 1/2 plain way", ckptd_rss <= plain_rss / 2, f"{ckptd_rss / plain_rss:.2f}x"),
        ("time <= 3x cp+sha", ckptd_wall <= 3 * cp_wall, f"{ckptd_wall / cp_wall:.2f}x"),
    ]
    for name, ok, ratio in checks:
        print(f"{'PASS' if ok else 'MISS'}  {name:28} ({ratio})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mb", type=int, default=200, help="MiB of parameters (default 200)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=None, help="work directory (default: a temp dir)"
    )
    parser.add_argument("--child", nargs=3, metavar=("MODE", "SRC", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--make", nargs=2, metavar=("SRC", "MB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        print(make_source(Path(args.make[0]), int(args.make[1])))
        return
    if args.child:
        mode, source, output = args.child
        run_child(mode, Path(source), Path(output))
        return
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
        results = measure_all(workdir, source, args.repeats)
        report(results, source.stat().st_size, params_bytes)


if __name__ == "__main__":
    main()
