"""Hugging Face Trainer's ``trainer_state.json``: the evaluations in its ``log_history`` (pure).

``TrainerState.save_to_json`` (transformers 5.25.0, ``trainer_callback.py`` lines 143-147) writes
the dataclass as JSON; ``log_history`` is the list of every dict the Trainer logged, cumulative
from the first step, each with the ``step`` it was logged at (``Trainer.log``): training lines
(``loss``, ``learning_rate``...) and evaluation lines (``eval_loss``, ``eval_<metric>``...). The
newest checkpoint's file therefore holds the whole history, which keep_best ranks checkpoints by
(docs/formats.md, "Directory checkpoints").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

FILENAME = "trainer_state.json"


@dataclass(frozen=True)
class TrainerState:
    global_step: int
    points: tuple[tuple[int, float], ...]  # (step, value) of the metric asked for, in file order
    problems: tuple[str, ...] = ()  # log_history entries with the metric that could not be used


def parse_trainer_state(raw: bytes, metric: str) -> TrainerState:
    """``raw``'s global step and every ``log_history`` value of ``metric``; ValueError if the
    file is not a trainer state at all (not JSON, not an object, no list ``log_history``)."""
    try:
        state = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"not JSON ({err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise ValueError("not a trainer state (no log_history list)")
    global_step = _step(state.get("global_step"))
    points: list[tuple[int, float]] = []
    problems: list[str] = []
    for index, entry in enumerate(state["log_history"]):
        if not isinstance(entry, dict) or metric not in entry:
            continue
        step, value = _step(entry.get("step")), entry[metric]
        if step is None:
            problems.append(f"log_history[{index}]: 'step' is not a non-negative integer")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"log_history[{index}]: {metric!r} is not a number")
        elif not math.isfinite(value):
            problems.append(f"log_history[{index}]: {metric!r} is {value}")
        else:
            points.append((step, float(value)))
    return TrainerState(global_step or 0, tuple(points), tuple(problems))


def _step(value: object) -> int | None:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value
