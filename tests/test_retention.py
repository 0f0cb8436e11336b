"""Table-driven tests of retention.plan_run on literal UTC datetimes (README, "Configuration")."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ckptd.config.model import KeepBest, Policy
from ckptd.retention.plan import Candidate, Decision, Evaluation, RunPlan, plan_run

NOW = datetime(2030, 1, 1, tzinfo=UTC)  # far after every checkpoint: min_age never interferes
OFF = Policy(name="test")


def utc(text: str) -> datetime:
    """``"2024-10-27T00:30"`` -> an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ck(
    path: str,
    step: int | None,
    when: str,
    size: int = 10,
    *,
    complete: bool = True,
    status: str = "ok",
    pinned: str | None = None,
) -> Candidate:
    return Candidate(path, step, utc(when), size, complete, status, pinned)


def plan(
    candidates: list[Candidate],
    policy: Policy = OFF,
    *,
    now: datetime = NOW,
    evaluations: list[Evaluation] | None = None,
    max_fraction: float = 1.0,
) -> RunPlan:
    result = plan_run(
        candidates, policy, now=now, evaluations=evaluations, max_fraction=max_fraction
    )
    assert sorted(d.path for d in result.decisions) == sorted(c.path for c in candidates)
    assert [d.path for d in result.decisions] == report_order(candidates)
    assert all(d.reasons for d in result.decisions)
    return result


def report_order(candidates: list[Candidate]) -> list[str]:
    """Step, then mtime, then path; checkpoints without a step last (not by name: 10000 < 100000)."""
    ordered = sorted(candidates, key=lambda c: (c.step is None, c.step or 0, c.mtime, c.path))
    return [c.path for c in ordered]


def test_decisions_come_in_step_order_not_name_order() -> None:
    candidates = [
        ck("rl_model_100000_steps.zip", 100000, "2024-01-05T00:00"),
        ck("rl_model_10000_steps.zip", 10000, "2024-01-02T00:00"),
        ck("best_model.zip", None, "2024-01-01T00:00"),
        ck("rl_model_20000_steps.zip", 20000, "2024-01-03T00:00"),
        ck("rl_model_20000_steps.pkl", 20000, "2024-01-02T12:00", complete=False),
    ]
    result = plan_run(candidates, Policy(name="t", keep_last=1), now=NOW)
    assert [d.path for d in result.decisions] == [
        "rl_model_10000_steps.zip",
        "rl_model_20000_steps.pkl",
        "rl_model_20000_steps.zip",
        "rl_model_100000_steps.zip",
        "best_model.zip",
    ]


def by_path(result: RunPlan) -> dict[str, Decision]:
    return {d.path: d for d in result.decisions}


def kept(result: RunPlan) -> set[str]:
    return {d.path for d in result.decisions if d.action == "keep"}


def reasons(result: RunPlan) -> dict[str, tuple[str, ...]]:
    return {d.path: d.reasons for d in result.decisions}


def stepped(times: list[str]) -> list[Candidate]:
    """Checkpoints ``s1``, ``s2``... with steps 1, 2... at the given times (oldest first)."""
    return [ck(f"s{i}", i, when) for i, when in enumerate(times, start=1)]


# ---------------------------------------------------------------- time and count rules

FIVE_HOURLY = [f"2024-03-01T{hour:02d}:00" for hour in range(1, 6)]
TWO_PER_DAY = [
    "2024-03-01T08:00",
    "2024-03-01T20:00",
    "2024-03-02T08:00",
    "2024-03-02T20:00",
    "2024-03-03T08:00",
    "2024-03-03T20:00",
]

