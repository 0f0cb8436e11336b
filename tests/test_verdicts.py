"""Verdicts on every pickle-bearing file: plain pickles, joblib dumps, torch files, SB3 zips.

Real files: the committed ones in tests/data/verdicts/ were made by torch, joblib and
stable-baselines3 themselves (PROVENANCE.md there); plain pickles are made here by the stdlib
pickler; payloads come from tests/test_hostile_pickles.py, put into every container. torch files
are also made fresh by torch itself in the trainers env (tests/trainers_env.py), and ckptd's
verdicts are checked against ``torch.load(weights_only=True)`` on them and on the clean fixtures.
"""

from __future__ import annotations

import base64
import builtins
import collections
import gzip
import io
import json
import lzma
import os
import pickle
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptd.formats import Format
from ckptd.formats.sniff import identify, identify_checked
from ckptd.formats.verdict_files import NoVerdict, decompress
from ckptd.manifest.model import Manifest, ManifestEntry
from ckptd.manifest.parse import manifest_from_json
from ckptd.pickles.verdict import Verdict, judge_stream
from ckptd.pickles.verdict_policy import Policy
from ckptd.textsafe import shown
from tests.test_hostile_pickles import HOSTILE, Asm, Hostile, _Reduce, _touch
from tests.trainers_env import trainers_environ, trainers_python

FIXTURES = Path(__file__).parent / "data" / "verdicts"
CLEAN = sorted(p for p in (FIXTURES / "clean").iterdir())
MALICIOUS = sorted(p for p in (FIXTURES / "malicious").iterdir())
EXPECTED_FORMAT = {
    ".pt": {Format.TORCH_ZIP, Format.TORCH_LEGACY},
    ".pth": {Format.TORCH_ZIP},
    ".bin": {Format.TORCH_ZIP},
    ".ckpt": {Format.TORCH_ZIP},
    ".pkl": {Format.JOBLIB},
    ".zip": {Format.SB3_ZIP},
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- the committed corpus --------------------------------------------------------------------


@pytest.mark.parametrize("path", CLEAN, ids=[p.name for p in CLEAN])
def test_clean_files_made_by_their_producers_are_safe(path: Path) -> None:
    found = identify(path)
    assert found.format in EXPECTED_FORMAT[path.suffix], found.note
    assert found.verdict is not None and found.verdict.safe, found.verdict
    assert found.verdict.globals == tuple(sorted(found.verdict.globals))


@pytest.mark.parametrize("path", MALICIOUS, ids=[p.name for p in MALICIOUS])
def test_malicious_files_in_every_container_are_refused(path: Path) -> None:
    before = path.read_bytes()
    found = identify(path)
    assert found.format in EXPECTED_FORMAT[path.suffix], found.note
    verdict = found.verdict
    assert verdict is not None and not verdict.safe and not verdict.broken
    # The reason names what would have run.
    assert (
        "posix.system" in verdict.reason
        or "torch.serialization.load" in verdict.reason
        or ("cloudpickle" in verdict.reason)
    )
    assert path.read_bytes() == before


def test_sb3_ppo_fixture_really_holds_a_filled_deque() -> None:
    """The PPO zip trained a little: its episode buffer pickles items (APPENDS on a deque)."""
    with zipfile.ZipFile(FIXTURES / "clean" / "sb3_ppo.zip") as archive:
        data = json.loads(archive.read("data"))
    blob = base64.b64decode(data["ep_info_buffer"][":serialized:"])
    assert b"collections" in blob and b"e" in blob[-3:]  # APPENDS (b"e") just before STOP
    assert judge_stream(blob, Policy.SB3, source="ep_info_buffer").safe


# --- plain pickles, every protocol -----------------------------------------------------------


SAFE_VALUES: dict[str, Any] = {
    "numpy dict": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": 3, "lr": 1e-3},
    "nested containers": {"a": [1, 2.5, "x", None, True], "b": (1, 2), "c": {3, 4}},
    "ordered dict": collections.OrderedDict(w=np.ones(3), b=np.zeros(2, np.int64)),
    "bytes and complex": {"raw": b"\x00\x01", "z": 1 + 2j, "f": frozenset({1})},
    "numpy scalar": {"mean": np.float32(1.5), "best": np.int64(7)},
}


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("name", sorted(SAFE_VALUES))
def test_plain_data_pickles_of_every_protocol_are_safe(
    tmp_path: Path, name: str, protocol: int
) -> None:
    path = _write(tmp_path / "stats.pkl", pickle.dumps(SAFE_VALUES[name], protocol=protocol))
    found = identify(path)
    assert found.format is Format.PICKLE
    assert found.verdict is not None and found.verdict.safe, found.verdict.reason


PAYLOADS = {
    "os.system": lambda m: _Reduce(os.system, _touch(m)),
    "builtins.eval": lambda m: _Reduce(builtins.eval, f"open({str(m)!r}, 'w').close()"),
    "builtins.exec": lambda m: _Reduce(builtins.exec, f"open({str(m)!r}, 'w').close()"),
    "builtins.__import__": lambda m: _Reduce(builtins.__import__, "os"),
    "subprocess": lambda m: _Reduce(subprocess.check_call, ["touch", str(m)]),
    "builtins.getattr": lambda m: _Reduce(
        builtins.getattr, _Reduce(builtins.__import__, "os"), "system"
    ),
}


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_payload_pickles_of_every_protocol_are_refused(
    tmp_path: Path, name: str, protocol: int
) -> None:
    marker = tmp_path / "pwned"
    payload = {"w": np.ones(2), "x": PAYLOADS[name](marker)}
    blob = pickle.dumps(payload, protocol=protocol)
    path = _write(tmp_path / "rl_model_6000_steps.pkl", blob)
    for found in (identify(path), identify_checked(path)):
        assert found.format is Format.PICKLE, found.note
        assert found.verdict is not None and not found.verdict.safe
        assert name.split(".")[-1] in " ".join(found.verdict.globals)
    assert not marker.exists()
    assert path.read_bytes() == blob


def test_the_payloads_are_live(tmp_path: Path) -> None:
    """Control: a real unpickle of the same kind of bytes runs the payload."""
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "evil.pkl", pickle.dumps(PAYLOADS["os.system"](marker), protocol=0))
    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=30)
    assert marker.exists()


