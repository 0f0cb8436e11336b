"""Retention planning: one run's checkpoints + its policy + a clock reading -> a decision per file.

Pure: no I/O, no clock, no hidden state. The semantics are the contract in README ("Configuration",
retention); where that text leaves a choice open, the choice made here is:

* **Decision order**: decisions are sorted by step, then mtime, then path (``rl_model_10000`` before
  ``rl_model_100000``, whatever the names sort as); checkpoints without a step come after those
  with one, by mtime.
* **Reason order** (a checkpoint lists every reason that applies, always in this order):
  ``skip: ...`` | ``guard: ...`` | ``budget: ...`` | ``no rule keeps it`` | ``no step`` |
  the one time/count rule (``keep_within``, ``keep_last #k``, ``keep_hourly #k`` ...
  ``keep_yearly #k``, or ``keep_<rule>[oldest] #k``) | ``keep_every_steps #k`` |
  ``keep_best #k (metric=value)`` | ``newest`` | ``protect: <glob>`` (each matching glob) |
  ``pinned: <reason>`` | ``min_age``. A budget eviction or a guarded deletion keeps the reasons
  it overrides after its own, so the output shows what was evicted or saved.
* **Series**: complete, ``status == "ok"`` checkpoints that have a step, ordered by (step, mtime,
  path); if none of the run's checkpoints has a step, all of them ordered by (mtime, path).
  Rules walk the series from its end (the newest) back; ``newest`` is its last element.
* **keep_within** is measured back from the latest mtime in the series, strictly newer (borg).
* **keep_last** counts checkpoints (each is its own period), not seconds as borg's alias for
  ``--keep-secondly`` would: two checkpoints written in the same second are two checkpoints.
* **Periods** are computed on the mtime in the policy's timezone. Hourly periods also carry the
  UTC offset, so the repeated hour when DST ends is two periods (two real hours), as the retention
  survey recommends; daily and coarser periods are plain calendar dates (ISO weeks for weekly).
  A negative count means unlimited (borg).
* **keep_every_steps** ranks its keeps oldest first (#1 is the first checkpoint of the series).
* **keep_best** ranks best first; ties go to the newer checkpoint; an evaluation with a NaN value
  leaves the checkpoint unranked. When several evaluations share a step, the last given wins.
* **protect** globs containing ``/`` match the whole run-relative path; globs without one match
  the file name in any directory (``best_model.zip`` protects ``best/best_model.zip``); a
  directory checkpoint's name is its last component (``checkpoint-*`` protects ``checkpoint-500/``).
* **Budget**: the run's size is every file not deleted (kept, unstepped and skipped ones too, as
  all of them occupy the disk). If what can never be evicted already exceeds ``max_run_size``,
  nothing is evicted and a note says so. Within the keep_within and keep_every_steps tiers the
  oldest goes first, like the calendar and keep_last tiers.
* **Guard**: it trips when deletions / len(series) > ``max_fraction``.
"""

from __future__ import annotations

import bisect
import fnmatch
import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from operator import attrgetter
from typing import Literal
from zoneinfo import ZoneInfo

from ckptd.config.model import Policy
from ckptd.units import format_size, format_size_human

Action = Literal["keep", "delete", "skip"]

OK_STATUS = "ok"
NO_RULE_REASON = "no rule keeps it"
NO_STEP_REASON = "no step"
NEWEST_REASON = "newest"
MIN_AGE_REASON = "min_age"
WITHIN_REASON = "keep_within"

# Budget eviction tiers, evicted lowest first; a checkpoint's tier is the highest of its rules.
_TIER_CALENDAR = 0
_TIER_WITHIN = 1
_TIER_EVERY_STEPS = 2
_TIER_LAST = 3
_TIER_BEST = 4