TIME_RULE_CASES = [
    pytest.param(
        FIVE_HOURLY,
        Policy(name="t", keep_last=2),
        {"s5": ("keep_last #1", "newest"), "s4": ("keep_last #2",)},
        id="keep_last",
    ),
    pytest.param(
        TWO_PER_DAY,
        Policy(name="t", keep_daily=2),
        {"s6": ("keep_daily #1", "newest"), "s4": ("keep_daily #2",)},
        id="keep_daily newest of each day",
    ),
    pytest.param(
        TWO_PER_DAY,
        Policy(name="t", keep_daily=5),
        {
            "s6": ("keep_daily #1", "newest"),
            "s4": ("keep_daily #2",),
            "s2": ("keep_daily #3",),
            "s1": ("keep_daily[oldest] #4",),
        },
        id="keep_daily short of N keeps the oldest",
    ),
    pytest.param(
        TWO_PER_DAY,
        Policy(name="t", keep_last=1, keep_daily=2),
        {
            "s6": ("keep_last #1", "newest"),
            "s4": ("keep_daily #1",),  # day 3 was used up by s6 without counting
            "s2": ("keep_daily #2",),
        },
        id="already kept uses up its period but does not count",
    ),
    pytest.param(
        TWO_PER_DAY,
        Policy(name="t", keep_last=2, keep_daily=1),
        {"s6": ("keep_last #1", "newest"), "s5": ("keep_last #2",), "s4": ("keep_daily #1",)},
        id="a period used up by an already kept checkpoint is skipped, not recounted",
    ),
    pytest.param(
        TWO_PER_DAY,
        Policy(name="t", keep_daily=-1),
        {
            "s6": ("keep_daily #1", "newest"),
            "s4": ("keep_daily #2",),
            "s2": ("keep_daily #3",),
        },
        id="negative count is unlimited and never adds [oldest]",
    ),
    pytest.param(
        ["2024-03-01T10:05", "2024-03-01T10:55", "2024-03-01T11:10", "2024-03-01T12:59"],
        Policy(name="t", keep_hourly=2),
        {"s4": ("keep_hourly #1", "newest"), "s3": ("keep_hourly #2",)},
        id="keep_hourly",
    ),
    pytest.param(
        # 2019-12-29 is a Sunday (ISO 2019-W52); Dec 30 and 31 are in ISO week 2020-W01.
        ["2019-12-29T12:00", "2019-12-30T12:00", "2019-12-31T12:00"],
        Policy(name="t", keep_weekly=2),
        {"s3": ("keep_weekly #1", "newest"), "s1": ("keep_weekly #2",)},
        id="ISO week crosses the calendar year",
    ),
    pytest.param(
        # 2020-12-31 (Thu) and 2021-01-03 (Sun) are both ISO 2020-W53; 2021-01-04 starts W01.
        ["2020-12-31T12:00", "2021-01-03T23:59", "2021-01-04T00:00"],
        Policy(name="t", keep_weekly=2),
        {"s3": ("keep_weekly #1", "newest"), "s2": ("keep_weekly #2",)},
        id="ISO week 53 and the Monday boundary",
    ),
    pytest.param(
        ["2024-01-31T10:00", "2024-01-31T23:59", "2024-02-01T00:00", "2024-02-29T12:00"],
        Policy(name="t", keep_monthly=3),
        {
            "s4": ("keep_monthly #1", "newest"),
            "s2": ("keep_monthly #2",),
            "s1": ("keep_monthly[oldest] #3",),
        },
        id="keep_monthly at a month edge",
    ),
    pytest.param(
        ["2022-06-01T00:00", "2023-12-31T23:59", "2024-01-01T00:00", "2024-05-01T00:00"],
        Policy(name="t", keep_yearly=2),
        {"s4": ("keep_yearly #1", "newest"), "s2": ("keep_yearly #2",)},
        id="keep_yearly at a year edge",
    ),
    pytest.param(
        TWO_PER_DAY,
        Policy(name="t", keep_daily=1, keep_weekly=1, keep_monthly=1, keep_yearly=1),
        {
            "s6": ("keep_daily #1", "newest"),
            # Every coarser rule finds its only period used up by s6 and ends short: [oldest].
            "s1": ("keep_weekly[oldest] #1",),
        },
        id="coarser rules each end short; the first to reach the oldest claims it",
    ),
]


@pytest.mark.parametrize(("times", "policy", "expected"), TIME_RULE_CASES)
def test_time_and_count_rules(
    times: list[str], policy: Policy, expected: dict[str, tuple[str, ...]]
) -> None:
    result = plan(stepped(times), policy)
    assert {path: r for path, r in reasons(result).items() if path in kept(result)} == expected
    for decision in result.decisions:
        if decision.path not in expected:
            assert decision == Decision(decision.path, "delete", ("no rule keeps it",))


