"""The TF variables stable-baselines <= 2.5.1 policies create, in creation order, without TensorFlow.

Each builder below replays, layer by layer, what one stable-baselines policy does when its graph
is built (``common/policies.py``, ``deepq/policies.py``, ``sac/policies.py`` and the helpers in
``a2c/utils.py`` at v2.4.1 and v2.5.1) and records every trainable variable it would create: its
full name and its shape. TensorFlow's default-name rules are modelled where they matter: an
unnamed ``tf.layers.dense`` is ``dense``, ``dense_1``, ... and ``fully_connected`` /
``LayerNorm`` get the same ``_N`` suffixes, counted per enclosing variable scope. Pure code,
no I/O; docs/param-names.md says how it is proven against real stable-baselines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Shape = tuple[int, ...]

NATURE_CNN_OUT = 512


class Unsupported(Exception):
    """The policy would be built in a way this module does not model (held, never guessed)."""


@dataclass(frozen=True)
class Space:
    """What a gym space contributes to variable shapes."""

    kind: str  # "box" | "discrete" | "multi_discrete" | "multi_binary"
    shape: Shape  # Box's shape; () otherwise
    size: int  # Discrete n, MultiBinary n, sum(MultiDiscrete nvec); prod(shape) for a Box

    @property
    def flat(self) -> int:
        """Width of the processed, flattened observation (one-hot for Discrete/MultiDiscrete)."""
        return self.size


class Recorder:
    """Collects (name, shape) in creation order and hands out TF-style unique default names."""

    def __init__(self) -> None:
        self.variables: list[tuple[str, Shape]] = []
        self._counts: dict[str, int] = {}

    def var(self, name: str, shape: Sequence[int]) -> None:
        self.variables.append((name + ":0", tuple(shape)))

    def unique(self, scope: str, base: str) -> str:
        key = f"{scope}/{base}"
        seen = self._counts.get(key, 0)
        self._counts[key] = seen + 1
        return f"{scope}/{base}" if seen == 0 else f"{scope}/{base}_{seen}"


# --- a2c/utils.py layers -----------------------------------------------------------------------


def linear(rec: Recorder, scope: str, n_in: int, n_out: int) -> int:
    rec.var(f"{scope}/w", (n_in, n_out))
    rec.var(f"{scope}/b", (n_out,))
    return n_out


def conv(rec: Recorder, scope: str, image: Shape, filters: int, size: int, stride: int) -> Shape:
    """A VALID-padded NHWC ``conv``; its bias is (1, filters, 1, 1) (``one_dim_bias=False``)."""
    height, width, channels = image
    rec.var(f"{scope}/w", (size, size, channels, filters))
    rec.var(f"{scope}/b", (1, filters, 1, 1))
    out = ((height - size) // stride + 1, (width - size) // stride + 1, filters)
    if out[0] < 1 or out[1] < 1:
        raise Unsupported(f"an observation of {image} is too small for the nature CNN")
    return out


def nature_cnn(rec: Recorder, scope: str, obs: Space) -> int:
    if obs.kind != "box" or len(obs.shape) != 3:
        raise Unsupported(f"a CNN policy on a {obs.kind} observation of shape {obs.shape}")
    image = conv(rec, f"{scope}/c1", obs.shape, 32, 8, 4)
    image = conv(rec, f"{scope}/c2", image, 64, 4, 2)
    image = conv(rec, f"{scope}/c3", image, 64, 3, 1)
    return linear(rec, f"{scope}/fc1", math.prod(image), NATURE_CNN_OUT)


def lstm(rec: Recorder, scope: str, n_in: int, n_hidden: int, layer_norm: bool) -> int:
    rec.var(f"{scope}/wx", (n_in, 4 * n_hidden))
    rec.var(f"{scope}/wh", (n_hidden, 4 * n_hidden))
    rec.var(f"{scope}/b", (4 * n_hidden,))
    if layer_norm:
        for name, width in (("gx", 4), ("bx", 4), ("gh", 4), ("bh", 4), ("gc", 1), ("bc", 1)):
            rec.var(f"{scope}/{name}", (width * n_hidden,))
    return n_hidden


# --- tf.layers / tf.contrib.layers -------------------------------------------------------------


def dense(rec: Recorder, scope: str, name: str | None, n_in: int, n_out: int) -> int:
    full = f"{scope}/{name}" if name else rec.unique(scope, "dense")
    rec.var(f"{full}/kernel", (n_in, n_out))
    rec.var(f"{full}/bias", (n_out,))
    return n_out


def fully_connected(rec: Recorder, scope: str, n_in: int, n_out: int) -> int:
    full = rec.unique(scope, "fully_connected")
    rec.var(f"{full}/weights", (n_in, n_out))
    rec.var(f"{full}/biases", (n_out,))
    return n_out


def layer_norm(rec: Recorder, scope: str, width: int) -> None:
    full = rec.unique(scope, "LayerNorm")
    rec.var(f"{full}/beta", (width,))
    rec.var(f"{full}/gamma", (width,))


# --- common/policies.py (A2C, ACER, ACKTR, PPO1, PPO2, TRPO) -----------------------------------


def distribution(rec: Recorder, scope: str, action: Space, pi_in: int, vf_in: int) -> None:
    """``proba_distribution_from_latent``: pi (+ pi/logstd for a Box), then q."""
    if action.kind == "box":
        if len(action.shape) != 1:
            raise Unsupported(f"a Box action space of shape {action.shape}")
        linear(rec, f"{scope}/pi", pi_in, action.size)
        rec.var(f"{scope}/pi/logstd", (1, action.size))
    else:
        linear(rec, f"{scope}/pi", pi_in, action.size)
    linear(rec, f"{scope}/q", vf_in, action.size)


def _int_list(value: object, what: str) -> list[int]:
    if not (isinstance(value, list) and all(type(item) is int for item in value)):
        raise Unsupported(f"{what} is not a list of layer sizes")
    return list(value)


def mlp_extractor(rec: Recorder, scope: str, n_in: int, net_arch: list[object]) -> tuple[int, int]:
    latent = n_in
    pi_layers: list[int] = []
    vf_layers: list[int] = []
    for index, layer in enumerate(net_arch):
        if type(layer) is int:
            latent = linear(rec, f"{scope}/shared_fc{index}", latent, layer)
            continue
        if not isinstance(layer, dict):
            raise Unsupported("net_arch holds something other than sizes and one dict")
        pi_layers = _int_list(layer.get("pi", []), "net_arch pi")
        vf_layers = _int_list(layer.get("vf", []), "net_arch vf")
        break
    pi_latent = vf_latent = latent
    for index in range(max(len(pi_layers), len(vf_layers))):
        if index < len(pi_layers):
            pi_latent = linear(rec, f"{scope}/pi_fc{index}", pi_latent, pi_layers[index])
        if index < len(vf_layers):
            vf_latent = linear(rec, f"{scope}/vf_fc{index}", vf_latent, vf_layers[index])
    return pi_latent, vf_latent


def feed_forward(
    rec: Recorder, prefix: str, obs: Space, action: Space, cnn: bool, kwargs: Mapping[str, object]
) -> None:
    """``FeedForwardPolicy`` (MlpPolicy, CnnPolicy) under ``<prefix>model``."""
    scope = f"{prefix}model"
    if cnn:
        pi_latent = vf_latent = nature_cnn(rec, scope, obs)
    else:
        net_arch = kwargs.get("net_arch")
        if net_arch is None:
            layers = kwargs.get("layers")
            sizes = [64, 64] if layers is None else _int_list(layers, "layers")
            net_arch = [{"vf": sizes, "pi": sizes}]
        if not isinstance(net_arch, list):
            raise Unsupported("net_arch is not a list")
        pi_latent, vf_latent = mlp_extractor(rec, scope, obs.flat, net_arch)
    linear(rec, f"{scope}/vf", vf_latent, 1)
    distribution(rec, scope, action, pi_latent, vf_latent)


def lstm_policy(
    rec: Recorder,
    prefix: str,
    obs: Space,
    action: Space,
    cnn: bool,
    layer_norm_lstm: bool,
    kwargs: Mapping[str, object],
) -> None:
    """``LstmPolicy`` (Mlp/Cnn, plain or layer-normalized LSTM) under ``<prefix>model``."""
    scope = f"{prefix}model"
    n_lstm = kwargs.get("n_lstm", 256)
    if type(n_lstm) is not int:
        raise Unsupported("n_lstm is not an int")
    net_arch = kwargs.get("net_arch")
    if net_arch is None:
        if cnn:
            features = nature_cnn(rec, scope, obs)
        else:
            layers = kwargs.get("layers")
            features = obs.flat
            for index, size in enumerate(
                [64, 64] if layers is None else _int_list(layers, "layers")
            ):
                features = linear(rec, f"{scope}/pi_fc{index}", features, size)
        out = lstm(rec, f"{scope}/lstm1", features, n_lstm, layer_norm_lstm)
        linear(rec, f"{scope}/vf", out, 1)
        distribution(rec, scope, action, out, out)
        return
    if cnn or not isinstance(net_arch, list):
        raise Unsupported("a CNN LSTM policy with net_arch (stable-baselines raises)")
    latent = obs.flat
    pi_layers: list[int] = []
    vf_layers: list[int] = []
    for index, layer in enumerate(net_arch):
        if type(layer) is int:
            latent = linear(rec, f"{scope}/shared_fc{index}", latent, layer)
        elif layer == "lstm":
            latent = lstm(rec, f"{scope}/lstm1", latent, n_lstm, layer_norm_lstm)
        elif isinstance(layer, dict):
            pi_layers = _int_list(layer.get("pi", []), "net_arch pi")
            vf_layers = _int_list(layer.get("vf", []), "net_arch vf")
            break
        else:
            raise Unsupported("net_arch holds something other than sizes, 'lstm' and one dict")
    pi_latent = latent
    for index, size in enumerate(pi_layers):
        pi_latent = linear(rec, f"{scope}/pi_fc{index}", pi_latent, size)
    vf_latent = latent
    for index, size in enumerate(vf_layers):
        vf_latent = linear(rec, f"{scope}/vf_fc{index}", vf_latent, size)
    linear(rec, f"{scope}/vf", vf_latent, 1)
    distribution(rec, scope, action, pi_latent, vf_latent)


# --- deepq/policies.py -------------------------------------------------------------------------


def _fc_stack(
    rec: Recorder, scope: str, n_in: int, layers: list[int], with_norm: bool, n_out: int
) -> None:
    width = n_in
    for size in layers:
        width = fully_connected(rec, scope, width, size)
        if with_norm:
            layer_norm(rec, scope, size)
    fully_connected(rec, scope, width, n_out)


def dqn_policy(
    rec: Recorder,
    prefix: str,
    obs: Space,
    action: Space,
    cnn: bool,
    with_norm: bool,
    dueling: bool,
    layers: list[int],
) -> None:
    """DQN's ``FeedForwardPolicy`` under ``<prefix>model``: action_value, then state_value."""
    if action.kind != "discrete":
        raise Unsupported(f"DQN with a {action.kind} action space")
    scope = f"{prefix}model/action_value"
    if cnn:
        features = nature_cnn(rec, scope, obs)
        _fc_stack(rec, scope, features, [], with_norm, action.size)
    else:
        features = obs.flat
        _fc_stack(rec, scope, features, layers, with_norm, action.size)
    if dueling:
        # The state-value stream always runs the fully connected layers, also after the CNN.
        _fc_stack(rec, f"{prefix}model/state_value", features, layers, with_norm, 1)


