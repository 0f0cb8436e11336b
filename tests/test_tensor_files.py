"""safetensors headers and torch zip storages, checked on real files and damaged copies of them.

ckptd's checks must agree with the real readers: every damaged copy that ckptd reports is one
``safetensors.safe_open`` / ``torch.load(weights_only=True)`` cannot load (tests/trainers_env.py),
and every file it passes loads.
"""

from __future__ import annotations

import json
import struct
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ckptd.formats import Format
from ckptd.formats.safetensors import (
    MAX_HEADER,
    check_header,
    header_length_of,
    read_safetensors,
)
from ckptd.formats.sniff import identify
from ckptd.formats.torch_zip import storage_problems, storage_refs, torch_zip_problems
from tests.hostile_helpers import ckptd
from tests.trainers.refresh import consume
from tests.trainers_env import trainers_env

FIXTURES = Path(__file__).resolve().parent / "data" / "trainers"
MODEL = FIXTURES / "safetensors" / "model.safetensors"
ARRAYS = FIXTURES / "safetensors" / "arrays.safetensors"
STATE_DICT = FIXTURES / "torch" / "state_dict.pt"


def _split(path: Path) -> tuple[dict[str, object], bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _join(header: dict[str, object] | bytes, buffer: bytes) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + buffer


def _with_tensor(name: str, **changes: object) -> Callable[[dict[str, object]], None]:
    def change(header: dict[str, object]) -> None:
        info = header[name]
        assert isinstance(info, dict)
        info.update(changes)

    return change


def _first_name(path: Path) -> str:
    header, _ = _split(path)
    return min(
        (key for key in header if key != "__metadata__"),
        key=lambda key: header[key]["data_offsets"][0],  # type: ignore[index]
    )


def _damaged_safetensors(tmp_path: Path) -> dict[str, Path]:
    """Copies of the real model.safetensors, each broken one way."""
    header, buffer = _split(MODEL)
    first = _first_name(MODEL)
    cases: dict[str, bytes] = {
        "truncated": MODEL.read_bytes()[:-1],
        "extra byte": MODEL.read_bytes() + b"\0",
        "header not JSON": _join(b"{not json" + b" " * 7, buffer),
        "header past the end": struct.pack("<Q", 10_000) + b"{}",
        "metadata not strings": _join({**header, "__metadata__": {"a": 1}}, buffer),
        "too short": b"\x10\0\0",
    }
    shifted = json.loads(json.dumps(header))
    _with_tensor(first, data_offsets=[1, header[first]["data_offsets"][1]])(shifted)  # type: ignore[index]
    cases["offsets that do not match the shape"] = _join(shifted, buffer)
    renamed = json.loads(json.dumps(header))
    _with_tensor(first, dtype="F99")(renamed)
    cases["unknown dtype"] = _join(renamed, buffer)
    reshaped = json.loads(json.dumps(header))
    _with_tensor(first, shape=[-1])(reshaped)
    cases["negative shape"] = _join(reshaped, buffer)
    gap = json.loads(json.dumps(header))
    for info in gap.values():
        if isinstance(info, dict) and "data_offsets" in info:
            info["data_offsets"] = [offset + 4 for offset in info["data_offsets"]]
    cases["gap before the first tensor"] = _join(gap, b"\0" * 4 + buffer)
    paths = {}
    for index, (name, raw) in enumerate(cases.items()):
        path = tmp_path / f"damaged-{index}.safetensors"
        path.write_bytes(raw)
        paths[name] = path
    return paths


def test_real_safetensors_files_pass() -> None:
    for path in (MODEL, ARRAYS, *sorted((FIXTURES / "hf").glob("*/model.safetensors"))):
        report = read_safetensors(path)
        assert report.ok, (path, report.problems)
        assert report.header_length + 8 + report.tensor_bytes == path.stat().st_size
    arrays = read_safetensors(ARRAYS)
    assert {tensor.name: tensor.shape for tensor in arrays.tensors} == {
        "f16": (2, 3),
        "i64": (4,),
        "empty": (0, 3),
        "scalar": (),
    }
    assert read_safetensors(MODEL).metadata == {"format": "pt"}


def test_damaged_safetensors_are_reported(tmp_path: Path) -> None:
    for name, path in _damaged_safetensors(tmp_path).items():
        report = read_safetensors(path)
        assert not report.ok, name
        assert all("\n" not in problem for problem in report.problems)


def test_header_rules() -> None:
    tensor = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    assert check_header(json.dumps({"t": tensor}).encode() + b"   ", 8).ok  # padded header
    assert not check_header(json.dumps({"t": tensor}).encode(), 9).ok  # trailing bytes
    overlap = {"a": tensor, "b": {**tensor, "data_offsets": [4, 12]}}
    assert "overlaps" in check_header(json.dumps(overlap).encode(), 12).problems[0]
    f4 = {"t": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}}
    assert "whole number of bytes" in check_header(json.dumps(f4).encode(), 1).problems[0]
    assert check_header(b"{}", 0).ok  # no tensors, empty buffer
    assert not check_header(b"[]", 0).ok


def test_header_length_recognizes_only_plausible_files() -> None:
    raw = MODEL.read_bytes()
    assert header_length_of(raw[:64], len(raw)) == struct.unpack_from("<Q", raw)[0]
    assert header_length_of(struct.pack("<Q", MAX_HEADER + 1) + b"{", 2**40) is None
    assert header_length_of(struct.pack("<Q", 100) + b"{", 50) is None  # past the end
    assert header_length_of(struct.pack("<Q", 4) + b"[1]", 100) is None  # not an object
    assert header_length_of(b"PK\x03\x04" + b"\0" * 20, 1000) is None


