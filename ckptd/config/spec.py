"""The one table of config keys: it validates YAML nodes, generates the JSON Schema and renders ``config show``.

Every key in ckptd.yaml is described once below (value type, description; the default comes from
the frozen model in ``ckptd.config.model``), so the validator, the schema and the rendered effective
config cannot drift apart. The value types live in ``ckptd.config.values``, ``ckptd.config.sections`` and ``ckptd.config.schedule``.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, Final

from ckptd import units
from ckptd.config.coordination import COORDINATION_KEY
from ckptd.config.model import (
    CheckpointsConfig,
    Config,
    ConvertConfig,
    DeleteConfig,
    KeepBest,
    LogConfig,
    ManifestConfig,
    MetricsConfig,
    MonitorConfig,
    Policy,
    RootConfig,
    ScheduleConfig,
    ScrubConfig,
)
from ckptd.config.schedule import Schedule
from ckptd.config.sections import Key, PolicyMap, Section
from ckptd.config.values import (
    Boolean,
    Choice,
    Const,
    Duration,
    Fraction,
    Integer,
    ListOf,
    Nullable,
    RootPath,
    Size,
    Text,
    check_no_nul,
)
from ckptd.config.walk import Walk, join_key, suggest
from ckptd.limits import HARD_MAX_DEPTH, Limits

SCHEMA_ID: Final = "https://ckptd.invalid/schema/config-1.json"

# --- text checks -------------------------------------------------------------------------------


def _check_relative_glob(text: str) -> str | None:
    if "\0" in text:
        return "contains a NUL character"
    if text.startswith("/") or ".." in PurePosixPath(text).parts:
        return f"expected a glob relative to the run, got {units.describe(text)}"
    return None


def _check_plain_name(text: str) -> str | None:
    if "/" in text or "\0" in text or text in {".", ".."}:
        return f"expected a plain name without /, got {units.describe(text)}"
    return None


def _check_metric_source(text: str) -> str | None:
    if "\0" in text or text.startswith("/") or ".." in PurePosixPath(text).parts:
        return f"expected a file relative to the run, got {units.describe(text)}"
    if not text.endswith((".npz", ".jsonl")) and PurePosixPath(text).name != "trainer_state.json":
        return (
            "expected an .npz (evaluations.npz) or .jsonl file, or trainer_state.json, "
            f"got {units.describe(text)}"
        )
    return None


def _check_step_pattern(text: str) -> str | None:
    try:
        compiled = re.compile(text)
    except re.error as err:
        return f"not a valid regular expression: {err}"
    if compiled.groups < 1:
        return r"needs a group around the step digits, like _(\d+)_steps"
    return None


def _check_timezone(text: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        # Listing every zone reads the tz database: only worth it on the error path.
        hint = suggest(text, sorted(zoneinfo.available_timezones()))
        return f"unknown time zone {units.describe(text)}{hint}"
    return None


_HOST_PORT_RE: Final = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})")
_HOST_PORT_PATTERN: Final = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$"


def _check_host_port(text: str) -> str | None:
    match = _HOST_PORT_RE.fullmatch(text)
    if match is None or not 0 < int(match.group(2)) < 65536:
        return f"expected host:port like 127.0.0.1:9464, got {units.describe(text)}"
    return None


_PLAIN_NAME_PATTERN: Final = r"^(?!\.\.?$)[^/\u0000]+$"


# --- cross-key checks --------------------------------------------------------------------------


def _check_root(values: Mapping[str, Any], walk: Walk, where: str) -> None:
    names = walk.policy_names
    policy = values.get("policy")
    if names is None or policy is None or policy in names:
        return
    defined = ", ".join(sorted(names)) or "none"
    walk.report(
        join_key(where, "policy"),
        f"no policy named {units.describe(policy)} (defined: {defined}){suggest(policy, sorted(names))}",
    )


def _check_roots_distinct(roots: Sequence[tuple[int, Any]], walk: Walk, where: str) -> None:
    """Two roots must not watch the same runs: no duplicates, none inside another."""
    for index, root in roots:
        for other_index, other in roots:
            if other_index >= index:
                break
            if root.path == other.path:
                problem = f"{root.path} is already roots[{other_index}]"
            elif root.path.is_relative_to(other.path) or other.path.is_relative_to(root.path):
                problem = f"{root.path} overlaps roots[{other_index}] ({other.path})"
            else:
                continue
            walk.report(f"{where}[{index}].path", problem)
            break


_KEEP_RULES: Final = (
    "keep_last",
    "keep_within",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "keep_every_steps",
    "keep_best",
)


def _check_policy(values: Mapping[str, Any], walk: Walk, where: str) -> None:
    if not all(rule in values for rule in _KEEP_RULES):
        return  # a rule is invalid and already reported; "keeps nothing" would be a guess
    if not any(values[rule] for rule in _KEEP_RULES):
        walk.report(
            where, f"the policy keeps nothing: set at least one of {', '.join(_KEEP_RULES)}"
        )


# --- the table -----------------------------------------------------------------------------------

_GLOB = Text("a glob like *.zip", check_no_nul)

ROOT = Section(
    RootConfig,
    {
        "path": Key(
            RootPath(),
            "Directory holding the runs; a relative path is relative to the config file's directory.",
            required=True,
        ),
        "run_depth": Key(
            Integer(0),
            "How many levels below the root each run directory is (0: the root itself is one run).",
        ),
        "observer": Key(
            Choice("auto", "inotify", "polling"),
            "How changes are noticed: auto picks polling on network/FUSE filesystems, else inotify.",
        ),
        "poll_interval": Key(
            Duration(1), "How often a polling observer looks (durations: s m h d w)."
        ),
        "policy": Key(
            Text("a policy name"), "Name of the retention policy (under policies) for its runs."
        ),
        "optional": Key(
            Boolean(),
            "May be missing when ckptd starts (a mount that comes later); otherwise a root that"
            " does not exist is a config error.",
        ),
    },
    check=_check_root,
)

KEEP_BEST = Section(
    KeepBest,
    {
        "metric": Key(Text("a metric name"), "Metric to rank checkpoints by (e.g. mean_reward)."),
        "source": Key(
            Text("a file relative to the run", _check_metric_source),
            "Evaluation file relative to the run: evaluations.npz, a metrics .jsonl file, or"
            " trainer_state.json (Hugging Face: the newest complete checkpoint directory's).",
        ),
        "count": Key(Integer(1), "How many of the best checkpoints to keep."),
        "mode": Key(
            Choice("max", "min"), "Whether a higher (max) or lower (min) metric is better."
        ),
    },
)

POLICY = Section(
    Policy,
    {
        "keep_last": Key(Integer(0), "Keep the N newest checkpoints of the series."),
        "keep_within": Key(
            Nullable(Duration(0), zero_is_null=True),
            "Keep every checkpoint newer than the run's newest checkpoint minus this duration.",
        ),
        "keep_hourly": Key(Integer(0), "Keep the newest checkpoint of each of the last N hours."),
        "keep_daily": Key(Integer(0), "Keep the newest checkpoint of each of the last N days."),
        "keep_weekly": Key(
            Integer(0), "Keep the newest checkpoint of each of the last N ISO weeks."
        ),
        "keep_monthly": Key(Integer(0), "Keep the newest checkpoint of each of the last N months."),
        "keep_yearly": Key(Integer(0), "Keep the newest checkpoint of each of the last N years."),
        "keep_every_steps": Key(
            Integer(0), "Keep the first checkpoint at or after each multiple of N training steps."
        ),
        "keep_best": Key(
            Nullable(KEEP_BEST),
            "Keep the best checkpoints by an evaluation metric: {metric, source, count, mode}.",
        ),
        "protect": Key(
            ListOf(Text("a glob relative to the run", _check_relative_glob)),
            "Globs (relative to the run) of files that are always kept ([]: none).",
        ),
        "min_age": Key(Duration(0), "Never delete a checkpoint whose mtime is younger than this."),
        "max_run_size": Key(
            Nullable(Size(1)),
            "Size budget per run (checkpoints plus archived originals), e.g. 50GiB; null: none.",
        ),
        "timezone": Key(
            Text("an IANA time zone name", _check_timezone),
            "IANA time zone the hourly/daily/weekly/monthly/yearly periods are computed in.",
        ),
    },
    check=_check_policy,
)

CONFIG = Section(
    Config,
    {
        "version": Key(
            Const(1, "unsupported config version {got}: this ckptd reads version 1"),
            "Config format version; must be 1.",
        ),
        "roots": Key(
            ListOf(ROOT, min_items=1, check=_check_roots_distinct),
            "Directories to watch; every directory run_depth levels below a root is a run.",
            required=True,
        ),
        "checkpoints": Key(
            Section(
                CheckpointsConfig,
                {
                    "patterns": Key(
                        ListOf(_GLOB, min_items=1), "Globs of file names that are checkpoints."
                    ),
                    "ignore": Key(ListOf(_GLOB), "Globs of file names never touched (temp files)."),
                    "directories": Key(
                        ListOf(_GLOB),
                        "Globs of directory names that are one checkpoint each"
                        " (checkpoint-*, global_step*).",
                    ),
                    "step_pattern": Key(
                        Text("a regular expression", _check_step_pattern, {"format": "regex"}),
                        "Regex whose first group is the training step in a checkpoint's name.",
                    ),
                    "stable_for": Key(
                        Duration(0),
                        "A file counts as complete after its size and mtime are unchanged this long.",
                    ),
                },
            ),
            "Which files are checkpoints and when they are complete.",
        ),
        "convert": Key(
            Section(
                ConvertConfig,
                {
                    "enabled": Key(
                        Boolean(), "Convert legacy SB2 pickles into the SB2 zip format."
                    ),
                    "original": Key(
                        Choice("keep", "archive", "delete"),
                        "What happens to a converted original: keep, archive (under the run's"
                        " state dir) or delete.",
                    ),
                    "on_unsafe": Key(
                        Choice("quarantine", "leave"),
                        "What happens to a file that references code outside the allowlist.",
                    ),
                    "allow_code": Key(
                        Boolean(),
                        "Carry pickled functions (LR schedules) as opaque entries; false refuses them.",
                    ),
                },
            ),
            "Conversion of legacy pickle checkpoints.",
        ),
        "policies": Key(
            PolicyMap(POLICY),
            "Retention policies by name; omitted rules are off (protect and min_age keep their defaults)."
            " Absent: the built-in default.",
        ),
        "delete": Key(
            Section(
                DeleteConfig,
                {
                    "mode": Key(
                        Choice("trash", "unlink"),
                        "Move deleted checkpoints to the trash, or unlink.",
                    ),
                    "trash_ttl": Key(
                        Duration(0), "How long trashed files are kept before purging."
                    ),
                    "max_fraction": Key(
                        Fraction(),
                        "A pass that would delete more than this share of a run's series deletes"
                        " nothing in that run.",
                    ),
                },
            ),
            "How checkpoints are deleted.",
        ),
        "schedule": Key(
            Section(
                ScheduleConfig,
                {
                    "prune": Key(Schedule(), "When retention runs: interval, cron, or null (off)."),
                    "manifest": Key(Schedule(), "When manifests are rewritten."),
                    "rescan": Key(Schedule(), "When a full reconciliation scan runs."),
                    "scrub": Key(Schedule(), "When checkpoints are re-hashed and re-verified."),
                },
            ),
            "Job schedules: an interval (15m), a five-field crontab expression, or null (off).",
        ),
        "scrub": Key(
            Section(
                ScrubConfig,
                {
                    "max_rate": Key(
                        Nullable(Size(1)), "Bytes per second a scrub may read; null: unlimited."
                    )
                },
            ),
            "Scrub settings.",
        ),
        "monitor": Key(
            Section(
                MonitorConfig,
                {
                    "stale_after": Key(
                        Nullable(Duration(1)),
                        "Flag a run in status when it has had no new checkpoint for this long.",
                    )
                },
            ),
            "Run health monitoring.",
        ),
        "manifest": Key(
            Section(
                ManifestConfig,
                {
                    "filename": Key(
                        Text("a file name", _check_plain_name, {"pattern": _PLAIN_NAME_PATTERN}),
                        "File name of the manifest written in each run directory.",
                    )
                },
            ),
            "Per-run manifest settings.",
        ),
        "state_dir": Key(
            Text("a directory name", _check_plain_name, {"pattern": _PLAIN_NAME_PATTERN}),
            "Per-run directory (a plain name) holding legacy/, trash/ and quarantine/.",
        ),
        "log": Key(
            Section(
                LogConfig,
                {
                    "level": Key(Choice("debug", "info", "warning", "error"), "Log level."),
                    "format": Key(Choice("text", "json"), "Log line format."),
                },
            ),
            "Logging.",
        ),
        "metrics": Key(
            Section(
                MetricsConfig,
                {
                    "listen": Key(
                        Nullable(
                            Text(
                                "host:port",
                                _check_host_port,
                                {"pattern": _HOST_PORT_PATTERN},
                            )
                        ),
                        "host:port to serve Prometheus metrics on (e.g. 127.0.0.1:9464); null: off.",
                    )
                },
            ),
            "Prometheus metrics.",
        ),
        "limits": Key(
            Section(
                Limits,
                {
                    "max_opcodes": Key(
                        Integer(1),
                        "Pickle opcodes one file may hold (a zip's :serialized: pickles together).",
                    ),
                    "max_depth": Key(
                        Integer(1, HARD_MAX_DEPTH),
                        f"How deep values may nest (containers in containers); at most {HARD_MAX_DEPTH}.",
                    ),
                    "max_expanded_nodes": Key(
                        Integer(1),
                        "Object-graph nodes one file may reach, shared parts counted as often as"
                        " they are reachable.",
                    ),
                    "max_memory": Key(
                        Size(1024**2),
                        "Bytes of non-array content (text, bytes, JSON) one file may reach, counted"
                        " the same way; array payloads are streamed and not counted. The daemon's"
                        " parser process gets this + 768MiB + the file's size of address space.",
                    ),
                    "max_seconds": Key(
                        Duration(1),
                        "Wall-clock time one file may take in a daemon worker; then the process"
                        " parsing it is killed and the file refused.",
                    ),
                },
            ),
            "Per-file budgets: a checkpoint over any of them is refused, naming the budget.",
        ),
        "coordination": COORDINATION_KEY,
    },
    parse_first=("policies",),
)


def config_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the config file, generated from the key table."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "ckptd config",
        "description": "Configuration of ckptd, the checkpoint-management daemon (version 1).",
        **CONFIG.schema(),
    }


def config_to_mapping(config: Config) -> dict[str, Any]:
    """The effective config as plain YAML/JSON values, in table order, defaults filled in."""
    mapping: dict[str, Any] = CONFIG.render(config)
    return mapping
