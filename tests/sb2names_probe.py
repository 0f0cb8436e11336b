"""Build stable-baselines models on the SB2-era stack and print their true parameter names.

Runs under Python 3.7 with TensorFlow 1.14, gym and one stable-baselines release on PYTHONPATH
(stable-baselines imports cv2 for GAIL's datasets only; an empty ``cv2`` module will do):

    PYTHONPATH=<stable-baselines>:<dir with cv2.py> python3.7 tests/sb2names_probe.py \
        "$(python3 tests/sb2names_specs.py)" OUTDIR > probe.json

For each spec it builds the model, saves it with the model's own ``save`` into OUTDIR and prints
(JSON) the names and shapes of ``model.params``: the names the inference must find
(sb2names_oracle.py turns this into the test's table). Not imported by ckptd or the tests.
"""

import json
import os
import sys
import warnings

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
warnings.filterwarnings("ignore")

import gym  # noqa: E402 (after the TF log level is set)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from gym import spaces  # noqa: E402

tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)


class Img(gym.Env):
    """A 40x40x3 image observation: the smallest size the nature CNN takes, with room to spare."""

    def __init__(self, act="discrete"):
        self.observation_space = spaces.Box(0, 255, (40, 40, 3), dtype=np.uint8)
        self.action_space = (
            spaces.Discrete(3) if act == "discrete" else spaces.Box(-1, 1, (2,), dtype=np.float32)
        )

    def reset(self):
        return self.observation_space.sample()

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, {}


class Vec(gym.Env):
    """The other gym spaces, as observation and action."""

    def __init__(self, obs="box", act="multidiscrete"):
        self.observation_space = {
            "box": spaces.Box(-1, 1, (5,), dtype=np.float32),
            "discrete": spaces.Discrete(7),
            "multibinary": spaces.MultiBinary(6),
            "multidiscrete": spaces.MultiDiscrete([3, 4]),
            "box2d": spaces.Box(-1, 1, (3, 2), dtype=np.float32),
        }[obs]
        self.action_space = {
            "multidiscrete": spaces.MultiDiscrete([2, 3, 4]),
            "multibinary": spaces.MultiBinary(3),
            "discrete": spaces.Discrete(4),
            "box": spaces.Box(-2, 2, (3,), dtype=np.float32),
        }[act]

    def reset(self):
        return self.observation_space.sample()

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, {}


def build(spec):
    from stable_baselines.common.vec_env import DummyVecEnv

    cls = getattr(__import__("stable_baselines", fromlist=[spec["algo"]]), spec["algo"])
    env = spec.get("env", "CartPole-v1")
    if isinstance(env, list):
        env = globals()[env[0]](*env[1:])
    if spec.get("n_envs"):
        make = (lambda: gym.make(env)) if isinstance(env, str) else (lambda: env)
        env = DummyVecEnv([make] * spec["n_envs"])
    kwargs = dict(spec.get("kw", {}))
    if spec.get("pk") is not None:
        policy_kwargs = dict(spec["pk"])
        if "act_fun" in policy_kwargs:  # "tf.nn.relu": the function itself, pickled by name
            policy_kwargs["act_fun"] = getattr(tf.nn, policy_kwargs["act_fun"].split(".")[-1])
        kwargs["policy_kwargs"] = policy_kwargs
    return cls(spec.get("policy", "MlpPolicy"), env, **kwargs)


def probe(spec, outdir):
    try:
        model = build(spec)
        arrays = model.sess.run(model.params)
        item = {
            "spec": spec,
            "names": [variable.name for variable in model.params],
            "shapes": [list(np.shape(array)) for array in arrays],
        }
        if hasattr(model, "get_parameter_list"):  # >= 2.6.0: what the saved dict's keys are
            item["saved_names"] = [variable.name for variable in model.get_parameter_list()]
        path = os.path.join(outdir, spec["id"] + ".pkl")
        # >= 2.8.0 writes zips unless asked for the legacy pickle.
        legacy = {"cloudpickle": True} if "cloudpickle" in model.save.__code__.co_varnames else {}
        model.save(path, **legacy)
        item["file"] = os.path.abspath(path)
        return item
    except Exception as error:  # a variant this release cannot build: recorded, not fatal
        return {"spec": spec, "error": repr(error)[:300]}


if __name__ == "__main__":
    print(json.dumps([probe(spec, sys.argv[2]) for spec in json.loads(sys.argv[1])]))