def _rezip(source: Path, target: Path, change: Callable[[str, bytes], bytes | None]) -> Path:
    """``source`` rewritten member by member (stored, as torch writes), each through ``change``."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = change(info.filename, old.read(info.filename))
            if data is not None:
                new.writestr(info.filename, data)
    return target


def _damaged_torch(tmp_path: Path) -> dict[str, Path]:
    def storage(name: str) -> bool:
        return "/data/" in name and not name.endswith("serialization_id")

    return {
        "short storage": _rezip(
            STATE_DICT, tmp_path / "short.pt", lambda n, d: d[:-4] if storage(n) else d
        ),
        "missing storage": _rezip(
            STATE_DICT, tmp_path / "missing.pt", lambda n, d: None if n.endswith("/data/0") else d
        ),
    }


def test_real_torch_zips_have_every_storage() -> None:
    files = [p for p in FIXTURES.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".ckpt")]
    files = [p for p in files if p.read_bytes()[:4] == b"PK\x03\x04"]
    assert len(files) >= 20
    for path in files:
        assert torch_zip_problems(path) == (), path
    with zipfile.ZipFile(STATE_DICT) as archive:
        pickled = archive.read("state_dict/data.pkl")
    refs = storage_refs(pickled, source="state_dict.pt")
    assert [ref.storage_type for ref in refs] == ["torch.FloatStorage"] * 4
    assert [ref.nbytes for ref in refs] == [128, 32, 64, 8]  # Linear(4, 8), Linear(8, 2)


def test_damaged_torch_zips_are_reported(tmp_path: Path) -> None:
    damaged = _damaged_torch(tmp_path)
    assert "bytes, data.pkl declares" in torch_zip_problems(damaged["short storage"])[0]
    assert "missing" in torch_zip_problems(damaged["missing storage"])[0]
    assert storage_problems("p", (), {}) == []


def test_identified_by_content_whatever_the_name(tmp_path: Path) -> None:
    for source in (MODEL, ARRAYS, FIXTURES / "hf" / "checkpoint-2" / "model.safetensors"):
        renamed = tmp_path / f"{source.parent.name}-{source.stem}.bin"
        renamed.write_bytes(source.read_bytes())
        found = identify(renamed)
        assert (found.format, found.verdict) == (Format.SAFETENSORS, None), found.note
    for name, path in _damaged_safetensors(tmp_path).items():
        if name not in ("header past the end", "too short"):
            assert identify(path).format is Format.SAFETENSORS, name  # verify says what is wrong
    assert identify(STATE_DICT).format is Format.TORCH_ZIP


def test_cli_verify(tmp_path: Path) -> None:
    """``ckptd verify``: real files pass; each damaged copy fails with one line naming it."""
    sound = [MODEL, ARRAYS, STATE_DICT, FIXTURES / "torch" / "pytorch_model.bin"]
    done = ckptd("verify", *sound)
    assert done.returncode == 0, done.stdout + done.stderr
    damaged = {
        **{name: path for name, path in _damaged_safetensors(tmp_path).items()},
        **_damaged_torch(tmp_path),
    }
    for name, path in damaged.items():
        done = ckptd("verify", path)
        assert done.returncode == 1, (name, done.stdout, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert lines and all(str(path) in line for line in lines), (name, done.stderr)
    before = {path: path.read_bytes() for path in damaged.values()}
    ckptd("verify", *damaged.values())
    assert before == {path: path.read_bytes() for path in damaged.values()}


def test_cli_inspect_lists_tensors_and_says_what_is_broken(tmp_path: Path) -> None:
    done = ckptd("inspect", "--json", ARRAYS)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["format"], report["verdict"]) == ("safetensors", "safe")
    assert {row["name"] for row in report["params"]["arrays"]} == {"f16", "i64", "empty", "scalar"}
    broken = _damaged_safetensors(tmp_path)["truncated"]
    done = ckptd("inspect", broken)
    assert done.returncode == 1
    assert "tensors cover" in done.stderr and str(broken) in done.stderr


@pytest.fixture(scope="module")
def env() -> Path:
    try:
        return trainers_env()
    except (subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"the trainers env (torch CPU, safetensors) cannot be built: {err}")


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_real_readers_agree(env: Path, tmp_path: Path) -> None:
    """What ckptd reports damaged, the real readers cannot load; what it passes, they load."""
    safetensors_files = {**_damaged_safetensors(tmp_path), "model": MODEL, "arrays": ARRAYS}
    torch_files = {**_damaged_torch(tmp_path), "state_dict": STATE_DICT}
    local = {}
    for name, path in {**safetensors_files, **torch_files}.items():
        target = tmp_path / "all" / path.name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(path.read_bytes())
        local[name] = target
    answers = consume(list(local.values()), tmp_path / "all")
    for name in safetensors_files:
        opened = not str(answers[local[name].name]["safetensors"]).startswith("error")
        assert opened == read_safetensors(local[name]).ok, (name, answers[local[name].name])
    for name in torch_files:
        loaded = answers[local[name].name]["weights_only"] == "ok"
        assert loaded == (torch_zip_problems(local[name]) == ()), (name, answers[local[name].name])