# --- sac/policies.py ---------------------------------------------------------------------------


def _sac_mlp(rec: Recorder, scope: str, n_in: int, layers: list[int], with_norm: bool) -> int:
    width = n_in
    for index, size in enumerate(layers):
        width = dense(rec, scope, f"fc{index}", width, size)
        if with_norm:
            layer_norm(rec, scope, size)
    return width


def sac_actor(
    rec: Recorder, scope: str, obs: Space, action: Space, cnn: bool, norm: bool, layers: list[int]
) -> None:
    features = nature_cnn(rec, scope, obs) if cnn else obs.flat
    hidden = _sac_mlp(rec, scope, features, layers, norm)
    dense(rec, scope, None, hidden, action.size)  # mean
    dense(rec, scope, None, hidden, action.size)  # log std


def sac_critics(
    rec: Recorder,
    scope: str,
    obs: Space,
    action: Space,
    cnn: bool,
    norm: bool,
    layers: list[int],
    with_qf: bool,
) -> None:
    features = nature_cnn(rec, scope, obs) if cnn else obs.flat
    hidden = _sac_mlp(rec, f"{scope}/vf", features, layers, norm)
    dense(rec, f"{scope}/vf", "vf", hidden, 1)
    if with_qf:
        for name in ("qf1", "qf2"):
            hidden = _sac_mlp(rec, f"{scope}/{name}", features + action.size, layers, norm)
            dense(rec, f"{scope}/{name}", name, hidden, 1)