@dataclass(frozen=True, slots=True)
class Candidate:
    """One checkpoint of a run as retention sees it (an archived legacy original and its zip are one)."""

    path: str  # relative to the run directory, posix separators
    step: int | None
    mtime: datetime  # aware
    size: int  # bytes, including the archived legacy original
    complete: bool = True
    # "ok", or the state that makes it a skip: "incomplete", "unknown", "refused", "broken"...
    status: str = OK_STATUS
    pinned: str | None = None  # the pin reason, when pinned
    # Live files that go with it (a legacy original kept in place beside its zip): protect globs
    # are judged on them too, so attaching one to its zip never strips its protection.
    companions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One point of the keep_best metric series: the metric's value measured at ``step``."""

    step: int
    value: float


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one checkpoint, and every reason for it (reason order: module docstring)."""

    path: str
    action: Action
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RunPlan:
    """Every candidate exactly once, in report order (step, mtime, path); ``guard`` is set when
    max_fraction tripped."""

    decisions: tuple[Decision, ...]
    guard: str | None = None
    notes: tuple[str, ...] = ()
    kept_bytes: int = 0  # the run's size once the plan is applied

    @property
    def deletions(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.action == "delete")


@dataclass(slots=True)
class _Judged:
    """Working state for one series member while the plan is built (never leaves this module)."""

    candidate: Candidate
    index: int  # position in the series, 0 = oldest
    time_reason: str | None = None
    time_tier: int = _TIER_CALENDAR
    every_steps_reason: str | None = None
    best_reason: str | None = None
    best_rank: int = 0
    evicted: bool = False

    def rule_reasons(self) -> list[str]:
        return [
            reason
            for reason in (self.time_reason, self.every_steps_reason, self.best_reason)
            if reason is not None
        ]


def plan_run(
    candidates: Sequence[Candidate],
    policy: Policy,
    *,
    now: datetime,
    evaluations: Sequence[Evaluation] | None = None,
    max_fraction: float = 1.0,
) -> RunPlan:
    """Decide keep / delete / skip for every candidate of one run, with every reason that applies."""
    _check_inputs(candidates, now)
    notes: list[str] = []
    series, unstepped, skipped = _split(candidates)

    _apply_time_rules(series, policy)
    if policy.keep_every_steps > 0:
        if series and series[0].candidate.step is None:
            notes.append("keep_every_steps: no checkpoint of this run has a step")
        _apply_every_steps(series, policy.keep_every_steps)
    if policy.keep_best is not None and policy.keep_best.count > 0:
        best = policy.keep_best
        notes.extend(
            _apply_keep_best(
                series, evaluations or (), best.metric, best.count, maximize=best.mode == "max"
            )
        )

    overrides = _Overrides(policy, now)
    newest_path = series[-1].candidate.path if series else None
    override_reasons = {
        c.path: overrides.reasons(c, is_newest=c.path == newest_path)
        for c in [j.candidate for j in series] + unstepped
    }

    if policy.max_run_size is not None:
        note = _apply_budget(series, skipped, unstepped, override_reasons, policy.max_run_size)
        if note:
            notes.append(note)

    decisions: list[Decision] = [_skip_decision(c) for c in skipped]
    decisions += [
        Decision(c.path, "keep", (NO_STEP_REASON, *override_reasons[c.path])) for c in unstepped
    ]
    series_decisions = [
        _series_decision(j, override_reasons[j.candidate.path], policy) for j in series
    ]

    would_delete = sum(1 for d in series_decisions if d.action == "delete")
    guard = None
    if would_delete and would_delete / len(series) > max_fraction:
        guard = (
            f"guard: max_fraction {max_fraction:g} (would delete {would_delete} of {len(series)})"
        )
        series_decisions = [
            Decision(d.path, "keep", (guard, *d.reasons)) if d.action == "delete" else d
            for d in series_decisions
        ]
    decisions += series_decisions
    if skipped or unstepped:
        # Only then can the series order differ from the report order: a series alone is in it
        # already, by (step, mtime, path), or by (mtime, path) when no checkpoint has a step.
        rank = {c.path: index for index, c in enumerate(sorted(candidates, key=_report_order))}
        decisions.sort(key=lambda decision: rank[decision.path])

    deleted = {d.path for d in series_decisions if d.action == "delete"}
    kept_bytes = sum(c.size for c in candidates if c.path not in deleted)
    return RunPlan(tuple(decisions), guard, tuple(notes), kept_bytes)


def _check_inputs(candidates: Sequence[Candidate], now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError(f"now must be an aware datetime, got {now!r}")
    naive = next((c.path for c in candidates if c.mtime.tzinfo is None), None)
    if naive is not None:
        raise ValueError(f"{naive}: mtime must be an aware datetime")
    if len({c.path for c in candidates}) != len(candidates):
        counts = Counter(c.path for c in candidates)
        twice = next(path for path, times in counts.items() if times > 1)
        raise ValueError(f"{twice}: listed twice")


def _split(
    candidates: Sequence[Candidate],
) -> tuple[list[_Judged], list[Candidate], list[Candidate]]:
    """(series oldest first, complete checkpoints outside a stepped series, skipped ones)."""
    skipped = [c for c in candidates if not c.complete or c.status != OK_STATUS]
    usable = [c for c in candidates if c.complete and c.status == OK_STATUS]
    stepped = [c for c in usable if c.step is not None]
    if stepped:
        stepped.sort(key=_step_order)
        members, unstepped = stepped, [c for c in usable if c.step is None]
    else:
        members, unstepped = sorted(usable, key=_time_order), []
    return [_Judged(c, i) for i, c in enumerate(members)], unstepped, skipped


# C-level sort keys: a plan sorts every run's checkpoints two or three times.


def _report_order(candidate: Candidate) -> tuple[bool, int, datetime, str]:
    step = candidate.step
    return (step is None, step or 0, candidate.mtime, candidate.path)


_step_order = attrgetter("step", "mtime", "path")
_time_order = attrgetter("mtime", "path")


def _skip_decision(candidate: Candidate) -> Decision:
    state = "incomplete" if not candidate.complete else candidate.status
    return Decision(candidate.path, "skip", (f"skip: {state}",))


# ---------------------------------------------------------------- time and count rules (borg)

PeriodKey = Callable[[datetime], Hashable]

# Calendar rules in borg's order, each with its period key on a local (policy-timezone) datetime.
# prune_split only asks whether two consecutive checkpoints share a period, so any key that is
# equal exactly when the periods are will do; day ordinals are cheaper than date tuples and
# isocalendar(). Day 1 (0001-01-01) is a Monday, so (ordinal - 1) // 7 numbers the ISO weeks
# (Monday to Sunday; an ISO week never straddles two ISO years).
_CALENDAR_RULES: tuple[tuple[str, PeriodKey], ...] = (
    ("keep_hourly", lambda t: (t.toordinal(), t.hour, t.utcoffset())),
    ("keep_daily", lambda t: t.toordinal()),
    ("keep_weekly", lambda t: (t.toordinal() - 1) // 7),
    ("keep_monthly", lambda t: t.year * 12 + t.month),
    ("keep_yearly", lambda t: t.year),
)


def _apply_time_rules(series: list[_Judged], policy: Policy) -> None:
    """keep_within, keep_last, then the calendar rules, with borg 1.2-1.4 prune_split counting."""
    if not series:
        return
    newest_first = series[::-1]
    if policy.keep_within is not None and policy.keep_within > timedelta(0):
        cutoff = max(j.candidate.mtime for j in series) - policy.keep_within
        for judged in series:
            if judged.candidate.mtime > cutoff:
                judged.time_reason, judged.time_tier = WITHIN_REASON, _TIER_WITHIN
    if policy.keep_last:
        _prune_split(newest_first, "keep_last", policy.keep_last, _TIER_LAST, range(len(series)))
    active = [(rule, period) for rule, period in _CALENDAR_RULES if getattr(policy, rule)]
    if not active:
        return
    zone = _zone(policy.timezone)
    # Converting every mtime once is cheaper than converting lazily per rule and per visit
    # (and free when the zone is UTC: astimezone returns a UTC datetime itself).
    local_newest_first = [j.candidate.mtime.astimezone(zone) for j in newest_first]
    for rule, period in active:
        count: int = getattr(policy, rule)
        _prune_split(newest_first, rule, count, _TIER_CALENDAR, map(period, local_newest_first))


def _prune_split(
    newest_first: list[_Judged],
    rule: str,
    count: int,
    tier: int,
    periods: Iterable[Hashable],
) -> None:
    """borg's prune_split: the newest checkpoint of each new period is kept, up to ``count``.

    A checkpoint an earlier rule kept uses up its period without counting; if the walk ends short
    of ``count``, the oldest checkpoint is kept for this rule (``[oldest]``) unless already kept.
    """
    kept = 0
    last_period: Hashable = object()
    judged: _Judged | None = None
    for judged, period in zip(newest_first, periods, strict=False):
        if period != last_period:
            last_period = period
            if judged.time_reason is None:
                kept += 1
                judged.time_reason, judged.time_tier = f"{rule} #{kept}", tier
                if kept == count:
                    break
    # A negative count is unlimited (borg): it never breaks early and never claims the oldest.
    if judged is not None and kept < count and judged.time_reason is None:
        judged.time_reason, judged.time_tier = f"{rule}[oldest] #{kept + 1}", tier


_ZONES: dict[str, tzinfo] = {}


def _zone(name: str) -> tzinfo:
    # ZoneInfo caches too, but its constructor still costs a lookup per call; plans are many.
    zone = _ZONES.get(name)
    if zone is None:
        # UTC as datetime's own fixed zone: mtimes arrive in it, so converting them is a no-op,
        # and every period key (fields and a zero utcoffset) comes out the same as ZoneInfo's.
        zone = _ZONES[name] = UTC if name == "UTC" else ZoneInfo(name)
    return zone


# ---------------------------------------------------------------- step and metric rules


def _apply_every_steps(series: list[_Judged], every: int) -> None:
    """Keep, for each k, the first checkpoint (series order) whose step is at or after k * every."""
    threshold = 0
    kept = 0
    for judged in series:
        step = judged.candidate.step
        if step is not None and step >= threshold:
            kept += 1
            judged.every_steps_reason = f"keep_every_steps #{kept}"
            threshold = (step // every + 1) * every


def _apply_keep_best(
    series: list[_Judged],
    evaluations: Sequence[Evaluation],
    metric: str,
    count: int,
    *,
    maximize: bool,
) -> list[str]:
    """Rank by the evaluation nearest at or before each checkpoint's step; keep the best ``count``."""
    if not series or series[0].candidate.step is None:
        return ["keep_best: no checkpoint of this run has a step; none ranked"] if series else []
    if not evaluations:
        return [f"keep_best: no {metric} evaluations yet; none ranked"]
    ordered = sorted(evaluations, key=lambda e: e.step)  # stable: the last of equal steps wins
    eval_steps = [e.step for e in ordered]
    ranked: list[tuple[float, _Judged]] = []
    for judged in series:
        step = judged.candidate.step
        assert step is not None  # a stepped series has a step on every member
        at = bisect.bisect_right(eval_steps, step) - 1
        if at >= 0 and not math.isnan(ordered[at].value):
            ranked.append((ordered[at].value, judged))
    sign = -1.0 if maximize else 1.0
    ranked.sort(key=lambda pair: (sign * pair[0], -pair[1].index))
    for rank, (value, judged) in enumerate(ranked[:count], start=1):
        judged.best_reason = f"keep_best #{rank} ({metric}={value:.10g})"
        judged.best_rank = rank
    return []