def test_text_protocol_sniffing(tmp_path: Path) -> None:
    assert identify(_write(tmp_path / "a.pkl", b"hello, world\n")).format is Format.UNKNOWN
    assert identify(_write(tmp_path / "b.pkl", b"(lp0\n")).format is Format.UNKNOWN  # no STOP
    notes = _write(tmp_path / "n.pkl", b"config\nvalue\nmore text\n")  # looks like a GLOBAL
    assert identify(notes).format is Format.UNKNOWN
    evil = identify(_write(tmp_path / "c.pkl", b"cos\nsystem\n(S'echo hi'\ntR."))
    assert evil.format is Format.PICKLE and evil.verdict and not evil.verdict.safe
    assert evil.verdict.globals == ("os.system",)
    # A payload followed by garbage (pickle.load stops at STOP and never sees it): still refused.
    trailing = identify(_write(tmp_path / "d.pkl", b"cos\nsystem\n(S'echo hi'\ntR.junk"))
    assert trailing.format is Format.PICKLE and trailing.verdict and not trailing.verdict.safe


# --- the hostile corpus, in every container --------------------------------------------------


def _torch_zip(data_pkl: bytes, prefix: str = "archive") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl)
        archive.writestr(f"{prefix}/byteorder", "little")
        archive.writestr(f"{prefix}/version", "3\n")
        archive.writestr(f"{prefix}/.data/serialization_id", "0123")
    return out.getvalue()


def _sb3_zip(serialized: bytes | None = None, pth: bytes | None = None) -> bytes:
    source = FIXTURES / "clean" / "sb3_dqn.zip"
    out = io.BytesIO()
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dest:
        for info in src.infolist():
            member = src.read(info.filename)
            if info.filename == "data" and serialized is not None:
                data = json.loads(member)
                data["policy_class"][":serialized:"] = base64.b64encode(serialized).decode()
                member = json.dumps(data).encode()
            if info.filename == "policy.pth" and pth is not None:
                member = pth
            dest.writestr(info, member)
    return out.getvalue()


CONTAINERS = {
    "plain .pkl": lambda blob: ("rl_model_6000_steps.pkl", blob),
    "zlib (joblib)": lambda blob: ("model.joblib.pkl", zlib.compress(blob)),
    "gzip (joblib)": lambda blob: ("model.pkl", gzip.compress(blob)),
    "xz (joblib)": lambda blob: ("model.pkl", lzma.compress(blob)),
    "torch .pt data.pkl": lambda blob: ("model.pt", _torch_zip(blob)),
    "Lightning .ckpt data.pkl": lambda blob: ("epoch=1.ckpt", _torch_zip(blob, "epoch=1")),
    "SB3 :serialized:": lambda blob: ("sb3.zip", _sb3_zip(serialized=blob)),
    "SB3 policy.pth": lambda blob: ("sb3.zip", _sb3_zip(pth=_torch_zip(blob))),
}


