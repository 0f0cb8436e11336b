"""The real consumer: load ckptd's zips with stable-baselines 2.10.2 itself and compare them with the
genuine originals. Runs under the SB2-era stack (tests/sb2tf_env.py), all fixtures in one process
because building TensorFlow graphs is slow.

Usage: check_genuine.py CASES.json
CASES.json is a list of {"id", "pkl", "zip", "record"} where record is the fixture's entry in
tests/data/sb2-genuine/index.json. Prints one JSON document: {id: {"problems": [...], "checked": [...]}}.

Per fixture:
- ``Model.load(zip)`` and ``Model.load(pkl)`` (stable-baselines' own cloudpickle fallback) both work;
- every parameter of the zip-loaded model equals, bit for bit, the pickle-loaded model's and the
  array saved in the pickle under its true name (index.json; for a <= 2.5.1 list, the name
  2.10.2's own ``load`` gives that array: DDPG <= 2.5.0's ``qf/qf`` is ``qf/qf_output`` there);
- ``predict(obs, deterministic=True)``, ``action_probability`` and LSTM states agree for the index's
  observations, with each other and with the reference outputs recorded when the file was made;
- every function-valued data entry (schedules: ``learning_rate``, ``cliprange``, ``cliprange_vf``)
  of the zip-loaded model is called at several progress values and gives what the original's
  gives (an empty closure cell only shows on call, as a NameError);
- the zip's ``data`` and ``parameter_list`` match stable-baselines' own format-only conversion,
  ``_save_to_file_zip(*_load_from_file_cloudpickle(pkl))`` (true names for list-era files), compared
  semantically: pickled values are loaded and compared, memory addresses in str() extras ignored.
"""

import base64
import io
import json
import os
import re
import sys
import tempfile
import traceback
import warnings
import zipfile
from collections import OrderedDict

warnings.filterwarnings("ignore")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cloudpickle  # noqa: E402
import gym  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import stable_baselines  # noqa: E402
from stable_baselines.common.base_class import BaseRLModel  # noqa: E402

try:
    tf.logging.set_verbosity(tf.logging.ERROR)
except AttributeError:
    pass

ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
DEFAULT_PRINT_OPTIONS = np.get_printoptions()
# GAIL's ExpertDataset changed its pickled state after 2.7.0: stable-baselines 2.10.2 cannot load a
# 2.7.0 GAIL file at all; its zip loads with the documented escape hatch for that key.
CUSTOM_OBJECTS = {"GAIL": {"expert_dataset": None}}
# DDPG <= 2.5.1 stored its replay memory class, stable_baselines.ddpg.memory.Memory, in `data`;
# that module is gone from 2.8.0 on, so 2.8-2.10 load neither the original nor a faithful zip of
# it without this escape hatch (the value is never used by their DDPG).
REMOVED_CLASSES = {"stable_baselines.ddpg.memory": ("Memory",)}
ESCAPE_HATCHES = {"stable_baselines.ddpg.memory": {"memory_policy": None}}


def from_plain(value):
    if value is None or not isinstance(value, dict):
        return value
    if "base64" in value:
        raw = base64.b64decode(value["base64"])
        return np.frombuffer(raw, dtype=value["dtype"]).reshape(value["shape"]).copy()
    return np.asarray(value["values"], dtype=value["dtype"]).reshape(value["shape"])


def nested_from_plain(value):
    if isinstance(value, list):
        return [nested_from_plain(v) for v in value]
    return from_plain(value)


