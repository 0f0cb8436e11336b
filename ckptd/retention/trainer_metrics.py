"""keep_best's series from Hugging Face's ``trainer_state.json`` (``source: trainer_state.json``).

The Trainer writes ``trainer_state.json`` last into every ``checkpoint-<step>/`` it saves, and its
``log_history`` is cumulative: every evaluation up to that step (``ckptd.formats.trainer_state``;
docs/formats.md, "Hugging Face trainer_state.json"). It evaluates before it saves, so the newest
complete checkpoint's file holds the evaluation at or before every checkpoint's step. So
``source: trainer_state.json`` (or ``out/trainer_state.json``) means: in the directory holding
the source (the run, or ``out/``), the newest directory checkpoint (``checkpoints.directories``,
by ``step_pattern``) whose ``trainer_state.json`` parses; where no checkpoint directory has one,
the file at ``source`` itself (``Trainer.save_state()`` writes it there at the end of training).

Read from the run's directory with nothing followed (``fs.runfs.RunFS``), at most
``MAX_EVALUATIONS_BYTES`` per file. A newest state that does not parse is one being written
(the Trainer writes it in place): it is skipped, with a problem line, for the one before. A file
over the size limit, behind a link, or that parses but is no trainer state raises
:class:`FormatError` naming it, as an unreadable ``evaluations.npz`` does.
"""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path, PurePosixPath

from ckptd.config.model import KeepBest
from ckptd.errors import FormatError, UnsafePathError
from ckptd.formats.trainer_state import FILENAME, parse_trainer_state
from ckptd.fs.runfs import RunFS
from ckptd.retention.plan import Evaluation
from ckptd.runs.listing import CheckpointMatcher

logger = logging.getLogger(__name__)


def is_trainer_state_source(source: str) -> bool:
    return PurePosixPath(source).name == FILENAME


def read_trainer_state(
    run_dir: Path, keep_best: KeepBest, matcher: CheckpointMatcher | None, limit: int
) -> tuple[tuple[Evaluation, ...], tuple[str, ...]]:
    """The evaluations of ``keep_best.metric`` and the problems skipped on the way."""
    fs = RunFS(run_dir)
    source = PurePosixPath(keep_best.source)
    parent = "" if str(source.parent) == "." else str(source.parent)
    problems: list[str] = []
    for relpath in [*_checkpoint_states(fs, parent, matcher), str(source)]:
        shown = fs.show(relpath)
        try:
            raw = fs.read_bytes(relpath, limit=limit)
        except FileNotFoundError:
            continue  # a checkpoint directory without its state yet, or no final state
        except UnsafePathError as err:
            raise FormatError(f"cannot read evaluations: {err.message}", path=shown) from err
        except OSError as err:
            raise FormatError(
                f"cannot read evaluations: {err.strerror or err}", path=shown
            ) from err
        try:
            json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            problems.append(f"{shown}: does not parse (being written?); using an older one")
            continue
        try:
            state = parse_trainer_state(raw, keep_best.metric)
        except ValueError as err:
            raise FormatError(str(err), path=shown) from err
        problems.extend(f"{shown}: {problem}; skipped" for problem in state.problems)
        if not state.points:
            problems.append(f"{shown}: no log_history entry has the metric {keep_best.metric!r}")
        evaluations = tuple(Evaluation(step, value) for step, value in state.points)
        return evaluations, tuple(problems)
    logger.debug("%s: no trainer state yet", fs.show(str(source)))
    return (), tuple(problems)


def _checkpoint_states(fs: RunFS, parent: str, matcher: CheckpointMatcher | None) -> list[str]:
    """``<dir>/trainer_state.json`` of each directory checkpoint in ``parent``, newest first
    (by step; directories without one last). Links and non-directories are left out."""
    if matcher is None:
        return []
    try:
        names = fs.listdir(parent)
    except (UnsafePathError, OSError):
        return []  # the source's own read names the problem
    ranked: list[tuple[int, str]] = []
    for name in names:
        if not matcher.matches_directory(name):
            continue
        try:
            st = fs.lstat(f"{parent}/{name}" if parent else name)
        except (UnsafePathError, OSError):
            continue
        if st is None or not stat.S_ISDIR(st.st_mode):
            continue
        step = matcher.step_of(name)
        ranked.append((-1 if step is None else step, name))
    ranked.sort(reverse=True)
    return [f"{parent}/{name}/{FILENAME}" if parent else f"{name}/{FILENAME}" for _, name in ranked]