@pytest.mark.parametrize("container", sorted(CONTAINERS))
@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
def test_every_hostile_pickle_is_refused_in_every_container(
    tmp_path: Path, hostile: Hostile, container: str
) -> None:
    marker = tmp_path / "pwned"
    name, data = CONTAINERS[container](hostile.build(marker))
    path = _write(tmp_path / name, data)
    found = identify(path)
    if found.format is Format.SB2_PICKLE:
        pytest.skip("an SB2 legacy pickle: the converter refuses it (test_hostile_pickles.py)")
    assert found.verdict is not None, found.note
    assert not found.verdict.safe, found.verdict
    assert not marker.exists()


def test_a_truncated_data_pickle_is_broken_not_refused(tmp_path: Path) -> None:
    blob = pickle.dumps({"w": np.ones(1000)}, protocol=4)[:-40]
    found = identify(_write(tmp_path / "cut.pkl", blob))
    assert found.verdict is not None and not found.verdict.safe and found.verdict.broken
    assert "truncated" in found.verdict.reason


def test_a_torch_zip_whose_headers_disagree_is_refused(tmp_path: Path) -> None:
    raw = bytearray(_torch_zip(pickle.dumps({"a": 1}, protocol=2)))
    local = raw.index(b"archive/data.pkl")  # the local header's copy of the name
    raw[local : local + 7] = b"ARCHIVE"
    found = identify(_write(tmp_path / "model.pt", bytes(raw)))
    assert found.verdict is not None and not found.verdict.safe


def test_persistent_ids_only_as_torch_storages(tmp_path: Path) -> None:
    def storage(kind: str) -> bytes:
        asm = Asm(2).global_("torch._utils", "_rebuild_tensor_v2").raw(b"(")
        asm.raw(b"(").str(kind).global_("torch", "FloatStorage").str("0").str("cpu")
        asm.raw(b"K\x04tQK\x00K\x04\x85K\x01\x85\x89").global_("collections", "OrderedDict")
        return bytes(asm.raw(b")RtR."))

    assert judge_stream(storage("storage"), Policy.TORCH, source="ok").safe
    refused = judge_stream(storage("module"), Policy.TORCH, source="bad")
    assert not refused.safe and "persistent id" in refused.reason
    assert not judge_stream(storage("storage"), Policy.DATA, source="plain").safe


# --- compression limits, escaping, the manifest ------------------------------------------------


def test_decompression_is_bounded_and_lz4_is_not_guessed(tmp_path: Path) -> None:
    bomb = zlib.compress(b"\x00" * (1 << 22))
    with pytest.raises(NoVerdict, match="over 1000 bytes"):
        decompress(io.BytesIO(bomb), "zlib", limit=1000)
    lz4 = identify(_write(tmp_path / "model.pkl", b"\x04\x22\x4d\x18" + b"\x00" * 64))
    assert lz4.format is Format.UNKNOWN and "lz4" in lz4.note and lz4.verdict is None


def test_global_names_are_escaped(tmp_path: Path) -> None:
    blob = bytes(Asm(4).stack_global("os\x1b[31m", "sys\ntem").call("x").raw(b"."))
    verdict = judge_stream(blob, Policy.DATA, source="x")
    assert not verdict.safe
    assert verdict.globals == ("os\\x1b[31m.sys\\x0atem",)
    assert "\n" not in verdict.reason and "\x1b" not in verdict.reason
    assert shown("torch.Size") == "torch.Size"


def test_manifest_round_trips_the_verdict() -> None:
    from datetime import UTC, datetime

    verdict = Verdict(False, ("posix.system",), "global posix.system is not allowed")
    entry = ManifestEntry(
        path="rl_model_6000_steps.pkl",
        step=6000,
        size=10,
        mtime=datetime(2026, 1, 1, tzinfo=UTC),
        sha256="0" * 64,
        format=Format.PICKLE,
        state="refused",
        refusal=verdict.reason,
        verdict=verdict,
    )
    manifest = Manifest(
        run="r",
        generated_at=datetime(2026, 1, 1, tzinfo=UTC),
        policy="default",
        checkpoints=(entry,),
    )
    text = manifest.to_json_bytes().decode()
    assert '"verdict": {' in text
    back = manifest_from_json(text, source="m.json")
    assert back.checkpoints[0].verdict == verdict
    assert back.checkpoints[0].format is Format.PICKLE
    broken = text.replace('"safe": false', '"safe": "no"')
    with pytest.raises(Exception, match=r"verdict\.safe"):
        manifest_from_json(broken, source="m.json")


# --- with the real producers -------------------------------------------------------------------

