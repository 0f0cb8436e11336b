"""keep_best from Hugging Face's trainer_state.json, on the real Trainer's checkpoint directories."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ckptd.config.load import parse_config
from ckptd.config.model import Config, KeepBest
from ckptd.errors import ConfigError, FormatError
from ckptd.pipeline.discovery import matcher_for
from ckptd.retention.evaluations import read_evaluations
from ckptd.retention.plan import Candidate, Evaluation, plan_run
from ckptd.retention.prune import prune_run
from ckptd.retention.trainer_metrics import read_trainer_state
from ckptd.runs.roots import RunRef
from tests.trainer_replay import FIXTURES

EVAL_LOSS = KeepBest(metric="eval_loss", source="trainer_state.json", count=1, mode="min")


def _config(root: Path, keep_best: dict[str, object] | None = None) -> Config:
    return parse_config(
        {
            "roots": [{"path": str(root), "run_depth": 1}],
            "checkpoints": {
                "patterns": ["*.pt", "*.safetensors"],
                "directories": ["checkpoint-*"],
                "step_pattern": r"-(\d+)",
                "stable_for": "0s",
            },
            "policies": {
                "default": {
                    "keep_last": 1,
                    "keep_best": keep_best
                    or {"metric": "eval_loss", "source": "trainer_state.json", "mode": "min"},
                    "min_age": "0s",
                    "protect": [],
                }
            },
            "delete": {"max_fraction": 1.0},
        }
    )


def _hf_run(root: Path, *names: str) -> Path:
    run = root / "run"
    for name in names:
        shutil.copytree(FIXTURES / "hf" / name, run / name)
    return run


def _fixture_evals(name: str) -> list[Evaluation]:
    """eval_loss entries of the fixture's own trainer_state.json, as the Trainer logged them."""
    state = json.loads((FIXTURES / "hf" / name / "trainer_state.json").read_text())
    return [
        Evaluation(entry["step"], entry["eval_loss"])
        for entry in state["log_history"]
        if "eval_loss" in entry
    ]


def test_the_newest_checkpoints_state_gives_every_evaluation(tmp_path: Path) -> None:
    run = _hf_run(tmp_path, "checkpoint-2", "checkpoint-4", "checkpoint-6")
    matcher = matcher_for(_config(tmp_path))
    series = read_evaluations(run, EVAL_LOSS, matcher)
    assert series.problems == ()
    assert list(series.evaluations) == _fixture_evals("checkpoint-6")
    assert [e.step for e in series.evaluations] == [2, 4, 6]
    # checkpoint-4's own file has only the evaluations up to step 4.
    assert _fixture_evals("checkpoint-4") == list(series.evaluations[:2])


def test_keep_best_ranks_the_trainers_checkpoints_by_eval_loss(tmp_path: Path) -> None:
    run = _hf_run(tmp_path, "checkpoint-2", "checkpoint-4", "checkpoint-6")
    evaluations = list(read_evaluations(run, EVAL_LOSS, matcher_for(_config(tmp_path))).evaluations)
    when = datetime(2026, 12, 1, tzinfo=UTC)
    candidates = [Candidate(f"checkpoint-{step}/", step, when, 1) for step in (2, 4, 6)]
    best = min(evaluations, key=lambda e: e.value)
    for mode, count in (("min", 2), ("max", 1)):
        policy = _config(tmp_path, {"metric": "eval_loss", "mode": mode, "count": count,
                                    "source": "trainer_state.json"}).policies["default"]  # fmt: skip
        plan = plan_run(candidates, policy, now=when, evaluations=evaluations)
        ranked = sorted(evaluations, key=lambda e: e.value, reverse=mode == "max")[:count]
        kept_by_best = {
            d.path: r for d in plan.decisions for r in d.reasons if r.startswith("keep_best")
        }
        assert set(kept_by_best) == {f"checkpoint-{e.step}/" for e in ranked}
        if mode == "min":
            assert kept_by_best[f"checkpoint-{best.step}/"] == (
                f"keep_best #1 (eval_loss={best.value:.10g})"
            )


def test_a_state_being_written_falls_back_to_the_one_before(tmp_path: Path) -> None:
    run = _hf_run(tmp_path, "checkpoint-2", "checkpoint-4")
    shutil.copytree(FIXTURES / "hf" / "checkpoint-6", run / "checkpoint-6")
    state = run / "checkpoint-6" / "trainer_state.json"
    state.write_bytes(state.read_bytes()[:200])  # the Trainer writes it in place
    (run / "checkpoint-8").mkdir()  # and a save just begun: no state at all yet
    series = read_evaluations(run, EVAL_LOSS, matcher_for(_config(tmp_path)))
    assert list(series.evaluations) == _fixture_evals("checkpoint-4")
    assert series.problems == (f"{state}: does not parse (being written?); using an older one",)


