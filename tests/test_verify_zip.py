"""verify_zip: every kind of damage is reported as one line naming the member; nothing is executed."""

from __future__ import annotations

import base64
import io
import json
import pickle
import struct
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from ckptd.errors import FormatError
from ckptd.formats import Format
from ckptd.formats.datajson import analyze_data_json
from ckptd.formats.npy import npy_header_bytes
from ckptd.formats.sb2zip import read_sb2_zip
from ckptd.formats.sb3zip import parse_system_info, read_sb3_zip
from ckptd.formats.sniff import identify
from ckptd.formats.verify import verify_zip
from tests.sb2_fixtures import Exploit
from tests.sb2zip_helpers import make_sb3_zip, params_of, sample_arrays, write_zip

MLP_POLICY = b"\x80\x02cstable_baselines.common.policies\nMlpPolicy\nq\x00."
DATA = {
    "gamma": 0.99,
    "policy": {
        ":type:": "<class 'abc.ABCMeta'>",
        ":serialized:": base64.b64encode(MLP_POLICY).decode(),
        "__module__": "stable_baselines.common.policies",
    },
}


def sb2_way_zip(
    path: Path,
    *,
    data: bytes | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    param_list: Sequence[str] | None = None,
    npz: bytes | None = None,
) -> None:
    """A zip written the way SB2's _save_to_file_zip writes it (zipfile.writestr + np.savez)."""
    arrays = (
        {"model/w:0": np.ones((4, 2), np.float32), "model/b:0": np.zeros(2, np.float32)}
        if arrays is None
        else arrays
    )
    if npz is None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        npz = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", json.dumps(DATA, indent=4) if data is None else data)
        archive.writestr("parameters", npz)
        archive.writestr(
            "parameter_list",
            json.dumps(list(arrays) if param_list is None else list(param_list), indent=4),
        )


def npz_of(members: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_zip_written_by_sb2s_own_steps_verifies(tmp_path: Path) -> None:
    path = tmp_path / "m.zip"
    sb2_way_zip(path)
    report = verify_zip(path)
    assert report.ok, report.problems
    assert report.format is Format.SB2_ZIP
    assert report.members == ("data", "parameters", "parameter_list")
    assert (report.params_count, report.params_bytes) == (2, 40)
    assert report.data_keys == ("gamma", "policy")
    inspected = read_sb2_zip(path)
    assert {entry.key: entry.kind for entry in inspected.entries} == {
        "gamma": "plain",
        "policy": "class",
    }
    assert inspected.entries[1].safety == "ok"


def test_our_writer_output_verifies(tmp_path: Path) -> None:
    path = tmp_path / "m.zip"
    write_zip(path, {"gamma": 0.5, "nan": float("nan")}, params_of(sample_arrays()))
    report = verify_zip(path)
    assert report.ok, report.problems
    assert report.params_count == len(sample_arrays())


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x5A
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("member", ["data", "parameters", "parameter_list"])
def test_flipped_byte_in_each_member_is_a_crc_problem(tmp_path: Path, member: str) -> None:
    path = tmp_path / "m.zip"
    write_zip(path, {"gamma": 0.5}, params_of(sample_arrays()))
    info = next(m for m in read_sb2_zip(path).members if m.name == member)
    flip(path, info.data_offset + info.size - 3)  # the last bytes: array data / JSON tail
    report = verify_zip(path)
    assert not report.ok
    assert any(p.startswith(f"{member}: ") and "CRC" in p for p in report.problems), report.problems
    assert len(set(report.problems)) == len(report.problems), report.problems  # each said once


def test_flipped_array_byte_names_the_npy_member(tmp_path: Path) -> None:
    path = tmp_path / "m.zip"
    arrays = {"a/w:0": np.arange(1000, dtype=np.float32), "a/b:0": np.arange(3, dtype=np.float32)}
    write_zip(path, {}, params_of(arrays))
    parameters = next(m for m in read_sb2_zip(path).members if m.name == "parameters")
    flip(path, parameters.data_offset + 600)  # inside a/w:0's data
    problems = verify_zip(path).problems
    assert any(p.startswith("parameters: ") for p in problems)
    assert any(p.startswith("parameters/a/w:0.npy: ") and "CRC" in p for p in problems), problems


@pytest.mark.parametrize("cut", [10, 200, 0.5])
def test_truncated_zip_is_reported(tmp_path: Path, cut: float) -> None:
    path = tmp_path / "m.zip"
    write_zip(path, {"gamma": 0.5}, params_of(sample_arrays()))
    raw = path.read_bytes()
    keep = int(len(raw) * cut) if isinstance(cut, float) else len(raw) - cut
    path.write_bytes(raw[:keep])
    report = verify_zip(path)
    assert not report.ok and report.problems


@pytest.mark.parametrize("cut", [1, 22, 60])
def test_lost_tail_is_truncation_not_the_inner_npz(tmp_path: Path, cut: int) -> None:
    """Regression: with the outer directory cut off, zipfile found the stored npz's directory and
    the file read as an npz (``unknown``), so a directory walk skipped a damaged checkpoint."""
    path = tmp_path / "m.zip"
    write_zip(path, {"gamma": 0.5}, params_of(sample_arrays()))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - cut])
    report = verify_zip(path)
    assert not report.ok and report.members == ()
    assert any("central directory" in problem for problem in report.problems), report.problems
    identification = identify(path)
    assert identification.format is Format.UNKNOWN and identification.members == ()
    assert "no readable central directory" in identification.note