def same_output(a, b):
    """Bitwise equality of predict/action_probability results (arrays, lists of arrays, None)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))) or len(a) != len(b):
            return False
        return all(same_output(x, y) for x, y in zip(a, b))
    a = np.asarray(a)
    b = np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def same_value(a, b, where, problems):
    """Semantic comparison of two values loaded from the data of two checkpoints."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            problems.append("%s: %s vs %s" % (where, type(a).__name__, type(b).__name__))
        elif a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            problems.append("%s: arrays differ" % where)
        return
    if isinstance(a, np.generic) or isinstance(b, np.generic):
        if type(a) is not type(b) or np.asarray(a).tobytes() != np.asarray(b).tobytes():
            problems.append("%s: %r (%s) vs %r (%s)" % (where, a, type(a), b, type(b)))
        return
    if isinstance(a, np.random.RandomState):
        if not isinstance(b, np.random.RandomState):
            problems.append("%s: RandomState vs %s" % (where, type(b)))
        else:
            same_value(list(a.get_state()), list(b.get_state()), where + ".state", problems)
        return
    if isinstance(a, gym.Space):
        if type(a) is not type(b):
            problems.append("%s: %s vs %s" % (where, type(a), type(b)))
            return
        keys = sorted(set(vars(a)) | set(vars(b)))
        for key in keys:
            same_value(vars(a).get(key), vars(b).get(key), "%s.%s" % (where, key), problems)
        return
    if isinstance(a, (type, np.dtype)):
        if a is not b and a != b:
            problems.append("%s: %r vs %r" % (where, a, b))
        return
    if callable(a) and hasattr(a, "__code__"):
        if not (callable(b) and hasattr(b, "__code__")):
            problems.append("%s: function vs %r" % (where, b))
            return
        if a.__code__.co_code != b.__code__.co_code or a.__code__.co_consts != b.__code__.co_consts:
            problems.append("%s: functions have different code" % where)
        for x in (1.0, 0.5, 0.0):
            results = []
            for func in (a, b):
                try:
                    results.append(repr(func(x)))
                except Exception as err:
                    results.append("raises %r" % err)
            if results[0] != results[1]:
                problems.append("%s(%r): %s vs %s" % (where, x, results[0], results[1]))
        return
    if isinstance(a, dict):
        if not isinstance(b, dict) or list(a.keys()) != list(b.keys()):
            problems.append(
                "%s: keys %r vs %r" % (where, list(a), list(b) if isinstance(b, dict) else b)
            )
            return
        for key in a:
            same_value(a[key], b[key], "%s[%r]" % (where, key), problems)
        return
    if isinstance(a, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            problems.append("%s: %r vs %r" % (where, a, b))
            return
        for i, (x, y) in enumerate(zip(a, b)):
            same_value(x, y, "%s[%d]" % (where, i), problems)
        return
    if hasattr(a, "__dict__") and not isinstance(a, (str, bytes, int, float)):
        # Enum members and plain objects: same type, same state.
        if type(a) is not type(b):
            problems.append("%s: %s vs %s" % (where, type(a), type(b)))
        elif a is not b and a != b:
            same_value(dict(vars(a)), dict(vars(b)), where + ".__dict__", problems)
        return
    if type(a) is not type(b) or (a != b and not (a != a and b != b)):
        problems.append(
            "%s: %r (%s) vs %r (%s)" % (where, a, type(a).__name__, b, type(b).__name__)
        )


def strip_addresses(value):
    return ADDRESS.sub("", value) if isinstance(value, str) else value


def compare_data_json(expected_text, actual_text, problems, notes, originals=None):
    """``originals``: when stable-baselines 2.10.2 cannot load the original, its re-serialization
    is no oracle for pickled values; they are compared with the trusted load of the original."""
    expected = json.loads(expected_text, object_pairs_hook=OrderedDict)
    actual = json.loads(actual_text, object_pairs_hook=OrderedDict)
    if list(expected.keys()) != list(actual.keys()):
        problems.append("data keys %r vs %r" % (list(expected), list(actual)))
        return
    for key, want in expected.items():
        got = actual[key]
        if isinstance(want, dict) and ":serialized:" in want:
            if not (isinstance(got, dict) and ":serialized:" in got):
                problems.append("data[%r]: serialized vs %r" % (key, got))
                continue
            missing = [field for field in want if field not in got]
            extra = [field for field in got if field not in want]
            if extra or got.get(":type:") != want[":type:"]:
                problems.append("data[%r] fields %r vs %r" % (key, list(got), list(want)))
            elif missing:
                # stable-baselines' loader ignores extras; ckptd cannot read a class's __dict__ or
                # run a __setstate__ (docs/compatibility.md), so those extras may be missing.
                notes.append("data[%r]: extras %s left out" % (key, ", ".join(missing)))
            for field in got:
                if field == ":serialized:" or field not in want:
                    continue
                a, b = strip_addresses(want[field]), strip_addresses(got[field])
                if a != b:
                    problems.append("data[%r][%r]: %r vs %r" % (key, field, b, a))
            try:
                if originals is None:
                    a = cloudpickle.loads(base64.b64decode(want[":serialized:"]))
                else:
                    a = originals[key]
                b = cloudpickle.loads(base64.b64decode(got[":serialized:"]))
            except Exception as err:
                problems.append("data[%r]: cannot load serialized value: %r" % (key, err))
                continue
            same_value(a, b, "data[%r]" % key, problems)
        elif want != got and not (want != want and got != got):
            problems.append("data[%r]: %r vs %r" % (key, want, got))


def model_class(record):
    return getattr(stable_baselines, record["algorithm"])


def parameters_of(model):
    # HER holds no session of its own: its wrapped model (HER.load loads the same file into it)
    # has the parameters.
    return getattr(model, "model", model).get_parameters()


def check_params(zip_model, pkl_model, saved, names, problems):
    got = parameters_of(zip_model)
    if list(got.keys()) != names:
        problems.append("zip model parameter order %r vs true %r" % (list(got.keys()), names))
    if pkl_model is not None:
        want = parameters_of(pkl_model)
        if list(want.keys()) != list(got.keys()):
            problems.append("parameter names differ from the pickle-loaded model")
        for name in want:
            if name in got and not same_output(want[name], got[name]):
                problems.append("parameter %s differs from the pickle-loaded model" % name)
    for name, array in saved.items():
        if name not in got:
            problems.append("saved parameter %s missing from the zip-loaded model" % name)
        elif not same_output(np.asarray(array), got[name]):
            problems.append("parameter %s differs from the array saved under that name" % name)


def check_outputs(zip_model, pkl_model, record, problems, notes):
    # The pickle-loaded model is the oracle. The outputs recorded when the file was made are exact
    # for the same release; across releases TD3/DDPG's predict changed (action rescaling), so
    # there they only judge the zip when the original does not load in 2.10.2.
    use_reference = pkl_model is None or record["sb2_version"] == stable_baselines.__version__
    for i, ref in enumerate(record["reference"]):
        obs = from_plain(ref["obs"])
        action, state = zip_model.predict(obs, deterministic=True)
        proba = zip_model.action_probability(obs)
        if pkl_model is not None:
            p_action, p_state = pkl_model.predict(obs, deterministic=True)
            p_proba = pkl_model.action_probability(obs)
            if not same_output(action, p_action):
                problems.append("obs %d: predict %r vs pickle-loaded %r" % (i, action, p_action))
            if not same_output(state, p_state):
                problems.append("obs %d: LSTM state differs from pickle-loaded" % i)
            if not same_output(proba, p_proba):
                problems.append("obs %d: action_probability differs from pickle-loaded" % i)
        mismatches = []
        if not same_output(action, from_plain(ref["action"])):
            mismatches.append(
                "obs %d: predict %r vs reference %r" % (i, action.tolist(), ref["action"])
            )
        if not same_output(state, from_plain(ref["state"])):
            mismatches.append("obs %d: LSTM state differs from the reference" % i)
        if not isinstance(ref["action_probability"], str) and not same_output(
            proba, nested_from_plain(ref["action_probability"])
        ):
            mismatches.append("obs %d: action_probability differs from the reference" % i)
        (problems if use_reference else notes).extend(mismatches)


class RemovedModules(object):
    """Stand-ins for modules later releases removed, only while the *originals* are loaded (the
    oracle); a zip is loaded as a user would, with the documented escape hatch."""

    def __enter__(self):
        import types

        self.added = []
        for name, classes in REMOVED_CLASSES.items():
            try:
                __import__(name)
                continue
            except ImportError:
                pass
            module = types.ModuleType(name)
            for class_name in classes:
                setattr(module, class_name, type(class_name, (object,), {"__module__": name}))
            sys.modules[name] = module
            self.added.append(name)
        return self

    def __exit__(self, *exc):
        for name in self.added:
            del sys.modules[name]
        return False


def load_zip(cls, path, custom_objects, notes):
    try:
        return cls.load(path, custom_objects=custom_objects)
    except ImportError as err:
        hatch = ESCAPE_HATCHES.get(getattr(err, "name", None))
        if hatch is None or custom_objects:
            raise
    notes.append("the zip loads with custom_objects=%r, as the original does" % (hatch,))
    return cls.load(path, custom_objects=hatch)


class OldExpertDatasets(object):
    """Let ExpertDataset take a 2.7.0 pickled state (a trusted load of our own fixtures only)."""

    def __enter__(self):
        from stable_baselines.gail.dataset.dataset import ExpertDataset

        self.cls = ExpertDataset
        self.original = ExpertDataset.__setstate__
        ExpertDataset.__setstate__ = lambda obj, state: obj.__dict__.update(state)

    def __exit__(self, *exc):
        self.cls.__setstate__ = self.original
        return False


def trusted_load(pkl):
    with OldExpertDatasets(), open(pkl, "rb") as handle:
        return cloudpickle.load(handle)


def list_params(params, record, pkl_model, problems, notes):
    """The named parameters stable-baselines 2.10.2 makes of a <= 2.5.1 list: its ``load`` maps
    the list by position onto its own ``get_parameter_list()`` (DDPG and SAC dropping the
    repeated copy), and those names are the ones its loader matches a zip's names against.
    Each must hold the array saved first under the true name at its position (index.json)."""
    first = OrderedDict()
    for name, array in zip(record["param_names"], params):
        first.setdefault(name, array)
    if pkl_model is None:
        return first
    loaded = pkl_model.get_parameters()
    if len(loaded) != len(first):
        problems.append("2.10.2 has %d parameters for %d saved" % (len(loaded), len(first)))
        return first
    renamed = []
    for (true, array), (name, value) in zip(first.items(), loaded.items()):
        if true != name:
            renamed.append("%s -> %s" % (true, name))
        if not same_output(np.asarray(array), value):
            problems.append("2.10.2 loads %s from another array than %s" % (name, true))
    if renamed:
        notes.append("2.10.2 names the list as its own graph does: %s" % ", ".join(renamed))
    return loaded


def check_format(pkl, zip_path, record, problems, notes, pkl_model=None):
    # str() of arrays in the extras follows numpy's print options, which some stable-baselines
    # modules change when a model is loaded; a user's conversion runs with the defaults.
    np.set_printoptions(**DEFAULT_PRINT_OPTIONS)
    trusted = False
    try:
        data, params = BaseRLModel._load_from_file_cloudpickle(pkl)
    except Exception as err:
        notes.append("stable-baselines 2.10.2 cannot load the original: %r" % err)
        data, params = trusted_load(pkl)
        trusted = True
    if not isinstance(params, dict):
        # Releases <= 2.5.1 saved a list; a faithful zip names it as the loader of zips does.
        params = list_params(params, record, pkl_model, problems, notes)
    with tempfile.TemporaryDirectory() as tmp:
        expected_path = os.path.join(tmp, "expected.zip")
        BaseRLModel._save_to_file_zip(expected_path, data=data, params=params)
        with zipfile.ZipFile(expected_path) as want, zipfile.ZipFile(zip_path) as got:
            if want.namelist() != got.namelist():
                problems.append("zip members %r vs %r" % (got.namelist(), want.namelist()))
                return params, data
            if trusted:
                with OldExpertDatasets():
                    compare_data_json(
                        want.read("data").decode(), got.read("data").decode(), problems, notes, data
                    )
            else:
                compare_data_json(
                    want.read("data").decode(), got.read("data").decode(), problems, notes
                )
            want_list = json.loads(want.read("parameter_list").decode())
            got_list = json.loads(got.read("parameter_list").decode())
            if want_list != got_list:
                problems.append("parameter_list %r vs %r" % (got_list, want_list))
            want_npz = np.load(io.BytesIO(want.read("parameters")))
            got_npz = np.load(io.BytesIO(got.read("parameters")))
            if sorted(want_npz.files) != sorted(got_npz.files):
                problems.append("parameters members differ")
            else:
                for name in want_npz.files:
                    if not same_output(want_npz[name], got_npz[name]):
                        problems.append("parameters[%s] differs" % name)
    return params, data


PROGRESS = (1.0, 0.9, 0.75, 0.5, 0.25, 0.1, 0.0)


def call_repr(func, progress):
    try:
        return repr(func(progress))
    except Exception as err:  # an empty closure cell raises NameError only here, on call
        return "raises %r" % err


def check_functions(zip_model, data, problems):
    """Call every function-valued data entry (schedules: learning_rate, cliprange, cliprange_vf...)
    of the zip-loaded model at several progress values, against the original's value."""
    called = []
    for key, original in data.items():
        if not (callable(original) and hasattr(original, "__code__")):
            continue
        # HER keeps the data on its wrapped model (HER.load loads the same file into it).
        holder = zip_model if key in vars(zip_model) else getattr(zip_model, "model", zip_model)
        loaded = vars(holder).get(key)
        if not callable(loaded):
            problems.append("data[%r]: the zip-loaded model has %r, not a function" % (key, loaded))
            continue
        for progress in PROGRESS:
            want, got = call_repr(original, progress), call_repr(loaded, progress)
            if want != got:
                problems.append(
                    "%s(%r) from the zip: %s, original: %s" % (key, progress, got, want)
                )
        called.append(key)
    return called


def check_one(case):
    record = case["record"]
    problems = []
    notes = []
    checked = []
    cls = model_class(record)
    with RemovedModules():
        try:
            pkl_model = cls.load(case["pkl"])
            custom_objects = None
        except Exception as err:
            # Some old files do not load in 2.10.2 at all; the saved arrays and the reference
            # outputs recorded when the file was made still judge the zip.
            notes.append("Model.load(original) fails in 2.10.2: %r" % err)
            pkl_model = None
            custom_objects = CUSTOM_OBJECTS.get(record["algorithm"])
        saved, data = check_format(case["pkl"], case["zip"], record, problems, notes, pkl_model)
    checked.append("format")
    try:
        zip_model = load_zip(cls, case["zip"], custom_objects, notes)
    except Exception as err:
        problems.append("Model.load(zip) failed: %r" % err)
        return {"problems": problems, "checked": checked, "notes": notes}
    checked.append("load")
    policy = getattr(zip_model, "model", zip_model).policy
    policy_file = sys.modules[policy.__module__].__file__
    check_params(zip_model, pkl_model, saved, list(saved.keys()), problems)
    checked.append("params")
    check_outputs(zip_model, pkl_model, record, problems, notes)
    checked.append("outputs")
    called = check_functions(zip_model, data, problems)
    if called:
        checked.append("functions: " + ", ".join(called))
    return {"problems": problems, "checked": checked, "notes": notes, "policy_file": policy_file}


def main():
    with open(sys.argv[1]) as handle:
        cases = json.load(handle)
    results = {}
    for case in cases:
        try:
            results[case["id"]] = check_one(case)
        except Exception as err:
            results[case["id"]] = {
                "problems": ["check crashed: %r" % err],
                "checked": [traceback.format_exc()[-2000:]],
            }
    json.dump(results, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
