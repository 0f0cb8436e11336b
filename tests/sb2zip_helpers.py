"""Test helpers for the SB2/SB3 zip tests: ParamArrays from numpy arrays, SB2's own loading steps,
and a genuine-shaped SB3 zip (no torch needed)."""

from __future__ import annotations

import io
import json
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ckptd.formats.model import DataValue, ParamArray
from ckptd.formats.sb2zip import ZipWriteReport, write_sb2_zip

FIXED_TIME = (2020, 12, 23, 10, 30, 44)


def param_from_array(name: str, array: np.ndarray) -> ParamArray:
    """A ParamArray viewing ``array``'s memory (no copy), as the legacy reader produces them."""
    fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)
    assert array.flags.c_contiguous or fortran, "test arrays must be contiguous"
    flat = array.T if fortran else array
    raw = memoryview(flat.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")
    return ParamArray(name, array.dtype.str, tuple(array.shape), fortran, raw)


def sample_arrays() -> OrderedDict[str, np.ndarray]:
    """Every dtype a checkpoint may hold, with 0-d, empty, big-endian and Fortran-order arrays."""
    rng = np.random.default_rng(7)
    arrays: OrderedDict[str, np.ndarray] = OrderedDict()
    arrays["model/pi_fc0/w:0"] = rng.standard_normal((4, 64)).astype(np.float32)
    arrays["model/pi_fc0/b:0"] = rng.standard_normal(64).astype(np.float32)
    arrays["deepq/eps:0"] = np.array(0.25, dtype=np.float32)
    arrays["model/log_ent_coef:0"] = np.array(-1.5)
    arrays["empty/a:0"] = np.zeros((0,), dtype=np.float32)
    arrays["empty/b:0"] = np.zeros((3, 0), dtype=np.int64)
    for code in ("f2", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "c8", "c16"):
        arrays[f"dtype/{code}:0"] = (rng.standard_normal((3, 5)) * 50).astype(code)
    arrays["dtype/b1:0"] = rng.standard_normal((2, 7)) > 0
    arrays["dtype/nan:0"] = np.array([np.nan, np.inf, -np.inf, -0.0], dtype=np.float32)
    arrays["big/endian:0"] = np.arange(12, dtype=">f4").reshape(3, 4)
    arrays["big/endian_i8:0"] = np.arange(5, dtype=">i8")
    arrays["fortran/w:0"] = np.asfortranarray(rng.standard_normal((5, 3, 2)))
    arrays["fortran/be:0"] = np.asfortranarray(np.arange(6, dtype=">f8").reshape(2, 3))
    return arrays


def params_of(arrays: Mapping[str, np.ndarray]) -> list[ParamArray]:
    return [param_from_array(name, array) for name, array in arrays.items()]


def write_zip(
    path: Path,
    data: Mapping[str, DataValue],
    params: Sequence[ParamArray],
    **kwargs: object,
) -> ZipWriteReport:
    with path.open("wb") as handle:
        return write_sb2_zip(handle, data, params, date_time=FIXED_TIME, **kwargs)  # type: ignore[arg-type]


def sb2_load(path: Path) -> tuple[dict[str, object] | None, OrderedDict[str, np.ndarray] | None]:
    """SB2's BaseRLModel._load_from_file (2.8-2.10), minus the cloudpickle.loads of entries."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data = json.loads(archive.read("data").decode()) if "data" in names else None
        params = None
        if "parameters" in names:
            param_list = json.loads(archive.read("parameter_list").decode())
            npz = np.load(io.BytesIO(archive.read("parameters")))
            params = OrderedDict((name, npz[name]) for name in param_list)
    return data, params


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical: dtype (with byte order), shape, memory order and bytes."""
    return (
        a.dtype == b.dtype
        and a.dtype.str == b.dtype.str
        and a.shape == b.shape
        and a.tobytes(order="A") == b.tobytes(order="A")
        and (a.ndim < 2 or bool(a.flags.f_contiguous) == bool(b.flags.f_contiguous))
    )


SB3_SYSTEM_INFO = (
    "- OS: Linux-6.1.0-x86_64-with-glibc2.36 # 1 SMP PREEMPT_DYNAMIC\n"
    "- Python: 3.11.7\n- Stable-Baselines3: 2.3.2\n- PyTorch: 2.3.1+cpu\n- GPU Enabled: False\n"
    "- Numpy: 1.26.4\n- Cloudpickle: 3.0.0\n- Gymnasium: 0.29.1\n"
)


def make_sb3_zip(path: Path, *, version: str = "2.3.2", data: bytes | None = None) -> None:
    """A zip shaped like SB3's save_to_zip_file output (PPO): data, pytorch_variables.pth,
    policy.pth, policy.optimizer.pth, _stable_baselines3_version, system_info.txt."""
    if data is None:
        data = json.dumps(
            {
                "policy_class": {
                    ":type:": "<class 'abc.ABCMeta'>",
                    ":serialized:": "gAJjYnVpbHRpbnMKaW50CnEALg==",
                    "__module__": "stable_baselines3.common.policies",
                },
                "num_timesteps": 2048,
                "learning_rate": 0.0003,
                "seed": None,
                "n_envs": 1,
            },
            indent=4,
        ).encode()
    # torch.save output is itself a zip ("archive/data.pkl", ...); its bytes are opaque to ckptd.
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as torch_like:
        torch_like.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        torch_like.writestr("archive/version", b"3\n")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", data)
        with archive.open("pytorch_variables.pth", "w", force_zip64=True) as member:
            member.write(inner.getvalue())
        with archive.open("policy.pth", "w", force_zip64=True) as member:
            member.write(inner.getvalue())
        with archive.open("policy.optimizer.pth", "w", force_zip64=True) as member:
            member.write(inner.getvalue())
        archive.writestr("_stable_baselines3_version", version)
        archive.writestr("system_info.txt", SB3_SYSTEM_INFO)


def with_version_zipfile_cannot_read(data: bytes) -> bytes:
    """``data`` (a zip) with every member's "version needed to extract" at 23.5: zipfile raises
    NotImplementedError opening its central directory (found by the coverage-guided fuzzer)."""
    patched = bytearray(data)
    at = patched.find(b"PK\x01\x02")
    while at != -1:
        patched[at + 6] = 235  # version needed to extract, low byte: 23.5
        at = patched.find(b"PK\x01\x02", at + 4)
    return bytes(patched)