def test_parameter_list_missing_and_extra_names(tmp_path: Path) -> None:
    path = tmp_path / "m.zip"
    arrays = {"a:0": np.ones(2), "b:0": np.ones(3)}
    sb2_way_zip(path, arrays=arrays, param_list=["a:0", "c:0"])
    problems = verify_zip(path).problems
    assert any(p.startswith("parameters: no member") and "'c:0.npy'" in p for p in problems), (
        problems
    )
    assert any(
        p.startswith("parameters: ") and "not in parameter_list" in p and "'b:0.npy'" in p
        for p in problems
    )


@pytest.mark.parametrize("content", ['{"a": 1}', "[1, 2, 3", '["a:0", 7]', '["a:0", "a:0"]'])
def test_parameter_list_that_is_not_a_name_list(tmp_path: Path, content: str) -> None:
    path = tmp_path / "m.zip"
    raw_npz = io.BytesIO()
    np.savez(raw_npz, **{"a:0": np.ones(2)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", json.dumps(DATA))
        archive.writestr("parameters", raw_npz.getvalue())
        archive.writestr("parameter_list", content)
    problems = verify_zip(path).problems
    assert any(p.startswith("parameter_list: ") for p in problems), problems


def test_bad_npy_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "m.zip"
    text = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }\n"
    bad = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text
    sb2_way_zip(path, arrays={"a:0": np.ones(1)}, npz=npz_of({"a:0.npy": bad + bytes(8)}))
    problems = verify_zip(path).problems
    assert any(p.startswith("parameters/a:0.npy: refusing npy dtype '|O'") for p in problems), (
        problems
    )
    garbage = tmp_path / "g.zip"
    sb2_way_zip(garbage, arrays={"a:0": np.ones(1)}, npz=npz_of({"a:0.npy": b"not an npy at all"}))
    assert any(p.startswith("parameters/a:0.npy: ") for p in verify_zip(garbage).problems)


def test_npy_size_mismatch_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "m.zip"
    header = npy_header_bytes("<f4", False, (4, 64))
    sb2_way_zip(path, arrays={"a:0": np.ones(1)}, npz=npz_of({"a:0.npy": header + bytes(100)}))
    problems = verify_zip(path).problems
    assert any(p.startswith("parameters/a:0.npy: npy header promises 1024") for p in problems), (
        problems
    )


def test_parameters_that_are_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "m.zip"
    sb2_way_zip(path, arrays={"a:0": np.ones(1)}, npz=b"just bytes")
    assert any(p.startswith("parameters: ") for p in verify_zip(path).problems)


@pytest.mark.parametrize(
    "data", [b"{not json", b"[1, 2]", b"\xff\xfe", b'{"x": {":serialized:": "!!!"}}']
)
def test_data_that_is_not_json_object(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "m.zip"
    sb2_way_zip(path, data=data)
    problems = verify_zip(path).problems
    assert any(p.startswith("data") for p in problems), problems


def central_entry_offset(raw: bytes, name: bytes) -> int:
    start = raw.index(b"PK\x01\x02")
    while True:
        name_len = struct.unpack_from("<H", raw, start + 28)[0]
        if raw[start + 46 : start + 46 + name_len] == name:
            return start
        start = raw.index(b"PK\x01\x02", start + 4)


def test_absurd_declared_size_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    sb2_way_zip(path)
    raw = bytearray(path.read_bytes())
    entry = central_entry_offset(bytes(raw), b"data")
    struct.pack_into(
        "<LL", raw, entry + 20, 0xFFFFFFF0, 0xFFFFFFF0
    )  # compressed, uncompressed size
    path.write_bytes(bytes(raw))
    started = time.monotonic()
    report = verify_zip(path)
    assert time.monotonic() - started < 5
    assert any(p.startswith("data: declares 4294967280 bytes") for p in report.problems), (
        report.problems
    )


def test_compression_bomb_ratio_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data", json.dumps(DATA))
        archive.writestr("parameters", bytes(1 << 20))
        archive.writestr("parameter_list", "[]")
    raw = bytearray(path.read_bytes())
    entry = central_entry_offset(bytes(raw), b"parameters")
    struct.pack_into("<L", raw, entry + 24, 0x7FFFFFF0)  # claims 2 GiB inflated
    path.write_bytes(bytes(raw))
    problems = verify_zip(path).problems
    assert any(p.startswith("parameters: compression ratio") for p in problems), problems


def test_overlapping_members_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "overlap.zip"
    sb2_way_zip(path)
    raw = bytearray(path.read_bytes())
    entry = central_entry_offset(bytes(raw), b"data")
    size = struct.unpack_from("<L", raw, entry + 20)[0]
    struct.pack_into("<LL", raw, entry + 20, size + 40, size + 40)  # runs into the next member
    path.write_bytes(bytes(raw))
    problems = verify_zip(path).problems
    assert "data: overlaps member parameters" in problems, problems

    sb2_way_zip(path)
    raw = bytearray(path.read_bytes())
    entry = central_entry_offset(bytes(raw), b"parameter_list")
    struct.pack_into("<L", raw, entry + 42, 0)  # header offset: the data member's local header
    path.write_bytes(bytes(raw))
    problems = verify_zip(path).problems
    assert any(p.startswith("parameter_list: ") for p in problems), problems


def test_malicious_serialized_entry_is_reported_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    blob = pickle.dumps(Exploit(marker), protocol=2)
    data = dict(
        DATA,
        learning_rate={
            ":type:": "<class 'function'>",
            ":serialized:": base64.b64encode(blob).decode(),
        },
    )
    path = tmp_path / "m.zip"
    sb2_way_zip(path, data=json.dumps(data, indent=4).encode())
    report = verify_zip(path)
    assert not report.ok
    assert any(p.startswith("data['learning_rate']: ") for p in report.problems), report.problems
    inspected = read_sb2_zip(path)
    entry = next(e for e in inspected.entries if e.key == "learning_rate")
    assert entry.safety != "ok"
    assert not marker.exists()


def test_kinds_of_data_entries() -> None:
    space = pickle.dumps(np.dtype("float32"), protocol=2)  # any object construction
    data = {
        "gamma": 0.99,
        "policy": DATA["policy"],
        "observation_space": {
            ":type:": "<class 'gym.spaces.box.Box'>",
            ":serialized:": base64.b64encode(space).decode(),
        },
        "lr": {
            ":type:": "<class 'function'>",
            ":serialized:": base64.b64encode(MLP_POLICY).decode(),
        },
        "other": {
            ":type:": "<class 'numpy.float32'>",
            ":serialized:": base64.b64encode(space).decode(),
        },
    }
    analysis = analyze_data_json(json.dumps(data).encode(), check_safety=False)
    assert {e.key: e.kind for e in analysis.entries} == {
        "gamma": "plain",
        "policy": "class",
        "observation_space": "space",
        "lr": "function",
        "other": "numpy-scalar",
    }
    assert analysis.problems == ()


def test_sb3_zip_verifies_structurally(tmp_path: Path) -> None:
    path = tmp_path / "ppo.zip"
    make_sb3_zip(path)
    report = verify_zip(path)
    assert report.ok, report.problems
    assert report.format is Format.SB3_ZIP and report.sb3_version == "2.3.2"
    inspected = read_sb3_zip(path)
    assert inspected.version == "2.3.2"
    assert inspected.state_dicts == ("pytorch_variables.pth", "policy.pth", "policy.optimizer.pth")
    assert dict(inspected.system_info)["PyTorch"] == "2.3.1+cpu"
    assert inspected.data_keys[:2] == ("policy_class", "num_timesteps")
    with pytest.raises(FormatError, match="not an SB2 zip"):
        read_sb2_zip(path)


def test_sb3_problems(tmp_path: Path) -> None:
    bad_version = tmp_path / "v.zip"
    make_sb3_zip(bad_version, version="<script>")
    assert any(
        p.startswith("_stable_baselines3_version: ") for p in verify_zip(bad_version).problems
    )
    bad_data = tmp_path / "d.zip"
    make_sb3_zip(bad_data, data=b"nope")
    assert any(p.startswith("data: not JSON") for p in verify_zip(bad_data).problems)
    damaged = tmp_path / "c.zip"
    make_sb3_zip(damaged)
    with zipfile.ZipFile(damaged) as archive:
        info = archive.getinfo("policy.pth")
    flip(damaged, info.header_offset + 30 + len("policy.pth") + 20 + 5)
    assert any(p.startswith("policy.pth: ") for p in verify_zip(damaged).problems)


def test_parse_system_info() -> None:
    assert parse_system_info("- OS: Linux: x\n- Python: 3.11\njunk\n") == (
        ("OS", "Linux: x"),
        ("Python", "3.11"),
    )


@pytest.mark.parametrize(
    "content", [b"", b"\x80\x04\x95junk", b"plain text", b"PK\x03\x04truncated"]
)
def test_non_zips_are_reported_not_raised(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(content)
    report = verify_zip(path)
    assert not report.ok and report.format is Format.UNKNOWN and len(report.problems) == 1
    with pytest.raises(FormatError, match="not an SB2 zip"):
        read_sb2_zip(path)


def test_unrelated_zip_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hi")
    report = verify_zip(path)
    assert not report.ok and "neither an SB2 nor an SB3 zip" in report.problems[0]
    missing = verify_zip(tmp_path / "nope.zip")
    assert not missing.ok and missing.problems[0].startswith("cannot read")
    link = tmp_path / "link.zip"
    link.symlink_to(path)
    assert "symlink" in verify_zip(link).problems[0]


def test_code_bearing_entries_are_flagged_without_the_allowlist() -> None:
    skel = b"\x80\x02ccloudpickle.cloudpickle\n_make_skel_func\nq\x00."
    data = {
        "learning_rate": {
            ":type:": "<class 'function'>",
            ":serialized:": base64.b64encode(skel).decode(),
        }
    }
    analysis = analyze_data_json(json.dumps(data).encode(), check_safety=False)
    assert analysis.carries_code == ("learning_rate",)
    assert analysis.entries[0].kind == "function"
    assert analysis.entries[0].globals == ("cloudpickle.cloudpickle._make_skel_func",)
