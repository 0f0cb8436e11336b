"""Train tiny models with a genuine stable-baselines release and save them in its legacy pickle format.

Runs under the SB2-era stack (Python 3.7, TensorFlow 1.x, numpy 1.16, cloudpickle 1.2, gym 0.14) with
one stable-baselines release on PYTHONPATH; tests/sb2real/generate.py drives it once per release.

Usage: make_fixtures.py OUT_DIR [FIXTURE_ID...]
For every fixture of the importable release (see specs.py) it writes OUT_DIR/<id>.pkl (what
``model.save`` writes: the default on <= 2.7.0, ``cloudpickle=True`` on >= 2.8.0) and
OUT_DIR/<id>.json: provenance, the true parameter names in saved order (captured from the
``sess.run`` fetches that produced the saved arrays, so exact on every release), shapes, dtypes and
reference outputs (``predict(obs, deterministic=True)``, ``action_probability``, LSTM states) of the
live model for fixed observations. A fixture that cannot be made is written as
OUT_DIR/<id>.error.json with the reason; the others go on.
"""

import base64
import json
import os
import sys
import traceback
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cloudpickle  # noqa: E402
import gym  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import stable_baselines  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import specs  # noqa: E402
from envs import make_env  # noqa: E402

VERSION = stable_baselines.__version__
try:
    tf.logging.set_verbosity(tf.logging.ERROR)
except AttributeError:
    pass


def linear_schedule(initial_value):
    """The schedule from the stable-baselines docs: a closure, pickled by value by cloudpickle."""

    def func(progress):
        return progress * initial_value

    return func


def build_kwargs(raw):
    kwargs = {}
    for key, value in raw.items():
        if isinstance(value, str) and value.startswith("linear:"):
            kwargs[key] = linear_schedule(float(value.split(":", 1)[1]))
        elif key == "policy_kwargs":
            kwargs[key] = dict(value)
        else:
            kwargs[key] = value
    return kwargs


def to_plain(value):
    """JSON-able form of a predict/action_probability result (arrays keep their dtype name)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        out = {"dtype": str(arr.dtype), "shape": list(arr.shape)}
        if arr.size > 64:
            # Images: the raw C-order bytes keep the index small.
            out["base64"] = base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")
        else:
            out["values"] = arr.tolist()
        return out
    return value


class FetchRecorder(object):
    """Wraps a tf.Session's run to record which variables each fetch list named."""

    def __init__(self, sess):
        self.sess = sess
        self.original = sess.run
        self.calls = []

    def __enter__(self):
        def run(fetches, *args, **kwargs):
            if (
                isinstance(fetches, (list, tuple))
                and fetches
                and all(isinstance(f, tf.Variable) for f in fetches)
            ):
                self.calls.append([f.name for f in fetches])
            return self.original(fetches, *args, **kwargs)

        self.sess.run = run
        return self

    def __exit__(self, *exc):
        del self.sess.run
        return False


def make_model(spec, env):
    algo_name = spec["algo"]
    kwargs = build_kwargs(spec.get("kwargs", {}))
    if algo_name == "HER":
        inner = getattr(stable_baselines, spec["her_model"])
        return stable_baselines.HER(spec["policy"], env, inner, verbose=0, **kwargs)
    cls = getattr(stable_baselines, algo_name)
    if algo_name == "GAIL":
        from stable_baselines.gail import ExpertDataset, generate_expert_traj

        expert = os.path.join(OUT_DIR, ".expert_%s" % spec["id"])
        space = env.action_space
        generate_expert_traj(lambda _obs: space.sample(), expert, env, n_episodes=3)
        dataset = ExpertDataset(
            expert_path=expert + ".npz", traj_limitation=-1, batch_size=16, verbose=0
        )
        os.remove(expert + ".npz")
        kwargs["expert_dataset"] = dataset
    if algo_name in VECTORIZED:
        from stable_baselines.common.vec_env import DummyVecEnv

        # Releases before 2.6 do not wrap a plain env themselves.
        env = DummyVecEnv([lambda: env])
    return cls(spec["policy"], env, verbose=0, **kwargs)


def session_of(model):
    return (
        model.model.sess if hasattr(model, "model") and hasattr(model.model, "sess") else model.sess
    )


