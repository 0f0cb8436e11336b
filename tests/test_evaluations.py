"""ckptd.retention.evaluations against real evaluations.npz (np.savez) and metrics.jsonl files in tmp_path."""

from __future__ import annotations

import json
import logging
import math
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

import ckptd.retention.evaluations as evaluations_module
from ckptd.config.model import KeepBest, Policy
from ckptd.errors import FormatError, UnsafePathError
from ckptd.retention.evaluations import load_evaluations, read_evaluations
from ckptd.retention.plan import Candidate, Evaluation, plan_run
from tests.sb2zip_helpers import with_version_zipfile_cannot_read

NPZ = KeepBest()  # mean_reward from evaluations.npz
JSONL = KeepBest(source="metrics.jsonl")


def save_eval_npz(run: Path, **arrays: np.ndarray) -> Path:
    """Write evaluations.npz the way SB2/SB3's EvalCallback does (np.savez, uncompressed)."""
    np.savez(run / "evaluations", **arrays)  # np.savez appends .npz
    return run / "evaluations.npz"


def sb2_arrays() -> dict[str, np.ndarray]:
    return {
        "timesteps": np.array([1000, 2000, 3000], dtype=np.int64),
        "results": np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [-1.0, -1.5, -2.0]]),
        "ep_lengths": np.array([[100, 200, 300], [10, 20, 30], [5, 5, 6]], dtype=np.int64),
    }


# ---------------------------------------------------------------- evaluations.npz


def test_npz_mean_reward_is_results_averaged_over_episodes(tmp_path: Path) -> None:
    save_eval_npz(tmp_path, **sb2_arrays())
    assert load_evaluations(tmp_path, NPZ) == [
        Evaluation(1000, 2.0),
        Evaluation(2000, 20.0),
        Evaluation(3000, -1.5),
    ]


def test_npz_mean_ep_length_and_other_arrays_by_name(tmp_path: Path) -> None:
    arrays = sb2_arrays()
    arrays["successes"] = np.array([[True, False], [True, True], [False, False]])
    arrays["custom_score"] = np.array([0.5, 0.25, 0.125], dtype=np.float32)
    save_eval_npz(tmp_path, **arrays)
    lengths = load_evaluations(tmp_path, KeepBest(metric="mean_ep_length", mode="min"))
    assert [e.value for e in lengths] == [200.0, 20.0, 16 / 3]
    success = load_evaluations(tmp_path, KeepBest(metric="success_rate"))
    assert [e.value for e in success] == [0.5, 1.0, 0.0]
    custom = load_evaluations(tmp_path, KeepBest(metric="custom_score"))
    assert [(e.step, e.value) for e in custom] == [(1000, 0.5), (2000, 0.25), (3000, 0.125)]


def test_npz_with_integral_float_timesteps_is_accepted(tmp_path: Path) -> None:
    arrays = sb2_arrays()
    arrays["timesteps"] = np.array([1000.0, 2000.0, 3000.0])
    save_eval_npz(tmp_path, **arrays)
    assert [e.step for e in load_evaluations(tmp_path, NPZ)] == [1000, 2000, 3000]


def test_npz_evaluation_without_episodes_is_nan_and_therefore_unranked(tmp_path: Path) -> None:
    save_eval_npz(tmp_path, timesteps=np.array([10, 20]), results=np.zeros((2, 0)))
    assert all(math.isnan(e.value) for e in load_evaluations(tmp_path, NPZ))