def test_keep_within_counts_back_from_the_newest_checkpoint_not_from_now() -> None:
    days = [f"2024-01-0{day}T00:00" for day in range(1, 6)]
    # 36h back from Jan 5 00:00 is Jan 3 12:00: Jan 4 and Jan 5 are within, however late "now" is.
    for now in (utc("2024-01-05T01:00"), utc("2029-06-01T00:00")):
        result = plan(stepped(days), Policy(name="t", keep_within=timedelta(hours=36)), now=now)
        assert kept(result) == {"s4", "s5"}
        assert reasons(result)["s4"] == ("keep_within",)
        assert reasons(result)["s5"] == ("keep_within", "newest")


def test_keep_within_is_strictly_newer_than_the_cutoff() -> None:
    days = [f"2024-01-0{day}T00:00" for day in range(1, 6)]
    result = plan(stepped(days), Policy(name="t", keep_within=timedelta(hours=48)))
    assert kept(result) == {"s4", "s5"}  # s3 sits exactly on the cutoff


def test_keep_within_reference_is_the_latest_mtime_even_if_not_the_highest_step() -> None:
    candidates = [ck("s1", 1, "2024-01-01T00:00"), ck("s2", 2, "2024-01-10T00:00")]
    candidates.append(ck("s3", 3, "2024-01-09T00:00"))  # highest step, older mtime
    result = plan(candidates, Policy(name="t", keep_within=timedelta(days=2)))
    assert reasons(result) == {
        "s1": ("no rule keeps it",),
        "s2": ("keep_within",),
        "s3": ("keep_within", "newest"),
    }


def test_keep_within_excludes_later_rules_from_counting_it() -> None:
    times = [f"2024-01-01T{hour:02d}:00" for hour in range(1, 7)]
    policy = Policy(name="t", keep_within=timedelta(hours=2, minutes=30), keep_last=2)
    result = plan(stepped(times), policy)
    assert reasons(result)["s6"] == ("keep_within", "newest")
    assert reasons(result)["s4"] == ("keep_within",)
    assert reasons(result)["s3"] == ("keep_last #1",)
    assert reasons(result)["s2"] == ("keep_last #2",)
    assert by_path(result)["s1"].action == "delete"


def test_series_walks_by_step_even_when_mtimes_disagree() -> None:
    # The highest step is newest, whatever its mtime (a resumed run restored old timestamps).
    candidates = [ck("a", 100, "2024-01-03T00:00"), ck("b", 200, "2024-01-01T00:00")]
    result = plan(candidates, Policy(name="t", keep_last=1))
    assert reasons(result) == {"a": ("no rule keeps it",), "b": ("keep_last #1", "newest")}


def test_equal_steps_are_ordered_by_mtime() -> None:
    candidates = [ck("late", 5, "2024-01-02T00:00"), ck("early", 5, "2024-01-01T00:00")]
    result = plan(candidates, Policy(name="t", keep_last=1))
    assert kept(result) == {"late"}


def test_equal_steps_and_mtimes_are_ordered_by_path_whatever_the_input_order() -> None:
    candidates = [ck(name, 5, "2024-01-01T00:00") for name in ("b", "c", "a")]
    for ordering in (candidates, candidates[::-1]):
        assert reasons(plan(ordering, Policy(name="t", keep_last=1))) == {
            "a": ("no rule keeps it",),
            "b": ("no rule keeps it",),
            "c": ("keep_last #1", "newest"),
        }


# ---------------------------------------------------------------- time zones and DST


