"""Regenerate tests/data/sb2-genuine/: genuine legacy checkpoints written by stable-baselines itself.

Usage (from the repository root, Python >= 3.11):
    python -m tests.sb2real.generate [--env DIR] [--release X.Y.Z ...]

Builds (or reuses) the SB2-era stack with every release in tests/sb2real/specs.py (tests/sb2tf_env.py),
runs tests/sb2real/make_fixtures.py once per release, copies the pickles into the fixture directory
and writes its index.json: per file the provenance, sha256, true parameter names and reference outputs.
A combination that cannot be made is listed under "not_made" with stable-baselines' error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.sb2tf_env import sb2_environ, sb2tf_env

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FIXTURES = REPO / "tests" / "data" / "sb2-genuine"
RELEASES = ("2.4.1", "2.5.1", "2.6.0", "2.7.0", "2.8.0", "2.9.0", "2.10.2")


def run_release(env: Path, release: str, out: Path) -> None:
    # Run from the repository root with a relative script path: functions pickled by value (the
    # schedules) embed co_filename, and this keeps it the same in every checkout.
    result = subprocess.run(
        [str(env / "bin" / "python"), str((HERE / "make_fixtures.py").relative_to(REPO)), str(out)],
        cwd=REPO,
        env=sb2_environ(env, release),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    for line in result.stdout.splitlines():
        if line.startswith(("made ", "FAILED ")):
            print(f"[{release}] {line}", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"make_fixtures.py under {release} failed:\n{result.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--env", type=Path, help="an existing environment (default: build/reuse one)"
    )
    parser.add_argument("--release", action="append", help="only these releases (default: all)")
    args = parser.parse_args(argv)
    env = args.env or sb2tf_env(RELEASES)
    releases = tuple(args.release or RELEASES)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    index_path = FIXTURES / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    fixtures = {f["id"]: f for f in index.get("fixtures", []) if f["sb2_version"] not in releases}
    not_made = [f for f in index.get("not_made", []) if f["sb2_version"] not in releases]
    with tempfile.TemporaryDirectory(prefix="sb2-genuine-") as tmp:
        out = Path(tmp)
        for release in releases:
            run_release(env, release, out)
        for path in sorted(out.glob("*.error.json")):
            error = json.loads(path.read_text())
            not_made.append(
                {
                    "id": error["id"],
                    "sb2_version": error["sb2_version"],
                    "error": error["error"],
                }
            )
        for path in sorted(out.glob("*.json")):
            if path.name.endswith(".error.json"):
                continue
            record = json.loads(path.read_text())
            pickle_path = out / record["file"]
            payload = pickle_path.read_bytes()
            record["sha256"] = hashlib.sha256(payload).hexdigest()
            record["size"] = len(payload)
            shutil.copyfile(pickle_path, FIXTURES / record["file"])
            fixtures[record["id"]] = record
    index = {
        "generator": "tests/sb2real/generate.py (see README.md here)",
        "fixtures": [fixtures[key] for key in sorted(fixtures)],
        "not_made": sorted(not_made, key=lambda f: f["id"]),
    }
    index_path.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    print(f"{len(fixtures)} fixtures, {len(not_made)} not made; index at {index_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