def test_missing_source_is_an_empty_series(tmp_path: Path) -> None:
    assert load_evaluations(tmp_path, NPZ) == []
    assert load_evaluations(tmp_path, JSONL) == []


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        pytest.param(
            {"timesteps": np.array([1, 2]), "results": np.ones((2, 3))},
            "no 'ep_lengths' array for metric 'mean_ep_length'",
            id="SB2 before 2.10 has no ep_lengths",
        ),
        pytest.param(
            {"results": np.ones((2, 3))},
            "no 'timesteps' array",
            id="no timesteps",
        ),
        pytest.param(
            {"timesteps": np.ones((2, 2), dtype=np.int64), "ep_lengths": np.ones((2, 3))},
            "'timesteps' must be a 1-D integer array",
            id="2-D timesteps",
        ),
        pytest.param(
            {"timesteps": np.array([0.5, 1.0]), "ep_lengths": np.ones((2, 3))},
            "'timesteps' must be a 1-D integer array",
            id="fractional timesteps",
        ),
        pytest.param(
            {"timesteps": np.array([1, 2, 3]), "ep_lengths": np.ones((2, 3))},
            "'ep_lengths' has 2 rows but 'timesteps' has 3",
            id="row count mismatch",
        ),
        pytest.param(
            {"timesteps": np.array([1, 2]), "ep_lengths": np.array(["a", "b"])},
            "'ep_lengths' must be a 1-D or 2-D numeric array",
            id="strings",
        ),
        pytest.param(
            {"timesteps": np.array([1, 2]), "ep_lengths": np.ones((2, 3, 4))},
            "'ep_lengths' must be a 1-D or 2-D numeric array, not 3-D",
            id="3-D",
        ),
    ],
)
def test_npz_with_the_wrong_shape_is_a_format_error_naming_the_file(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = save_eval_npz(tmp_path, **arrays)
    with pytest.raises(FormatError, match=message) as caught:
        load_evaluations(tmp_path, KeepBest(metric="mean_ep_length"))
    assert caught.value.path == str(path)
    assert str(caught.value).startswith(f"{path}: ")


class TouchOnUnpickle:
    """An object whose unpickling creates a file: proof of whether anything was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_npz_with_a_pickled_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    hostile = np.empty(2, dtype=object)
    hostile[:] = [TouchOnUnpickle(marker), TouchOnUnpickle(marker)]
    path = save_eval_npz(tmp_path, timesteps=np.array([1, 2]), results=hostile)
    before = path.read_bytes()
    with pytest.raises(FormatError, match="unreadable evaluations npz") as caught:
        load_evaluations(tmp_path, NPZ)
    assert caught.value.path == str(path)
    assert not marker.exists()
    assert path.read_bytes() == before


def test_truncated_npz_is_a_format_error(tmp_path: Path) -> None:
    path = save_eval_npz(tmp_path, **sb2_arrays())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # what a reader sees mid-rewrite by EvalCallback
    with pytest.raises(FormatError, match="unreadable evaluations npz") as caught:
        load_evaluations(tmp_path, NPZ)
    assert caught.value.path == str(path)


def test_npz_zipfile_cannot_open_is_a_format_error(tmp_path: Path) -> None:
    path = save_eval_npz(tmp_path, **sb2_arrays())
    path.write_bytes(with_version_zipfile_cannot_read(path.read_bytes()))
    with pytest.raises(FormatError, match=r"zip file version 23\.5") as caught:
        load_evaluations(tmp_path, NPZ)
    assert caught.value.path == str(path)


def test_npz_over_the_size_cap_is_refused_before_decompressing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluations_module, "MAX_EVALUATIONS_BYTES", 64 * 1024)
    # ~2 KiB on disk, 800 KiB once inflated: the declared member sizes give it away.
    np.savez_compressed(
        tmp_path / "evaluations", timesteps=np.arange(10), results=np.zeros((10, 10_000))
    )
    assert (tmp_path / "evaluations.npz").stat().st_size < 64 * 1024
    with pytest.raises(FormatError, match="uncompressed, over the 65536-byte limit"):
        load_evaluations(tmp_path, NPZ)
    (tmp_path / "evaluations.npz").write_bytes(b"\0" * (64 * 1024 + 1))
    with pytest.raises(FormatError, match="over the 65536-byte limit"):
        load_evaluations(tmp_path, NPZ)


def test_a_plain_zip_without_arrays_is_a_format_error(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "evaluations.npz", "w") as archive:
        archive.writestr("readme.txt", "not arrays")
    with pytest.raises(FormatError, match="no 'timesteps' array"):
        load_evaluations(tmp_path, NPZ)


def test_symlinked_or_non_regular_sources_are_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.npz"
    np.savez(elsewhere, **sb2_arrays())
    run = tmp_path / "run"
    run.mkdir()
    (run / "evaluations.npz").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="symlink"):
        load_evaluations(run, NPZ)
    (run / "metrics.jsonl").mkdir()
    with pytest.raises(UnsafePathError, match="not a regular file"):
        load_evaluations(run, JSONL)


def test_unsupported_source_suffix_is_a_format_error(tmp_path: Path) -> None:
    (tmp_path / "scores.csv").write_text("step,mean_reward\n1,2\n")
    with pytest.raises(FormatError, match="unsupported evaluations source"):
        load_evaluations(tmp_path, KeepBest(source="scores.csv"))


# An unreadable evaluations file is tested for real, as an unprivileged user, in
# tests/test_permissions.py (as root, which runs this suite, mode 000 stops nothing).


# ---------------------------------------------------------------- metrics.jsonl


def test_jsonl_reads_the_metric_and_skips_other_metrics_lines_quietly(tmp_path: Path) -> None:
    lines = [
        {"step": 1000, "mean_reward": 1.5, "loss": 0.3},
        {"step": 1500, "loss": 0.2},  # another metric's line
        {"step": 2000.0, "mean_reward": 7},  # integral float step, int value
        {"step": 3000, "mean_reward": -2.25},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    series = read_evaluations(tmp_path, JSONL)
    assert series.evaluations == (
        Evaluation(1000, 1.5),
        Evaluation(2000, 7.0),
        Evaluation(3000, -2.25),
    )
    assert series.problems == ()


def test_jsonl_bad_lines_are_reported_with_file_and_line_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(
        b'{"step": 1000, "mean_reward": 1.0}\n'
        b"not json\n"
        b"[1, 2]\n"
        b'{"mean_reward": 3.0}\n'
        b'{"step": true, "mean_reward": 3.0}\n'
        b"\n"
        b'{"step": -5, "mean_reward": 3.0}\n'
        b'{"step": 4000, "mean_reward": NaN}\n'
        b'{"step": 5000, "mean_reward": "high"}\n'
        b'{"step": 6000, "mean_reward": 6.0}\r\n'
        b'{"step": 7000, "mean_reward": \xff}\n'
        b'{"step": 8000, "mean_rew'  # a line still being appended
    )
    with caplog.at_level(logging.WARNING, logger="ckptd.retention.evaluations"):
        evaluations = load_evaluations(tmp_path, JSONL)
    assert evaluations == [Evaluation(1000, 1.0), Evaluation(6000, 6.0)]
    problems = read_evaluations(tmp_path, JSONL).problems
    assert (
        problems[0]
        == f"{path}: line 2: not JSON (Expecting value: line 1 column 1 (char 0)); skipped"
    )
    assert problems[1] == f"{path}: line 3: not a JSON object but list; skipped"
    assert (
        problems[2] == f"{path}: line 4: 'step' must be a non-negative integer, not None; skipped"
    )
    assert (
        problems[3] == f"{path}: line 5: 'step' must be a non-negative integer, not True; skipped"
    )
    assert problems[4] == f"{path}: line 7: 'step' must be a non-negative integer, not -5; skipped"
    assert problems[5] == f"{path}: 9 bad lines in all, skipped"
    assert len(problems) == evaluations_module.MAX_REPORTED_LINES + 1
    assert [record.getMessage() for record in caplog.records] == list(problems)


def test_jsonl_value_problems_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(
        b'{"step": 4000, "mean_reward": NaN}\n'
        b'{"step": 5000, "mean_reward": "high"}\n'
        b'{"step": 7000, "mean_reward": \xff}\n'
    )
    problems = read_evaluations(tmp_path, JSONL).problems
    assert problems[0] == f"{path}: line 1: 'mean_reward' must be a finite number, not nan; skipped"
    assert problems[1] == (
        f"{path}: line 2: 'mean_reward' must be a finite number, not 'high'; skipped"
    )
    assert problems[2].startswith(f"{path}: line 3: not JSON (")


def test_jsonl_without_the_metric_anywhere_says_so(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n')
    series = read_evaluations(tmp_path, JSONL)
    assert series.evaluations == ()
    assert series.problems == (f"{path}: no line has the metric 'mean_reward'",)


def test_jsonl_over_the_size_cap_is_a_format_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluations_module, "MAX_EVALUATIONS_BYTES", 100)
    line = b'{"step": 1, "mean_reward": 1.0}\n'
    (tmp_path / "metrics.jsonl").write_bytes(line * 3)  # 96 bytes: fine
    assert len(load_evaluations(tmp_path, JSONL)) == 3
    (tmp_path / "metrics.jsonl").write_bytes(line * 4)
    with pytest.raises(FormatError, match="over the 100-byte limit"):
        load_evaluations(tmp_path, JSONL)


# ---------------------------------------------------------------- feeding keep_best


def run_with_checkpoints(run: Path) -> list[Candidate]:
    start = datetime(2024, 5, 1, tzinfo=UTC)
    return [
        Candidate(f"rl_model_{step}_steps.zip", step, start + timedelta(hours=i), 100)
        for i, step in enumerate([500, 1000, 2500, 3500])
    ]


@pytest.mark.parametrize("source", ["evaluations.npz", "metrics.jsonl"])
def test_keep_best_ranks_checkpoints_from_either_source(tmp_path: Path, source: str) -> None:
    if source.endswith(".npz"):
        save_eval_npz(tmp_path, **sb2_arrays())
    else:
        rows = [(1000, 2.0), (2000, 20.0), (3000, -1.5)]
        (tmp_path / source).write_text(
            "".join(json.dumps({"step": s, "mean_reward": v}) + "\n" for s, v in rows)
        )
    keep_best = KeepBest(source=source, count=2)
    evaluations = load_evaluations(tmp_path, keep_best)
    policy = Policy(name="best", keep_best=keep_best)
    plan = plan_run(
        run_with_checkpoints(tmp_path),
        policy,
        now=datetime(2024, 6, 1, tzinfo=UTC),
        evaluations=evaluations,
    )
    reasons = {d.path: d.reasons for d in plan.decisions}
    assert reasons == {
        "rl_model_500_steps.zip": ("no rule keeps it",),  # before the first evaluation: unranked
        "rl_model_1000_steps.zip": ("keep_best #2 (mean_reward=2)",),
        "rl_model_2500_steps.zip": ("keep_best #1 (mean_reward=20)",),
        "rl_model_3500_steps.zip": ("newest",),  # its evaluation (3000: -1.5) ranks third
    }
