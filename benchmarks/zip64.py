"""Write a real SB2 zip over 4 GiB (a 2.5 GiB member and offsets past 4 GiB), then verify it.

Not part of the test run (too slow); the tests cover zip64 with lowered limits. The arrays come from
a sparse memmap, so the machine needs disk space (about 4.6 GB in DIR), not RAM. Prints the write
and verify timings, throughput and peak RSS, and fails loudly if anything does not check out.

Usage: .venv/bin/python benchmarks/zip64.py [DIR]
"""

from __future__ import annotations

import hashlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from ckptd.formats.model import ParamArray
from ckptd.formats.sb2zip import write_sb2_zip_file
from ckptd.formats.verify import verify_zip

GIB = 1024**3


def sparse_param(directory: Path, name: str, nbytes: int) -> ParamArray:
    path = directory / f"{name.replace('/', '_')}.raw"
    with path.open("wb") as handle:
        handle.truncate(nbytes)
    array = np.memmap(path, dtype=np.float32, mode="r", shape=(nbytes // 4,))
    array_view = memoryview(array)
    return ParamArray(name, "<f4", (nbytes // 4,), False, array_view)


def main() -> None:
    base = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="ckptd-zip64-", dir=base))
    try:
        params = [
            sparse_param(work, "model/huge/w:0", int(2.5 * GIB)),  # one member over 2 GiB
            sparse_param(work, "model/big/w:0", 2 * GIB),  # pushes offsets past 4 GiB
            sparse_param(work, "model/small/b:0", 64),
        ]
        dest = work / "model.zip"
        started = time.monotonic()
        report = write_sb2_zip_file(dest, {"gamma": 0.99}, params)
        wrote = time.monotonic() - started
        size = dest.stat().st_size
        print(f"wrote {size / GIB:.2f} GiB in {wrote:.1f} s ({size / wrote / 1e6:.0f} MB/s)")

        started = time.monotonic()
        verdict = verify_zip(dest)
        verified = time.monotonic() - started
        print(f"verify_zip: ok={verdict.ok} problems={verdict.problems} in {verified:.1f} s")
        assert verdict.ok and verdict.params_count == 3

        with zipfile.ZipFile(dest) as archive:
            info = archive.getinfo("parameters")
            assert (
                info.file_size > 4 * GIB
                and archive.getinfo("parameter_list").header_offset > 4 * GIB
            )
        digest = hashlib.sha256()
        with dest.open("rb") as handle:
            while chunk := handle.read(16 * 1024 * 1024):
                digest.update(chunk)
        assert digest.hexdigest() == report.sha256, "sha256 of the file differs from the report"
        if shutil.which("unzip"):
            listing = subprocess.run(
                ["unzip", "-l", str(dest)], capture_output=True, text=True, check=True
            )
            print(listing.stdout.strip().splitlines()[-1])
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"peak RSS {peak_mib:.0f} MiB (includes the memmapped source pages the writer touched)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
