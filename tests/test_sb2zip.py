"""The SB2 zip writer: round trips through SB2's own loading steps, byte-level facts, zip64, memory."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import random
import shutil
import subprocess
import tracemalloc
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest

from ckptd.errors import ConversionError
from ckptd.formats import storedzip
from ckptd.formats.datajson import encode_data_json
from ckptd.formats.model import OpaqueValue, ParamArray
from ckptd.formats.sb2zip import read_sb2_zip, write_sb2_zip, write_sb2_zip_file
from ckptd.formats.verify import verify_zip
from ckptd.fs.digest import crc32_combine
from ckptd.fs.files import TEMP_PREFIX
from tests.sb2zip_helpers import (
    FIXED_TIME,
    param_from_array,
    params_of,
    same_array,
    sample_arrays,
    sb2_load,
    write_zip,
)

PLAIN_DATA: dict[str, Any] = {
    "gamma": 0.99,
    "n_steps": 128,
    "verbose": 0,
    "observation_range": [-5.0, 5.0],
    "policy_kwargs": {"layers": [64, 64], "act": None},
    "nan": math.nan,
    "inf": math.inf,
    "name": "ppo2-\u00e9",
}


def test_round_trip_through_sb2_loader_is_bit_identical(tmp_path: Path) -> None:
    arrays = sample_arrays()
    path = tmp_path / "model.zip"
    write_zip(path, PLAIN_DATA, params_of(arrays))
    data, params = sb2_load(path)
    assert params is not None and list(params) == list(arrays)
    for name, original in arrays.items():
        assert same_array(original, params[name]), name
    assert data is not None and list(data) == list(PLAIN_DATA)
    assert data["gamma"] == 0.99 and math.isnan(data["nan"]) and data["inf"] == math.inf  # type: ignore[arg-type]


def test_every_npy_member_is_exactly_what_np_save_writes(tmp_path: Path) -> None:
    arrays = sample_arrays()
    path = tmp_path / "model.zip"
    write_zip(path, {}, params_of(arrays))
    with zipfile.ZipFile(path) as outer:
        npz_bytes = outer.read("parameters")
    with zipfile.ZipFile(io.BytesIO(npz_bytes)) as npz:
        assert npz.namelist() == [f"{name}.npy" for name in arrays]
        for name, array in arrays.items():
            expected = io.BytesIO()
            np.save(expected, array, allow_pickle=False)
            assert npz.read(f"{name}.npy") == expected.getvalue(), name


def test_byte_level_facts_match_sb2(tmp_path: Path) -> None:
    arrays = sample_arrays()
    names = list(arrays)
    path = tmp_path / "model.zip"
    write_zip(path, PLAIN_DATA, params_of(arrays))
    with zipfile.ZipFile(path) as outer:
        infos = outer.infolist()
        assert [info.filename for info in infos] == ["data", "parameters", "parameter_list"]
        for info in infos:
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.external_attr == 0o600 << 16
            assert (info.create_system, info.create_version, info.extract_version) == (3, 20, 20)
            assert info.flag_bits == 0  # real sizes in the local header, no data descriptor
            assert info.date_time == FIXED_TIME
        assert outer.read("parameter_list") == json.dumps(names, indent=4).encode()
        assert outer.read("data") == json.dumps(PLAIN_DATA, indent=4).encode()
        npz_bytes = outer.read("parameters")
    with zipfile.ZipFile(io.BytesIO(npz_bytes)) as npz:
        for info in npz.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.external_attr == 0o600 << 16
            assert info.flag_bits == 0
            assert info.extra == b""  # no zip64 records for small members (as on Python 3.7)
        assert npz.testzip() is None
    raw = path.read_bytes()
    # Local headers carry the real CRC and sizes, as zipfile's seek-back patching leaves them.
    for info in infos:
        fields = storedzip._LOCAL_HEADER.unpack_from(raw, info.header_offset)
        assert (fields[7], fields[8], fields[9]) == (info.CRC, info.compress_size, info.file_size)


def test_default_timestamp_is_local_time_of_the_save(tmp_path: Path) -> None:
    path = tmp_path / "model.zip"
    with path.open("wb") as handle:
        report = write_sb2_zip(handle, {}, [])
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("data").date_time == report.date_time
    assert report.date_time[0] >= 2024
    with path.open("wb") as handle:
        report = write_sb2_zip(handle, {}, [], date_time=(2021, 5, 6, 7, 8, 59))
    assert report.date_time == (2021, 5, 6, 7, 8, 58)  # what the zip can hold (DOS time)
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("data").date_time == report.date_time


def sb2_data_to_json(data: dict[str, Any]) -> str:
    """stable_baselines/common/save_util.py data_to_json (2.8-2.10), verbatim in behaviour."""

    def is_json_serializable(item: Any) -> bool:
        try:
            json.dumps(item)
        except TypeError:
            return False
        return True

    serializable_data = {}
    for data_key, data_item in data.items():
        if is_json_serializable(data_item):
            serializable_data[data_key] = data_item
        else:
            base64_encoded = base64.b64encode(cloudpickle.dumps(data_item)).decode()
            cloudpickle_serialization = {
                ":type:": str(type(data_item)),
                ":serialized:": base64_encoded,
            }
            if hasattr(data_item, "__dict__") or isinstance(data_item, dict):
                items = (
                    data_item.items() if isinstance(data_item, dict) else data_item.__dict__.items()
                )
                for variable_name, variable_item in items:
                    if is_json_serializable(variable_item):
                        cloudpickle_serialization[variable_name] = variable_item
                    else:
                        cloudpickle_serialization[variable_name] = str(variable_item)
            serializable_data[data_key] = cloudpickle_serialization
    return json.dumps(serializable_data, indent=4)


class FakeBox:
    """A stand-in with a gym-Box-like __dict__ (JSON-able and non-JSON-able attributes)."""

    def __init__(self) -> None:
        self.dtype = "float32"
        self.shape = (4,)
        self.low = np.full(4, -np.inf, dtype=np.float32)
        self.high = np.full(4, np.inf, dtype=np.float32)
        self.bounded_below = np.array([False] * 4)
        setattr(self, ":type:", "overwritten in place")


def test_encode_data_json_matches_sb2_data_to_json_exactly() -> None:
    box = FakeBox()
    scalar = np.float32(-2.0)
    reference = {
        **PLAIN_DATA,
        "observation_space": box,
        "target_entropy": scalar,
        "tuple": (1, 2.5),
    }
    expected = sb2_data_to_json(reference)

    def extras(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in obj.__dict__.items():
            try:
                json.dumps(value)
                out[key] = value
            except TypeError:
                out[key] = str(value)
        return out

    ours = encode_data_json(
        {
            **PLAIN_DATA,
            "observation_space": OpaqueValue(str(type(box)), cloudpickle.dumps(box), extras(box)),
            "target_entropy": OpaqueValue(str(type(scalar)), cloudpickle.dumps(scalar)),
            "tuple": [1, 2.5],
        }
    )
    assert ours == expected.encode()
    assert b"NaN" in ours and b"Infinity" in ours


def test_encode_data_json_refuses_values_sb2_could_not_write() -> None:
    with pytest.raises(ConversionError, match="JSON"):
        encode_data_json({"bad": {1, 2}})  # type: ignore[dict-item]


def test_report_sha256_and_size_describe_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.zip"
    report = write_zip(path, PLAIN_DATA, params_of(sample_arrays()))
    raw = path.read_bytes()
    assert report.size == len(raw)
    assert report.sha256 == hashlib.sha256(raw).hexdigest()
    assert report.params_count == len(sample_arrays())
    assert report.params_bytes == sum(a.nbytes for a in sample_arrays().values())


class PipeLike(io.RawIOBase):
    """A write-only, non-seekable sink that accepts at most 1000 bytes per write (short writes)."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(memoryview(data)[:1000])
        self.buffer += chunk
        return len(chunk)