# Run by the trainers env's interpreter (torch CPU, tests/trainers_env.py): writes each object with
# torch.save and records torch's own verdict, ``torch.load(weights_only=True)``, as JSON.
_TORCH_PRODUCER = """
import json, os, pickle, sys
import torch

class Reduce:
    def __init__(self, *call):
        self.call = call
    def __reduce__(self):
        return self.call

out = sys.argv[1]
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
model(torch.ones(2, 3)).sum().backward()
optimizer.step()
objects = {
    "state_dict.pt": model.state_dict(),
    "optimizer.pth": optimizer.state_dict(),
    "mixed.bin": {"w": torch.zeros(2, 2, dtype=torch.float16), "n": 3, "s": torch.Size([2])},
    "ckpt.ckpt": {"state_dict": model.state_dict(), "epoch": 1, "params": torch.nn.Parameter(torch.ones(2))},
    "module.pt": model,
    "evil.pt": {"x": Reduce(os.system, ("true",))},
}
loads = {}
for name, obj in objects.items():
    path = os.path.join(out, name)
    torch.save(obj, path)
    try:
        torch.load(path, weights_only=True)
        loads[name] = "ok"
    except pickle.UnpicklingError as err:
        loads[name] = "refused: " + str(err).splitlines()[0]
for path in sys.argv[2:]:
    try:
        torch.load(path, weights_only=True)
        loads[path] = "ok"
    except pickle.UnpicklingError as err:
        loads[path] = "refused: " + str(err).splitlines()[0]
print(json.dumps(loads))
"""


@pytest.fixture(scope="module")
def torch_python() -> Path:
    try:
        return trainers_python()
    except (subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"the trainers env (torch CPU) cannot be built: {err}")


def _torch_loads(python: Path, out: Path, *paths: Path) -> dict[str, str]:
    done = subprocess.run(
        [str(python), "-c", _TORCH_PRODUCER, str(out), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=600,
        env=trainers_environ(),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loads: dict[str, str] = json.loads(done.stdout.splitlines()[-1])
    return loads


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fresh_torch_files_agree_with_weights_only(torch_python: Path, tmp_path: Path) -> None:
    loads = _torch_loads(torch_python, tmp_path)
    clean = {"state_dict.pt", "optimizer.pth", "mixed.bin", "ckpt.ckpt"}
    assert {name for name, answer in loads.items() if answer == "ok"} == clean, loads
    for name in loads:
        found = identify(tmp_path / name)
        assert found.format is Format.TORCH_ZIP, name
        assert found.verdict is not None and found.verdict.safe == (name in clean), (
            name,
            found.verdict,
        )


TORCH_CLEAN = [p for p in CLEAN if p.suffix in (".pt", ".bin", ".ckpt")]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_clean_torch_fixtures_load_with_weights_only(torch_python: Path, tmp_path: Path) -> None:
    loads = _torch_loads(torch_python, tmp_path, *TORCH_CLEAN)
    assert len(TORCH_CLEAN) >= 3
    assert {path: loads[str(path)] for path in TORCH_CLEAN} == {p: "ok" for p in TORCH_CLEAN}


def test_fresh_joblib_dumps(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib", reason="joblib is not installed (not a test dependency)")
    arrays = {"a": np.arange(10.0), "b": np.ones((2, 3), np.int8), "c": [1, 2]}
    for compress in (0, 3, ("gzip", 1), ("bz2", 1), ("xz", 1), ("lzma", 1)):
        path = tmp_path / f"dump-{compress}.pkl"
        joblib.dump(arrays, path, compress=compress)
        found = identify(path)
        assert found.format is Format.JOBLIB and found.verdict and found.verdict.safe, compress
    joblib.dump({"x": np.array([_Reduce(os.system, "true")], dtype=object)}, tmp_path / "o.pkl")
    objects = identify(tmp_path / "o.pkl")
    assert objects.verdict is not None and not objects.verdict.safe
    assert "nested pickle" in objects.verdict.reason


def test_sb3_references_obey_the_names_grammar() -> None:
    """SB3 packages match at identifier boundaries, as the SB2 allowlist's do."""
    fine = bytes(Asm(4).stack_global("stable_baselines3.common.policies", "MlpPolicy").raw(b"."))
    assert judge_stream(fine, Policy.SB3, source="ok").safe
    for module, name in (
        ("stable_baselines3.common\ncposix\nsystem", "MlpPolicy"),
        ("stable_baselines3x", "MlpPolicy"),
        ("stable_baselines3.common", "policies.MlpPolicy"),
        ("gymnasium.spaces.box", "Box\n"),
    ):
        blob = bytes(Asm(4).stack_global(module, name).raw(b"."))
        assert not judge_stream(blob, Policy.SB3, source="bad").safe, (module, name)