# ---------------------------------------------------------------- overrides


def _protects(match: Callable[[str], object], path: str, whole_path: bool) -> bool:
    # A directory checkpoint's path ends in "/": its name is the last component before it, and a
    # whole-path glob may be written with or without the slash.
    bare = path.rstrip("/")
    if whole_path:
        return bool(match(path) or (bare != path and match(bare)))
    return bool(match(bare.rpartition("/")[2]))


class _Overrides:
    """newest, protect globs, pins and min_age: kept whatever the rules said, never evicted."""

    def __init__(self, policy: Policy, now: datetime) -> None:
        self._globs = [(glob, _glob_matcher(glob), "/" in glob) for glob in policy.protect]
        self._young_after = now - policy.min_age if policy.min_age > timedelta(0) else None

    def reasons(self, candidate: Candidate, *, is_newest: bool) -> tuple[str, ...]:
        # Once per checkpoint of every plan, and most have no override: nothing is built for them.
        reasons = [NEWEST_REASON] if is_newest else None
        if self._globs:
            path = candidate.path
            paths = (path, *candidate.companions) if candidate.companions else None
            for glob, match, whole_path in self._globs:
                if (
                    _protects(match, path, whole_path)
                    if paths is None
                    else any(_protects(match, p, whole_path) for p in paths)
                ):
                    reasons = (reasons or []) + [f"protect: {glob}"]
        pinned = candidate.pinned
        if pinned is not None:
            reasons = (reasons or []) + [f"pinned: {pinned}" if pinned else "pinned"]
        if self._young_after is not None and candidate.mtime > self._young_after:
            reasons = (reasons or []) + [MIN_AGE_REASON]
        return tuple(reasons) if reasons else ()