def make_one(spec, out_dir):
    np.random.seed(0)
    env = make_env(spec["env"])
    env.seed(0)
    env.action_space.seed(0)
    graph_seed = 0
    tf.set_random_seed(graph_seed)
    model = make_model(spec, env)
    model.learn(total_timesteps=spec["steps"])

    path = os.path.join(out_dir, spec["id"] + ".pkl")
    sess = session_of(model)
    saved = {}
    real_dump = cloudpickle.dump

    def capture_dump(obj, file_, *args, **kwargs):
        saved["obj"] = obj
        return real_dump(obj, file_, *args, **kwargs)

    cloudpickle.dump = capture_dump
    try:
        with FetchRecorder(sess) as recorder:
            if tuple(int(x) for x in VERSION.split(".")[:2]) >= (2, 8):
                model.save(path, cloudpickle=True)
            else:
                model.save(path)
    finally:
        cloudpickle.dump = real_dump
    data, params = saved["obj"]
    if isinstance(params, dict):
        names = list(params.keys())
        arrays = list(params.values())
        params_format = "dict"
    else:
        names = [name for call in recorder.calls for name in call]
        # get_parameters() (>= 2.6) fetches the same list once more; the saved list is the last
        # calls whose lengths add up to it.
        total = 0
        picked = []
        for call in reversed(recorder.calls):
            if total == len(params):
                break
            picked.insert(0, call)
            total += len(call)
        names = [name for call in picked for name in call]
        arrays = list(params)
        params_format = "list"
    if len(names) != len(arrays):
        raise RuntimeError("captured %d names for %d saved arrays" % (len(names), len(arrays)))

    reference = make_reference(model, spec)
    record = {
        "id": spec["id"],
        "file": spec["id"] + ".pkl",
        "sb2_version": VERSION,
        "algorithm": spec["algo"],
        "her_model": spec.get("her_model"),
        "policy": spec["policy"],
        "env": spec["env"],
        "kwargs": spec.get("kwargs", {}),
        "policy_kwargs": spec.get("kwargs", {}).get("policy_kwargs"),
        "total_timesteps": spec["steps"],
        "saved_with": "save(path, cloudpickle=True)"
        if params_format == "dict" and VERSION >= "2.8"
        else "save(path)",
        "stack": stack_versions(),
        "params_format": params_format,
        "data_keys": list(data.keys()),
        "param_names": names,
        "param_shapes": [list(np.shape(a)) for a in arrays],
        "param_dtypes": [str(np.asarray(a).dtype) for a in arrays],
        "reference": reference,
    }
    with open(os.path.join(out_dir, spec["id"] + ".json"), "w") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
    sess.close()
    return record


def fixed_observations(spec):
    env = make_env(spec["env"])
    space = env.observation_space
    space.seed(99)
    rng = np.random.RandomState(1234)
    observations = []
    for _ in range(3):
        if isinstance(space, gym.spaces.Dict):
            env.reset()
            sample = space.sample()
            observations.append(
                np.concatenate(
                    [sample[k].ravel() for k in ("observation", "achieved_goal", "desired_goal")]
                ).astype(np.float32)
            )
        elif isinstance(space, gym.spaces.Box) and space.dtype == np.uint8:
            observations.append(rng.randint(0, 256, size=space.shape).astype(np.uint8))
        elif isinstance(space, gym.spaces.Box):
            low = np.maximum(space.low, -2.0)
            high = np.minimum(space.high, 2.0)
            observations.append(rng.uniform(low, high).astype(space.dtype))
        else:
            observations.append(np.asarray(space.sample()))
    return observations


def make_reference(model, spec):
    observations = fixed_observations(spec)
    out = []
    recurrent = "Lstm" in spec["policy"]
    for obs in observations:
        if recurrent:
            # Recurrent policies predict only on a batch of n_envs (here 1) observations.
            obs = obs[None]
        action, state = model.predict(obs, deterministic=True)
        try:
            proba = model.action_probability(obs)
        except Exception as err:  # pragma: no cover - recorded, not fatal
            proba = "error: %s" % err
        out.append(
            {
                "obs": to_plain(obs),
                "action": to_plain(action),
                "state": to_plain(state),
                "action_probability": to_plain(proba),
            }
        )
    return out


def stack_versions():
    import platform

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "cloudpickle": cloudpickle.__version__,
        "gym": gym.__version__,
        "stable_baselines": VERSION,
    }


OUT_DIR = None
VECTORIZED = ("A2C", "ACER", "ACKTR", "PPO2")


def main():
    global OUT_DIR
    OUT_DIR = os.path.abspath(sys.argv[1])
    wanted = set(sys.argv[2:])
    for spec in specs.for_version(VERSION):
        if wanted and spec["id"] not in wanted:
            continue
        error_path = os.path.join(OUT_DIR, spec["id"] + ".error.json")
        try:
            record = make_one(spec, OUT_DIR)
            if os.path.exists(error_path):
                os.remove(error_path)
            print("made %s (%d params)" % (record["id"], len(record["param_names"])))
        except Exception as err:
            with open(error_path, "w") as handle:
                json.dump(
                    {
                        "id": spec["id"],
                        "sb2_version": VERSION,
                        "error": repr(err),
                        "traceback": traceback.format_exc(),
                    },
                    handle,
                    indent=1,
                )
            print("FAILED %s: %r" % (spec["id"], err))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