def test_non_seekable_output_gets_the_same_bytes(tmp_path: Path) -> None:
    params = params_of(sample_arrays())
    path = tmp_path / "model.zip"
    write_zip(path, PLAIN_DATA, params)
    sink = PipeLike()
    report = write_sb2_zip(sink, PLAIN_DATA, params, date_time=FIXED_TIME)  # type: ignore[arg-type]
    assert bytes(sink.buffer) == path.read_bytes()
    assert report.sha256 == hashlib.sha256(sink.buffer).hexdigest()


def test_written_zip_reads_back_and_verifies(tmp_path: Path) -> None:
    arrays = sample_arrays()
    path = tmp_path / "model.zip"
    write_zip(path, PLAIN_DATA, params_of(arrays))
    inspected = read_sb2_zip(path)
    assert inspected.parameter_list == tuple(arrays)
    assert [(p.name, p.descr, p.shape) for p in inspected.params] == [
        (name, array.dtype.str, array.shape) for name, array in arrays.items()
    ]
    report = verify_zip(path)
    assert report.ok, report.problems
    assert report.params_count == len(arrays)


def test_zip64_records_when_limits_are_lowered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As CPython's own zip64 tests do: lower the limit instead of writing 4 GiB.
    monkeypatch.setattr(storedzip, "ZIP64_LIMIT", 1000)
    monkeypatch.setattr(storedzip, "ZIP_FILECOUNT_LIMIT", 10)
    arrays = sample_arrays()
    arrays["large/w:0"] = np.arange(4000, dtype=np.float32)
    path = tmp_path / "model.zip"
    write_zip(path, PLAIN_DATA, params_of(arrays))
    raw = path.read_bytes()
    assert b"PK\x06\x06" in raw and b"PK\x06\x07" in raw  # zip64 end records (outer or npz)
    with zipfile.ZipFile(path) as outer:
        parameters = outer.getinfo("parameters")
        assert parameters.extract_version == 45 and parameters.extra[:2] == b"\x01\x00"
        assert outer.testzip() is None
    _data, params = sb2_load(path)
    assert params is not None
    for name, original in arrays.items():
        assert same_array(original, params[name]), name
    monkeypatch.undo()
    assert verify_zip(path).ok
    if shutil.which("unzip"):
        result = subprocess.run(
            ["unzip", "-t", str(path)], capture_output=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout


def test_crc32_combine_agrees_with_zlib() -> None:
    rng = random.Random(5)
    for _ in range(200):
        a = rng.randbytes(rng.randrange(0, 300))
        b = rng.randbytes(rng.choice([0, 1, 7, rng.randrange(0, 5000)]))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    # lengths past 4 GiB only change the exponent; check the algebra with a known identity
    zeros = bytes(1 << 20)
    assert crc32_combine(zlib.crc32(b"x"), zlib.crc32(zeros), len(zeros)) == zlib.crc32(
        b"x" + zeros
    )


@pytest.mark.parametrize(
    ("param", "message"),
    [
        (ParamArray("w", "<f4", (4,), False, memoryview(bytes(15))), "needs 16"),
        (ParamArray("w", "|O", (1,), False, memoryview(bytes(8))), "refusing"),
        (ParamArray("", "<f4", (1,), False, memoryview(bytes(4))), "non-empty name"),
        (
            ParamArray("w", "<f4", (2, 2), False, memoryview(np.ones((2, 4), np.float32)[:, ::2])),
            "contiguous",
        ),
    ],
)
def test_bad_params_are_refused(tmp_path: Path, param: ParamArray, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        write_zip(tmp_path / "x.zip", {}, [param])


def test_duplicate_parameter_names_are_refused(tmp_path: Path) -> None:
    array = np.zeros(2, np.float32)
    with pytest.raises(ConversionError, match="twice"):
        write_zip(
            tmp_path / "x.zip", {}, [param_from_array("w", array), param_from_array("w", array)]
        )


def test_file_writer_is_atomic(tmp_path: Path) -> None:
    dest = tmp_path / "model.zip"
    report = write_sb2_zip_file(dest, PLAIN_DATA, params_of(sample_arrays()))
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == report.sha256
    broken = ParamArray("w", "<f4", (4,), False, memoryview(bytes(3)))
    with pytest.raises(ConversionError):
        write_sb2_zip_file(tmp_path / "other.zip", {}, [broken])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]
    assert not any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.iterdir())


