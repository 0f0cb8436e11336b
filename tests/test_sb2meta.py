"""Algorithm and version inference from what a checkpoint carries."""

from __future__ import annotations

import pytest

from ckptd.formats.sb2meta import guess_algorithm, guess_sb2_version

PPO2_27 = [
    "gamma",
    "n_steps",
    "vf_coef",
    "ent_coef",
    "max_grad_norm",
    "learning_rate",
    "lam",
    "nminibatches",
    "noptepochs",
    "cliprange",
    "cliprange_vf",
    "verbose",
    "policy",
    "observation_space",
    "action_space",
    "n_envs",
    "_vectorize_action",
    "policy_kwargs",
]
A2C_210 = [
    "gamma",
    "n_steps",
    "vf_coef",
    "ent_coef",
    "max_grad_norm",
    "learning_rate",
    "alpha",
    "epsilon",
    "lr_schedule",
    "verbose",
    "policy",
    "n_cpu_tf_sess",
    "seed",
]
DQN_27 = [
    "checkpoint_path",
    "param_noise",
    "learning_starts",
    "train_freq",
    "prioritized_replay",
    "exploration_final_eps",
    "target_network_update_freq",
    "learning_rate",
    "policy",
]
SAC_27 = [
    "learning_rate",
    "buffer_size",
    "learning_starts",
    "train_freq",
    "batch_size",
    "tau",
    "ent_coef",
    "target_entropy",
    "gamma",
    "policy",
]


@pytest.mark.parametrize(
    ("keys", "policy", "expected"),
    [
        (PPO2_27, "stable_baselines.common.policies.MlpPolicy", "PPO2"),
        (A2C_210, "stable_baselines.common.policies.MlpPolicy", "A2C"),
        (DQN_27, None, "DQN"),
        (["gamma"], "stable_baselines.deepq.policies.MlpPolicy", "DQN"),
        (SAC_27, None, "SAC"),
        (["gamma", "tau"], None, None),
        ([], None, None),
    ],
)
def test_guess_algorithm(keys: list[str], policy: str | None, expected: str | None) -> None:
    assert guess_algorithm(keys, policy) == expected


def test_version_of_a_27_dqn_pickle_is_26_to_27() -> None:
    found = guess_sb2_version(DQN_27, container="pickle", algorithm="DQN")
    assert (found.minimum, found.maximum) == ("2.6.0", "2.7.0")
    assert str(found) == "2.6.0-2.7.0"


def test_list_params_mean_at_most_251() -> None:
    found = guess_sb2_version(PPO2_27, container="pickle", params_were_list=True, algorithm="PPO2")
    assert found.maximum == "2.5.1"
    assert found.minimum is None
    assert str(found) == "<=2.5.1"


def test_zip_with_seed_is_at_least_29() -> None:
    found = guess_sb2_version(A2C_210, container="zip", algorithm="A2C")
    assert str(found) == ">=2.9.0"


def test_schedules_module_means_210() -> None:
    found = guess_sb2_version(
        PPO2_27,
        container="pickle",
        referenced_globals=["stable_baselines.common.schedules.constfn"],
    )
    assert found.minimum == "2.10.0"


def test_contradiction_is_reported() -> None:
    found = guess_sb2_version(["seed"], container="pickle", params_were_list=True)
    assert any("contradictory" in item for item in found.evidence)
