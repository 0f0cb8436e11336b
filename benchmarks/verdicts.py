"""ckptd's verdicts beside picklescan, modelscan and fickling, on one corpus of clean and hostile files.

The corpus (written to a temporary directory): the torch / joblib / stable-baselines3 files in
tests/data/verdicts/ (made by the real producers), the genuine SB2-era legacy pickles in
tests/data/sb2-era/, plain numpy/dict pickles of protocols 0-5, the payloads of
tests/test_hostile_pickles.py (classic sinks, memo and STACK_GLOBAL tricks, dotted names, OBJ/INST,
BUILD tricks, nested pickles, FRAME differentials, truncation, stacked pickles...) as ``.pkl``
files and inside a torch ``.pt``.

This script installs nothing. Put each scanner in a venv of its own (their dependencies conflict),
e.g.::

    for t in picklescan modelscan fickling; do
        python3 -m venv /work/cache/scanners-venv-$t && /work/cache/scanners-venv-$t/bin/pip install $t
    done
    /work/cache/scanners-venv-fickling/bin/pip install typing_extensions  # fickling 0.1.12 forgets it

and run it with the project's venv (it imports ckptd and the test payload builders)::

    .venv/bin/python benchmarks/verdicts.py [--venvs /work/cache]

Each tool runs once per file, as its CLI (picklescan also with ``--strict``). A cell is ``flag``
(the tool says unsafe), ``pass`` (it says nothing is wrong), ``skip`` (it did not look at the
file), ``error`` (it failed on it). ckptd's cell is its ``inspect`` verdict: ``pass`` for safe,
``flag`` for refused, ``broken`` for a malformed file it will not use (counted as not passed).
A false negative is a malicious file a tool passed or skipped; a false positive is a clean file
it flagged; failures ("error") are counted apart (a gate that fails closed blocks those files, one
that fails open lets them through).
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from ckptd.ops.inspection import inspect_path  # noqa: E402
from tests.test_hostile_pickles import HOSTILE, _Reduce  # noqa: E402

TOOLS = ("ckptd", "picklescan", "picklescan --strict", "modelscan", "fickling")
TIMEOUT = 120


@dataclass(frozen=True)
class Sample:
    path: Path
    expected: str  # "malicious" (really runs code when loaded), "suspect" (a refused trick that
    # runs nothing by itself: a second BUILD, a huge memo index...) or "clean"
    group: str

    @property
    def malicious(self) -> bool:
        return self.expected == "malicious"


def _torch_zip(data_pkl: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
    return out.getvalue()


def build_corpus(directory: Path) -> list[Sample]:
    samples: list[Sample] = []
    fixtures = REPO / "tests" / "data" / "verdicts"
    for kind, malicious in (("clean", False), ("malicious", True)):
        for source in sorted((fixtures / kind).iterdir()):
            dest = directory / f"{kind}-{source.name}"
            shutil.copyfile(source, dest)
            samples.append(Sample(dest, "malicious" if malicious else "clean", "producers"))
    for source in sorted((REPO / "tests" / "data" / "sb2-era").glob("*.pkl")):
        dest = directory / f"sb2-{source.name}"
        shutil.copyfile(source, dest)
        samples.append(Sample(dest, "clean", "sb2 legacy"))
    values = {
        "numpy": {"w": np.arange(6, dtype=np.float32), "lr": 3e-4},
        "ordered": OrderedDict(w=np.ones(3), n=[1, 2, (3, 4)]),
    }
    for name, value in values.items():
        for protocol in (0, 2, 4, 5):
            dest = directory / f"plain-{name}-p{protocol}.pkl"
            dest.write_bytes(pickle.dumps(value, protocol=protocol))
            samples.append(Sample(dest, "clean", "plain"))
    marker = directory / "never-created"
    for protocol in (0, 2, 4, 5):
        dest = directory / f"rl_model_6000_steps-p{protocol}.pkl"
        dest.write_bytes(pickle.dumps(_Reduce(os.system, f"touch {marker}"), protocol=protocol))
        samples.append(Sample(dest, "malicious", "plain"))
    for hostile in HOSTILE:
        slug = "".join(c if c.isalnum() else "_" for c in hostile.name).strip("_")
        blob = hostile.build(marker)
        dest = directory / f"hostile-{slug}.pkl"
        dest.write_bytes(blob)
        expected = "malicious" if hostile.live else "suspect"
        samples.append(Sample(dest, expected, "hostile"))
        wrapped = directory / f"hostile-{slug}.pt"
        wrapped.write_bytes(_torch_zip(blob))
        samples.append(Sample(wrapped, expected, "hostile in .pt"))
    return samples


def run_ckptd(path: Path) -> str:
    verdict = inspect_path(path).verdict
    return {"safe": "pass", "unchecked": "pass", "refused": "flag", "broken": "broken"}.get(
        verdict, "skip"
    )


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired:
        return None


def run_picklescan(venvs: Path, path: Path, strict: bool) -> str:
    argv = [str(venvs / "scanners-venv-picklescan" / "bin" / "picklescan"), "-p", str(path)]
    done = _run([*argv, "--strict"] if strict else argv, path.parent)
    if done is None:
        return "error"
    if "Scanned files: 0" in done.stdout:
        return "skip"
    return {0: "pass", 1: "flag"}.get(done.returncode, "error")


def run_modelscan(venvs: Path, path: Path) -> str:
    argv = [str(venvs / "scanners-venv-modelscan" / "bin" / "modelscan"), "-p", str(path)]
    done = _run(argv, path.parent)
    if done is None:
        return "error"
    return {0: "pass", 1: "flag", 3: "skip"}.get(done.returncode, "error")


def run_fickling(venvs: Path, path: Path, scratch: Path) -> str:
    argv = [
        str(venvs / "scanners-venv-fickling" / "bin" / "fickling"),
        "--check-safety",
        "--json-output",
        str(scratch / "fickling.json"),
        str(path),
    ]
    done = _run(argv, scratch)
    if done is None or "Traceback" in done.stderr or "failed to parse" in done.stdout:
        return "error"
    return "pass" if done.returncode == 0 else "flag"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venvs", type=Path, default=Path("/work/cache"))
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ckptd-verdicts-") as tmp:
        corpus = Path(tmp) / "corpus"
        scratch = Path(tmp) / "scratch"
        corpus.mkdir()
        scratch.mkdir()
        samples = build_corpus(corpus)
        rows: list[tuple[Sample, dict[str, str]]] = []
        for sample in samples:
            cells = {
                "ckptd": run_ckptd(sample.path),
                "picklescan": run_picklescan(args.venvs, sample.path, strict=False),
                "picklescan --strict": run_picklescan(args.venvs, sample.path, strict=True),
                "modelscan": run_modelscan(args.venvs, sample.path),
                "fickling": run_fickling(args.venvs, sample.path, scratch),
            }
            rows.append((sample, cells))
            print(f"{sample.path.name}: {cells}", file=sys.stderr, flush=True)
        assert not (corpus / "never-created").exists(), "a payload ran"
    print(f"| file | expected | {' | '.join(TOOLS)} |")
    print("|---|---|" + "---|" * len(TOOLS))
    for sample, cells in rows:
        print(f"| {sample.path.name} | {sample.expected} | {' | '.join(cells[t] for t in TOOLS)} |")
    malicious = sum(sample.malicious for sample, _ in rows)
    suspect = sum(sample.expected == "suspect" for sample, _ in rows)
    clean = sum(sample.expected == "clean" for sample, _ in rows)
    print(
        f"\n{len(rows)} files: {malicious} malicious (a real load runs the payload), {suspect}"
        f" suspect (tricks the tests refuse that run nothing by themselves), {clean} clean.\n"
    )
    print(
        "| tool | malicious passed or skipped (false negatives) | malicious it failed on |"
        " clean flagged (false positives) | clean it skipped or failed on | suspect flagged |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for tool in TOOLS:
        missed = sum(1 for s, c in rows if s.malicious and c[tool] in ("pass", "skip"))
        bad_errors = sum(1 for s, c in rows if s.malicious and c[tool] == "error")
        alarms = sum(1 for s, c in rows if s.expected == "clean" and c[tool] in ("flag", "broken"))
        clean_errors = sum(
            1 for s, c in rows if s.expected == "clean" and c[tool] in ("error", "skip")
        )
        caught = sum(
            1 for s, c in rows if s.expected == "suspect" and c[tool] in ("flag", "broken")
        )
        print(
            f"| {tool} | {missed} of {malicious} | {bad_errors} | {alarms} of {clean} |"
            f" {clean_errors} | {caught} of {suspect} |"
        )
    print(f"\n(took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