ZONE_CASES = [
    pytest.param(
        # Berlin leaves CEST at 01:00Z on 2024-10-27: local 02:xx happens twice. The offset is
        # part of the hourly period, so those are two hours, as they are two real hours.
        ["2024-10-27T00:10", "2024-10-27T00:40", "2024-10-27T01:10", "2024-10-27T01:40"],
        Policy(name="t", keep_hourly=2, timezone="Europe/Berlin"),
        {"s4", "s2"},
        id="Berlin fall-back: the repeated hour is two hourly periods",
    ),
    pytest.param(
        # Local Oct 27 in Berlin runs 2024-10-26T22:00Z .. 2024-10-27T23:00Z (25 hours).
        ["2024-10-26T21:30", "2024-10-26T22:30", "2024-10-27T22:30"],
        Policy(name="t", keep_daily=3, timezone="Europe/Berlin"),
        {"s3", "s1"},
        id="Berlin 25-hour day is one daily period",
    ),
    pytest.param(
        ["2024-10-26T21:30", "2024-10-26T22:30", "2024-10-27T22:30"],
        Policy(name="t", keep_daily=3, timezone="UTC"),
        {"s3", "s2", "s1"},
        id="the same checkpoints in UTC are three days",
    ),
    pytest.param(
        # New York skips 02:00-03:00 EST on 2024-03-10 (07:00Z): 06:30Z and 07:30Z are
        # 01:30 EST and 03:30 EDT, consecutive real hours.
        ["2024-03-10T06:10", "2024-03-10T06:30", "2024-03-10T07:30"],
        Policy(name="t", keep_hourly=2, timezone="America/New_York"),
        {"s3", "s2"},
        id="New York spring-forward hours",
    ),
    pytest.param(
        # Local Mar 10 in New York (23 hours) runs 05:00Z .. next day 04:00Z.
        ["2024-03-10T04:30", "2024-03-10T05:30", "2024-03-11T03:30", "2024-03-11T04:30"],
        Policy(name="t", keep_daily=10, timezone="America/New_York"),
        {"s4", "s3", "s1"},
        id="New York 23-hour day",
    ),
    pytest.param(
        # 2024-01-31T23:30Z is Feb 1 00:30 in Berlin.
        ["2024-01-31T22:00", "2024-01-31T23:30", "2024-02-10T00:00"],
        Policy(name="t", keep_monthly=2, timezone="Europe/Berlin"),
        {"s3", "s1"},
        id="Berlin month edge",
    ),
    pytest.param(
        ["2024-01-31T22:00", "2024-01-31T23:30", "2024-02-10T00:00"],
        Policy(name="t", keep_monthly=2),
        {"s3", "s2"},
        id="UTC month edge for the same checkpoints",
    ),
    pytest.param(
        # 2024-01-01T03:00Z is still 2023-12-31 22:00 in New York.
        ["2023-12-31T12:00", "2024-01-01T03:00", "2024-06-01T00:00"],
        Policy(name="t", keep_yearly=2, timezone="America/New_York"),
        {"s3", "s2"},
        id="New York year edge",
    ),
    pytest.param(
        ["2023-12-31T12:00", "2024-01-01T03:00", "2024-06-01T00:00"],
        Policy(name="t", keep_yearly=2),
        {"s3", "s1"},
        id="UTC year edge for the same checkpoints",
    ),
    pytest.param(
        # 2024-03-31 is a Sunday (and Berlin's spring-forward day): 21:30Z is Sunday 23:30 CEST
        # (ISO W13), 22:30Z is Monday 00:30 CEST (W14). In UTC all three are on the Sunday.
        ["2024-03-31T21:00", "2024-03-31T21:30", "2024-03-31T22:30"],
        Policy(name="t", keep_weekly=2, timezone="Europe/Berlin"),
        {"s3", "s2"},
        id="Berlin ISO week edge",
    ),
]


@pytest.mark.parametrize(("times", "policy", "expected_kept"), ZONE_CASES)
def test_periods_in_the_policy_timezone(
    times: list[str], policy: Policy, expected_kept: set[str]
) -> None:
    assert kept(plan(stepped(times), policy)) == expected_kept


# ---------------------------------------------------------------- step and metric rules


def test_keep_every_steps_keeps_the_first_checkpoint_at_or_after_each_multiple() -> None:
    steps = [1000, 3000, 5000, 9000, 10000, 21000, 25000, 26000]
    candidates = [
        ck(f"c{step:06d}", step, f"2024-01-01T00:{i:02d}") for i, step in enumerate(steps)
    ]
    result = plan(candidates, Policy(name="t", keep_every_steps=5000))
    assert {p: r for p, r in reasons(result).items() if p in kept(result)} == {
        "c001000": ("keep_every_steps #1",),  # k=0: the first checkpoint, though not at 0
        "c005000": ("keep_every_steps #2",),
        "c010000": ("keep_every_steps #3",),
        "c021000": ("keep_every_steps #4",),  # first at or after both 15000 and 20000
        "c025000": ("keep_every_steps #5",),
        "c026000": ("newest",),
    }


def test_keep_every_steps_is_independent_of_the_time_rules() -> None:
    result = plan(stepped(FIVE_HOURLY), Policy(name="t", keep_last=1, keep_every_steps=2))
    assert reasons(result)["s5"] == ("keep_last #1", "newest")
    assert reasons(result)["s4"] == ("keep_every_steps #3",)
    assert reasons(result)["s1"] == ("keep_every_steps #1",)


