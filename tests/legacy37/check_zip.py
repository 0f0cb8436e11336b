"""Load a converted zip with stable-baselines 2.8-2.10's own loading steps and compare it with a
trusted cloudpickle.load of the legacy original, on the SB2-era stack (Python 3.7, numpy 1.16,
cloudpickle 1.2).

Usage: check_zip.py ORIGINAL.pkl CONVERTED.zip [NAMES.json]
Prints one JSON document: {"ok": bool, "problems": [...], "keys": [...], "params": N}.
The loading steps are those of SB2's BaseRLModel._load_from_file and save_util.json_to_data /
bytes_to_params (zipfile; json.loads; cloudpickle.loads(base64) of every ":serialized:" entry;
np.load of the "parameters" npz; order from "parameter_list").

What SB2's own ``_save_to_file_zip(*_load_from_file_cloudpickle(path))`` would have written is
the reference: parameters as ``np.savez`` stores them (``np.asanyarray``: a numpy scalar becomes a
0-d array), a list of parameters paired with NAMES as SB2's loader pairs them
(``zip(names, params)``: extra arrays ignored), and the ``data`` JSON as save_util.data_to_json
builds it (``expected_data_json``): plain values, ``:type:`` texts and the names and JSON values
of the first-level extras must match; ``str()`` extras are not compared (they hold addresses).
"""

import base64
import io
import json
import math
import sys
import types
import zipfile
from collections import OrderedDict

import cloudpickle
import numpy as np

import standins


def sb2_load_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data = None
        if "data" in names:
            json_dict = json.loads(archive.read("data").decode())
            data = {}
            for key, item in json_dict.items():
                if isinstance(item, dict) and ":serialized:" in item.keys():
                    data[key] = cloudpickle.loads(base64.b64decode(item[":serialized:"].encode()))
                else:
                    data[key] = item
        params = None
        if "parameters" in names:
            param_list = json.loads(archive.read("parameter_list").decode())
            npz = np.load(io.BytesIO(archive.read("parameters")))
            params = OrderedDict((name, npz[name]) for name in param_list)
    return data, params, names


def json_roundtrip(value):
    return json.loads(json.dumps(value))


