"""Read the metric series keep_best ranks by: SB2/SB3 ``evaluations.npz``, a ``metrics.jsonl``
sidecar, or Hugging Face's ``trainer_state.json`` (``ckptd.retention.trainer_metrics``).

The I/O edge of keep_best (the ranking itself is in :mod:`ckptd.retention.plan`). Nothing here executes
code from a file: npz members are read with ``allow_pickle=False``, and both readers refuse files
larger than :data:`MAX_EVALUATIONS_BYTES`. A source that does not exist yet is an empty series
(the run simply has no evaluation so far); an unreadable one raises :class:`FormatError`.

``evaluations.npz`` (written by EvalCallback with ``np.savez``): ``timesteps`` 1-D, ``results``
(n_evals, n_episodes) averaged over axis 1 gives ``mean_reward``, ``ep_lengths`` likewise gives
``mean_ep_length``, ``successes`` gives ``success_rate``; any other metric name is looked up as an
array of that name (1-D, or 2-D averaged over axis 1).

``metrics.jsonl``: one JSON object per line, ``{"step": <int>, "<metric>": <number>, ...}``. Lines
that are not such an object are reported (file, line number, problem) and skipped; lines that are
objects without the metric are other metrics' lines and are skipped quietly.
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ckptd.config.model import KeepBest
from ckptd.errors import FormatError
from ckptd.formats.zipread import ZIP_READ_ERRORS
from ckptd.fs.files import open_regular_nofollow
from ckptd.retention.plan import Evaluation
from ckptd.retention.trainer_metrics import is_trainer_state_source, read_trainer_state
from ckptd.runs.listing import CheckpointMatcher

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

MAX_EVALUATIONS_BYTES = 64 * 1024**2  # on disk and, for npz, uncompressed; real ones are KiBs
MAX_REPORTED_LINES = 5  # bad jsonl lines named one by one; the rest are counted

# Metric name -> the npz array it is the per-evaluation mean of (SB2/SB3 EvalCallback names).
NPZ_METRIC_ARRAYS = {
    "mean_reward": "results",
    "mean_ep_length": "ep_lengths",
    "success_rate": "successes",
}


@dataclass(frozen=True)
class EvaluationSeries:
    """What a source yielded: the evaluations in file order, and one line per problem skipped."""

    evaluations: tuple[Evaluation, ...]
    problems: tuple[str, ...] = ()


def load_evaluations(
    run_dir: Path, keep_best: KeepBest, matcher: CheckpointMatcher | None = None
) -> list[Evaluation]:
    """The run's evaluations of ``keep_best.metric``; problems skipped along the way are logged.

    ``matcher`` names the directory checkpoints, for ``source: trainer_state.json``."""
    series = read_evaluations(run_dir, keep_best, matcher)
    for problem in series.problems:
        logger.warning("%s", problem)
    return list(series.evaluations)


def read_evaluations(
    run_dir: Path, keep_best: KeepBest, matcher: CheckpointMatcher | None = None
) -> EvaluationSeries:
    """Like :func:`load_evaluations`, returning the problems instead of logging them."""
    if is_trainer_state_source(keep_best.source):
        evaluations, problems = read_trainer_state(
            run_dir, keep_best, matcher, MAX_EVALUATIONS_BYTES
        )
        return EvaluationSeries(evaluations, problems)
    source = run_dir / keep_best.source
    try:
        handle = open_regular_nofollow(source)
    except FileNotFoundError:
        logger.debug("%s: no evaluations yet", source)
        return EvaluationSeries(())
    except OSError as err:
        raise FormatError(f"cannot read evaluations: {err.strerror}", path=str(source)) from err
    with handle:
        if source.suffix == ".npz":
            return _read_npz(handle, source, keep_best.metric)
        if source.suffix == ".jsonl":
            return _read_jsonl(handle, source, keep_best.metric)
    raise FormatError(
        "unsupported evaluations source (expected evaluations.npz, a .jsonl file or "
        "trainer_state.json)",
        path=str(source),
    )


def _read_npz(handle: BinaryIO, source: Path, metric: str) -> EvaluationSeries:
    _check_size(handle, source)
    try:
        with zipfile.ZipFile(handle) as archive:
            declared = sum(info.file_size for info in archive.infolist())
            if declared > MAX_EVALUATIONS_BYTES:
                raise FormatError(
                    f"npz members total {declared} bytes uncompressed, over the "
                    f"{MAX_EVALUATIONS_BYTES}-byte limit",
                    path=str(source),
                )
        handle.seek(0)
        # numpy only for a keep_best policy reading an npz: a prune without one never loads it.
        import numpy as np

        with np.load(handle, allow_pickle=False) as npz:
            names = set(npz.files)
            array_name = NPZ_METRIC_ARRAYS.get(metric, metric)
            if "timesteps" not in names or array_name not in names:
                missing = "timesteps" if "timesteps" not in names else array_name
                raise FormatError(
                    f"no {missing!r} array for metric {metric!r} (has {', '.join(sorted(names))})",
                    path=str(source),
                )
            timesteps = npz["timesteps"]
            values = npz[array_name]
    except FormatError:
        raise
    except (KeyError, *ZIP_READ_ERRORS) as err:
        # allow_pickle=False makes an object array a ValueError; truncation is BadZipFile/EOFError.
        raise FormatError(f"unreadable evaluations npz: {err}", path=str(source)) from err
    return EvaluationSeries(_evaluations_from_arrays(timesteps, values, source, array_name))


def _evaluations_from_arrays(
    timesteps: np.ndarray, values: np.ndarray, source: Path, array_name: str
) -> tuple[Evaluation, ...]:
    import numpy as np

    # EvalCallback writes int64 timesteps; integral floats are accepted too (hand-made files).
    integral = np.issubdtype(timesteps.dtype, np.integer) or (
        np.issubdtype(timesteps.dtype, np.floating)
        and bool(np.all(np.isfinite(timesteps)))
        and bool(np.all(timesteps == np.floor(timesteps)))
    )
    if timesteps.ndim != 1 or not integral:
        raise FormatError(
            f"'timesteps' must be a 1-D integer array, not {timesteps.ndim}-D {timesteps.dtype}",
            path=str(source),
        )
    if values.dtype == np.bool_:
        values = values.astype(np.float64)
    if values.ndim not in (1, 2) or not np.issubdtype(values.dtype, np.number):
        raise FormatError(
            f"{array_name!r} must be a 1-D or 2-D numeric array, not {values.ndim}-D {values.dtype}",
            path=str(source),
        )
    if values.shape[0] != timesteps.shape[0]:
        raise FormatError(
            f"{array_name!r} has {values.shape[0]} rows but 'timesteps' has {timesteps.shape[0]}",
            path=str(source),
        )
    if values.ndim == 2:
        # An evaluation with no episodes has no mean: NaN, which retention treats as unranked.
        with np.errstate(invalid="ignore", divide="ignore"):
            values = (
                values.astype(np.float64).mean(axis=1)
                if values.shape[1]
                else np.full(len(values), np.nan)
            )
    return tuple(
        Evaluation(int(step), float(value))
        for step, value in zip(timesteps.tolist(), values.tolist(), strict=True)
    )


def _read_jsonl(handle: BinaryIO, source: Path, metric: str) -> EvaluationSeries:
    # Read at most the cap even if a trainer is appending right now: memory stays bounded.
    data = handle.read(MAX_EVALUATIONS_BYTES + 1)
    if len(data) > MAX_EVALUATIONS_BYTES:
        raise FormatError(
            f"over the {MAX_EVALUATIONS_BYTES}-byte limit for evaluations", path=str(source)
        )
    evaluations: list[Evaluation] = []
    problems: list[str] = []
    bad_lines = 0
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            evaluation = _parse_metric_line(raw, metric)
        except ValueError as err:
            bad_lines += 1
            if bad_lines <= MAX_REPORTED_LINES:
                problems.append(f"{source}: line {number}: {err}; skipped")
            continue
        if evaluation is not None:
            evaluations.append(evaluation)
    if bad_lines > MAX_REPORTED_LINES:
        problems.append(f"{source}: {bad_lines} bad lines in all, skipped")
    if not evaluations and not bad_lines and data.strip():
        problems.append(f"{source}: no line has the metric {metric!r}")
    return EvaluationSeries(tuple(evaluations), tuple(problems))


def _parse_metric_line(raw: bytes, metric: str) -> Evaluation | None:
    """One jsonl line -> an Evaluation, None for another metric's line; ValueError if malformed."""
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not JSON ({err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object but {type(record).__name__}")
    if metric not in record:
        return None
    step = record.get("step")
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"'step' must be a non-negative integer, not {step!r}")
    value = record[metric]
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{metric!r} must be a finite number, not {value!r}")
    return Evaluation(step, float(value))


def _check_size(handle: BinaryIO, source: Path) -> None:
    size = handle.seek(0, 2)
    handle.seek(0)
    if size > MAX_EVALUATIONS_BYTES:
        raise FormatError(
            f"{size} bytes, over the {MAX_EVALUATIONS_BYTES}-byte limit for evaluations",
            path=str(source),
        )
