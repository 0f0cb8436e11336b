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

The names that matter for a converted zip are the *loading* release's (stable-baselines 2.6-2.10
match the zip's names against their own graph): ``consumer`` records them from the same variants
built and saved by such a release (2.10.2, with ``save(path, cloudpickle=True)``, a named dict):

    PYTHONPATH=<sb2-2.10.2> python3.7 tests/sb2names_probe.py SPECS.json OUTDIR > probe.json
    .venv/bin/python tests/sb2names_oracle.py consumer probe.json 2.10.2 > tests/data/sb2-names/consumer-2.10.2.json
"""

import json
import sys


def extract(probe_path: str, version: str) -> None:
    from pathlib import Path

    from ckptd.convert.legacy import read_naming_input
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


def consumer(probe_path: str, version: str) -> None:
    from pathlib import Path

    from ckptd.convert.legacy import read_naming_input

    cases = []
    for item in json.loads(Path(probe_path).read_text()):
        if "error" in item:
            continue
        path = Path(item["file"])
        found = read_naming_input(path.read_bytes(), source=str(path))
        assert found.names == item["saved_names"], path  # get_parameter_list(), in its order
        shapes = [list(shape) for shape in found.shapes]
        cases.append({"id": item["spec"]["id"], "version": version, "names": found.names})
        cases[-1]["shapes"] = shapes
    sys.stdout.write("[\n" + ",\n".join(json.dumps(c, sort_keys=True) for c in cases) + "\n]\n")


if __name__ == "__main__":
    if sys.argv[1] == "extract":
        extract(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "consumer":
        consumer(sys.argv[2], sys.argv[3])
    else:
        sys.exit(
            "usage: sb2names_oracle.py extract|consumer PROBE.json VERSION (the probe half is "
            "sb2names_probe.py)"
        )
