"""The safe legacy reader against checkpoints written like stable-baselines wrote them.

Every expectation is computed from a trusted ``cloudpickle.load`` of the same file (with the
stand-in modules), and SB2's ``data_to_json`` rules are re-run on that trusted value, so the
reader must agree with what SB2 itself would have stored.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptd.convert.legacy import read_legacy, read_legacy_file
from ckptd.errors import FormatError, HeldCheckpoint, UnsafeCheckpoint, UnsafePathError
from ckptd.formats.model import LegacyCheckpoint, OpaqueValue
from ckptd.pickles.graph_check import check_pickle_bytes
from tests.sb2_fixtures import (
    dqn_data,
    dqn_params,
    dumps,
    make_dqn_checkpoint,
    make_ppo2_checkpoint,
    ppo2_params,
    same_value,
    stand_ins,
    trusted_load,
    trusted_loads,
    write_checkpoint,
)

VARIANTS = [
    pytest.param({"protocol": 2}, id="p2"),
    pytest.param({"protocol": 4}, id="p4"),
    pytest.param({"protocol": 5}, id="p5"),
    pytest.param({"protocol": 4, "numpy_core_names": True}, id="p4-numpy1-names"),
    pytest.param({"protocol": 2, "numpy_core_names": True}, id="p2-numpy1-names"),
    pytest.param(
        {"protocol": 4, "cloudpickle1": True, "numpy_core_names": True}, id="p4-cloudpickle1"
    ),
    pytest.param({"protocol": 2, "cloudpickle1": True}, id="p2-cloudpickle1"),
    pytest.param({"protocol": 5, "cloudpickle1": True}, id="p5-cloudpickle1"),
]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _sb2_is_json(value: Any) -> bool:
    """SB2's save_util.is_json_serializable."""
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def _sb2_type_name(value: Any) -> str:
    # numpy 2 renamed numpy.bool_'s str(type); SB2 ran numpy 1.x.
    return str(type(value)).replace("numpy.bool'", "numpy.bool_'")


def _sb2_extras(value: Any) -> dict[str, Any]:
    """SB2's data_to_json extras, with memory addresses removed (they differ per process)."""
    extras: dict[str, Any] = {}
    if hasattr(value, "__dict__") or isinstance(value, dict):
        items = value.items() if isinstance(value, dict) else vars(value).items()
        for name, item in items:
            extras[name] = item if _sb2_is_json(item) else _ADDRESS.sub("", str(item))
    return extras


def _equivalent(loaded: Any, original: Any) -> bool:
    if isinstance(original, type):
        return loaded is original
    if isinstance(original, types.FunctionType):
        return all(loaded(x) == original(x) for x in (0.0, 0.25, 1.0))
    return same_value(loaded, original)


@pytest.fixture(scope="module")
def ppo2_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ppo2")
    files = {}
    with stand_ins():
        for index, param in enumerate(VARIANTS):
            variant = param.values[0]
            assert isinstance(variant, dict)
            files[str(sorted(variant.items()))] = make_ppo2_checkpoint(
                root / f"m{index}.pkl", **variant
            )
    return files


def _read(files: dict[str, Path], variant: dict[str, Any]) -> tuple[Path, LegacyCheckpoint, str]:
    path = files[str(sorted(variant.items()))]
    checkpoint, digest = read_legacy_file(path)
    return path, checkpoint, digest


