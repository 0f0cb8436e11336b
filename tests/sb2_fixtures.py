"""Build legacy stable-baselines checkpoints the way SB2 wrote them, for tests (shared helper).

SB2 wrote ``cloudpickle.dump((data, params), f)``. TensorFlow 1, gym and stable_baselines are not
installed here, so :func:`stand_ins` registers small stand-in modules under the real module names
(``stable_baselines.common.policies.MlpPolicy`` as an ``abc.ABCMeta`` class,
``stable_baselines.ppo2.ppo2.constfn``, ``gym.spaces.box.Box``, ``gym.spaces.discrete.Discrete``,
``tensorflow.python.ops.math_ops.tanh``...). Pickles made with them reference exactly the globals
genuine files reference; :func:`trusted_load` unpickles with the same stand-ins (tests only: the
product never unpickles).

Two extra writers reproduce shapes the current stack does not produce by itself:

* ``numpy_core_names=True`` rewrites numpy 2's ``numpy._core.*`` globals to the ``numpy.core.*``
  names numpy 1.x (the SB2 era) wrote;
* ``cloudpickle1=True`` pickles functions the way cloudpickle 1.x did
  (``_fill_function(_make_skel_func(code, ...), state)``, ``subimport``, ``_builtin_type``).
  Loading those needs :func:`cloudpickle1_shims`, which puts 1.x-compatible helpers on
  ``cloudpickle.cloudpickle`` for the duration (cloudpickle 3 removed them).

Typical use::

    with stand_ins():
        path = make_ppo2_checkpoint(tmp_path / "ppo2.pkl", protocol=4)
        data, params = trusted_load(path)
"""

from __future__ import annotations

import abc
import contextlib
import io
import os
import pickle
import pickletools
import struct
import sys
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

# --- stand-in classes and functions (their __module__ is the real SB2/gym/TF module) ----------


class MlpPolicy(abc.ABC):  # noqa: B024 - SB2's policies are ABCs
    """Stand-in for stable_baselines.common.policies.MlpPolicy (a class pickled by reference)."""

    __module__ = "stable_baselines.common.policies"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args


class DQNMlpPolicy(abc.ABC):  # noqa: B024
    """Stand-in for stable_baselines.deepq.policies.MlpPolicy."""

    __module__ = "stable_baselines.deepq.policies"
    __qualname__ = "MlpPolicy"


class NormalActionNoise:
    """Stand-in for stable_baselines.common.noise.NormalActionNoise (NEWOBJ + BUILD)."""

    __module__ = "stable_baselines.common.noise"

    def __init__(self, mean: np.ndarray, sigma: np.ndarray) -> None:
        self._mu = mean
        self._sigma = sigma

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NormalActionNoise) and _same(self.__dict__, other.__dict__)


