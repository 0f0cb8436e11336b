"""Stand-in modules under stable-baselines' and gym's names, for Python 3.7 test scripts.

Classes and functions are created inside modules registered in ``sys.modules`` so that cloudpickle
pickles classes by reference (as for the real packages) and nested schedules by value, exactly the
way a genuine SB2 2.7 checkpoint references them. Runs on Python 3.7 (the SB2 era); keep it 3.5-3.7
compatible: no f-strings with '=', no walrus, no annotations.
"""

import abc
import sys
import types

import numpy as np

MODULES = {
    "stable_baselines.common.policies": '''
import abc

class BasePolicy(metaclass=abc.ABCMeta):
    """Stand-in for stable_baselines' policy base (an ABCMeta class, pickled by reference)."""

    @abc.abstractmethod
    def step(self, obs):
        pass

class MlpPolicy(BasePolicy):
    def step(self, obs):
        return obs

class CnnPolicy(BasePolicy):
    def step(self, obs):
        return obs
''',
    "stable_baselines.deepq.policies": """
import abc

class DQNPolicy(metaclass=abc.ABCMeta):
    @abc.abstractmethod
    def step(self, obs):
        pass

class MlpPolicy(DQNPolicy):
    def step(self, obs):
        return obs
""",
    "stable_baselines.ppo2.ppo2": """
def constfn(val):
    def func(_):
        return val
    return func

def get_schedule_fn(value_schedule):
    if isinstance(value_schedule, (float, int)):
        return constfn(value_schedule)
    return value_schedule
""",
    "stable_baselines.her.replay_buffer": """
from enum import Enum

class GoalSelectionStrategy(Enum):
    FUTURE = 0
    FINAL = 1
    EPISODE = 2
    RANDOM = 3
""",
    "stable_baselines.sac.sac": """
import abc

class BaseRLModel(metaclass=abc.ABCMeta):
    pass

class SAC(BaseRLModel):
    pass
""",
    "gym.spaces.box": """
import numpy as np

class Box(object):
    def __init__(self, low, high, shape=None, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape) if shape is not None else np.shape(low)
        self.low = np.full(self.shape, low, dtype=self.dtype) if np.isscalar(low) else np.asarray(low, dtype=self.dtype)
        self.high = np.full(self.shape, high, dtype=self.dtype) if np.isscalar(high) else np.asarray(high, dtype=self.dtype)
        self.bounded_below = -np.inf < self.low
        self.bounded_above = np.inf > self.high
        self.np_random = np.random.RandomState(7)
""",
    "gym.spaces.discrete": """
import numpy as np

class Discrete(object):
    def __init__(self, n):
        self.n = n
        self.shape = ()
        self.dtype = np.dtype(np.int64)
        self.np_random = np.random.RandomState(3)
""",
}


def install():
    """Register the stand-in modules (idempotent)."""
    for name, source in MODULES.items():
        if name in sys.modules:
            continue
        parts = name.split(".")
        for depth in range(1, len(parts)):
            package = ".".join(parts[:depth])
            if package not in sys.modules:
                module = types.ModuleType(package)
                module.__path__ = []
                module.__file__ = "<standin %s>" % package
                sys.modules[package] = module
        module = types.ModuleType(name)
        # A module with __file__ is "importable" to cloudpickle, so its classes are pickled by
        # reference, as the real stable_baselines and gym classes are.
        module.__file__ = "<standin %s>" % name
        exec(compile(source, "<standin %s>" % name, "exec"), module.__dict__)
        sys.modules[name] = module
        parent = sys.modules[".".join(parts[:-1])]
        setattr(parent, parts[-1], module)


def module(name):
    install()
    return sys.modules[name]


__all__ = ["abc", "install", "module", "np"]
