"""The config model: frozen, typed values for every key in ckptd.yaml (README, "Configuration").

Parsing and validation (``parse_config``/``load_config``) turn YAML into these values, reporting
every problem at once with its YAML path and line. Nothing else in ckptd reads YAML. The work is
done in ``ckptd.config.spec`` (the key table: validation, JSON Schema, rendering) and
``ckptd.config.load`` (YAML reading); the functions at the end of this module are the entry points.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

from ckptd import units

# Re-exported: the config model is where the rest of ckptd reads its defaults.
from ckptd.config.defaults import DEFAULT_MANIFEST_FILENAME as DEFAULT_MANIFEST_FILENAME
from ckptd.config.defaults import DEFAULT_STATE_DIR as DEFAULT_STATE_DIR
from ckptd.limits import DEFAULT_LIMITS, Limits

ObserverKind = Literal["auto", "inotify", "polling"]
OriginalMode = Literal["keep", "archive", "delete"]
UnsafeMode = Literal["quarantine", "leave"]
DeleteMode = Literal["trash", "unlink"]
BestMode = Literal["max", "min"]
LogFormat = Literal["text", "json"]
CoordinationBackend = Literal["local", "postgres"]


@dataclass(frozen=True)
class ScheduleSpec:
    """When a job runs: a fixed interval, or a five-field cron expression (exactly one is set)."""

    interval: timedelta | None = None
    cron: str | None = None

    def __str__(self) -> str:
        if self.cron is not None:
            return self.cron
        return f"every {units.format_duration(self.interval)}" if self.interval else "never"


@dataclass(frozen=True)
class RootConfig:
    path: Path  # absolute (relative paths resolve against the config file's directory)
    run_depth: int = 1
    observer: ObserverKind = "auto"
    poll_interval: timedelta = timedelta(seconds=10)
    policy: str = "default"
    # A root that may be missing when the config is loaded (a mount that comes later): the daemon
    # waits for it. Any other missing root is a config error (a typo would otherwise serve 0 runs).
    optional: bool = False


@dataclass(frozen=True)
class CheckpointsConfig:
    patterns: tuple[str, ...] = ("*.zip", "*.pkl")
    ignore: tuple[str, ...] = ("*.tmp", "*.part", "tmp-*")
    # Globs of directory names that are one checkpoint each (a Hugging Face ``checkpoint-500/``, a
    # DeepSpeed ``global_step500/``): one unit in inventory, manifest, retention, trash and scrub
    # (docs/formats.md, "Directory checkpoints").
    directories: tuple[str, ...] = ()
    step_pattern: str = r"_(\d+)_steps"
    stable_for: timedelta = timedelta(seconds=5)


@dataclass(frozen=True)
class ConvertConfig:
    enabled: bool = True
    original: OriginalMode = "archive"
    on_unsafe: UnsafeMode = "quarantine"
    allow_code: bool = True


@dataclass(frozen=True)
class KeepBest:
    metric: str = "mean_reward"
    # Relative to the run: evaluations.npz, a *.jsonl sidecar, or trainer_state.json (the newest
    # complete checkpoint directory's; ckptd.retention.trainer_metrics).
    source: str = "evaluations.npz"
    count: int = 1
    mode: BestMode = "max"


@dataclass(frozen=True)
class Policy:
    """A retention policy; every omitted rule is off (0 / None / empty).

    ``protect`` and ``min_age`` are not keep rules but safety nets applied over them (README,
    "Configuration"): a policy that does not set them keeps the default policy's values, so
    writing your own policy never silently drops them. Set ``protect: []`` / ``min_age: 0s`` to
    turn them off.
    """

    name: str
    keep_last: int = 0
    keep_within: timedelta | None = None
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_every_steps: int = 0
    keep_best: KeepBest | None = None
    protect: tuple[str, ...] = ("best_model.zip",)
    min_age: timedelta = timedelta(minutes=10)
    max_run_size: int | None = None  # bytes
    timezone: str = "UTC"


DEFAULT_POLICY = Policy(
    name="default",
    keep_last=3,
    keep_within=timedelta(hours=6),
    keep_daily=7,
    keep_weekly=4,
)


@dataclass(frozen=True)
class DeleteConfig:
    mode: DeleteMode = "trash"
    trash_ttl: timedelta = timedelta(days=7)
    max_fraction: float = 0.5


@dataclass(frozen=True)
class ScheduleConfig:
    prune: ScheduleSpec | None = ScheduleSpec(interval=timedelta(minutes=15))
    manifest: ScheduleSpec | None = ScheduleSpec(interval=timedelta(minutes=1))
    rescan: ScheduleSpec | None = ScheduleSpec(interval=timedelta(hours=1))
    scrub: ScheduleSpec | None = None


@dataclass(frozen=True)
class ScrubConfig:
    max_rate: int | None = 200 * 1024**2  # bytes per second; None = unlimited


@dataclass(frozen=True)
class MonitorConfig:
    stale_after: timedelta | None = None


@dataclass(frozen=True)
class ManifestConfig:
    filename: str = DEFAULT_MANIFEST_FILENAME


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: LogFormat = "text"


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = None  # "host:port"


@dataclass(frozen=True)
class CoordinationConfig:
    """How several daemons share roots (README, "Several daemons on one root").

    ``local``: one daemon per root, enforced by a lock in the root's state directory.
    ``postgres``: per-run leases in PostgreSQL; ``dsn`` may come from ``$CKPTD_DSN`` instead.
    """

    backend: CoordinationBackend = "local"
    dsn: str | None = None
    node: str | None = None  # None: the host name
    lease: timedelta = timedelta(seconds=30)


@dataclass(frozen=True)
class Config:
    roots: tuple[RootConfig, ...]
    version: int = 1
    checkpoints: CheckpointsConfig = CheckpointsConfig()
    convert: ConvertConfig = ConvertConfig()
    policies: Mapping[str, Policy] = field(default_factory=lambda: {"default": DEFAULT_POLICY})
    delete: DeleteConfig = DeleteConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    scrub: ScrubConfig = ScrubConfig()
    monitor: MonitorConfig = MonitorConfig()
    manifest: ManifestConfig = ManifestConfig()
    state_dir: str = DEFAULT_STATE_DIR
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    limits: Limits = DEFAULT_LIMITS
    coordination: CoordinationConfig = CoordinationConfig()
    source: Path | None = None  # the file it was loaded from, for messages

    def policy_for(self, root: RootConfig) -> Policy:
        return self.policies[root.policy]
