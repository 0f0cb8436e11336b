"""Names for the unnamed parameter list of a stable-baselines <= 2.5.1 legacy pickle.

Up to 2.5.1 stable-baselines saved ``self.sess.run(self.params)``: a list of arrays in TF creation
order, without the variable names the zip format's ``parameter_list`` needs (docs/param-names.md).
For the built-in policies the names follow from what the file does say: the algorithm (from the
``data`` keys), the policy class (pickled by reference), ``policy_kwargs`` and the spaces. This
module rebuilds the variable list those imply (``sb2graph``) and uses it only when every shape
equals the shape of the array at that position; anything else (a custom policy, keyword arguments
it does not model, one shape off) is :class:`Unnamed` with a note saying what to do. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ckptd.convert.sb2graph import (
    Recorder,
    Shape,
    Space,
    Unsupported,
    ddpg_actor,
    ddpg_critic,
    dqn_policy,
    feed_forward,
    lstm_policy,
    sac_actor,
    sac_critics,
)
from ckptd.formats.model import DataValue, JsonValue, OpaqueValue
from ckptd.formats.sb2meta import guess_algorithm

HOW_TO_NAME = (
    "convert with --param-names FILE (one TF variable name per line, in get_parameter_list() order)"
)


@dataclass(frozen=True)
class ParamNames:
    """One TF variable name per position, proven by every shape; ``basis`` says what built it."""

    names: tuple[str, ...]
    basis: str


@dataclass(frozen=True)
class Unnamed:
    """Why the list cannot be named; ``note`` is the one line an operator acts on."""

    reason: str

    @property
    def note(self) -> str:
        return f"pre-2.6 parameter list of {self.reason}: {HOW_TO_NAME}"


_COMMON = "stable_baselines.common.policies."
# policy class -> (cnn, lstm, layer-normalized lstm)
_ACTOR_CRITIC = {
    "MlpPolicy": (False, False, False),
    "CnnPolicy": (True, False, False),
    "MlpLstmPolicy": (False, True, False),
    "MlpLnLstmPolicy": (False, True, True),
    "CnnLstmPolicy": (True, True, False),
    "CnnLnLstmPolicy": (True, True, True),
}
# policy class -> (cnn, layer norm)
_DQN = {
    "MlpPolicy": (False, False),
    "LnMlpPolicy": (False, True),
    "CnnPolicy": (True, False),
    "LnCnnPolicy": (True, True),
}
_SAC = _DQN
_DDPG = _DQN
# Keyword arguments each family's built-in policies accept and this module models; act_fun only
# changes the arithmetic, never a variable.
_AC_KWARGS = frozenset({"net_arch", "layers", "act_fun"})
_AC_LSTM_KWARGS = frozenset({"net_arch", "layers", "act_fun", "n_lstm"})
_DQN_KWARGS = frozenset({"layers", "dueling", "act_fun"})
_SAC_KWARGS = frozenset({"layers", "act_fun", "reg_weight"})
_DDPG_KWARGS = frozenset({"layers", "act_fun"})
_ON_POLICY = ("A2C", "ACER", "ACKTR", "PPO1", "PPO2", "TRPO")


# --- facts from the data values ------------------------------------------------------------


def _space(value: DataValue | None) -> Space | None:
    if not isinstance(value, OpaqueValue):
        return None
    kind = {
        "<class 'gym.spaces.box.Box'>": "box",
        "<class 'gym.spaces.discrete.Discrete'>": "discrete",
        "<class 'gym.spaces.multi_discrete.MultiDiscrete'>": "multi_discrete",
        "<class 'gym.spaces.multi_binary.MultiBinary'>": "multi_binary",
    }.get(value.type_name)
    extras = value.extras
    if kind == "box":
        shape = extras.get("shape")
        if isinstance(shape, list) and all(type(d) is int and d > 0 for d in shape):
            dims = tuple(int(d) for d in shape if isinstance(d, int))
            return Space("box", dims, math.prod(dims))
    elif kind in ("discrete", "multi_binary"):
        count = extras.get("n")
        if type(count) is int and count > 0:
            return Space(kind, (), count)
    elif kind == "multi_discrete":
        nvec = extras.get("nvec")  # str() of an int array, e.g. "[2 3 4]"
        if isinstance(nvec, str) and re.fullmatch(r"\[[\d\s]+\]", nvec):
            return Space(kind, (), sum(int(n) for n in nvec.strip("[]").split()))
    return None


def _kwargs(value: DataValue | None) -> dict[str, JsonValue] | None:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, OpaqueValue) and value.type_name == "<class 'dict'>":
        return dict(value.extras)  # a dict with a function in it: its items, the rest as str()
    return None


def _policy_class(value: DataValue | None) -> str | None:
    # A class pickled by reference is exactly one global; one rebuilt by value carries more.
    if isinstance(value, OpaqueValue) and len(value.globals) == 1 and "__module__" in value.extras:
        return value.globals[0]
    return None


def _custom_policy(value: DataValue | None) -> str:
    # A class defined in the training script is pickled by value, its code and all.
    if isinstance(value, OpaqueValue) and value.carries_code:
        module = value.extras.get("__module__")
        where = f" defined in {module}" if isinstance(module, str) else ""
        return f"a custom policy (a class{where}, pickled by value)"
    return "a policy that is not a class pickled by reference"


@dataclass(frozen=True)
class _Facts:
    algorithm: str
    policy: str
    obs: Space
    action: Space
    kwargs: dict[str, JsonValue]
    data: Mapping[str, DataValue]


# --- the variable lists per algorithm ------------------------------------------------------


Builder = Callable[[Recorder], None]


def _check_kwargs(facts: _Facts, allowed: frozenset[str]) -> None:
    unknown = sorted(set(facts.kwargs) - allowed)
    if unknown:
        raise Unsupported(f"policy_kwargs ckptd does not model ({', '.join(unknown)})")


def _on_policy(facts: _Facts, name: str) -> list[Builder]:
    cnn, recurrent, norm = _ACTOR_CRITIC[name]
    _check_kwargs(facts, _AC_LSTM_KWARGS if recurrent else _AC_KWARGS)

    def policy(prefix: str) -> Builder:
        if recurrent:
            return lambda rec: lstm_policy(
                rec, prefix, facts.obs, facts.action, cnn, norm, facts.kwargs
            )
        return lambda rec: feed_forward(rec, prefix, facts.obs, facts.action, cnn, facts.kwargs)

    if facts.algorithm == "TRPO":
        # TRPO's params are every trainable variable: the policy and the old policy ("oldpi").
        return [policy(""), policy("oldpi/")]
    return [policy("")]


def _layers(facts: _Facts, default: list[int]) -> list[int]:
    layers = facts.kwargs.get("layers")
    if layers is None:
        return default
    if not (isinstance(layers, list) and all(type(size) is int for size in layers)):
        raise Unsupported("layers is not a list of sizes")
    return [int(size) for size in layers if isinstance(size, int)]


def _dqn(facts: _Facts, name: str) -> list[Builder]:
    cnn, norm = _DQN[name]
    _check_kwargs(facts, _DQN_KWARGS)
    layers = _layers(facts, [64, 64])
    dueling = facts.kwargs.get("dueling", True)
    if name == "LnMlpPolicy":
        dueling = True  # LnMlpPolicy passes dueling=True whatever the keyword says
    if not isinstance(dueling, bool):
        raise Unsupported("dueling is not a bool")
    param_noise = facts.data.get("param_noise", False)
    if not isinstance(param_noise, bool):
        raise Unsupported("param_noise is not a bool")

    def policy(prefix: str) -> Builder:
        return lambda rec: dqn_policy(
            rec, prefix, facts.obs, facts.action, cnn, norm, dueling, layers
        )

    def eps(rec: Recorder) -> None:
        rec.var("deepq/eps", ())

    builders: list[Builder] = [eps, policy("deepq/")]
    if param_noise:
        builders += [policy("deepq/perturbed_model/"), policy("deepq/adaptive_model/")]
    return [*builders, policy("deepq/target_q_func/")]


def _sac(facts: _Facts, name: str) -> list[Builder]:
    cnn, norm = _SAC[name]
    _check_kwargs(facts, _SAC_KWARGS)
    layers = _layers(facts, [64, 64])
    if facts.action.kind != "box":
        raise Unsupported(f"SAC with a {facts.action.kind} action space")
    learned_entropy = facts.data.get("ent_coef") == "auto"
    obs, action = facts.obs, facts.action

    def model(rec: Recorder) -> None:
        sac_actor(rec, "model/pi", obs, action, cnn, norm, layers)
        sac_critics(rec, "model/values_fn", obs, action, cnn, norm, layers, with_qf=True)
        if learned_entropy:
            rec.var("model/log_ent_coef", ())

    def target(rec: Recorder) -> None:
        sac_critics(rec, "target/values_fn", obs, action, cnn, norm, layers, with_qf=False)

    return [model, target]


def _ddpg(facts: _Facts, name: str) -> list[Builder]:
    """DDPG's trainable variables: the policy, the parameter-noise actors, then the target."""
    cnn, norm = _DDPG[name]
    _check_kwargs(facts, _DDPG_KWARGS)
    layers = _layers(facts, [64, 64])
    noise = facts.data.get("param_noise")
    if not (noise is None or _is_noise_spec(noise)):
        raise Unsupported("param_noise is neither None nor an AdaptiveParamNoiseSpec")
    obs, action = facts.obs, facts.action

    def networks(prefix: str) -> Builder:
        def build(rec: Recorder) -> None:
            ddpg_actor(rec, f"{prefix}/pi", obs, action, cnn, norm, layers)
            ddpg_critic(rec, f"{prefix}/qf", obs, action, cnn, norm, layers)

        return build

    def noisy_actor(prefix: str) -> Builder:
        return lambda rec: ddpg_actor(rec, f"{prefix}/pi", obs, action, cnn, norm, layers)

    noisy = [noisy_actor("noise"), noisy_actor("noise_adapt")] if noise is not None else []
    return [networks("model"), *noisy, networks("target")]