class Box:
    """Stand-in for gym 0.14's gym.spaces.box.Box."""

    __module__ = "gym.spaces.box"

    def __init__(
        self, low: float, high: float, shape: tuple[int, ...], dtype: Any = np.float32
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.low = np.full(shape, low, dtype=self.dtype)
        self.high = np.full(shape, high, dtype=self.dtype)
        self.np_random = np.random.RandomState(0)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and _same(self.__dict__, other.__dict__)


class Discrete:
    """Stand-in for gym 0.14's gym.spaces.discrete.Discrete."""

    __module__ = "gym.spaces.discrete"

    def __init__(self, n: int) -> None:
        self.n = n
        self.shape = ()
        self.dtype = np.dtype(np.int64)
        self.np_random = np.random.RandomState(1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Discrete) and _same(self.__dict__, other.__dict__)


def _sb2_constfn(val: float) -> Callable[[float], float]:
    def func(_: float) -> float:
        return val

    return func


def tanh(x: float) -> float:
    """Stand-in for tensorflow.python.ops.math_ops.tanh (tf.nn.tanh), referenced by name."""
    return float(np.tanh(x))


tanh.__module__ = "tensorflow.python.ops.math_ops"

_PACKAGES = (
    "stable_baselines",
    "stable_baselines.common",
    "stable_baselines.ppo2",
    "stable_baselines.deepq",
    "gym",
    "gym.spaces",
    "tensorflow",
    "tensorflow.python",
    "tensorflow.python.ops",
)


def _make_modules() -> dict[str, types.ModuleType]:
    modules = {name: types.ModuleType(name) for name in _PACKAGES}
    for package in modules.values():
        package.__path__ = []
    contents: dict[str, dict[str, Any]] = {
        "stable_baselines.common.policies": {"MlpPolicy": MlpPolicy},
        "stable_baselines.deepq.policies": {"MlpPolicy": DQNMlpPolicy},
        "stable_baselines.common.noise": {"NormalActionNoise": NormalActionNoise},
        "stable_baselines.ppo2.ppo2": {},
        "gym.spaces.box": {"Box": Box},
        "gym.spaces.discrete": {"Discrete": Discrete},
        "tensorflow.python.ops.math_ops": {"tanh": tanh},
    }
    for name, attributes in contents.items():
        module = types.ModuleType(name)
        module.__file__ = f"/stand-in/{name.replace('.', '/')}.py"
        module.__dict__.update(attributes)
        modules[name] = module
    # constfn must live in the stand-in module so its closure says stable_baselines.ppo2.ppo2.
    ppo2 = modules["stable_baselines.ppo2.ppo2"]
    code = _sb2_constfn.__code__.replace(co_name="constfn", co_qualname="constfn")
    inner = next(const for const in code.co_consts if isinstance(const, types.CodeType))
    inner = inner.replace(co_qualname="constfn.<locals>.func")
    code = code.replace(
        co_consts=tuple(inner if isinstance(c, types.CodeType) else c for c in code.co_consts)
    )
    ppo2.constfn = types.FunctionType(code, ppo2.__dict__, "constfn")  # type: ignore[attr-defined]
    return modules


@contextlib.contextmanager
def stand_ins() -> Iterator[dict[str, types.ModuleType]]:
    """Register the stand-in modules in ``sys.modules``; restore whatever was there on exit."""
    modules = _make_modules()
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield modules
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def constfn(val: float) -> Callable[[float], float]:
    """SB2's ``constfn`` closure (``constfn.<locals>.func``), as defined in stable_baselines.ppo2.ppo2."""
    module = sys.modules.get("stable_baselines.ppo2.ppo2")
    if module is None:
        raise RuntimeError("constfn needs the stand-ins: use it inside `with stand_ins():`")
    result: Callable[[float], float] = module.constfn(val)
    return result


# --- data and params like SB2's save() ----------------------------------------------------------


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def ppo2_params() -> OrderedDict[str, np.ndarray]:
    """TF-style parameters: f32 weights, a 0-d scalar, empties, other dtypes, odd layouts."""
    rng = _rng(7)
    params: OrderedDict[str, np.ndarray] = OrderedDict()
    params["model/pi_fc0/w:0"] = rng.standard_normal((4, 64)).astype(np.float32)
    params["model/pi_fc0/b:0"] = np.zeros(64, dtype=np.float32)
    params["model/vf_fc0/w:0"] = rng.standard_normal((4, 64)).astype(np.float32)
    params["model/pi/w:0"] = rng.standard_normal((64, 2)).astype(np.float32)
    params["model/pi/logstd:0"] = np.array(-0.5, dtype=np.float32)  # 0-d
    params["model/empty:0"] = np.zeros((0,), dtype=np.float32)
    params["model/empty2d:0"] = np.zeros((3, 0), dtype=np.float64)
    params["model/f64:0"] = rng.standard_normal(5)
    params["model/steps:0"] = np.arange(6, dtype=np.int64).reshape(2, 3)
    params["model/mask:0"] = np.array([True, False, True])
    params["model/u8:0"] = np.arange(7, dtype=np.uint8)
    params["model/c16:0"] = np.array([1 + 2j, -3.5j])
    params["model/bigendian:0"] = np.arange(6, dtype=">f4").reshape(3, 2)
    params["model/bigendian0d:0"] = np.array(2.5, dtype=">f8")
    params["model/fortran:0"] = np.asfortranarray(rng.standard_normal((3, 5)).astype(np.float32))
    return params


def ppo2_data() -> dict[str, Any]:
    """PPO2's save() dict (2.9-2.10 keys) plus extra value shapes data_to_json must handle."""
    return {
        "gamma": 0.99,
        "n_steps": 128,
        "vf_coef": 0.5,
        "ent_coef": 0.01,
        "max_grad_norm": 0.5,
        "learning_rate": constfn(2.5e-4),
        "lam": 0.95,
        "nminibatches": 4,
        "noptepochs": 4,
        "cliprange": lambda frac: float(np.float32(0.2)) * frac,
        "cliprange_vf": None,
        "verbose": 1,
        "policy": MlpPolicy,
        "observation_space": Box(-np.inf, np.inf, (4,)),
        "action_space": Discrete(2),
        "n_envs": 1,
        "n_cpu_tf_sess": None,
        "seed": None,
        "_vectorize_action": False,
        "policy_kwargs": {"net_arch": [64, 64], "layers": (64, 64)},
        "target_entropy": np.float32(-2.0),
        "observation_range": (-5.0, 5.0),
        "not_a_number": float("nan"),
        "infinities": [float("inf"), float("-inf")],
        "int_keys": {1: "one", 2.5: "two and a half", False: "no", None: "none"},
        "float64": np.float64(0.125),
        "ordered": OrderedDict([("b", 1), ("a", [1, 2])]),
        "act_kwargs": {"act_fun": tanh, "layers": [32]},
        "raw_bytes": b"\x00\x01binary",
        "action_noise": NormalActionNoise(np.zeros(2), 0.1 * np.ones(2)),
        "int64": np.int64(7),
        "bool_": np.bool_(True),
    }


def dqn_data() -> dict[str, Any]:
    return {
        "double_q": True,
        "learning_starts": 1000,
        "exploration_fraction": 0.1,
        "learning_rate": 5e-4,
        "gamma": 0.99,
        "verbose": 0,
        "observation_space": Box(-1.0, 1.0, (2,), dtype=np.float64),
        "action_space": Discrete(3),
        "policy": DQNMlpPolicy,
        "n_envs": 1,
        "policy_kwargs": {},
    }


def dqn_params() -> OrderedDict[str, np.ndarray]:
    rng = _rng(3)
    params: OrderedDict[str, np.ndarray] = OrderedDict()
    params["deepq/eps:0"] = np.array(0.02, dtype=np.float32)
    for net in ("model", "target_q_func/model"):
        params[f"deepq/{net}/action_value/fully_connected/weights:0"] = rng.standard_normal(
            (2, 64)
        ).astype(np.float32)
        params[f"deepq/{net}/action_value/fully_connected/biases:0"] = np.zeros(
            64, dtype=np.float32
        )
    return params


# --- writers -----------------------------------------------------------------------------------


def _rewrite_numpy_core(blob: bytes) -> bytes:
    """Rewrite numpy 2's output the way numpy 1.x wrote it: ``numpy.core`` names, dtype(…, 0, 1)."""
    out = io.BytesIO()
    protocol = blob[1]
    ops = list(pickletools.genops(blob))
    skip = 0
    for index, (opcode, arg, pos) in enumerate(ops):
        end = _op_end(blob, pos, opcode)
        if skip:
            skip -= 1
            continue
        if opcode.name == "FRAME":
            continue  # re-framed below by pickletools.optimize
        following = [op.name for op, _, _ in ops[index : index + 3]]
        if following == ["NEWFALSE", "NEWTRUE", "TUPLE3"]:
            out.write(b"K\x00K\x01")  # numpy 1.x wrote dtype('f4', 0, 1)
            skip = 1
            continue
        if opcode.name == "GLOBAL" and isinstance(arg, str) and arg.startswith("numpy._core"):
            module, name = arg.split(" ", 1)
            out.write(b"c" + f"numpy.core{module[len('numpy._core') :]}\n{name}\n".encode())
        elif (
            opcode.name in ("SHORT_BINUNICODE", "BINUNICODE")
            and isinstance(arg, str)
            and (arg.startswith("numpy._core."))
        ):
            text = ("numpy.core" + arg[len("numpy._core") :]).encode()
            out.write(b"\x8c" + bytes([len(text)]) + text)
        else:
            out.write(blob[pos:end])
    rewritten = out.getvalue()
    return pickletools.optimize(rewritten) if protocol >= 4 else rewritten


def _op_end(blob: bytes, pos: int, opcode: pickletools.OpcodeInfo) -> int:
    reader = io.BytesIO(blob)
    reader.seek(pos + 1)
    if opcode.arg is not None:
        opcode.arg.reader(reader)
    return reader.tell()


class _Cloudpickle1Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Pickles functions as cloudpickle 1.2 did; everything else as the pure-Python pickler."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def __init__(self, file: io.BytesIO, protocol: int) -> None:
        super().__init__(file, protocol)
        self._sentinels: dict[str, object] = {}

    def _helper(self, name: str) -> None:
        sentinel = self._sentinels.setdefault(name, object())
        if id(sentinel) in self.memo:
            self.write(self.get(self.memo[id(sentinel)][0]))
            return
        if self.proto >= 4:
            self.save("cloudpickle.cloudpickle")
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"cloudpickle.cloudpickle\n{name}\n".encode())
        self.memoize(sentinel)

    def save_module(self, obj: types.ModuleType) -> None:
        self._helper("subimport")
        self.save((obj.__name__,))
        self.write(pickle.REDUCE)
        self.memoize(obj)

    def save_code(self, obj: types.CodeType) -> None:
        if id(types.CodeType) in self.memo:
            self.write(self.get(self.memo[id(types.CodeType)][0]))
        else:
            self._helper("_builtin_type")
            self.save(("CodeType",))
            self.write(pickle.REDUCE)
            self.memoize(types.CodeType)
        _, args = cloudpickle.cloudpickle._code_reduce(obj)
        self.save(args)
        self.write(pickle.REDUCE)
        self.memoize(obj)

    def save_function(self, obj: types.FunctionType, name: str | None = None) -> None:
        module = sys.modules.get(obj.__module__)
        if module is not None and getattr(module, obj.__qualname__, None) is obj:
            self.save_global(obj, name)
            return
        code = obj.__code__
        closure = [cell.cell_contents for cell in obj.__closure__] if obj.__closure__ else None
        f_globals = {key: obj.__globals__[key] for key in code.co_names if key in obj.__globals__}
        base_globals = {
            key: obj.__globals__[key]
            for key in ("__package__", "__name__")
            if key in obj.__globals__
        }
        self._helper("_fill_function")
        self.write(pickle.MARK)
        self._helper("_make_skel_func")
        self.save((code, len(closure) if closure is not None else -1, base_globals))
        self.write(pickle.REDUCE)
        self.memoize(obj)
        state = {
            "globals": f_globals,
            "defaults": obj.__defaults__,
            "dict": obj.__dict__,
            "closure_values": closure,
            "module": obj.__module__,
            "name": obj.__name__,
            "doc": obj.__doc__,
            "_cloudpickle_submodules": [],
            "annotations": obj.__annotations__,
            "qualname": obj.__qualname__,
            "kwdefaults": obj.__kwdefaults__,
        }
        self.save(state)
        self.write(pickle.TUPLE)
        self.write(pickle.REDUCE)

    def save_picklebuffer(self, obj: pickle.PickleBuffer) -> None:
        # The pure-Python pickler memoizes m.tobytes(), which breaks on the shared b"" of an
        # empty array; write the in-band buffer as the C pickler does.
        with obj.raw() as view:
            payload = view.tobytes()
        opcode = pickle.BINBYTES8 if obj.raw().readonly else pickle.BYTEARRAY8
        self.write(opcode + struct.pack("<Q", len(payload)) + payload)
        self.memoize(obj)

    dispatch[types.ModuleType] = save_module
    dispatch[pickle.PickleBuffer] = save_picklebuffer
    dispatch[types.CodeType] = save_code
    dispatch[types.FunctionType] = save_function


