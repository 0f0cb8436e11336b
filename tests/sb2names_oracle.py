"""Regenerate tests/data/sb2-names/oracle-<version>.json from genuine stable-baselines files.

Run with the SB2-era stack (Python 3.7, TF 1.14, gym, stable-baselines <= 2.5.1 on PYTHONPATH)
for the ``probe`` half, then with ckptd's venv for the ``extract`` half:

    PYTHONPATH=<sb2-2.5.1>:tests python3.7 tests/sb2names_oracle.py probe SPECS.json OUTDIR > probe.json
    .venv/bin/python tests/sb2names_oracle.py extract probe.json 2.5.1 > tests/data/sb2-names/oracle-2.5.1.json

``probe`` builds each model, saves it with stable-baselines' own ``save`` and records the names
and shapes of ``model.params`` (the true names); ``extract`` reads each saved file with ckptd's
static reader and keeps exactly what the name inference works from (the file's ``data`` values,
without pickled payloads, and the array shapes), so the test needs neither TensorFlow nor the
multi-megabyte files. Nothing in this file is imported by ckptd.
"""

import json
import sys


def extract(probe_path: str, version: str) -> None:
    from pathlib import Path

    from ckptd.formats.legacy import read_naming_input
    from ckptd.formats.model import OpaqueValue

    def plain(value: object) -> object:
        if isinstance(value, OpaqueValue):
            return {
                "__opaque__": {
                    "type_name": value.type_name,
                    "extras": dict(value.extras),
                    "globals": list(value.globals),
                }
            }
        return value

    cases = []
    for item in json.loads(Path(probe_path).read_text()):
        if "error" in item:
            continue
        path = Path(item["file"])
        found = read_naming_input(path.read_bytes(), source=str(path))
        data, shapes = found.data, found.shapes
        assert [list(s) for s in shapes[: len(item["names"])]] == item["shapes"], path
        cases.append(
            {
                "id": item["spec"]["id"],
                "version": version,
                "spec": item["spec"],
                "data": {key: plain(value) for key, value in data.items()},
                "shapes": [list(shape) for shape in shapes],
                "names": item["names"],
            }
        )
    # One case per line: small, and a regenerated table diffs case by case.
    sys.stdout.write("[\n" + ",\n".join(json.dumps(c, sort_keys=True) for c in cases) + "\n]\n")


if __name__ == "__main__":
    if sys.argv[1] == "extract":
        extract(sys.argv[2], sys.argv[3])
    else:
        sys.exit(
            "usage: sb2names_oracle.py extract PROBE.json VERSION (the probe half is sb2names_probe.py)"
        )