def best_candidates() -> list[Candidate]:
    steps = [5000, 15000, 20000, 35000]
    return [ck(f"c{step:05d}", step, f"2024-01-01T0{i}:00") for i, step in enumerate(steps)]


EVALUATIONS = [
    Evaluation(10000, 50.0),
    Evaluation(20000, 30.0),
    Evaluation(30000, 70.0),
    Evaluation(40000, 99.0),  # after every checkpoint: never used
]


@pytest.mark.parametrize(
    ("mode", "count", "expected"),
    [
        pytest.param(
            "max",
            2,
            {
                "c35000": "keep_best #1 (mean_reward=70)",
                "c15000": "keep_best #2 (mean_reward=50)",
            },
            id="max",
        ),
        pytest.param(
            "min",
            2,
            {
                "c20000": "keep_best #1 (mean_reward=30)",
                "c15000": "keep_best #2 (mean_reward=50)",
            },
            id="min",
        ),
        pytest.param(
            "max",
            10,
            {
                "c35000": "keep_best #1 (mean_reward=70)",
                "c15000": "keep_best #2 (mean_reward=50)",
                "c20000": "keep_best #3 (mean_reward=30)",
            },
            id="c05000 has no evaluation at or before it: unranked",
        ),
    ],
)
def test_keep_best(mode: str, count: int, expected: dict[str, str]) -> None:
    policy = Policy(name="t", keep_best=KeepBest(count=count, mode=mode))  # type: ignore[arg-type]
    result = plan(best_candidates(), policy, evaluations=EVALUATIONS)
    best = {
        d.path: next(r for r in d.reasons if r.startswith("keep_best"))
        for d in result.decisions
        if any(r.startswith("keep_best") for r in d.reasons)
    }
    assert best == expected
    assert by_path(result)["c05000"].action == "delete"


def test_keep_best_formats_the_metric_value_and_names_the_metric() -> None:
    candidates = [ck("a", 1000, "2024-01-01T00:00"), ck("b", 2000, "2024-01-01T01:00")]
    evaluations = [Evaluation(1000, 212.39999999999998), Evaluation(2000, -3.5)]
    policy = Policy(name="t", keep_best=KeepBest(metric="mean_ep_length", count=1))
    assert reasons(plan(candidates, policy, evaluations=evaluations))["a"] == (
        "keep_best #1 (mean_ep_length=212.4)",
    )


def test_keep_best_nan_is_unranked_and_ties_go_to_the_newer_checkpoint() -> None:
    candidates = [ck(f"c{i}", i * 10, f"2024-01-01T0{i}:00") for i in range(1, 5)]
    evaluations = [
        Evaluation(10, 5.0),
        Evaluation(20, float("nan")),
        Evaluation(30, 5.0),
        Evaluation(40, 1.0),
    ]
    policy = Policy(name="t", keep_best=KeepBest(count=2))
    result = plan(candidates, policy, evaluations=evaluations)
    assert reasons(result)["c3"] == ("keep_best #1 (mean_reward=5)",)
    assert reasons(result)["c1"] == ("keep_best #2 (mean_reward=5)",)
    assert by_path(result)["c2"].action == "delete"


def test_keep_best_without_evaluations_ranks_nothing_and_says_so() -> None:
    policy = Policy(name="t", keep_last=1, keep_best=KeepBest(count=2))
    result = plan(best_candidates(), policy, evaluations=None)
    assert kept(result) == {"c35000"}
    assert result.notes == ("keep_best: no mean_reward evaluations yet; none ranked",)


def test_keep_best_in_a_series_without_steps_ranks_nothing_and_says_so() -> None:
    candidates = [ck("a.zip", None, "2024-01-01T00:00"), ck("b.zip", None, "2024-01-02T00:00")]
    policy = Policy(name="t", keep_best=KeepBest(), keep_every_steps=10)
    result = plan(candidates, policy, evaluations=[Evaluation(0, 1.0)])
    assert kept(result) == {"b.zip"}
    assert len(result.notes) == 2