def dumps(
    obj: Any, protocol: int = 4, *, numpy_core_names: bool = False, cloudpickle1: bool = False
) -> bytes:
    """cloudpickle.dumps (or the cloudpickle 1.x writer), optionally with numpy 1.x names."""
    if cloudpickle1:
        buffer = io.BytesIO()
        _Cloudpickle1Pickler(buffer, protocol).dump(obj)
        blob = buffer.getvalue()
    else:
        blob = cloudpickle.dumps(obj, protocol=protocol)
    return _rewrite_numpy_core(blob) if numpy_core_names else blob


def write_checkpoint(
    path: Path,
    data: dict[str, Any],
    params: Any,
    *,
    protocol: int = 4,
    numpy_core_names: bool = False,
    cloudpickle1: bool = False,
) -> Path:
    """Write ``(data, params)`` as SB2's ``_save_to_file_cloudpickle`` did."""
    path = Path(path)
    path.write_bytes(
        dumps(
            (data, params), protocol, numpy_core_names=numpy_core_names, cloudpickle1=cloudpickle1
        )
    )
    return path


def make_ppo2_checkpoint(
    path: Path,
    protocol: int = 4,
    *,
    numpy_core_names: bool = False,
    cloudpickle1: bool = False,
    list_params: bool = False,
) -> Path:
    """A PPO2-like legacy checkpoint (call inside ``stand_ins()``)."""
    params = ppo2_params()
    stored: Any = list(params.values()) if list_params else params
    return write_checkpoint(
        path,
        ppo2_data(),
        stored,
        protocol=protocol,
        numpy_core_names=numpy_core_names,
        cloudpickle1=cloudpickle1,
    )