# --- ddpg/policies.py --------------------------------------------------------------------------

# The critic's output layer: ``qf_output`` from 2.5.1 on (and in every release whose loader reads
# the zip format), ``qf`` (the scope's name) in 2.4.x-2.5.0. Same position, same shape.
DDPG_CRITIC_OUTPUT = "qf_output"


def ddpg_actor(
    rec: Recorder, scope: str, obs: Space, action: Space, cnn: bool, norm: bool, layers: list[int]
) -> None:
    """``make_actor``: (CNN), dense ``fc<i>`` (+ LayerNorm) per layer, then dense ``pi``."""
    if action.kind != "box" or len(action.shape) != 1:
        raise Unsupported(f"DDPG with a {action.kind} action space of shape {action.shape}")
    features = nature_cnn(rec, scope, obs) if cnn else obs.flat
    hidden = _sac_mlp(rec, scope, features, layers, norm)
    dense(rec, scope, "pi", hidden, action.size)


def ddpg_critic(
    rec: Recorder, scope: str, obs: Space, action: Space, cnn: bool, norm: bool, layers: list[int]
) -> None:
    """``make_critic``: like the actor, with the action concatenated after the first layer."""
    width = nature_cnn(rec, scope, obs) if cnn else obs.flat
    for index, size in enumerate(layers):
        width = dense(rec, scope, f"fc{index}", width, size)
        if norm:
            layer_norm(rec, scope, size)
        if index == 0:
            width += action.size
    dense(rec, scope, DDPG_CRITIC_OUTPUT, width, 1)
