"""Property tests for ckptd.retention.plan.plan_run: invariants that hold for any run and any policy."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from ckptd.config.model import KeepBest, Policy
from ckptd.retention.plan import OK_STATUS, Candidate, Evaluation, RunPlan, plan_run

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)

BASE = datetime(2024, 10, 1, tzinfo=UTC)
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
GLOBS = ["best_model.zip", "*_7*", "sub/*.zip"]


# A run's checkpoints lie within 30 minutes (equal mtimes happen), two months (many shared
# hours and days, across Berlin's and New York's DST ends) or three years of BASE.
WINDOWS_MINUTES = [30, 60 * 24 * 60, 3 * 365 * 24 * 60]


def mtimes(window_minutes: int) -> st.SearchStrategy[datetime]:
    return st.integers(0, window_minutes).map(lambda minutes: BASE + timedelta(minutes=minutes))


@st.composite
def runs(draw: st.DrawFn) -> list[Candidate]:
    count = draw(st.integers(0, 24))
    with_steps = draw(st.sampled_from(["all", "some", "none"]))
    window = draw(st.sampled_from(WINDOWS_MINUTES))
    max_step = draw(st.sampled_from([3, 50]))  # few distinct steps: equal steps happen
    candidates = []
    for index in range(count):
        has_step = with_steps == "all" or (with_steps == "some" and draw(st.booleans()))
        step = draw(st.integers(0, max_step)) * 1000 if has_step else None
        mtime = draw(mtimes(window))
        if candidates and draw(st.booleans()):
            # A twin of an earlier checkpoint: same step and mtime, only the path differs.
            twin = draw(st.sampled_from(candidates))
            step, mtime = twin.step, twin.mtime
        folder = draw(st.sampled_from(["", "sub/"]))
        name = draw(st.sampled_from(["rl_model", "best_model", "ckpt"]))
        candidates.append(
            Candidate(
                path=f"{folder}{name}_{index}.zip" if index else f"{folder}best_model.zip",
                step=step,
                mtime=mtime,
                size=draw(st.integers(0, 100)),
                complete=draw(st.integers(0, 9)) > 0,
                status=draw(st.sampled_from([OK_STATUS] * 8 + ["unknown", "refused", "broken"])),
                pinned=draw(st.none() | st.none() | st.sampled_from(["", "paper"])),
            )
        )
    return candidates


RULES = {
    "keep_last": st.integers(1, 4),
    "keep_within": st.integers(1, 72).map(lambda hours: timedelta(hours=hours)),
    "keep_hourly": st.integers(-1, 4),
    "keep_daily": st.integers(-1, 4),
    "keep_weekly": st.integers(-1, 3),
    "keep_monthly": st.integers(-1, 3),
    "keep_yearly": st.integers(-1, 2),
    "keep_every_steps": st.integers(1, 20).map(lambda n: n * 1000),
    "keep_best": st.builds(KeepBest, count=st.integers(1, 3), mode=st.sampled_from(["max", "min"])),
}
OFF_VALUES = {name: getattr(Policy(name="off"), name) for name in RULES}


@st.composite
def policies(draw: st.DrawFn, *, budget: bool = True) -> Policy:
    chosen = draw(st.sets(st.sampled_from(sorted(RULES)), max_size=5))
    return Policy(
        name="p",
        **{name: draw(RULES[name]) for name in chosen},
        protect=tuple(draw(st.sets(st.sampled_from(GLOBS)))),
        min_age=timedelta(minutes=draw(st.sampled_from([0, 10, 600]))),
        max_run_size=draw(st.none() | st.integers(0, 600)) if budget else None,
        timezone=draw(st.sampled_from(ZONES)),
    )


evaluation_lists = st.lists(
    st.builds(
        Evaluation,
        step=st.integers(0, 50).map(lambda k: k * 1000 + 500),
        value=st.floats(-100, 100) | st.just(float("nan")),
    ),
    max_size=12,
)
nows = mtimes(WINDOWS_MINUTES[-1])
fractions = st.sampled_from([0.0, 0.3, 0.5, 1.0])


def series_newest(candidates: list[Candidate]) -> str | None:
    """The newest checkpoint of the series, computed straight from the contract."""
    usable = [c for c in candidates if c.complete and c.status == OK_STATUS]
    stepped = [c for c in usable if c.step is not None]
    if stepped:
        return max(stepped, key=lambda c: (c.step, c.mtime, c.path)).path
    return max(usable, key=lambda c: (c.mtime, c.path)).path if usable else None


def actions(result: RunPlan) -> dict[str, str]:
    return {d.path: d.action for d in result.decisions}


def deleted(result: RunPlan) -> set[str]:
    return {d.path for d in result.deletions}


@PROPERTY_SETTINGS
@given(runs(), policies(), evaluation_lists, nows, fractions)
def test_every_candidate_once_with_a_reason_and_skips_untouched(
    candidates: list[Candidate],
    policy: Policy,
    evaluations: list[Evaluation],
    now: datetime,
    max_fraction: float,
) -> None:
    result = plan_run(
        candidates, policy, now=now, evaluations=evaluations, max_fraction=max_fraction
    )
    paths = [d.path for d in result.decisions]
    ordered = sorted(candidates, key=lambda c: (c.step is None, c.step or 0, c.mtime, c.path))
    assert paths == [c.path for c in ordered]
    assert all(d.reasons for d in result.decisions)
    by_path = actions(result)
    for candidate in candidates:
        skipped = not candidate.complete or candidate.status != OK_STATUS
        assert (by_path[candidate.path] == "skip") == skipped


@PROPERTY_SETTINGS
@given(runs(), policies(), evaluation_lists, nows, fractions)
def test_newest_protected_pinned_and_young_are_never_deleted(
    candidates: list[Candidate],
    policy: Policy,
    evaluations: list[Evaluation],
    now: datetime,
    max_fraction: float,
) -> None:
    result = plan_run(
        candidates, policy, now=now, evaluations=evaluations, max_fraction=max_fraction
    )
    gone = deleted(result)
    newest = series_newest(candidates)
    assert newest is None or newest not in gone
    for candidate in candidates:
        young = policy.min_age > timedelta(0) and now - candidate.mtime < policy.min_age
        if candidate.pinned is not None or young:
            assert candidate.path not in gone
        name = candidate.path.rpartition("/")[2]
        if name == "best_model.zip" and "best_model.zip" in policy.protect:
            assert candidate.path not in gone
    if result.guard is not None:
        assert gone == set()
    deletable = sum(1 for c in candidates if c.complete and c.status == OK_STATUS)
    assert len(gone) <= max_fraction * deletable + 1e-9


@PROPERTY_SETTINGS
@given(runs(), policies(), evaluation_lists, nows, fractions, st.randoms(use_true_random=False))
def test_decisions_do_not_depend_on_input_order(
    candidates: list[Candidate],
    policy: Policy,
    evaluations: list[Evaluation],
    now: datetime,
    max_fraction: float,
    rng: random.Random,
) -> None:
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    first = plan_run(
        candidates, policy, now=now, evaluations=evaluations, max_fraction=max_fraction
    )
    second = plan_run(shuffled, policy, now=now, evaluations=evaluations, max_fraction=max_fraction)
    assert first == second


@PROPERTY_SETTINGS
@given(runs(), policies(), evaluation_lists, nows, fractions)
def test_applying_a_plan_and_planning_again_deletes_nothing_more(
    candidates: list[Candidate],
    policy: Policy,
    evaluations: list[Evaluation],
    now: datetime,
    max_fraction: float,
) -> None:
    first = plan_run(
        candidates, policy, now=now, evaluations=evaluations, max_fraction=max_fraction
    )
    remaining = [c for c in candidates if c.path not in deleted(first)]
    second = plan_run(
        remaining, policy, now=now, evaluations=evaluations, max_fraction=max_fraction
    )
    assert second.deletions == ()
    assert second.kept_bytes == first.kept_bytes


@PROPERTY_SETTINGS
@given(runs(), policies(budget=False), st.sampled_from(sorted(RULES)), st.data(), nows)
def test_adding_a_rule_never_deletes_more(
    candidates: list[Candidate],
    policy: Policy,
    rule: str,
    data: st.DataObject,
    now: datetime,
) -> None:
    # Without a budget and without the guard (both trade one deletion for another by design).
    evaluations = data.draw(evaluation_lists)
    without = replace(policy, **{rule: OFF_VALUES[rule]})
    with_rule = replace(policy, **{rule: data.draw(RULES[rule])})
    fewer = plan_run(candidates, without, now=now, evaluations=evaluations)
    more = plan_run(candidates, with_rule, now=now, evaluations=evaluations)
    assert deleted(more) <= deleted(fewer)


@PROPERTY_SETTINGS
@given(runs(), policies(budget=False), nows)
def test_a_budget_only_ever_adds_deletions_and_meets_itself_when_it_can(
    candidates: list[Candidate], policy: Policy, now: datetime
) -> None:
    unlimited = plan_run(candidates, policy, now=now)
    total = sum(c.size for c in candidates)
    budget = total // 2
    limited = plan_run(candidates, replace(policy, max_run_size=budget), now=now)
    assert deleted(unlimited) <= deleted(limited)
    if any(note.startswith("budget:") for note in limited.notes):
        assert deleted(limited) == deleted(unlimited)  # unreachable: nothing evicted
    else:
        assert limited.kept_bytes <= budget


@PROPERTY_SETTINGS
@given(runs(), policies(), evaluation_lists, nows, fractions)
def test_decisions_come_in_report_order(
    candidates: list[Candidate],
    policy: Policy,
    evaluations: list[Evaluation],
    now: datetime,
    max_fraction: float,
) -> None:
    """Step, then mtime, then path; checkpoints without a step last (the plan skips its final
    sort when the series is every checkpoint: this holds either way)."""
    plan = plan_run(candidates, policy, now=now, evaluations=evaluations, max_fraction=max_fraction)
    by_path = {c.path: c for c in candidates}
    keys = [
        (c.step is None, c.step or 0, c.mtime, c.path)
        for c in (by_path[d.path] for d in plan.decisions)
    ]
    assert keys == sorted(keys)
