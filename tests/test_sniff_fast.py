"""identify_format (the inventory's early-exit sniff) labels every file exactly as identify does,
and the faster peek_pickle loop reports exactly what a straightforward opcode walk reports."""

from __future__ import annotations

import io
import pickle
import pickletools
import random
import shutil
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptd.errors import UnsafePathError
from ckptd.formats import DIRECTORY_FORMATS, Format
from ckptd.formats.sniff import SNIFF_BYTES, identify, identify_format, is_sb2_module
from ckptd.formats.verdict_files import TORCH_LEGACY_MAGIC
from ckptd.pickles.peek import PicklePeek, peek_pickle
from tests.sb2zip_helpers import make_sb3_zip, params_of, sample_arrays, write_zip

LEGACY = Path(__file__).resolve().parent / "data" / "sb2-era"
SB2_GLOBAL = b"\x80\x02cstable_baselines.ppo2\nPPO2\nq\x00"


class CustomPolicy:
    """A user's policy class: pickled by reference to this (non-stable_baselines) module."""


def _zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)


def _cases(directory: Path) -> list[Path]:
    """Every kind of file test_sniff.py classifies, plus the shapes the fast paths special-case."""
    files: dict[str, bytes] = {
        "empty.pkl": b"",
        "zeros.pkl": b"\x00" * 100,
        "random.pkl": random.Random(3).randbytes(4096),
        "text.pkl": b'{"json": true}',
        "lone-proto.pkl": b"\x80",
        "stats.pkl": pickle.dumps({"mean": 1.0, "arr": np.zeros(3)}, protocol=4),
        "pair.pkl": pickle.dumps((1, 2), protocol=4),
        "proto1.pkl": pickle.dumps({"a": 1}, protocol=1),
        "proto0.pkl": pickle.dumps({"a": 1}, protocol=0),
        "proto2.pkl": pickle.dumps({"a": OrderedDict}, protocol=2),
        "custom.pkl": pickle.dumps(
            ({"gamma": 0.99, "policy": OrderedDict}, OrderedDict(w=np.ones(2, np.float32))),
            protocol=4,
        ),
        # Its first global is no hint; only a later one (OrderedDict) makes it a candidate.
        "custom-module.pkl": pickle.dumps(
            ({"policy": CustomPolicy}, OrderedDict(w=np.ones(2, np.float32))), protocol=4
        ),
        # An SB2 global first, then a long tail of other globals the full scan still lists.
        "sb2-then-more.pkl": SB2_GLOBAL
        + b"".join(b"ccollections\nOrderedDict\n0" for _ in range(50))
        + b"N.",
        "sb2-truncated.pkl": SB2_GLOBAL[:-3],
        "joblib.pkl": b"\x80\x04cjoblib.numpy_pickle\nNumpyArrayWrapper\n.",
        "joblib-zlib.pkl": zlib.compress(pickle.dumps([1, 2], protocol=4)),
        "legacy.pt": TORCH_LEGACY_MAGIC + b"\x80\x02M\xe9\x03.",
        "model.safetensors": struct.pack("<Q", 2) + b"{}",
    }
    for name, content in files.items():
        (directory / name).write_bytes(content)
    for kind in ("ppo2", "dqn", "sac"):
        shutil.copyfile(LEGACY / f"{kind}.pkl", directory / f"{kind}-named.zip")
    write_zip(directory / "sb2.pkl", {"gamma": 0.99}, params_of(sample_arrays()))
    make_sb3_zip(directory / "sb3.bin")
    _zip(directory / "old-sb3.zip", {"data": b"{}", "tensors.pth": b"x"})
    _zip(directory / "other.zip", {"data": b"{}", "weights.npy": b""})
    _zip(
        directory / "torch.pt", {"archive/data.pkl": b"\x80\x02}q\x00.", "archive/version": b"3\n"}
    )
    (directory / "broken.zip").write_bytes((directory / "other.zip").read_bytes()[:40])
    # Bigger than the sniff window: parsed through the file handle, not from memory.
    _zip(
        directory / "big-sb2.zip",
        {"data": b"{}", "parameters": b"\x00" * (SNIFF_BYTES + 1024), "parameter_list": b"[]"},
    )
    # A zip whose only central directory is an embedded one (a truncated checkpoint).
    inner = io.BytesIO()
    _zip_bytes = {"parameters": b"p", "parameter_list": b"[]"}
    with zipfile.ZipFile(inner, "w") as archive:
        for name, payload in _zip_bytes.items():
            archive.writestr(name, payload)
    (directory / "embedded.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 60 + inner.getvalue())
    return sorted(directory.iterdir())


def test_identify_format_agrees_with_identify_on_every_kind_of_file(tmp_path: Path) -> None:
    cases = _cases(tmp_path)
    labels = {path.name: identify_format(path) for path in cases}
    assert labels == {path.name: identify(path).format for path in cases}
    # The cases really cover every label and both confidences of a legacy pickle.
    assert set(labels.values()) == set(Format) - DIRECTORY_FORMATS
    assert identify(tmp_path / "custom.pkl").confidence == "low"
    assert identify(tmp_path / "custom-module.pkl").confidence == "low"
    assert labels["sb2-then-more.pkl"] is Format.SB2_PICKLE
    assert labels["big-sb2.zip"] is Format.SB2_ZIP
    assert labels["embedded.zip"] is Format.UNKNOWN


def test_identify_still_lists_every_global_after_the_sb2_one(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(SB2_GLOBAL + b"ccollections\nOrderedDict\n0N.")
    assert identify(path).globals == ("stable_baselines.ppo2.PPO2", "collections.OrderedDict")


def test_identify_format_refuses_symlinks_like_identify(tmp_path: Path) -> None:
    target = tmp_path / "real.pkl"
    shutil.copyfile(LEGACY / "ppo2.pkl", target)
    link = tmp_path / "link.pkl"
    link.symlink_to(target)
    with pytest.raises(UnsafePathError):
        identify_format(link)


def test_peek_stops_at_the_first_matching_global() -> None:
    blob = SB2_GLOBAL + b"".join(b"ccollections\nOrderedDict\n0" for _ in range(1000)) + b"N."
    stopped = peek_pickle(blob, stop_at=is_sb2_module)
    assert stopped.globals == ("stable_baselines.ppo2.PPO2",)
    assert stopped.opcodes == 2 and not stopped.complete and stopped.error is None
    full = peek_pickle(blob)
    assert full.complete and full.opcodes > 2000
    assert full.globals == ("stable_baselines.ppo2.PPO2", "collections.OrderedDict")


def _reference_peek(data: bytes, max_opcodes: int = 200_000) -> PicklePeek:
    """The plain opcode walk peek_pickle must match (its original, slower formulation)."""
    strings = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
    strings |= {"STRING", "BINSTRING", "SHORT_BINSTRING"}
    stores, loads = {"PUT", "BINPUT", "LONG_BINPUT"}, {"GET", "BINGET", "LONG_BINGET"}
    no_push = {"PROTO", "FRAME", "MEMOIZE", *stores}
    building = {"REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST"}
    protocol: Any = None
    found: dict[str, None] = {}
    memo: dict[Any, str | None] = {}
    recent: list[str | None] = [None, None]
    builds, count, complete, error = False, 0, False, None
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            count += 1
            if name == "PROTO" and count == 1:
                protocol = arg
            elif name == "STOP":
                complete = True
                break
            elif name == "GLOBAL":
                found.setdefault(str(arg).replace(" ", ".", 1), None)
            elif name == "STACK_GLOBAL" and None not in recent:
                found.setdefault(f"{recent[0]}.{recent[1]}", None)
            builds = builds or name in building
            if name == "MEMOIZE":
                memo[len(memo)] = recent[-1]
            elif name in stores:
                memo[arg] = recent[-1]
            elif name not in no_push:
                pushed = arg if name in strings and isinstance(arg, str) else None
                recent = [recent[-1], memo.get(arg) if name in loads else pushed]
            if count >= max_opcodes:
                error = f"stopped after {max_opcodes} opcodes"
                break
    except ValueError as err:
        error = str(err)
    return PicklePeek(protocol, tuple(found)[:256], complete, count, builds, error)


def _sample_pickles() -> list[bytes]:
    objects: list[object] = [
        [OrderedDict, OrderedDict, np.float32(1)],
        {"a": [1, 2.5, "x", b"y", None, True], "b": (OrderedDict(), set(), frozenset({1}))},
        ({"policy": OrderedDict, "lr": 0.5}, OrderedDict(w=np.arange(6).reshape(2, 3))),
        [np.dtype("float32"), np.zeros((2, 2)), "a" * 300],
    ]
    blobs = [pickle.dumps(obj, protocol=p) for obj in objects for p in range(6)]
    blobs += [(LEGACY / f"{kind}.pkl").read_bytes() for kind in ("ppo2", "dqn", "sac")]
    rng = random.Random(7)
    blobs += [blob[: rng.randrange(1, len(blob))] for blob in list(blobs) for _ in range(3)]
    return blobs


@pytest.mark.parametrize("max_opcodes", [200_000, 7])
def test_peek_matches_the_reference_walk(max_opcodes: int) -> None:
    for blob in _sample_pickles():
        assert peek_pickle(blob, max_opcodes=max_opcodes) == _reference_peek(blob, max_opcodes)


def test_peek_with_a_stop_that_never_fires_is_the_full_peek() -> None:
    never: Callable[[str], bool] = lambda name: False  # noqa: E731
    for blob in _sample_pickles():
        assert peek_pickle(blob, stop_at=never) == peek_pickle(blob)
