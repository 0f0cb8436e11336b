"""Write a legacy SB2 checkpoint the way stable-baselines 2.7 did: cloudpickle.dump((data, params), f).

Usage (Python 3.7, numpy 1.16, cloudpickle 1.2): make_legacy.py KIND OUT
KIND is ppo2 (schedules as closures and a user lambda), dqn (0-d param, no functions) or sac
(np.float32 hyper-parameter, big-endian and Fortran-order arrays, odd dtypes).
"""

import sys
from collections import OrderedDict

import cloudpickle
import numpy as np

import standins


def ppo2():
    policies = standins.module("stable_baselines.common.policies")
    ppo2 = standins.module("stable_baselines.ppo2.ppo2")
    Box = standins.module("gym.spaces.box").Box
    Discrete = standins.module("gym.spaces.discrete").Discrete
    data = {
        "gamma": 0.99,
        "n_steps": 128,
        "vf_coef": 0.5,
        "ent_coef": 0.01,
        "max_grad_norm": 0.5,
        "learning_rate": ppo2.get_schedule_fn(0.00025),
        "lam": 0.95,
        "nminibatches": 4,
        "noptepochs": 4,
        "cliprange": (lambda frac: 0.2 * frac),
        "cliprange_vf": None,
        "verbose": 0,
        "policy": policies.MlpPolicy,
        "observation_space": Box(low=-np.inf, high=np.inf, shape=(4,)),
        "action_space": Discrete(2),
        "n_envs": 1,
        "_vectorize_action": False,
        "policy_kwargs": {"net_arch": [64, 64]},
    }
    rng = np.random.RandomState(0)
    params = OrderedDict()
    for layer, shape in (
        ("pi_fc0", (4, 64)),
        ("vf_fc0", (4, 64)),
        ("pi_fc1", (64, 64)),
        ("vf", (64, 1)),
        ("pi", (64, 2)),
    ):
        params["model/%s/w:0" % layer] = rng.standard_normal(shape).astype(np.float32)
        params["model/%s/b:0" % layer] = rng.standard_normal(shape[-1:]).astype(np.float32)
    return data, params


def dqn():
    policies = standins.module("stable_baselines.deepq.policies")
    Box = standins.module("gym.spaces.box").Box
    Discrete = standins.module("gym.spaces.discrete").Discrete
    data = {
        "checkpoint_path": None,
        "param_noise": False,
        "learning_starts": 1000,
        "train_freq": 1,
        "prioritized_replay": False,
        "exploration_final_eps": 0.02,
        "learning_rate": 0.0005,
        "gamma": 0.99,
        "verbose": 0,
        "observation_space": Box(low=-1.0, high=1.0, shape=(3,)),
        "action_space": Discrete(5),
        "policy": policies.MlpPolicy,
        "n_envs": 1,
        "policy_kwargs": {},
    }
    rng = np.random.RandomState(1)
    params = OrderedDict()
    params["deepq/eps:0"] = np.array(0.05, dtype=np.float32)
    params["deepq/model/action_value/fully_connected/weights:0"] = rng.standard_normal(
        (3, 64)
    ).astype(np.float32)
    params["deepq/model/action_value/fully_connected/biases:0"] = np.zeros((64,), dtype=np.float32)
    params["deepq/target_q_func/model/action_value/fully_connected/weights:0"] = (
        rng.standard_normal((3, 64)).astype(np.float32)
    )
    return data, params


def sac():
    policies = standins.module("stable_baselines.common.policies")
    Box = standins.module("gym.spaces.box").Box
    data = {
        "learning_rate": 0.0003,
        "buffer_size": 50000,
        "ent_coef": "auto",
        "target_entropy": -np.prod((2,)).astype(np.float32),
        "gamma": 0.99,
        "tau": 0.005,
        "observation_range": (-5.0, 5.0),
        "extreme": [float("nan"), float("inf"), -float("inf")],
        "int_keys": {1: "one", 2: "two"},
        "observation_space": Box(low=-1.0, high=1.0, shape=(3,)),
        "action_space": Box(low=-2.0, high=2.0, shape=(2,)),
        "policy": policies.MlpPolicy,
        "n_envs": 1,
        "action_noise": None,
    }
    rng = np.random.RandomState(2)
    params = OrderedDict()
    params["model/pi/fc0/kernel:0"] = rng.standard_normal((3, 8)).astype(np.float32)
    params["model/pi/fc0/bias:0"] = np.zeros((8,), dtype=np.float32)
    params["model/log_ent_coef:0"] = np.array(-0.5, dtype=np.float32)
    params["model/big_endian:0"] = rng.standard_normal((2, 3)).astype(">f4")
    params["model/fortran:0"] = np.asfortranarray(rng.standard_normal((3, 4)))
    params["model/steps:0"] = np.arange(6, dtype=np.int64).reshape(2, 3)
    params["model/mask:0"] = np.array([True, False, True])
    params["model/empty:0"] = np.zeros((0, 4), dtype=np.float32)
    params["model/half:0"] = np.arange(4, dtype=np.float16)
    return data, params


def main():
    kind, out = sys.argv[1], sys.argv[2]
    data, params = {"ppo2": ppo2, "dqn": dqn, "sac": sac}[kind]()
    with open(out, "wb") as handle:
        cloudpickle.dump((data, params), handle)


if __name__ == "__main__":
    main()
