"""Checkpoints written by the real trainers (tests/data/trainers/PROVENANCE.md) against ckptd.

Without the trainers env, ckptd's verdicts are compared with the answers the real consumers gave
when the fixtures were made (``consumers.json``); with it (tests/trainers_env.py), the consumers
run again here, on the fixtures and on the hostile torch files of tests/data/verdicts, and a fresh
run of every trainer is judged too.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ckptd.formats import Format
from ckptd.formats.sniff import identify
from tests.trainers.refresh import consume, consumed, generate
from tests.trainers_env import trainers_env

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "data" / "trainers"
VERDICTS = HERE / "data" / "verdicts"
CONSUMERS: dict[str, dict[str, Any]] = json.loads((FIXTURES / "consumers.json").read_text())
ORDER: dict[str, Any] = json.loads((FIXTURES / "order.json").read_text())
TORCH_FORMATS = {Format.TORCH_ZIP, Format.TORCH_LEGACY, Format.PICKLE}


def _torch_files(answers: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(path for path in answers if not path.endswith(".safetensors"))


def _agreement(root: Path, answers: dict[str, dict[str, Any]]) -> list[str]:
    """Each file where ckptd's verdict and torch.load(weights_only=True) disagree, one line each."""
    problems = []
    for relative in _torch_files(answers):
        found = identify(root / relative)
        torch_ok = answers[relative]["weights_only"] == "ok"
        if found.format not in TORCH_FORMATS or found.verdict is None:
            problems.append(f"{relative}: identified as {found.format} without a verdict")
        elif found.verdict.safe != torch_ok:
            problems.append(
                f"{relative}: ckptd safe={found.verdict.safe} ({found.verdict.reason}),"
                f" torch weights_only {answers[relative]['weights_only']}"
            )
    return problems


def test_every_consumed_fixture_is_recorded() -> None:
    on_disk = {str(path.relative_to(FIXTURES)) for path in consumed(FIXTURES)}
    assert on_disk == set(CONSUMERS)
    assert ORDER["versions"]["torch"].startswith("2.13.0")


def test_recorded_consumers_refuse_what_they_should() -> None:
    """The fixtures hold files on both sides: torch refused the trainers' non-weight pickles."""
    refused = {path for path in _torch_files(CONSUMERS) if CONSUMERS[path]["weights_only"] != "ok"}
    assert {Path(path).name for path in refused} == {
        ".metadata",  # DCP's Metadata dataclass
        "rng_state.pth",  # numpy RNG state (transformers loads it with numpy globals allowed)
        "training_args.bin",  # a pickled TrainingArguments object
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",  # DeepSpeed's loss scaler object
    }
    assert len(_torch_files(CONSUMERS)) - len(refused) == 21


def test_ckptd_verdicts_agree_with_recorded_weights_only_loads() -> None:
    assert _agreement(FIXTURES, CONSUMERS) == []


@pytest.fixture(scope="module")
def env() -> Path:
    try:
        return trainers_env()
    except (subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"the trainers env (torch CPU, transformers, Lightning) cannot be built: {err}")


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_live_consumers_agree_with_ckptd_and_the_record(env: Path) -> None:
    live = consume(consumed(FIXTURES), FIXTURES)
    assert {path: answer["weights_only"] for path, answer in live.items()} == {
        path: answer["weights_only"] for path, answer in CONSUMERS.items()
    }
    assert _agreement(FIXTURES, live) == []
    hostile = sorted(
        path
        for path in VERDICTS.rglob("*")
        if path.suffix in (".pt", ".pth", ".bin", ".ckpt") and path.is_file()
    )
    assert len(hostile) >= 8
    answers = consume(hostile, VERDICTS)
    assert {answers[str(p.relative_to(VERDICTS))]["weights_only"] == "ok" for p in hostile} == {
        True,
        False,
    }
    assert _agreement(VERDICTS, answers) == []


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_fresh_trainer_output_matches_the_committed_layouts(env: Path, tmp_path: Path) -> None:
    """The pinned trainers still write the files (names, order) the fixtures hold."""
    out = tmp_path / "fresh"
    generate(out)

    def names(root: Path) -> Counter[str]:
        # Orbax names its data files by random 32-hex ids: compare those by count.
        return Counter(
            re.sub(r"/d/[0-9a-f]{32}$", "/d/<id>", str(path.relative_to(root)))
            for path in root.rglob("*")
            if path.is_file()
            and path.name not in ("consumers.json", "PROVENANCE.md", ".gitattributes")
        )

    assert names(out) == names(FIXTURES)
    fresh_order = json.loads((out / "order.json").read_text())
    for trainer in ("hf", "dcp"):
        assert fresh_order[trainer].keys() == ORDER[trainer].keys()
        for directory, before in fresh_order[trainer].items():
            assert set(before) == set(ORDER[trainer][directory]), directory
    for save_dir, saves in fresh_order["deepspeed"].items():
        assert [{tag: set(files) for tag, files in save.items()} for save in saves] == [
            {tag: set(files) for tag, files in save.items()}
            for save in ORDER["deepspeed"][save_dir]
        ]
