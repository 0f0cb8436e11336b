"""Write a legacy SB2 checkpoint the way stable-baselines 2.7 did: cloudpickle.dump((data, params), f).

Usage (Python 3.7, numpy 1.16, cloudpickle 1.2): make_legacy.py KIND OUT
KIND is ppo2 (schedules as closures and a user lambda), dqn (0-d param, no functions) or sac
(np.float32 hyper-parameter, big-endian and Fortran-order arrays, odd dtypes); more kinds are listed above dqn_tf().
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


# Kinds shaped as genuine files are (docs/conversion.md); defined below ppo2 so that its lambda
# keeps its line number (code objects embed it, and the committed fixtures their bytes):
# dqn-tf (0-d variables as the numpy scalars TensorFlow's sess.run returns), ddpg-tf (a float64
# scalar), sac-251 (SB2 <= 2.5.1: an unnamed list holding every variable twice, a numpy scalar
# among them), her (HER's GoalSelectionStrategy enum member) and odd-keys (dict values with
# non-string keys that json.dumps renames), shared-schedule (one closure under two keys, as SB2 2.9
# sets cliprange_vf = cliprange: the second is a memo reference to the function's skeleton), equal-keys (dicts whose pickle assigns keys Python
# treats as equal, written by a pickler that emits the given pairs as they are).


def dqn_tf():
    """DQN as sess.run saves it: a 0-d variable comes back as a numpy scalar, not an array."""
    data, params = dqn()
    params["deepq/eps:0"] = np.array(0.05, dtype=np.float32)[()]
    assert type(params["deepq/eps:0"]) is np.float32
    return data, params


def ddpg_tf():
    data, params = dqn()
    params["obs_rms/count:0"] = np.float64(1e-4)
    params["obs_rms/nan_payload:0"] = np.frombuffer(b"\x01\x00\xc0\x7f", dtype=np.float32)[0]
    return data, params


def sac_251():
    """SAC of stable-baselines <= 2.5.1: params is a list, every trainable variable twice."""
    data, named = sac()
    del data["action_noise"]
    first = [
        named["model/pi/fc0/kernel:0"],
        named["model/pi/fc0/bias:0"],
        np.array(-0.5, dtype=np.float32)[()],  # log_ent_coef, as sess.run returns it
    ]
    return data, first + [value.copy() for value in first]


def her():
    data, params = sac()
    data["n_sampled_goal"] = 4
    data["goal_selection_strategy"] = standins.module(
        "stable_baselines.her.replay_buffer"
    ).GoalSelectionStrategy.FUTURE
    data["model_class"] = standins.module("stable_baselines.sac.sac").SAC
    return data, params


def odd_keys():
    data, params = dqn()
    # Not JSON (an np.float32 value): pickled, and its items become extras under json.dumps'
    # names for the keys ("true", "null", "2.5", "NaN").
    data["policy_kwargs"] = {
        True: np.float32(1.0),
        None: "none",
        2.5: "float",
        float("nan"): 3,
        "layers": [64, 64],
    }
    # JSON as it is: keys renamed by json.dumps.
    data["int_keys"] = {False: 0, 7: "seven", -0.5: "half"}
    return data, params


def shared_schedule():
    data, params = ppo2()
    data["cliprange_vf"] = data["cliprange"]
    data["learning_rate_again"] = data["learning_rate"]
    return data, params


class EqualKeys(object):
    """A dict as a list of (key, value) pairs, pickled pair by pair without merging equal keys."""

    def __init__(self, *pairs):
        self.pairs = pairs


class EqualKeysPickler(cloudpickle.CloudPickler):
    """cloudpickle 1.2's pickler (pure Python), writing EqualKeys as EMPTY_DICT + SETITEM per pair.

    The unpickler then assigns the pairs one by one, so equal keys merge exactly as they would in
    any dict a pickle builds. A float listed in ``shared`` is memoized, so later uses of that same
    object are memo references (one NaN object used as two keys).
    """

    dispatch = dict(cloudpickle.CloudPickler.dispatch)

    def __init__(self, handle, shared=()):
        cloudpickle.CloudPickler.__init__(self, handle)
        self.shared = shared

    def save_equal_keys(self, obj):
        import pickle  # here, not at the top: ppo2's lambda must keep its line number

        self.write(pickle.EMPTY_DICT)
        self.memoize(obj)
        for key, value in obj.pairs:
            self.save(key)
            if any(key is item for item in self.shared) and id(key) not in self.memo:
                self.memoize(key)
            self.save(value)
            self.write(pickle.SETITEM)

    dispatch[EqualKeys] = save_equal_keys


def equal_keys():
    data, params = dqn()
    shared_nan = float("nan")
    opaque_nan = float("nan")
    pairs = list(data.items())
    pairs += [
        ("bool_int", EqualKeys((True, "a"), (1, "b"), (1.0, "c"))),
        ("zeros", EqualKeys((0, "int"), (-0.0, "negzero"), (False, "false"))),
        ("minus_zero_first", EqualKeys((-0.0, "negzero"), (0, "int"))),
        (
            "nested",
            EqualKeys(
                ("inner", EqualKeys((1.0, "x"), (True, "y"))),
                ("inner", EqualKeys((2, "z"), (2.0, "w"))),
            ),
        ),
        ("nan_shared", EqualKeys((shared_nan, 1), (shared_nan, 2))),
        ("nan_distinct", EqualKeys((float("nan"), 1), (float("nan"), 2))),
        ("opaque", EqualKeys((True, np.float32(1)), (1, np.float32(2)), ("x", 3))),
        ("opaque_nan", EqualKeys((opaque_nan, np.float32(1)), (opaque_nan, np.float32(2)))),
        ("gamma", 0.5),  # a top-level key again: first position, last value
    ]
    return EqualKeys(*pairs), params, (shared_nan, opaque_nan)


def main():
    kind, out = sys.argv[1], sys.argv[2]
    if kind == "equal-keys":
        data, params, shared = equal_keys()
        with open(out, "wb") as handle:
            EqualKeysPickler(handle, shared).dump((data, params))
        return
    makers = {
        "ppo2": ppo2,
        "dqn": dqn,
        "sac": sac,
        "dqn-tf": dqn_tf,
        "ddpg-tf": ddpg_tf,
        "sac-251": sac_251,
        "her": her,
        "odd-keys": odd_keys,
        "shared-schedule": shared_schedule,
    }
    data, params = makers[kind]()
    with open(out, "wb") as handle:
        cloudpickle.dump((data, params), handle)


if __name__ == "__main__":
    main()