def test_peak_memory_does_not_grow_with_parameter_size(tmp_path: Path) -> None:
    arrays = OrderedDict(
        (f"layer{i}/w:0", np.ones((1024, 1024 * 2), np.float32)) for i in range(8)
    )  # 64 MiB
    params = params_of(arrays)
    tracemalloc.start()
    try:
        write_sb2_zip_file(tmp_path / "big.zip", {"gamma": 0.99}, params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"
    assert os.path.getsize(tmp_path / "big.zip") > 64 * 1024 * 1024


# --- the SB2-era stack: Python 3.7, numpy 1.16 -------------------------------------------------

LOAD_ON_37 = r"""
import hashlib, io, json, sys, zipfile
from collections import OrderedDict
import numpy as np
with zipfile.ZipFile(sys.argv[1]) as archive:
    data = json.loads(archive.read("data").decode())
    param_list = json.loads(archive.read("parameter_list").decode())
    npz = np.load(io.BytesIO(archive.read("parameters")))
    params = OrderedDict((name, npz[name]) for name in param_list)
print(json.dumps({"keys": list(data), "params": [
    [n, a.dtype.str, list(a.shape), bool(a.flags.f_contiguous and a.ndim > 1),
     hashlib.sha256(a.tobytes(order="A")).hexdigest()] for n, a in params.items()]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("zip64", [False, True])
def test_sb2_era_stack_loads_the_zip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zip64: bool
) -> None:
    from tests.legacy_env import legacy_python

    try:
        python = legacy_python()
    except LookupError as err:
        pytest.skip(f"needs Python 3.7: {err}")
    if zip64:
        monkeypatch.setattr(storedzip, "ZIP64_LIMIT", 1000)
        monkeypatch.setattr(storedzip, "ZIP_FILECOUNT_LIMIT", 10)
    arrays = sample_arrays()
    path = tmp_path / "model.zip"
    write_zip(path, PLAIN_DATA, params_of(arrays))
    result = subprocess.run(
        [str(python), "-c", LOAD_ON_37, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["keys"] == list(PLAIN_DATA)
    expected = [
        [
            name,
            a.dtype.str,
            list(a.shape),
            bool(a.flags.f_contiguous and a.ndim > 1),
            hashlib.sha256(a.tobytes(order="A")).hexdigest(),
        ]
        for name, a in arrays.items()
    ]
    assert loaded["params"] == expected