def test_without_checkpoint_directories_the_runs_own_state_is_read(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(
        FIXTURES / "hf" / "checkpoint-6" / "trainer_state.json", run / "trainer_state.json"
    )
    series = read_evaluations(run, EVAL_LOSS, matcher_for(_config(tmp_path)))
    assert list(series.evaluations) == _fixture_evals("checkpoint-6")
    assert read_evaluations(tmp_path / "empty", EVAL_LOSS, None).evaluations == ()


def test_a_source_in_a_subdirectory_looks_beside_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "hf" / "checkpoint-4", run / "out" / "checkpoint-4")
    shutil.copytree(FIXTURES / "hf" / "checkpoint-6", run / "checkpoint-6")  # not beside out/...
    keep_best = KeepBest(metric="eval_loss", source="out/trainer_state.json", mode="min")
    series = read_evaluations(run, keep_best, matcher_for(_config(tmp_path)))
    assert list(series.evaluations) == _fixture_evals("checkpoint-4")


def test_a_missing_metric_is_one_problem_line(tmp_path: Path) -> None:
    run = _hf_run(tmp_path, "checkpoint-6")
    keep_best = KeepBest(metric="eval_accuracy", source="trainer_state.json")
    series = read_evaluations(run, keep_best, matcher_for(_config(tmp_path)))
    assert series.evaluations == ()
    assert series.problems == (
        f"{run / 'checkpoint-6' / 'trainer_state.json'}: no log_history entry has the metric "
        "'eval_accuracy'",
    )


def test_bad_states_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    run = _hf_run(tmp_path, "checkpoint-6")
    state = run / "checkpoint-6" / "trainer_state.json"
    before = state.read_bytes()
    matcher = matcher_for(_config(tmp_path))
    with pytest.raises(FormatError) as caught:
        read_trainer_state(run, EVAL_LOSS, matcher, limit=1000)  # over the size limit
    assert str(caught.value) == f"{state}: cannot read evaluations: is larger than 1000 bytes"
    state.write_text(json.dumps({"global_step": 6}))
    with pytest.raises(FormatError) as caught:
        read_evaluations(run, EVAL_LOSS, matcher)
    assert str(caught.value) == f"{state}: not a trainer state (no log_history list)"
    state.unlink()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(before)
    state.symlink_to(elsewhere)
    with pytest.raises(FormatError) as caught:
        read_evaluations(run, EVAL_LOSS, matcher)
    assert str(caught.value).startswith(f"{state}: cannot read evaluations: is a symlink")
    assert "\n" not in str(caught.value)
    assert elsewhere.read_bytes() == before


def test_a_symlinked_checkpoint_directory_is_not_read(tmp_path: Path) -> None:
    run = _hf_run(tmp_path, "checkpoint-4")
    shutil.copytree(FIXTURES / "hf" / "checkpoint-6", tmp_path / "elsewhere")
    (run / "checkpoint-6").symlink_to(tmp_path / "elsewhere")
    series = read_evaluations(run, EVAL_LOSS, matcher_for(_config(tmp_path)))
    assert list(series.evaluations) == _fixture_evals("checkpoint-4")


def test_prune_ranks_by_the_runs_trainer_state(tmp_path: Path) -> None:
    """A run of plain files (``model-<step>.pt``) whose evaluations the Trainer logged."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (2, 4, 6):
        shutil.copyfile(FIXTURES / "torch" / "state_dict.pt", run / f"model-{step}.pt")
    state = FIXTURES / "hf" / "checkpoint-6" / "trainer_state.json"
    shutil.copyfile(state, run / "trainer_state.json")
    config = _config(
        tmp_path,
        {"metric": "eval_loss", "source": "trainer_state.json", "mode": "min", "count": 2},
    )
    report = prune_run(
        config, config.roots[0], RunRef(tmp_path, run, "run"), now=datetime.now(UTC), dry_run=True
    )
    assert report.error is None
    first, second, third = sorted(_fixture_evals("checkpoint-6"), key=lambda e: e.value)
    reasons = {d.path: d.reasons for d in report.decisions}
    assert f"keep_best #1 (eval_loss={first.value:.10g})" in reasons[f"model-{first.step}.pt"]
    assert f"keep_best #2 (eval_loss={second.value:.10g})" in reasons[f"model-{second.step}.pt"]
    assert reasons[f"model-{third.step}.pt"] == ("no rule keeps it",)


@pytest.mark.parametrize("source", ["trainer_state.json", "out/trainer_state.json"])
def test_config_accepts_trainer_state_sources(tmp_path: Path, source: str) -> None:
    config = _config(tmp_path, {"metric": "eval_loss", "source": source, "mode": "min"})
    keep_best = config.policies["default"].keep_best
    assert keep_best is not None and keep_best.source == source


def test_config_still_refuses_other_sources(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        _config(tmp_path, {"metric": "eval_loss", "source": "trainer_state.yaml"})