def same(a, b, where, problems, plain=False):
    """Append a message to problems for every difference between a (original) and b (from the zip)."""
    if plain:
        a = json_roundtrip(a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            problems.append("%s: array vs %s" % (where, type(b).__name__))
        elif a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            problems.append(
                "%s: arrays differ (%s%s vs %s%s)" % (where, a.dtype, a.shape, b.dtype, b.shape)
            )
        return
    if isinstance(a, np.generic):
        if type(a) is not type(b) or a.tobytes() != b.tobytes():
            problems.append("%s: numpy scalar %r (%s) vs %r (%s)" % (where, a, type(a), b, type(b)))
        return
    if isinstance(a, np.random.RandomState):
        if not isinstance(b, np.random.RandomState):
            problems.append("%s: RandomState vs %s" % (where, type(b)))
        else:
            same(a.get_state(), b.get_state(), where + ".state", problems)
        return
    if isinstance(a, np.dtype):
        if a != b:
            problems.append("%s: dtype %s vs %s" % (where, a, b))
        return
    if isinstance(a, type):
        if a is not b:
            problems.append("%s: class %r vs %r" % (where, a, b))
        return
    if isinstance(a, types.FunctionType):
        if not isinstance(b, types.FunctionType):
            problems.append("%s: function vs %s" % (where, type(b)))
            return
        if a.__code__.co_code != b.__code__.co_code or a.__qualname__ != b.__qualname__:
            problems.append("%s: function code differs" % where)
        for x in (0.0, 0.25, 1.0):
            if a(x) != b(x):
                problems.append("%s: f(%s) = %r vs %r" % (where, x, a(x), b(x)))
        return
    if isinstance(a, dict):
        # repr: NaN keys are equal only to themselves, and each load makes new ones.
        if not isinstance(b, dict) or [repr(k) for k in a] != [repr(k) for k in b]:
            problems.append(
                "%s: dict keys %r vs %r"
                % (where, list(a)[:5], list(b)[:5] if isinstance(b, dict) else b)
            )
            return
        for (key, x), y in zip(a.items(), b.values()):
            same(x, y, "%s[%r]" % (where, key), problems)
        return
    if isinstance(a, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            problems.append(
                "%s: %s of %d vs %s" % (where, type(a).__name__, len(a), type(b).__name__)
            )
            return
        for index, (x, y) in enumerate(zip(a, b)):
            same(x, y, "%s[%d]" % (where, index), problems)
        return
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    if hasattr(a, "__dict__") and not isinstance(a, type):
        if type(a) is not type(b):
            problems.append("%s: %s vs %s" % (where, type(a), type(b)))
            return
        same(a.__dict__, b.__dict__, where + ".__dict__", problems)
        return
    if type(a) is not type(b) or a != b:
        problems.append("%s: %r vs %r" % (where, a, b))


def json_or_none(value):
    """json.dumps(value) can store it (save_util.is_json_serializable catches only TypeError)."""
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def expected_data_json(data):
    """The data member SB2's data_to_json writes for ``data``, parsed back (pickles left out)."""
    out = {}
    for key, item in data.items():
        if json_or_none(item):
            out[key] = item
            continue
        entry = {":type:": str(type(item)), ":serialized:": None}
        if isinstance(item, type):
            # A class by reference: its __dict__ is not in the file, ckptd lists __module__ only.
            entry["__module__"] = item.__module__
        elif hasattr(item, "__dict__") or isinstance(item, dict):
            pairs = item.items() if isinstance(item, dict) else vars(item).items()
            for name, value in pairs:
                entry[name] = value if json_or_none(value) else str(value)
        out[key] = entry
    return json.loads(json.dumps(out))


def compare_data_json(expected, got, problems):
    if list(expected) != list(got):
        problems.append("data JSON keys %r vs %r" % (list(expected), list(got)))
        return
    for key, want in expected.items():
        have = got[key]
        serialized = isinstance(want, dict) and ":serialized:" in want
        if not serialized:
            if json.dumps(want, sort_keys=False) != json.dumps(have, sort_keys=False):
                problems.append(
                    "data JSON [%r]: %s vs %s" % (key, json.dumps(want), json.dumps(have))
                )
            continue
        if not (isinstance(have, dict) and ":serialized:" in have):
            problems.append("data JSON [%r]: not serialized in the zip" % key)
            continue
        if list(want) != list(have):
            problems.append("data JSON [%r] extras %r vs %r" % (key, list(want), list(have)))
            continue
        if want[":type:"] != have[":type:"]:
            problems.append(
                "data JSON [%r] :type: %r vs %r" % (key, want[":type:"], have[":type:"])
            )
        for name, value in want.items():
            if name.startswith(":") or isinstance(value, str):
                continue
            if json.dumps(value) != json.dumps(have[name]):
                problems.append("data JSON [%r][%r]: %r vs %r" % (key, name, value, have[name]))


def main():
    original_path, zip_path = sys.argv[1], sys.argv[2]
    standins.install()
    with open(original_path, "rb") as handle:
        data, params = cloudpickle.load(handle)
    if isinstance(params, list):
        with open(sys.argv[3]) as handle:
            names = json.load(handle)
        params = OrderedDict(zip(names, params))
    # np.savez stores np.asanyarray(value): a numpy scalar is written as a 0-d array.
    params = OrderedDict((name, np.asanyarray(value)) for name, value in params.items())
    problems = []
    try:
        zdata, zparams, members = sb2_load_zip(zip_path)
    except Exception as err:  # report, so the test shows what SB2 itself would have raised
        print(
            json.dumps(
                {"ok": False, "problems": ["load failed: %s: %s" % (type(err).__name__, err)]}
            )
        )
        return
    if members != ["data", "parameters", "parameter_list"]:
        problems.append("members %r" % members)
    if list(zdata.keys()) != list(data.keys()):
        problems.append("data keys %r vs %r" % (list(data), list(zdata)))
    with zipfile.ZipFile(zip_path) as archive:
        raw = json.loads(archive.read("data").decode())
    compare_data_json(expected_data_json(data), raw, problems)
    for key in data:
        plain = not (isinstance(raw.get(key), dict) and ":serialized:" in raw[key])
        same(data[key], zdata.get(key), "data[%r]" % key, problems, plain=plain)
    same(list(params.keys()), list(zparams.keys()), "parameter_list", problems)
    for name in params:
        same(params[name], zparams.get(name), "params[%r]" % name, problems)
    print(
        json.dumps(
            {"ok": not problems, "problems": problems, "keys": list(zdata), "params": len(zparams)}
        )
    )


if __name__ == "__main__":
    main()
