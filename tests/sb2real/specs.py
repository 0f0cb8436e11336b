"""Which genuine fixtures to make: algorithm, policy, env and kwargs, per stable-baselines release.

Kwargs are JSON-able; "linear:X" stands for the documented ``linear_schedule(X)`` closure.
Releases on both sides of 2.6.0 (list vs dict params) and 2.8.0 (pickle vs zip default).
"""

ALL = ["2.4.1", "2.5.1", "2.6.0", "2.7.0", "2.8.0", "2.9.0", "2.10.2"]

CARTPOLE = "CartPole-v1"
PENDULUM = "Pendulum-v0"
IMAGE = "TinyImage"

ON_POLICY = {
    "A2C": {"n_steps": 5},
    "ACER": {"n_steps": 5, "buffer_size": 100, "replay_start": 10},
    "ACKTR": {"n_steps": 4},
    "PPO2": {"n_steps": 16, "nminibatches": 1, "noptepochs": 2},
    "PPO1": {"timesteps_per_actorbatch": 32, "optim_batchsize": 16, "optim_epochs": 2},
    "TRPO": {"timesteps_per_batch": 32},
    "GAIL": {"timesteps_per_batch": 32},
}
OFF_POLICY = {
    "DQN": {"learning_starts": 10, "buffer_size": 100, "batch_size": 8},
    "SAC": {"learning_starts": 10, "buffer_size": 100, "batch_size": 8},
    "TD3": {"learning_starts": 10, "buffer_size": 100, "batch_size": 8},
    "DDPG": {"nb_rollout_steps": 10, "nb_train_steps": 5, "batch_size": 8},
}

