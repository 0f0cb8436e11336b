"""Build stable-baselines models on the SB2-era stack and print their true parameter names (see sb2names_oracle.py)."""

import gym
import numpy as np
from gym import spaces


class Img(gym.Env):
    def __init__(self, act="discrete"):
        self.observation_space = spaces.Box(0, 255, (40, 40, 3), dtype=np.uint8)
        self.action_space = (
            spaces.Discrete(3) if act == "discrete" else spaces.Box(-1, 1, (2,), dtype=np.float32)
        )

    def reset(self):
        return self.observation_space.sample()

    def step(self, a):
        return self.observation_space.sample(), 0.0, False, {}


class Vec(gym.Env):
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

    def step(self, a):
        return self.observation_space.sample(), 0.0, False, {}


import json  # noqa: E402 (after TF_CPP_MIN_LOG_LEVEL is set)
import os  # noqa: E402 (after TF_CPP_MIN_LOG_LEVEL is set)
import sys  # noqa: E402 (after TF_CPP_MIN_LOG_LEVEL is set)
import warnings  # noqa: E402 (after TF_CPP_MIN_LOG_LEVEL is set)

warnings.filterwarnings("ignore")
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf  # noqa: E402 (after TF_CPP_MIN_LOG_LEVEL is set)

tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
import gym  # noqa: E402 (after TF_CPP_MIN_LOG_LEVEL is set)
from stable_baselines.common.vec_env import DummyVecEnv  # noqa: E402 (after TF_CPP_MIN_LOG_LEVEL is set)

specs = json.loads(sys.argv[1])
outdir = sys.argv[2] if len(sys.argv) > 2 else None
res = []
for spec in specs:
    algo = spec["algo"]
    mod = __import__("stable_baselines", fromlist=[algo])
    cls = getattr(mod, algo)
    env = spec.get("env", "CartPole-v1")

    if isinstance(env, list):
        env = globals()[env[0]](*env[1:])
    kw = dict(spec.get("kw", {}))
    if spec.get("n_envs"):
        env = DummyVecEnv(
            [(lambda e=env: gym.make(e)) if isinstance(env, str) else (lambda e=env: e)]
            * spec["n_envs"]
        )
    pk = spec.get("pk")
    if pk is not None:
        kw["policy_kwargs"] = pk
    try:
        m = cls(spec.get("policy", "MlpPolicy"), env, **kw)
        params = m.sess.run(m.params)
        names = [p.name for p in m.params]
        extra = []
        for attr in ("target_params", "obs_rms_params", "ret_rms_params"):
            if getattr(m, attr, None):
                extra.append((attr, [p.name for p in getattr(m, attr)]))
        item = {
            "spec": spec,
            "names": names,
            "shapes": [list(a.shape) for a in params],
            "extra": extra,
        }
        if outdir:
            path = os.path.join(outdir, spec["id"] + ".pkl")
            m.save(path)
            item["file"] = path
    except Exception as e:
        item = {"spec": spec, "error": repr(e)[:300]}
    res.append(item)
print(json.dumps(res))
