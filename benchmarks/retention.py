"""Micro-benchmark: time ckptd.retention.plan.plan_run over 1,000 runs x 100 checkpoints (100k in all).

Usage: .venv/bin/python benchmarks/retention.py [--runs N] [--per-run N] [--repeat N]
Prints the best time per 100k checkpoints for a few policies (the default one, one with every rule,
and one in a DST timezone with a size budget). Planning only: building the inputs is not timed.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from ckptd.config.model import DEFAULT_POLICY, KeepBest, Policy
from ckptd.retention.plan import Candidate, Evaluation, plan_run

NOW = datetime(2026, 11, 23, 20, 0, tzinfo=UTC)


def make_run(rng: random.Random, count: int) -> tuple[list[Candidate], list[Evaluation]]:
    """A run that saved every 5,000 steps, about every 20 minutes, over roughly a month."""
    start = NOW - timedelta(days=30)
    candidates = []
    moment = start
    for index in range(count):
        moment += timedelta(minutes=rng.uniform(10, 30 * 24 * 60 * 2 / count))
        step = (index + 1) * 5000
        candidates.append(
            Candidate(f"rl_model_{step}_steps.zip", step, moment, rng.randint(50_000, 60_000))
        )
    candidates.append(Candidate("best_model.zip", None, moment, 55_000))
    rng.shuffle(candidates)
    evaluations = [Evaluation((i + 1) * 5000, rng.gauss(100.0, 30.0)) for i in range(count)]
    return candidates, evaluations


POLICIES = {
    "default": DEFAULT_POLICY,
    "every rule": Policy(
        name="all",
        keep_last=5,
        keep_within=timedelta(hours=6),
        keep_hourly=24,
        keep_daily=7,
        keep_weekly=4,
        keep_monthly=12,
        keep_yearly=3,
        keep_every_steps=100_000,
        keep_best=KeepBest(count=3),
        protect=("best_model.zip",),
        min_age=timedelta(minutes=10),
    ),
    "Berlin + budget": replace(
        DEFAULT_POLICY, timezone="Europe/Berlin", keep_hourly=48, max_run_size=2 * 1024**2
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--per-run", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(1)
    runs = [make_run(rng, args.per_run) for _ in range(args.runs)]
    total = sum(len(candidates) for candidates, _ in runs)
    print(f"{args.runs} runs, {total} checkpoints")
    for label, policy in POLICIES.items():
        best = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            for candidates, evaluations in runs:
                plan_run(candidates, policy, now=NOW, evaluations=evaluations, max_fraction=0.9)
            best = min(best, time.perf_counter() - started)
        print(f"{label:>16}: {best * 100_000 / total * 1000:7.1f} ms per 100k checkpoints")


if __name__ == "__main__":
    main()