# (algorithm, policy, env, extra kwargs, tag, releases)
TABLE = [
    ("PPO2", "MlpPolicy", CARTPOLE, {}, "", ["2.4.1", "2.8.0"]),
    (
        "PPO2",
        "MlpPolicy",
        CARTPOLE,
        {"learning_rate": "linear:0.00025", "cliprange": "linear:0.2"},
        "schedules",
        ["2.5.1", "2.9.0"],
    ),
    ("PPO2", "MlpPolicy", PENDULUM, {}, "", ["2.6.0", "2.9.0"]),
    (
        "PPO2",
        "MlpPolicy",
        CARTPOLE,
        {"policy_kwargs": {"net_arch": [16, {"pi": [32], "vf": [8]}]}},
        "netarch",
        ["2.7.0", "2.10.2"],
    ),
    ("PPO2", "MlpLstmPolicy", CARTPOLE, {"policy_kwargs": {"n_lstm": 16}}, "", ["2.6.0", "2.10.2"]),
    ("PPO2", "CnnPolicy", IMAGE, {}, "", ["2.5.1"]),
    ("A2C", "MlpPolicy", CARTPOLE, {}, "", ["2.4.1", "2.8.0"]),
    (
        "A2C",
        "MlpPolicy",
        PENDULUM,
        {"learning_rate": 0.001, "lr_schedule": "linear"},
        "schedule",
        ["2.5.1", "2.9.0"],
    ),
    ("A2C", "MlpLstmPolicy", CARTPOLE, {"policy_kwargs": {"n_lstm": 16}}, "", ["2.4.1", "2.7.0"]),
    ("A2C", "MlpLnLstmPolicy", CARTPOLE, {"policy_kwargs": {"n_lstm": 16}}, "", ["2.6.0"]),
    ("A2C", "CnnPolicy", IMAGE, {}, "", ["2.10.2"]),
    ("ACER", "MlpPolicy", CARTPOLE, {}, "", ["2.4.1", "2.7.0", "2.10.2"]),
    ("ACER", "MlpLstmPolicy", CARTPOLE, {"policy_kwargs": {"n_lstm": 16}}, "", ["2.5.1", "2.9.0"]),
    ("ACKTR", "MlpPolicy", CARTPOLE, {}, "", ["2.4.1", "2.6.0", "2.10.2"]),
    ("ACKTR", "MlpLstmPolicy", CARTPOLE, {"policy_kwargs": {"n_lstm": 16}}, "", ["2.9.0"]),
    ("ACKTR", "MlpPolicy", PENDULUM, {}, "", ["2.10.2"]),
    ("DQN", "MlpPolicy", CARTPOLE, {}, "", ["2.4.1", "2.6.0", "2.10.2"]),
    (
        "DQN",
        "MlpPolicy",
        CARTPOLE,
        {"prioritized_replay": True, "policy_kwargs": {"layers": [32, 32]}},
        "prio-layers",
        ["2.5.1", "2.8.0"],
    ),
    ("DQN", "LnMlpPolicy", CARTPOLE, {"double_q": False}, "", ["2.9.0"]),
    ("DQN", "CnnPolicy", IMAGE, {}, "", ["2.7.0"]),
    ("SAC", "MlpPolicy", PENDULUM, {}, "", ["2.4.1", "2.6.0", "2.10.2"]),
    ("SAC", "MlpPolicy", PENDULUM, {"policy_kwargs": {"layers": [32, 16]}}, "layers", ["2.5.1"]),
    ("SAC", "MlpPolicy", PENDULUM, {"learning_rate": "linear:0.0003"}, "schedule", ["2.7.0"]),
    ("SAC", "LnMlpPolicy", PENDULUM, {}, "", ["2.8.0"]),
    ("TD3", "MlpPolicy", PENDULUM, {}, "", ["2.7.0"]),
    ("TD3", "MlpPolicy", PENDULUM, {"policy_kwargs": {"layers": [32, 32]}}, "layers", ["2.8.0"]),
    ("TD3", "LnMlpPolicy", PENDULUM, {}, "", ["2.10.2"]),
    ("DDPG", "MlpPolicy", PENDULUM, {}, "", ["2.4.1", "2.10.2"]),
    (
        "DDPG",
        "MlpPolicy",
        PENDULUM,
        {"normalize_observations": True},
        "normobs",
        ["2.5.1", "2.8.0"],
    ),
    ("DDPG", "LnMlpPolicy", PENDULUM, {}, "", ["2.6.0"]),
    ("PPO1", "MlpPolicy", CARTPOLE, {}, "", ["2.4.1", "2.6.0", "2.10.2"]),
    ("PPO1", "MlpPolicy", PENDULUM, {}, "", ["2.5.1"]),
    ("TRPO", "MlpPolicy", CARTPOLE, {}, "", ["2.4.1", "2.7.0", "2.10.2"]),
    ("TRPO", "MlpPolicy", PENDULUM, {}, "", ["2.5.1", "2.9.0"]),
    ("GAIL", "MlpPolicy", CARTPOLE, {}, "", ["2.7.0", "2.10.2"]),
    ("HER:DQN", "MlpPolicy", "BitFlipping", {}, "", ["2.6.0", "2.10.2"]),
    ("HER:SAC", "MlpPolicy", "BitFlippingContinuous", {}, "", ["2.7.0"]),
    ("HER:DDPG", "MlpPolicy", "BitFlippingContinuous", {}, "", ["2.8.0"]),
    ("HER:TD3", "MlpPolicy", "BitFlippingContinuous", {}, "", ["2.9.0"]),
]

STEPS = {"PPO2": 32, "PPO1": 64, "TRPO": 64, "GAIL": 64, "A2C": 20, "ACER": 40, "ACKTR": 16}


def env_tag(env):
    return {
        "CartPole-v1": "cartpole",
        "Pendulum-v0": "pendulum",
        "TinyImage": "image",
        "BitFlipping": "bitflip",
        "BitFlippingContinuous": "bitflipcont",
    }[env]


def all_specs():
    out = []
    for algo, policy, env, extra, tag, releases in TABLE:
        base, _, inner = algo.partition(":")
        kwargs = dict(ON_POLICY.get(base, {}))
        kwargs.update(OFF_POLICY.get(inner or base, {}))
        kwargs.update(extra)
        for release in releases:
            name = "-".join(
                part
                for part in (
                    algo.replace(":", "_").lower(),
                    policy.replace("Policy", "").lower(),
                    env_tag(env),
                    tag,
                    "sb" + release,
                )
                if part
            )
            spec = {
                "id": name,
                "algo": base,
                "policy": policy,
                "env": env,
                "kwargs": dict(kwargs),
                "steps": STEPS.get(base, 40),
                "release": release,
            }
            if inner:
                spec["her_model"] = inner
                spec["kwargs"]["n_sampled_goal"] = 2
            out.append(spec)
    return out


def for_version(version):
    return [spec for spec in all_specs() if spec["release"] == version]