@functools.lru_cache(maxsize=256)
def _glob_matcher(glob: str) -> Callable[[str], object]:
    """A protect glob compiled once per process, not once per plan (the policies are few)."""
    return re.compile(fnmatch.translate(glob)).match


# ---------------------------------------------------------------- size budget


def _apply_budget(
    series: list[_Judged],
    skipped: list[Candidate],
    unstepped: list[Candidate],
    override_reasons: dict[str, tuple[str, ...]],
    budget: int,
) -> str | None:
    """Evict checkpoints kept only by rules, lowest tier first, until the run fits ``budget``."""
    evictable = [j for j in series if j.rule_reasons() and not override_reasons[j.candidate.path]]
    fixed = (
        [j.candidate for j in series if override_reasons[j.candidate.path]] + unstepped + skipped
    )
    fixed_bytes = sum(c.size for c in fixed)
    total = fixed_bytes + sum(j.candidate.size for j in evictable)
    if total <= budget:
        return None
    if fixed_bytes > budget:
        return (
            f"budget: max_run_size {format_size(budget)} cannot be met: "
            f"{format_size_human(fixed_bytes)} is held by overrides, unstepped and skipped files; "
            "nothing evicted"
        )
    evictable.sort(key=_eviction_order)
    for judged in evictable:
        if total <= budget:
            break
        judged.evicted = True
        total -= judged.candidate.size
    return None


def _eviction_order(judged: _Judged) -> tuple[int, int]:
    if judged.best_reason is not None:
        return _TIER_BEST, -judged.best_rank  # worst first
    tier = judged.time_tier if judged.time_reason is not None else _TIER_CALENDAR
    if judged.every_steps_reason is not None:
        tier = max(tier, _TIER_EVERY_STEPS)
    return tier, judged.index  # oldest first


def _series_decision(judged: _Judged, overrides: tuple[str, ...], policy: Policy) -> Decision:
    path = judged.candidate.path
    # judged.rule_reasons(), without a call and a list per checkpoint in the common cases
    time_reason = judged.time_reason
    if judged.every_steps_reason is None and judged.best_reason is None:
        rules = [] if time_reason is None else [time_reason]
    else:
        rules = judged.rule_reasons()
    if judged.evicted:
        assert policy.max_run_size is not None  # only a budget evicts
        budget = f"budget: max_run_size {format_size(policy.max_run_size)}"
        return Decision(path, "delete", (budget, *rules))
    if rules or overrides:
        return Decision(path, "keep", (*rules, *overrides))
    return Decision(path, "delete", (NO_RULE_REASON,))