def make_dqn_checkpoint(path: Path, protocol: int = 4, *, numpy_core_names: bool = False) -> Path:
    """A DQN-like legacy checkpoint: no functions at all (call inside ``stand_ins()``)."""
    return write_checkpoint(
        path, dqn_data(), dqn_params(), protocol=protocol, numpy_core_names=numpy_core_names
    )


# --- trusted loading (tests only) ----------------------------------------------------------------


def _make_skel_func(
    code: types.CodeType, cell_count: int, base_globals: Any = None
) -> types.FunctionType:
    base = base_globals if isinstance(base_globals, dict) else {}
    base["__builtins__"] = __builtins__
    closure = tuple(types.CellType() for _ in range(cell_count)) if cell_count >= 0 else None
    return types.FunctionType(code, base, None, None, closure)


def _fill_function(func: types.FunctionType, state: dict[str, Any]) -> types.FunctionType:
    func.__globals__.update(state["globals"])
    func.__defaults__ = state["defaults"]
    func.__dict__ = state["dict"]
    for attribute in ("annotations", "doc", "name", "module", "qualname", "kwdefaults"):
        if attribute in state:
            setattr(func, f"__{attribute}__", state[attribute])
    for cell, value in zip(func.__closure__ or (), state["closure_values"] or (), strict=False):
        cell.cell_contents = value
    return func