def test_a_checkpoint_lists_every_rule_that_keeps_it_in_order() -> None:
    candidates = stepped(FIVE_HOURLY)
    policy = Policy(
        name="t",
        keep_last=1,
        keep_every_steps=1,
        keep_best=KeepBest(count=1),
        protect=("s5", "s*"),
        min_age=timedelta(hours=1),
    )
    result = plan(
        candidates,
        policy,
        now=utc("2024-03-01T05:30"),
        evaluations=[Evaluation(5, 9.0)],
    )
    assert reasons(result)["s5"] == (
        "keep_last #1",
        "keep_every_steps #5",
        "keep_best #1 (mean_reward=9)",
        "newest",
        "protect: s5",
        "protect: s*",
        "min_age",
    )


# ---------------------------------------------------------------- overrides, skips, no step


def test_overrides_keep_what_no_rule_keeps_without_changing_the_counts() -> None:
    candidates = [
        ck("s1", 1, "2024-01-01T00:00", pinned="paper figure 3"),
        ck("s2", 2, "2024-01-02T00:00"),
        ck("sub/best_model.zip", 3, "2024-01-03T00:00"),
        ck("checkpoints/keep_me.zip", 4, "2024-01-04T00:00"),
        ck("s5", 5, "2024-01-05T00:00"),
        ck("s6", 6, "2024-01-06T00:00", pinned=""),
        ck("s7", 7, "2024-01-07T00:00"),
        ck("s8", 8, "2024-01-07T23:55"),
    ]
    policy = Policy(
        name="t",
        keep_last=2,
        protect=("best_model.zip", "checkpoints/*.zip", "nothing/*.zip"),
        min_age=timedelta(minutes=10),
    )
    result = plan(candidates, policy, now=utc("2024-01-08T00:00"))
    assert reasons(result) == {
        "s1": ("pinned: paper figure 3",),
        "s2": ("no rule keeps it",),
        "sub/best_model.zip": ("protect: best_model.zip",),
        "checkpoints/keep_me.zip": ("protect: checkpoints/*.zip",),
        "s5": ("no rule keeps it",),
        "s6": ("pinned",),
        "s7": ("keep_last #2",),  # the overrides did not use up keep_last's count
        "s8": ("keep_last #1", "newest", "min_age"),
    }


def test_min_age_keeps_young_checkpoints_including_future_mtimes() -> None:
    candidates = [
        ck("s1", 1, "2024-01-01T00:00"),
        ck("s2", 2, "2024-01-01T11:50"),
        ck("s3", 3, "2024-01-01T11:55"),
        ck("s4", 4, "2024-01-01T13:00"),  # clock skew: written "in the future"
        ck("s5", 5, "2024-01-01T11:40"),
    ]
    policy = Policy(name="t", keep_last=1, min_age=timedelta(minutes=10))
    result = plan(candidates, policy, now=utc("2024-01-01T12:00"))
    assert reasons(result) == {
        "s1": ("no rule keeps it",),
        "s2": ("no rule keeps it",),  # exactly min_age old: not younger
        "s3": ("min_age",),
        "s4": ("min_age",),
        "s5": ("keep_last #1", "newest"),
    }


def test_skips_are_never_judged_nor_counted() -> None:
    candidates = [
        *stepped(FIVE_HOURLY[:3]),
        ck("writing", 9, "2024-03-01T09:00", complete=False),
        ck("broken-and-writing", 8, "2024-03-01T09:00", complete=False, status="broken"),
        ck("evil.pkl", 7, "2024-03-01T09:00", status="refused"),
        ck("what.zip", 6, "2024-03-01T09:00", status="unknown", pinned="x"),
    ]
    result = plan(candidates, Policy(name="t", keep_last=1))
    assert reasons(result) == {
        "s1": ("no rule keeps it",),
        "s2": ("no rule keeps it",),
        "s3": ("keep_last #1", "newest"),
        "writing": ("skip: incomplete",),
        "broken-and-writing": ("skip: incomplete",),
        "evil.pkl": ("skip: refused",),
        "what.zip": ("skip: unknown",),
    }
    assert {d.action for d in result.decisions if d.path[0] not in "s"} == {"skip"}


def test_checkpoints_without_a_step_next_to_stepped_ones_are_kept_outside_the_series() -> None:
    candidates = [
        *stepped(FIVE_HOURLY),
        ck("best_model.zip", None, "2024-03-02T00:00"),  # newest by mtime, but not in the series
        ck("final.zip", None, "2024-03-01T00:00"),
    ]
    policy = Policy(name="t", keep_last=1, protect=("best_model.zip",))
    result = plan(candidates, policy)
    assert reasons(result)["best_model.zip"] == ("no step", "protect: best_model.zip")
    assert reasons(result)["final.zip"] == ("no step",)
    assert reasons(result)["s5"] == ("keep_last #1", "newest")
    assert kept(result) == {"best_model.zip", "final.zip", "s5"}