@pytest.mark.parametrize("variant", VARIANTS)
def test_params_are_bit_identical_to_a_trusted_load(
    ppo2_files: dict[str, Path], variant: dict[str, Any]
) -> None:
    path, checkpoint, digest = _read(ppo2_files, variant)
    _, params = trusted_load(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert checkpoint.protocol == variant["protocol"]
    assert [param.name for param in checkpoint.params] == list(params)
    assert not checkpoint.params_were_list
    for param in checkpoint.params:
        expected = params[param.name]
        got = param.as_array()
        assert param.descr == expected.dtype.str, param.name
        assert param.shape == expected.shape, param.name
        assert param.fortran_order == bool(
            expected.flags.f_contiguous and not expected.flags.c_contiguous
        )
        assert bytes(param.raw) == expected.tobytes(order="A"), param.name
        assert got.tobytes() == expected.tobytes(), param.name
    assert checkpoint.params_bytes == sum(array.nbytes for array in params.values())


def test_byte_order_follows_numpy_unpickling(ppo2_files: dict[str, Path]) -> None:
    """Byte order (docs/formats.md, "Pitfalls the reader handles"): <= 4 native, 5 keeps '>'."""
    by_protocol = {}
    for protocol in (2, 4, 5):
        _, checkpoint, _ = _read(ppo2_files, {"protocol": protocol})
        by_protocol[protocol] = {param.name: param.descr for param in checkpoint.params}
    assert by_protocol[4]["model/bigendian:0"] == "<f4"
    assert by_protocol[2]["model/bigendian0d:0"] == "<f8"
    assert by_protocol[5]["model/bigendian:0"] == ">f4"
    assert by_protocol[5]["model/fortran:0"] == "<f4"


def test_fortran_and_zero_d_layouts(ppo2_files: dict[str, Path]) -> None:
    _, checkpoint, _ = _read(ppo2_files, {"protocol": 4})
    params = {param.name: param for param in checkpoint.params}
    expected = ppo2_params()
    assert params["model/fortran:0"].fortran_order
    np.testing.assert_array_equal(params["model/fortran:0"].as_array(), expected["model/fortran:0"])
    assert params["model/pi/logstd:0"].shape == ()
    assert params["model/empty:0"].nbytes == 0
    assert params["model/empty2d:0"].shape == (3, 0)


def test_protocol_4_and_5_arrays_are_views_into_the_source() -> None:
    """Big payloads are never copied: the raw bytes of a param share memory with the input."""
    with stand_ins():
        for protocol in (4, 5):
            source = bytearray(
                _dumps_checkpoint(
                    {"gamma": 0.9}, {"w:0": np.ones((256, 256), np.float32)}, protocol
                )
            )
            checkpoint = read_legacy(source, source="mem")
            array = checkpoint.params[0].as_array()
            assert np.shares_memory(array, np.frombuffer(source, dtype=np.uint8))


def _dumps_checkpoint(data: dict[str, Any], params: dict[str, np.ndarray], protocol: int) -> bytes:
    return dumps((data, OrderedDict(params)), protocol)


@pytest.mark.parametrize("variant", VARIANTS)
def test_data_values_match_sb2_data_to_json(
    ppo2_files: dict[str, Path], variant: dict[str, Any]
) -> None:
    path, checkpoint, _ = _read(ppo2_files, variant)
    data, _ = trusted_load(path)
    assert list(checkpoint.data) == list(data)
    opaque = 0
    for key, value in checkpoint.data.items():
        original = data[key]
        if not _sb2_is_json(original):
            assert isinstance(value, OpaqueValue), key
            opaque += 1
            assert value.type_name == _sb2_type_name(original), key
            loaded = trusted_loads(value.pickled)
            assert _equivalent(loaded, original), key
            report = check_pickle_bytes(value.pickled, source=key)
            assert report.globals == value.globals, key
            assert report.carries_code == value.carries_code, key
            assert report.protocol == 2
            if not isinstance(original, type):
                assert json.dumps(dict(value.extras), sort_keys=True) == json.dumps(
                    _sb2_extras(original), sort_keys=True
                )
        else:
            assert not isinstance(value, OpaqueValue), key
            # What SB2 stores and json_to_data gives back: json.loads(json.dumps(v)).
            assert json.dumps(value) == json.dumps(json.loads(json.dumps(original))), key
    assert opaque >= 10


def test_code_carrying_entries_are_named(ppo2_files: dict[str, Path]) -> None:
    for variant in ({"protocol": 4}, {"protocol": 2, "cloudpickle1": True}):
        _, checkpoint, _ = _read(ppo2_files, variant)
        assert checkpoint.carries_code == ("learning_rate", "cliprange")
        policy = checkpoint.data["policy"]
        assert isinstance(policy, OpaqueValue)
        assert policy.type_name == "<class 'abc.ABCMeta'>"
        assert policy.globals == ("stable_baselines.common.policies.MlpPolicy",)
        assert dict(policy.extras) == {"__module__": "stable_baselines.common.policies"}


def test_allow_code_false_refuses_and_names_the_keys(ppo2_files: dict[str, Path]) -> None:
    path = ppo2_files[str(sorted({"protocol": 4}.items()))]
    with pytest.raises(UnsafeCheckpoint, match=r"learning_rate, cliprange"):
        read_legacy_file(path, allow_code=False)


def test_dqn_without_functions_reads_with_allow_code_false(tmp_path: Path) -> None:
    with stand_ins():
        path = make_dqn_checkpoint(tmp_path / "dqn.pkl", protocol=5)
    checkpoint, _ = read_legacy_file(path, allow_code=False)
    assert checkpoint.carries_code == ()
    assert checkpoint.params[0].name == "deepq/eps:0" and checkpoint.params[0].shape == ()
    assert [p.name for p in checkpoint.params] == list(dqn_params())
    assert list(checkpoint.data) == list(dqn_data())
    assert "stable_baselines.deepq.policies.MlpPolicy" in checkpoint.globals


def test_list_params_need_names(tmp_path: Path) -> None:
    with stand_ins():
        path = make_ppo2_checkpoint(tmp_path / "old.pkl", protocol=4, list_params=True)
    with pytest.raises(HeldCheckpoint, match=r"pre-2\.6 parameter list"):
        read_legacy_file(path)
    names = [f"arr_{index}" for index in range(15)]
    checkpoint, _ = read_legacy_file(path, param_names=names)
    assert checkpoint.params_were_list
    assert [param.name for param in checkpoint.params] == names
    expected = list(ppo2_params().values())
    for param, array in zip(checkpoint.params, expected, strict=True):
        assert param.as_array().tobytes() == array.astype(array.dtype.newbyteorder("=")).tobytes()
    with pytest.raises(FormatError, match="3 parameter names given for 15 arrays"):
        read_legacy_file(path, param_names=names[:3])


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ({"a": 1}, "top level is a DictNode"),
        (({}, {}, {}), "top level is a tuple of 3"),
        (([], {}), r"data must be a dict"),
        (({}, {"w": np.zeros(2)}), r"params must be an OrderedDict or a list"),
        (7, "top level is a int"),
    ],
)
def test_wrong_top_level_shapes_are_format_errors(tmp_path: Path, top: Any, message: str) -> None:
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps(top, protocol=4))
    with pytest.raises(FormatError, match=message) as info:
        read_legacy_file(path)
    assert str(path) in str(info.value)
    assert "not a stable-baselines checkpoint" in str(info.value)