@contextlib.contextmanager
def cloudpickle1_shims() -> Iterator[None]:
    """Give cloudpickle 3 the 1.x helpers (``_fill_function``, ``_make_skel_func``) while loading."""
    module = cloudpickle.cloudpickle
    added = {"_fill_function": _fill_function, "_make_skel_func": _make_skel_func}
    missing = [name for name in added if not hasattr(module, name)]
    for name in missing:
        setattr(module, name, added[name])
    try:
        yield
    finally:
        for name in missing:
            delattr(module, name)


def trusted_loads(blob: bytes) -> Any:
    """cloudpickle.loads with the stand-ins and 1.x shims (tests only: this executes the pickle)."""
    with stand_ins(), cloudpickle1_shims(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core.* under numpy 2
        return cloudpickle.loads(blob)


def trusted_load(path: Path) -> Any:
    """Load a checkpoint file the way SB2 did: ``cloudpickle.load`` (tests only)."""
    return trusted_loads(Path(path).read_bytes())


# --- comparison ----------------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """Deep equality that understands arrays, numpy scalars, RandomState and NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.random.RandomState):
        return _same(a.get_state(legacy=False), b.get_state(legacy=False))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | np.floating) and a != a:
        return bool(b != b)
    return bool(a == b)


def same_value(a: Any, b: Any) -> bool:
    """Public deep equality for test assertions."""
    return _same(a, b)


class Exploit:
    """Unpickling this runs ``touch <marker>``: the marker file proves whether a payload ever ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))