def _is_noise_spec(value: DataValue) -> bool:
    return isinstance(value, OpaqueValue) and value.type_name.endswith(".AdaptiveParamNoiseSpec'>")


def _ddpg_statistics(facts: _Facts) -> list[tuple[str, Shape]]:
    """The running mean/std variables (not trainable), saved after the variables from 2.5.x on."""
    flags = {
        key: facts.data.get(key, False) for key in ("normalize_observations", "normalize_returns")
    }
    if not all(isinstance(flag, bool) for flag in flags.values()):
        raise Unsupported("normalize_observations or normalize_returns is not a bool")
    found: list[tuple[str, Shape]] = []
    for key, scope, shape in (
        ("normalize_observations", "input/obs_rms", facts.obs.shape),
        ("normalize_returns", "input/ret_rms", ()),
    ):
        if flags[key]:
            found += [(f"{scope}/runningsum:0", shape), (f"{scope}/runningsumsq:0", shape)]
            found.append((f"{scope}/count:0", ()))
    return found


def _builders(facts: _Facts) -> list[Builder] | Unnamed:
    """The builders of the saved list, or why this family of files is held as a whole."""
    module, _, name = facts.policy.rpartition(".")
    if facts.algorithm in _ON_POLICY and module + "." == _COMMON and name in _ACTOR_CRITIC:
        return _on_policy(facts, name)
    if facts.algorithm == "DQN" and module == "stable_baselines.deepq.policies" and name in _DQN:
        return _dqn(facts, name)
    if facts.algorithm == "SAC" and module == "stable_baselines.sac.policies" and name in _SAC:
        return _sac(facts, name)
    if facts.algorithm == "DDPG" and module == "stable_baselines.ddpg.policies" and name in _DDPG:
        return _ddpg(facts, name)
    if facts.policy.startswith("stable_baselines."):
        return Unnamed(f"{facts.algorithm} with {facts.policy} (not modelled)")
    return Unnamed(f"a custom policy ({facts.policy})")


