"""identify(): by content, never by name."""

from __future__ import annotations

import pickle
import random
import shutil
import time
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from ckptd.errors import UnsafePathError
from ckptd.formats import Format
from ckptd.formats.sniff import identify
from ckptd.pickles.peek import ends_with_tuple2, peek_pickle
from tests.sb2zip_helpers import (
    make_sb3_zip,
    params_of,
    sample_arrays,
    with_version_zipfile_cannot_read,
    write_zip,
)

LEGACY = Path(__file__).resolve().parent / "data" / "sb2-era"


@pytest.mark.parametrize("kind", ["ppo2", "dqn", "sac"])
def test_genuine_legacy_pickles_are_sb2_pickle(tmp_path: Path, kind: str) -> None:
    source = LEGACY / f"{kind}.pkl"
    found = identify(source)
    assert (found.format, found.confidence, found.protocol) == (Format.SB2_PICKLE, "high", 4)
    assert any(name.startswith("stable_baselines.") for name in found.globals)
    assert "stable_baselines" in found.note
    renamed = tmp_path / "model.zip"  # the name says zip; the content says pickle
    shutil.copyfile(source, renamed)
    assert identify(renamed).format is Format.SB2_PICKLE
    assert ends_with_tuple2(source.read_bytes()[-16:])


def test_sb2_zip_named_pkl_is_sb2_zip(tmp_path: Path) -> None:
    path = tmp_path / "rl_model_1000_steps.pkl"
    write_zip(path, {"gamma": 0.99}, params_of(sample_arrays()))
    found = identify(path)
    assert found.format is Format.SB2_ZIP
    assert found.members == ("data", "parameters", "parameter_list")


def test_sb3_zip(tmp_path: Path) -> None:
    path = tmp_path / "ppo.bin"
    make_sb3_zip(path)
    found = identify(path)
    assert found.format is Format.SB3_ZIP
    assert "_stable_baselines3_version" in found.members
    old_sb3 = tmp_path / "old.zip"  # before SB3 v0.9: no version member, but *.pth members
    with zipfile.ZipFile(old_sb3, "w") as archive:
        archive.writestr("data", "{}")
        archive.writestr("tensors.pth", b"x")
    assert identify(old_sb3).format is Format.SB3_ZIP


def test_other_zips_are_unknown(tmp_path: Path) -> None:
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", "{}")
        archive.writestr("weights.npy", b"")
    found = identify(path)
    assert found.format is Format.UNKNOWN and "without stable-baselines" in found.note
    broken = tmp_path / "broken.zip"
    broken.write_bytes(path.read_bytes()[:40])
    found = identify(broken)
    assert found.format is Format.UNKNOWN and "central directory" in found.note
    newer = tmp_path / "newer.zip"
    newer.write_bytes(with_version_zipfile_cannot_read(path.read_bytes()))
    found = identify(newer)
    assert found.format is Format.UNKNOWN and "zip file version 23.5" in found.note


def test_non_sb2_pickles_are_plain_pickles_with_their_protocol(tmp_path: Path) -> None:
    """Never sent to conversion; a plain pickle of any protocol gets a verdict instead."""
    plain = tmp_path / "stats.pkl"
    plain.write_bytes(pickle.dumps({"mean": 1.0, "arr": np.zeros(3)}, protocol=4))
    found = identify(plain)
    assert (found.format, found.protocol) == (Format.PICKLE, 4)
    assert found.verdict is not None and found.verdict.safe
    pair_of_ints = tmp_path / "pair.pkl"
    pair_of_ints.write_bytes(pickle.dumps((1, 2), protocol=4))
    assert identify(pair_of_ints).format is Format.PICKLE
    old = tmp_path / "old.pkl"
    old.write_bytes(pickle.dumps({"a": 1}, protocol=1))
    assert identify(old).format is Format.PICKLE
    proto0 = tmp_path / "p0.pkl"
    proto0.write_bytes(pickle.dumps({"a": 1}, protocol=0))
    assert identify(proto0).format is Format.PICKLE


def test_two_tuple_checkpoint_without_sb2_reference_is_a_low_confidence_candidate(
    tmp_path: Path,
) -> None:
    # A custom policy pickled by reference to the user's module: no stable_baselines global.
    data = {"gamma": 0.99, "policy": OrderedDict}
    params = OrderedDict([("model/w:0", np.ones((2, 2), np.float32))])
    path = tmp_path / "custom.pkl"
    path.write_bytes(pickle.dumps((data, params), protocol=4))
    found = identify(path)
    assert (found.format, found.confidence) == (Format.SB2_PICKLE, "low")
    assert "custom policy" in found.note


@pytest.mark.parametrize(
    "content", [b"", b"\x00" * 100, random.Random(3).randbytes(4096), b'{"json": true}', b"\x80"]
)
def test_empty_random_and_text_are_unknown(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(content)
    found = identify(path)
    assert found.format is Format.UNKNOWN
    assert found.size == len(content)
    assert found.note


def test_huge_files_are_not_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "huge.pkl"
    with path.open("wb") as handle:
        handle.write(pickle.dumps({"a": 1}, protocol=4)[:-1])  # a pickle that goes on and on
        handle.truncate(8 * 1024**3)  # sparse: 8 GiB on paper, nothing on disk
    started = time.monotonic()
    found = identify(path)
    assert time.monotonic() - started < 5
    assert found.format is Format.UNKNOWN and found.size == 8 * 1024**3


def test_symlinks_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "real.pkl"
    shutil.copyfile(LEGACY / "ppo2.pkl", target)
    link = tmp_path / "link.pkl"
    link.symlink_to(target)
    with pytest.raises(UnsafePathError):
        identify(link)


def test_peek_resolves_stack_global_through_the_memo() -> None:
    blob = pickle.dumps([OrderedDict, OrderedDict, np.float32(1)], protocol=4)
    peek = peek_pickle(blob)
    assert peek.complete and peek.protocol == 4
    assert "collections.OrderedDict" in peek.globals
    assert any(name.startswith("numpy") for name in peek.globals)
    truncated = peek_pickle(blob[: len(blob) // 2])
    assert not truncated.complete and truncated.error