def test_a_param_that_is_not_an_array_is_a_format_error(tmp_path: Path) -> None:
    with stand_ins():
        path = write_checkpoint(tmp_path / "p.pkl", {}, OrderedDict(w=[1.0]))
    with pytest.raises(FormatError, match=r"parameter 'w' is a ListNode, not a numpy array"):
        read_legacy_file(path)


def test_zip_and_empty_inputs_get_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="empty file"):
        read_legacy_file(empty)
    archive = tmp_path / "model.pkl"
    archive.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(FormatError, match="a zip archive, not a legacy pickle"):
        read_legacy_file(archive)


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    with stand_ins():
        real = make_dqn_checkpoint(tmp_path / "real.pkl")
    link = tmp_path / "link.pkl"
    link.symlink_to(real)
    with pytest.raises(UnsafePathError, match="symlink"):
        read_legacy_file(link)


def test_size_cap(tmp_path: Path) -> None:
    with stand_ins():
        path = make_dqn_checkpoint(tmp_path / "dqn.pkl")
    with pytest.raises(FormatError, match="over the 100-byte limit"):
        read_legacy_file(path, max_bytes=100)


def test_input_is_left_untouched(ppo2_files: dict[str, Path]) -> None:
    path = ppo2_files[str(sorted({"protocol": 5}.items()))]
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    read_legacy_file(path)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_custom_policy_class_by_value_is_carried(tmp_path: Path) -> None:
    """A policy class defined in a script (pickled by value by cloudpickle) survives as code."""
    from tests.sb2_fixtures import MlpPolicy

    class CustomPolicy(MlpPolicy):
        layers = (32, 32)

        def describe(self) -> str:
            return f"custom {self.layers}"

        @classmethod
        def make(cls) -> str:
            return cls.__name__

    with stand_ins():
        path = write_checkpoint(
            tmp_path / "custom.pkl", {"policy": CustomPolicy}, OrderedDict(), protocol=4
        )
    checkpoint, _ = read_legacy_file(path)
    value = checkpoint.data["policy"]
    assert isinstance(value, OpaqueValue)
    assert value.carries_code and checkpoint.carries_code == ("policy",)
    assert value.type_name == "<class 'abc.ABCMeta'>"
    assert value.extras["layers"] == [32, 32]
    loaded = trusted_loads(value.pickled)
    assert loaded.__name__ == "CustomPolicy" and loaded.make() == "CustomPolicy"
    assert loaded().describe() == "custom (32, 32)"
    assert issubclass(loaded, MlpPolicy)
    with pytest.raises(UnsafeCheckpoint, match=r"\(policy\) and allow_code is false"):
        read_legacy_file(path, allow_code=False)


SB2_ERA = Path(__file__).parent / "data" / "sb2-era"


@pytest.mark.parametrize("kind", ["ppo2", "dqn", "sac"])
def test_files_written_on_the_sb2_era_stack(kind: str) -> None:
    """Committed files from Python 3.7 + numpy 1.16 + cloudpickle 1.2 (tests/data/sb2-era)."""
    checkpoint, _ = read_legacy_file(SB2_ERA / f"{kind}.pkl")
    assert checkpoint.protocol == 4
    assert checkpoint.params
    if kind != "ppo2":  # ppo2's cloudpickle-1.x lambdas (3.7 code objects) cannot load on 3.11
        data, params = trusted_load(SB2_ERA / f"{kind}.pkl")
        assert [param.name for param in checkpoint.params] == list(params)
        for param in checkpoint.params:
            assert param.descr == params[param.name].dtype.str
            assert param.as_array().tobytes() == params[param.name].tobytes()
        assert list(checkpoint.data) == list(data)
    assert "numpy.core.multiarray._reconstruct" in checkpoint.globals
    assert checkpoint.carries_code == (("learning_rate", "cliprange") if kind == "ppo2" else ())
    for value in checkpoint.data.values():
        if isinstance(value, OpaqueValue):
            assert check_pickle_bytes(value.pickled, source=kind).globals == value.globals