# --- matching ------------------------------------------------------------------------------


def _describe(facts: _Facts) -> str:
    return f"{facts.algorithm} {facts.policy.rpartition('.')[2]}"


def _match(
    expected: Sequence[tuple[str, Shape]], shapes: Sequence[Shape], facts: _Facts
) -> ParamNames | Unnamed:
    count = len(expected)
    # SAC <= 2.5.1 saved its variables twice (params + target_params, both every trainable
    # variable): the names cover the first copy, whose twin the reader checks and leaves out.
    copies = len(shapes) // count if count and len(shapes) % count == 0 else 0
    if facts.algorithm != "SAC" and copies > 1:
        copies = 0
    if copies < 1:
        return Unnamed(
            f"{_describe(facts)}: {len(shapes)} arrays where its policy has {count} variables"
        )
    for index, shape in enumerate(shapes):
        name, want = expected[index % count]
        if tuple(shape) != want:
            return Unnamed(
                f"{_describe(facts)}: array {index + 1} has shape {tuple(shape)} where "
                f"{name} is {want}"
            )
    basis = f"{_describe(facts)} with policy_kwargs {sorted(facts.kwargs) or 'none'}"
    return ParamNames(tuple(name for name, _ in expected), basis)


def _match_ddpg(
    variables: Sequence[tuple[str, Shape]],
    statistics: Sequence[tuple[str, Shape]],
    shapes: Sequence[Shape],
    facts: _Facts,
) -> ParamNames | Unnamed:
    """One name per array of a DDPG <= 2.5.1 list: 2.2.x-2.3.x saved every trainable variable
    once, 2.4.x twice (``params + target_params``, both everything), 2.5.x twice and then the
    normalization statistics; the repeated variables get their names again.

    The names are those of the loader the zip is for (stable-baselines 2.6-2.10): the critic's
    output is ``qf/qf_output`` there, whichever release wrote the file (<= 2.5.0 called it
    ``qf/qf``). Its position and shape are the same in every release, and a loader of the zip
    matches names against its own graph (docs/param-names.md).
    """
    count = len(variables)
    if statistics and len(shapes) in (count, 2 * count):
        return Unnamed(
            f"{_describe(facts)} with normalization, saved without its running statistics "
            "(stable-baselines <= 2.4.x did not save them; no loader can rebuild them)"
        )
    layouts = {count: [*variables], 2 * count: [*variables, *variables]}
    layouts[2 * count + len(statistics)] = [*variables, *variables, *statistics]
    expected = layouts.get(len(shapes))
    if expected is None:
        return Unnamed(
            f"{_describe(facts)}: {len(shapes)} arrays where it has {count} variables and "
            f"{len(statistics)} statistics"
        )
    for index, (shape, (name, want)) in enumerate(zip(shapes, expected, strict=True)):
        if tuple(shape) != want:
            return Unnamed(
                f"{_describe(facts)}: array {index + 1} has shape {tuple(shape)} where "
                f"{name} is {want}"
            )
    basis = (
        f"{_describe(facts)} with policy_kwargs {sorted(facts.kwargs) or 'none'}, named as "
        "stable-baselines 2.6-2.10 name it (critic output qf/qf_output)"
    )
    return ParamNames(tuple(name for name, _ in expected), basis)


