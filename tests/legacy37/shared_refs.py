"""Functions, classes, lists, dicts and objects referenced from several data keys, as cloudpickle 1.2
writes them: the second reference is a memo reference (BINGET) to the object's first appearance,
which for a function or class by value is the *skeleton* that a later call fills in place.

Usage (Python 3.7, numpy 1.16, cloudpickle 1.2):
  shared_refs.py make OUT                 write a legacy checkpoint (data, params) to OUT
  shared_refs.py check ORIGINAL KEY=PATH...
      load ORIGINAL (trusted) and each re-emitted value, print {key: [original, emitted]} where each
      side is a description of the value: functions are called at several progress values, classes
      instantiated and their method called, containers described item by item with identities.
Keep it Python 3.5-3.7 compatible.
"""

import abc
import json
import sys
from collections import OrderedDict

import cloudpickle
import numpy as np

import standins

PROGRESS = (1.0, 0.75, 0.5, 0.25, 0.1, 0.0)


def linear(initial):
    def func(progress):
        return initial * progress

    return func


def halving(progress):
    """Recursive through its own global name: its globals hold its own skeleton."""
    return 1.0 if progress <= 0.1 else halving(progress / 2) / 2


class Custom(abc.ABC):  # noqa: B024 (an ABCMeta class, like a policy; nothing abstract)
    """By value, as a custom policy is (an ABCMeta class: cloudpickle 1.2 writes a plain type's
    metaclass as _builtin_type('ClassType'), which ckptd's allowlist does not accept)."""

    scale = 3

    def apply(self, x):
        return self.scale * x


def make(out):
    Box = standins.module("gym.spaces.box").Box
    sched = linear(0.3)
    other = linear(0.7)
    plain = lambda progress: progress * 2.0 + 1.0  # noqa: E731
    shared_list = [sched, 7]
    shared_dict = {"f": other, "n": 1}
    cyclic = [plain]
    cyclic.append(cyclic)
    box = Box(low=-1.0, high=1.0, shape=(2,))
    data = OrderedDict(
        [
            ("closure", sched),
            ("closure_again", sched),  # BINGET of sched's skeleton (PPO2's cliprange_vf)
            ("lambda", plain),
            ("lambda_again", plain),
            ("recursive", halving),
            ("recursive_again", halving),
            ("klass", Custom),
            ("klass_again", Custom),
            ("list", shared_list),  # holds a BINGET of sched's skeleton
            ("list_again", shared_list),
            ("dict", shared_dict),  # 'other' appears in full inside the dict first
            ("dict_again", shared_dict),
            ("other_again", other),
            ("pair", (other, other)),
            ("cyclic", cyclic),
            ("cyclic_again", cyclic),
            ("space", box),
            ("space_again", box),
        ]
    )
    params = OrderedDict([("model/w:0", np.arange(6, dtype=np.float32).reshape(2, 3))])
    with open(out, "wb") as handle:
        cloudpickle.dump((dict(data), params), handle)


def call(func, arg):
    try:
        return repr(func(arg))
    except Exception as err:  # a bare skeleton raises NameError here
        return "raises %s: %s" % (type(err).__name__, err)


def describe(value, seen):
    """A JSON description; ``seen`` numbers the objects met so far, so shared ones show up."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, np.generic)):
        return repr(value)  # identity of these is the interpreter's business, not the pickle's
    if id(value) in seen:
        return "<same object as #%d>" % seen[id(value)]
    seen[id(value)] = len(seen)
    if isinstance(value, type):
        try:
            method = call(value().apply, 2)
        except Exception as err:
            method = "raises %s: %s" % (type(err).__name__, err)
        return {
            "class": value.__qualname__,
            "scale": getattr(value, "scale", None),
            "apply": method,
        }
    if callable(value) and hasattr(value, "__code__"):
        return {"function": value.__qualname__, "calls": [call(value, p) for p in PROGRESS]}
    if isinstance(value, (list, tuple)):
        return [type(value).__name__] + [describe(item, seen) for item in value]
    if isinstance(value, dict):
        return {str(key): describe(item, seen) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return ["ndarray", value.dtype.str, list(value.shape), value.tolist()]
    if isinstance(value, np.random.RandomState):
        return ["RandomState", describe(value.get_state(), seen)]
    if hasattr(value, "__dict__"):
        return {"object": type(value).__name__, "state": describe(dict(vars(value)), seen)}
    return repr(value)


def check(original, pairs):
    with open(original, "rb") as handle:
        data, _ = cloudpickle.load(handle)
    wanted = [pair.split("=", 1) for pair in pairs]
    result = {key: [describe(data[key], {})] for key, _ in wanted}
    for key, path in wanted:
        # As in a fresh process: cloudpickle would otherwise hand back the class already loaded
        # from the original by its tracker id, hiding an empty skeleton class.
        cloudpickle.cloudpickle._DYNAMIC_CLASS_TRACKER_BY_ID.clear()
        cloudpickle.cloudpickle._DYNAMIC_CLASS_TRACKER_BY_CLASS.clear()
        with open(path, "rb") as handle:
            result[key].append(describe(cloudpickle.load(handle), {}))
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    standins.install()
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3:])
