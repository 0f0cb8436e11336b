"""keep_best's view of Hugging Face Trainer's trainer_state.json, on the Trainer's own files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptd.formats.trainer_state import parse_trainer_state

HF = Path(__file__).resolve().parent / "data" / "trainers" / "hf"


def test_the_trainers_own_files() -> None:
    for directory, step in (("checkpoint-2", 2), ("checkpoint-4", 4), ("checkpoint-6", 6)):
        raw = (HF / directory / "trainer_state.json").read_bytes()
        state = parse_trainer_state(raw, "eval_loss")
        assert state.global_step == step
        assert [point[0] for point in state.points] == list(range(2, step + 1, 2))
        assert state.problems == ()
        history = json.loads(raw)["log_history"]
        assert [value for _, value in state.points] == [
            entry["eval_loss"] for entry in history if "eval_loss" in entry
        ]
    losses = parse_trainer_state((HF / "checkpoint-6" / "trainer_state.json").read_bytes(), "loss")
    assert [step for step, _ in losses.points] == [1, 2, 3, 4, 5, 6]


def test_bad_entries_are_named_and_skipped() -> None:
    raw = json.dumps(
        {
            "global_step": 9,
            "log_history": [
                {"step": 3, "eval_loss": 1.5},
                {"step": -1, "eval_loss": 1.0},
                {"step": 4, "eval_loss": "x"},
                {"step": 5, "eval_loss": float("nan")},
                {"step": 6.0, "eval_loss": 2},
                "junk",
            ],
        }
    ).encode()
    state = parse_trainer_state(raw, "eval_loss")
    assert state.points == ((3, 1.5), (6, 2.0))
    assert len(state.problems) == 3 and all("log_history[" in p for p in state.problems)


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"log_history": {}}', b"\xff"])
def test_not_a_trainer_state(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_trainer_state(raw, "eval_loss")