def infer_param_names(
    data: Mapping[str, DataValue], shapes: Sequence[Shape]
) -> ParamNames | Unnamed:
    """Names for a pre-2.6 parameter list, or why there are none (see the module docstring)."""
    policy = _policy_class(data.get("policy"))
    if policy is None:
        return Unnamed(_custom_policy(data.get("policy")))
    algorithm = guess_algorithm(list(data), policy)
    if algorithm is None:
        return Unnamed(f"an unknown algorithm (policy {policy})")
    if algorithm == "TRPO" and data.get("using_gail") is True:
        # 2.5.x lists the adversary's variables first (every trainable variable) and again last
        # (params.extend(reward_giver variables)): a zip cannot hold a name twice.
        return Unnamed("GAIL (it lists its adversary's variables twice, first and last)")
    obs = _space(data.get("observation_space"))
    action = _space(data.get("action_space"))
    kwargs = _kwargs(data.get("policy_kwargs"))
    if obs is None or action is None:
        return Unnamed(f"{algorithm} with an observation or action space ckptd cannot read")
    if kwargs is None:
        return Unnamed(f"{algorithm} with policy_kwargs that are not a dict")
    facts = _Facts(algorithm, policy, obs, action, kwargs, data)
    recorder = Recorder()
    try:
        builders = _builders(facts)
        if isinstance(builders, Unnamed):
            return builders
        for build in builders:
            build(recorder)
        if facts.algorithm == "DDPG":
            return _match_ddpg(recorder.variables, _ddpg_statistics(facts), shapes, facts)
    except Unsupported as why:
        return Unnamed(f"{_describe(facts)}: {why}")
    return _match(recorder.variables, shapes, facts)