def test_without_any_step_the_series_is_everything_ordered_by_mtime() -> None:
    candidates = [
        ck("zeta.zip", None, "2024-01-01T00:00"),
        ck("alpha.zip", None, "2024-01-03T00:00"),
        ck("mid.zip", None, "2024-01-02T00:00"),
    ]
    result = plan(candidates, Policy(name="t", keep_last=2))
    assert reasons(result) == {
        "alpha.zip": ("keep_last #1", "newest"),
        "mid.zip": ("keep_last #2",),
        "zeta.zip": ("no rule keeps it",),
    }


def test_an_empty_run_plans_nothing() -> None:
    assert plan([], Policy(name="t", keep_last=1)) == RunPlan((), None, (), 0)


def test_naive_datetimes_and_duplicate_paths_are_refused() -> None:
    naive = Candidate("a", 1, datetime(2024, 1, 1), 1)
    with pytest.raises(ValueError, match="a: mtime must be an aware"):
        plan_run([naive], OFF, now=NOW)
    with pytest.raises(ValueError, match="now must be an aware"):
        plan_run([], OFF, now=datetime(2024, 1, 1))
    twice = [ck("a", 1, "2024-01-01T00:00"), ck("b", 2, "2024-01-01T00:00")]
    twice.append(ck("a", 3, "2024-01-01T00:00"))
    with pytest.raises(ValueError, match="a: listed twice"):
        plan_run(twice, OFF, now=NOW)


# ---------------------------------------------------------------- size budget


def budget_run() -> tuple[list[Candidate], Policy, list[Evaluation]]:
    """Eight 10-byte checkpoints, one day apart, each rule tier represented.

    keep_within 30h: s8 (newest), s7 | keep_last 2: s6, s5 | keep_daily 2: s4, s3 |
    keep_every_steps 100: s1 | keep_best 1: s2.
    """
    candidates = stepped([f"2024-01-0{day}T12:00" for day in range(1, 9)])
    policy = Policy(
        name="t",
        keep_within=timedelta(hours=30),
        keep_last=2,
        keep_daily=2,
        keep_every_steps=100,
        keep_best=KeepBest(count=1),
    )
    evaluations = [Evaluation(step, 1.0) for step in range(1, 9)] + [Evaluation(2, 5.0)]
    return candidates, policy, evaluations


@pytest.mark.parametrize(
    ("budget", "evicted"),
    [
        (80, []),
        (79, ["s3"]),  # calendar first, oldest first
        (60, ["s3", "s4"]),
        (50, ["s3", "s4", "s7"]),  # then keep_within
        (40, ["s3", "s4", "s7", "s1"]),  # then keep_every_steps
        (30, ["s3", "s4", "s7", "s1", "s5"]),  # then keep_last, oldest first
        (20, ["s3", "s4", "s7", "s1", "s5", "s6"]),
        (10, ["s3", "s4", "s7", "s1", "s5", "s6", "s2"]),  # keep_best last; s8 is newest
    ],
)
def test_budget_eviction_order(budget: int, evicted: list[str]) -> None:
    candidates, policy, evaluations = budget_run()
    policy = replace(policy, max_run_size=budget)
    result = plan(candidates, policy, evaluations=evaluations)
    deleted = [d.path for d in result.decisions if d.action == "delete"]
    assert sorted(deleted) == sorted(evicted)
    assert all(by_path(result)[p].reasons[0] == f"budget: max_run_size {budget}B" for p in evicted)
    assert result.kept_bytes == 80 - 10 * len(evicted)
    assert result.notes == ()


def test_budget_evicted_decisions_keep_the_rule_they_override() -> None:
    candidates, policy, evaluations = budget_run()
    result = plan(candidates, replace(policy, max_run_size=79), evaluations=evaluations)
    assert reasons(result)["s3"] == ("budget: max_run_size 79B", "keep_daily #2")


