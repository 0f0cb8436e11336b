"""What a stable-baselines checkpoint does not say about itself: its algorithm and SB2 version range.

Neither format records the algorithm or the library version (docs/formats.md, "Algorithm and
version"), so both are inferred from the ``data`` keys, the policy class's module and the container.
Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

# Keys that only one algorithm's save() writes (docs/formats.md, "Algorithm and version", and
# each algorithm's save()).
_ALGORITHM_KEYS: tuple[tuple[str, frozenset[str]], ...] = (
    ("HER", frozenset({"n_sampled_goal", "goal_selection_strategy", "model_class"})),
    ("PPO2", frozenset({"nminibatches", "noptepochs", "cliprange"})),
    ("PPO1", frozenset({"clip_param", "optim_epochs", "optim_stepsize"})),
    ("TRPO", frozenset({"max_kl", "cg_iters", "vf_stepsize"})),
    ("ACKTR", frozenset({"kfac_clip", "vf_fisher_coef"})),
    # ACER <= 2.5.1 has no correction_term; replay_start and q_coef are ACER's alone too.
    ("ACER", frozenset({"replay_ratio", "correction_term", "replay_start", "q_coef"})),
    ("A2C", frozenset({"alpha", "lr_schedule", "epsilon"})),
    ("TD3", frozenset({"policy_delay", "target_noise_clip", "target_policy_noise"})),
    ("DDPG", frozenset({"actor_lr", "critic_lr", "param_noise_adaption_interval"})),
    ("SAC", frozenset({"target_entropy", "ent_coef", "tau"})),
    (
        "DQN",
        frozenset({"exploration_final_eps", "prioritized_replay", "target_network_update_freq"}),
    ),
)

# The policy class's module names the algorithm family for off-policy algorithms.
_POLICY_MODULES = {
    "stable_baselines.deepq": "DQN",
    "stable_baselines.sac": "SAC",
    "stable_baselines.td3": "TD3",
    "stable_baselines.ddpg": "DDPG",
}


def guess_algorithm(keys: Collection[str], policy_global: str | None = None) -> str | None:
    """The SB2 algorithm whose save() writes these keys, or None when nothing matches well enough.

    ``policy_global`` is the policy class's "module.name" when the policy is pickled by reference.
    """
    if policy_global:
        for prefix, algorithm in _POLICY_MODULES.items():
            if policy_global.startswith(prefix + "."):
                return algorithm
    present = set(keys)
    best: tuple[int, str] | None = None
    for algorithm, signature in _ALGORITHM_KEYS:
        hits = len(signature & present)
        # Two signature keys are required so one shared name (e.g. "tau") cannot decide alone.
        if hits >= 2 and (best is None or hits > best[0]):
            best = (hits, algorithm)
    return best[1] if best else None


@dataclass(frozen=True)
class VersionRange:
    """A range of stable-baselines releases a checkpoint could come from, with the evidence."""

    minimum: str | None
    maximum: str | None
    evidence: tuple[str, ...]

    def __str__(self) -> str:
        if self.minimum and self.maximum:
            return (
                self.minimum if self.minimum == self.maximum else f"{self.minimum}-{self.maximum}"
            )
        if self.minimum:
            return f">={self.minimum}"
        if self.maximum:
            return f"<={self.maximum}"
        return "unknown"


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def guess_sb2_version(
    keys: Collection[str],
    *,
    container: str,
    params_were_list: bool = False,
    referenced_globals: Iterable[str] = (),
    algorithm: str | None = None,
) -> VersionRange:
    """Infer the SB2 release range from the file's facts (docs/formats.md, "Algorithm and version").

    ``container`` is "pickle" or "zip"; ``referenced_globals`` are "module.name" strings.
    """
    low: list[tuple[str, str]] = []
    high: list[tuple[str, str]] = []
    present = set(keys)
    if container == "zip":
        low.append(("2.8.0", "zip container (default since 2.8.0)"))
    if params_were_list:
        high.append(("2.5.1", "parameters saved as a list (before 2.6.0)"))
    else:
        low.append(("2.6.0", "parameters saved as a named dict (since 2.6.0)"))
    if present & {"n_cpu_tf_sess", "seed"}:
        low.append(("2.9.0", "n_cpu_tf_sess/seed in data (since 2.9.0)"))
    if algorithm == "DQN" and "checkpoint_path" in present:
        high.append(("2.7.0", "DQN checkpoint_path (removed in 2.8.0)"))
    if algorithm == "DQN" and "double_q" in present:
        low.append(("2.8.0", "DQN double_q (added in 2.8.0)"))
    if algorithm == "PPO2" and "cliprange_vf" not in present:
        high.append(("2.5.1", "PPO2 without cliprange_vf (added after 2.5.1)"))
    globals_ = set(referenced_globals)
    if any(name.startswith("stable_baselines.common.schedules.") for name in globals_):
        low.append(("2.10.0", "schedules from stable_baselines.common.schedules (since 2.10.0)"))
    if any(name.startswith("stable_baselines.common.callbacks.") for name in globals_):
        low.append(("2.10.0", "stable_baselines.common.callbacks (since 2.10.0)"))
    minimum = max(low, key=lambda item: _key(item[0]), default=None)
    maximum = min(high, key=lambda item: _key(item[0]), default=None)
    evidence = tuple(reason for _, reason in (*low, *high))
    if minimum and maximum and _key(minimum[0]) > _key(maximum[0]):
        evidence += ("contradictory evidence: the file may have been edited by other tools",)
    return VersionRange(minimum[0] if minimum else None, maximum[0] if maximum else None, evidence)