def test_budget_keep_best_evicts_the_worst_first_and_a_best_rule_outranks_calendar() -> None:
    candidates = stepped([f"2024-01-0{day}T12:00" for day in range(1, 6)])
    values = {1: 3.0, 2: 9.0, 3: 1.0, 4: 5.0, 5: 0.0}
    evaluations = [Evaluation(step, value) for step, value in values.items()]
    policy = Policy(name="t", keep_daily=5, keep_best=KeepBest(count=3), max_run_size=3 * 1024**3)
    big = [replace(c, size=1024**3) for c in candidates]
    result = plan(big, policy, evaluations=evaluations)
    # s3 is kept by keep_daily only (evicted first); s1, s4, s2 by daily and best (#3, #2, #1);
    # s5 is the newest.
    assert [d.path for d in result.decisions if d.action == "delete"] == ["s1", "s3"]
    assert reasons(result)["s1"][0] == "budget: max_run_size 3GiB"
    assert reasons(result)["s1"][1:] == ("keep_daily #5", "keep_best #3 (mean_reward=3)")


def test_budget_counts_skipped_and_unstepped_files_and_never_evicts_overrides() -> None:
    candidates = [
        *stepped(FIVE_HOURLY),
        ck("best_model.zip", None, "2024-03-01T00:00", size=15),
        ck("writing", 9, "2024-03-01T09:00", size=15, complete=False),
        ck("s0", 0, "2024-02-01T00:00", pinned="keep"),
    ]
    policy = Policy(name="t", keep_last=5, max_run_size=60)
    result = plan(candidates, policy)
    # 50 (s1-s5) + 15 + 15 + 10 = 90: evict 3 keep_last ones, oldest first; s0/s5 are overrides.
    assert {d.path for d in result.decisions if d.action == "delete"} == {"s1", "s2", "s3"}
    assert result.kept_bytes == 60


def test_budget_that_overrides_alone_exceed_evicts_nothing_and_says_so() -> None:
    candidates = [*stepped(FIVE_HOURLY), ck("best_model.zip", None, "2024-03-01T00:00", size=60)]
    policy = Policy(name="t", keep_last=3, max_run_size=50 * 1024**3)
    huge = [replace(c, size=40 * 1024**3) for c in candidates]
    result = plan(huge, policy)
    assert kept(result) == {"s5", "s4", "s3", "best_model.zip"}
    assert result.notes == (
        "budget: max_run_size 50GiB cannot be met: 80GiB is held by overrides, "
        "unstepped and skipped files; nothing evicted",
    )


# ---------------------------------------------------------------- max_fraction guard


def test_guard_turns_every_deletion_into_a_keep_when_too_many_would_go() -> None:
    candidates = stepped([f"2024-01-01T0{hour}:00" for hour in range(1, 9)])
    result = plan(candidates, Policy(name="t", keep_last=2), max_fraction=0.5)
    guard = "guard: max_fraction 0.5 (would delete 6 of 8)"
    assert result.guard == guard
    assert kept(result) == {f"s{i}" for i in range(1, 9)}
    assert reasons(result)["s1"] == (guard, "no rule keeps it")
    assert reasons(result)["s8"] == ("keep_last #1", "newest")


def test_guard_allows_exactly_max_fraction() -> None:
    candidates = stepped([f"2024-01-01T0{hour}:00" for hour in range(1, 9)])
    result = plan(candidates, Policy(name="t", keep_last=2), max_fraction=0.75)
    assert result.guard is None
    assert len(result.deletions) == 6


def test_guard_counts_budget_evictions() -> None:
    candidates, policy, evaluations = budget_run()
    result = plan(
        candidates, replace(policy, max_run_size=30), evaluations=evaluations, max_fraction=0.5
    )
    assert result.guard == "guard: max_fraction 0.5 (would delete 5 of 8)"
    assert reasons(result)["s3"] == (result.guard, "budget: max_run_size 30B", "keep_daily #2")
    assert result.deletions == ()
    assert result.kept_bytes == 80


def test_input_order_does_not_change_the_plan() -> None:
    candidates, policy, evaluations = budget_run()
    policy = replace(policy, max_run_size=45, keep_hourly=3, timezone="Europe/Berlin")
    forward = plan(candidates, policy, evaluations=evaluations)
    # Evaluations keep their file order: of two at one step, the later one wins.
    backward = plan(candidates[::-1], policy, evaluations=evaluations)
    assert forward == backward
