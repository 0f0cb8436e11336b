"""Config loading and validation: exact messages with YAML paths and lines, defaults, paths, schema."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ckptd.config.load import load_config, parse_config
from ckptd.config.model import (
    DEFAULT_POLICY,
    CheckpointsConfig,
    Config,
    KeepBest,
    Policy,
    RootConfig,
    ScheduleSpec,
)
from ckptd.config.spec import config_schema, config_to_mapping
from ckptd.errors import ConfigError
from ckptd.limits import Limits

CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = CHECKOUT / "config" / "ckptd.yaml"
EXAMPLES = sorted((CHECKOUT / "config" / "examples").glob("*.yaml"))
SHIPPED = [DEFAULT_CONFIG, *EXAMPLES]

# Lines 1-3; every bad snippet below starts at line 4.
BASE = "version: 1\nroots:\n  - path: runs\n"


def issues(text: str, source: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source=source)
    return [str(issue) for issue in caught.value.issues]


def test_minimal_config_takes_every_default(tmp_path: Path) -> None:
    config = parse_config(BASE, source=tmp_path / "ckptd.yaml")
    expected = Config(roots=(RootConfig(path=tmp_path / "runs"),), source=tmp_path / "ckptd.yaml")
    assert config == expected
    assert config.policies == {"default": DEFAULT_POLICY}
    assert config.policy_for(config.roots[0]) is DEFAULT_POLICY


# (snippet appended to BASE, the one issue expected)
BAD_CONFIGS = [
    (
        "checkpoints:\n  stable_for: ten\n",
        'checkpoints.stable_for (line 5): expected a duration like 10s, got "ten"',
    ),
    (
        "checkpoints:\n  stable_for: -3\n",
        "checkpoints.stable_for (line 5): expected a duration like 10s, got -3 (negative)",
    ),
    (
        "checkpoints:\n  stable_for: 1.5\n",
        "checkpoints.stable_for (line 5): expected a duration like 10s, got 1.5",
    ),
    (
        "checkpoints:\n  patterns: []\n",
        "checkpoints.patterns (line 5): expected a non-empty list, got an empty list",
    ),
    (
        "checkpoints:\n  patterns: '*.zip'\n",
        'checkpoints.patterns (line 5): expected a non-empty list, got "*.zip"',
    ),
    (
        "checkpoints:\n  patterns: ['*.zip', '']\n",
        'checkpoints.patterns[1] (line 5): expected a glob like *.zip, got ""',
    ),
    (
        "checkpoints:\n  step_pattern: 'steps'\n",
        r"checkpoints.step_pattern (line 5): needs a group around the step digits, like _(\d+)_steps",
    ),
    (
        "checkpoints:\n  step_pattern: '_(\\d+'\n",
        "checkpoints.step_pattern (line 5): not a valid regular expression: missing ), unterminated subpattern at position 1",
    ),
    (
        "convert:\n  original: move\n",
        'convert.original (line 5): expected one of keep, archive, delete, got "move"',
    ),
    (
        "convert:\n  on_unsafe: quarantin\n",
        'convert.on_unsafe (line 5): expected one of quarantine, leave, got "quarantin"; did you mean "quarantine"?',
    ),
    ("convert:\n  enabled: 'yes'\n", 'convert.enabled (line 5): expected true or false, got "yes"'),
    ("convert: [1]\n", "convert (line 4): expected a mapping, got a list"),
    ("convert: null\n", "convert (line 4): expected a mapping, got null"),
    ("version: 2\n", ""),  # placeholder replaced below: version appears twice in BASE + snippet
    (
        "policies: {}\n",
        "policies (line 4): define at least one policy, or omit policies for the built-in default",
    ),
    (
        "policies:\n  default: {keep_last: 3, keep_weekly: -1}\n",
        "policies.default.keep_weekly (line 5): expected a whole number >= 0, got -1",
    ),
    (
        "policies:\n  default: {keep_last: true}\n",
        "policies.default.keep_last (line 5): expected a whole number >= 0, got true",
    ),
    (
        "policies:\n  default: {keep_last: 2.0}\n",
        "policies.default.keep_last (line 5): expected a whole number >= 0, got 2.0",
    ),
    (
        "policies:\n  default: {protect: ['*.zip']}\n",
        "policies.default (line 5): the policy keeps nothing: set at least one of keep_last, keep_within, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_every_steps, keep_best",
    ),
    (
        "policies:\n  default: {keep_last: 1, protect: ['/etc/*']}\n",
        'policies.default.protect[0] (line 5): expected a glob relative to the run, got "/etc/*"',
    ),
    (
        "policies:\n  default: {keep_last: 1, protect: ['../x']}\n",
        'policies.default.protect[0] (line 5): expected a glob relative to the run, got "../x"',
    ),
    (
        "policies:\n  default:\n    keep_best: {metric: r, count: 0}\n",
        "policies.default.keep_best.count (line 6): expected a whole number >= 1, got 0",
    ),
    (
        "policies:\n  default:\n    keep_best: {mode: maximum}\n",
        'policies.default.keep_best.mode (line 6): expected one of max, min, got "maximum"; did you mean "max"?',
    ),
    (
        "policies:\n  default:\n    keep_best: {source: evals.csv}\n",
        'policies.default.keep_best.source (line 6): expected an .npz (evaluations.npz) or .jsonl file, or trainer_state.json, got "evals.csv"',
    ),
    (
        "policies:\n  default:\n    keep_best: {source: /tmp/e.npz}\n",
        'policies.default.keep_best.source (line 6): expected a file relative to the run, got "/tmp/e.npz"',
    ),
    (
        "policies:\n  default:\n    keep_best: 3\n",
        "policies.default.keep_best (line 6): expected a mapping, got 3",
    ),
    (
        "policies:\n  default: {keep_last: 1, timezone: Europe/Berln}\n",
        'policies.default.timezone (line 5): unknown time zone "Europe/Berln"; did you mean "Europe/Berlin"?',
    ),
    (
        "policies:\n  default: {keep_last: 1, max_run_size: 50GB}\n",
        'policies.default.max_run_size (line 5): expected a size like 200MiB (units B, KiB, MiB, GiB, TiB), got "50GB"; '
        "did you mean 50GiB? (binary units only: 1GiB = 1024MiB)",
    ),
    (
        "policies:\n  default: {keep_last: 1, max_run_size: 0}\n",
        "policies.default.max_run_size (line 5): expected a size of at least 1B like 200MiB, got 0",
    ),
    (
        "policies:\n  default: {keep_last: 1, min_age: 10 minutes}\n",
        'policies.default.min_age (line 5): expected a duration like 10s, got "10 minutes"',
    ),
    ("policies:\n  12: {keep_last: 1}\n", "policies (line 5): keys must be non-empty text, got 12"),
    (
        "policies: [default]\n",
        "policies (line 4): expected a mapping of policy names to policies, got a list",
    ),
    (
        "delete:\n  mode: shred\n",
        'delete.mode (line 5): expected one of trash, unlink, got "shred"',
    ),
    (
        "delete:\n  max_fraction: 0\n",
        "delete.max_fraction (line 5): expected a number greater than 0 and at most 1, got 0",
    ),
    (
        "delete:\n  max_fraction: 1.5\n",
        "delete.max_fraction (line 5): expected a number greater than 0 and at most 1, got 1.5",
    ),
    (
        "schedule:\n  prune: often\n",
        'schedule.prune (line 5): expected an interval like 15m, a five-field cron expression, or null, got "often"',
    ),
    (
        "schedule:\n  prune: 0s\n",
        "schedule.prune (line 5): an interval must be longer than 0s (null turns the job off)",
    ),
    (
        "schedule:\n  scrub: '0 3 * *'\n",
        'schedule.scrub (line 5): a cron expression needs five fields, got 4 in "0 3 * *"',
    ),
    (
        "schedule:\n  scrub: '61 * * * *'\n",
        "schedule.scrub (line 5): invalid cron expression \"61 * * * *\": Error validating expression '61': the last value (61) is higher than the maximum value (59)",
    ),
    (
        "scrub: {max_rate: fast}\n",
        'scrub.max_rate (line 4): expected a size like 200MiB (units B, KiB, MiB, GiB, TiB), got "fast"',
    ),
    (
        "monitor: {stale_after: 0s}\n",
        'monitor.stale_after (line 4): expected a duration of at least 1s like 10s, got "0s"',
    ),
    (
        "manifest: {filename: sub/m.json}\n",
        'manifest.filename (line 4): expected a plain name without /, got "sub/m.json"',
    ),
    (
        "manifest: {filename: ..}\n",
        'manifest.filename (line 4): expected a plain name without /, got ".."',
    ),
    (
        "state_dir: /var/ckptd\n",
        'state_dir (line 4): expected a plain name without /, got "/var/ckptd"',
    ),
    (
        "log: {level: verbose}\n",
        'log.level (line 4): expected one of debug, info, warning, error, got "verbose"',
    ),
    (
        "log: {level: INFO}\n",
        'log.level (line 4): expected one of debug, info, warning, error, got "INFO"; did you mean "info"?',
    ),
    ("log: {format: xml}\n", 'log.format (line 4): expected one of text, json, got "xml"'),
    ("metrics: {listen: 9464}\n", "metrics.listen (line 4): expected host:port, got 9464"),
    (
        "metrics: {listen: 'localhost:99999'}\n",
        'metrics.listen (line 4): expected host:port like 127.0.0.1:9464, got "localhost:99999"',
    ),
    (
        "checkpoints:\n  stable_for: !!python/name:os.system\n",
        "checkpoints.stable_for (line 5): unreadable value: could not determine a constructor for the tag 'tag:yaml.org,2002:python/name:os.system'",
    ),
    ("log: {level: info, level: debug}\n", "log.level (line 4): duplicate key"),
    ("colour: blue\n", "colour (line 4): unknown key"),
    ("schedul: {prune: 1h}\n", 'schedul (line 4): unknown key; did you mean "schedule"?'),
]


@pytest.mark.parametrize(("snippet", "expected"), [case for case in BAD_CONFIGS if case[1]])
def test_bad_config_gives_exact_issue(snippet: str, expected: str) -> None:
    assert issues(BASE + snippet) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 2\nroots: [{path: r}]\n",
            "version (line 1): unsupported config version 2: this ckptd reads version 1",
        ),
        (
            "version: '1'\nroots: [{path: r}]\n",
            'version (line 1): unsupported config version "1": this ckptd reads version 1',
        ),
        ("version: 1\n", "roots (line 1): required key is missing"),
        ("version: 1\nroots: []\n", "roots (line 2): expected a non-empty list, got an empty list"),
        ("version: 1\nroots: ./runs\n", 'roots (line 2): expected a non-empty list, got "./runs"'),
        (
            "version: 1\nroots:\n  - run_depth: 0\n",
            "roots[0].path (line 3): required key is missing",
        ),
        ("version: 1\nroots:\n  - ./runs\n", 'roots[0] (line 3): expected a mapping, got "./runs"'),
        (
            "version: 1\nroots:\n  - path: r\n    run_depth: -1\n",
            "roots[0].run_depth (line 4): expected a whole number >= 0, got -1",
        ),
        (
            "version: 1\nroots:\n  - path: r\n    observer: fanotify\n",
            'roots[0].observer (line 4): expected one of auto, inotify, polling, got "fanotify"; did you mean "inotify"?',
        ),
        (
            "version: 1\nroots:\n  - path: r\n    poll_interval: 0\n",
            "roots[0].poll_interval (line 4): expected a duration of at least 1s like 10s, got 0",
        ),
        (
            "version: 1\nroots:\n  - path: r\n    policy: nightly\n",
            'roots[0].policy (line 4): no policy named "nightly" (defined: default)',
        ),
        (
            "version: 1\nroots:\n  - path: r\n    policy: defualt\n",
            'roots[0].policy (line 4): no policy named "defualt" (defined: default); did you mean "default"?',
        ),
        (
            "version: 1\nroots:\n  - path: r\n  - path: ./r/\n",
            "roots[1].path (line 4): {d}/r is already roots[0]",
        ),
        (
            "version: 1\nroots:\n  - path: r\n  - path: r/exp1\n",
            "roots[1].path (line 4): {d}/r/exp1 overlaps roots[0] ({d}/r)",
        ),
        # A user-written policies section replaces the built-in default: a root must name one.
        (
            "version: 1\nroots:\n  - path: r\npolicies:\n  mine: {keep_last: 1}\n",
            'roots[0].policy (line 3): no policy named "default" (defined: mine)',
        ),
    ],
)
def test_bad_top_level_gives_exact_issue(tmp_path: Path, text: str, expected: str) -> None:
    assert issues(text, source=tmp_path / "c.yaml") == [expected.format(d=tmp_path)]


def test_every_issue_is_reported_at_once_in_file_order() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        roots:
          - path: ./runs
            run_depth: -1
            poll_interval: ten
            polcy: default
        checkpoints:
          stable_for: forever
        policies:
          default:
            keep_last: three
            timezone: Mars/Olympus
        log: {level: loud}
        """
    )
    assert issues(text) == [
        "roots[0].run_depth (line 4): expected a whole number >= 0, got -1",
        'roots[0].poll_interval (line 5): expected a duration like 10s, got "ten"',
        'roots[0].polcy (line 6): unknown key; did you mean "policy"?',
        'checkpoints.stable_for (line 8): expected a duration like 10s, got "forever"',
        'policies.default.keep_last (line 11): expected a whole number >= 0, got "three"',
        'policies.default.timezone (line 12): unknown time zone "Mars/Olympus"',
        'log.level (line 13): expected one of debug, info, warning, error, got "loud"',
    ]


def test_config_error_names_file_on_every_line(tmp_path: Path) -> None:
    path = tmp_path / "ckptd.yaml"
    original = BASE + "colour: blue\nlog: {level: loud}\n"
    path.write_text(original)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.lines() == [
        f"{path}: colour (line 4): unknown key",
        f'{path}: log.level (line 5): expected one of debug, info, warning, error, got "loud"',
    ]
    assert path.read_text() == original  # validation never touches the file


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the config is empty (expected a mapping with version and roots)"),
        (b"# only a comment\n", "the config is empty (expected a mapping with version and roots)"),
        (b"- a\n- b\n", "expected a mapping at the top level, got a list"),
        (b"just text\n", "expected a mapping at the top level, got a single value"),
        (
            b"version: 1\nroots: [\n",
            "YAML syntax error at line 3, column 1: expected the node content, but found '<stream end>'",
        ),
        (
            b"version: 1\n  roots: x\n",
            "YAML syntax error at line 2, column 8: mapping values are not allowed here",
        ),
        (b"a: 1\n---\nb: 2\n", "YAML syntax error at line 2, column 1: but found another document"),
        (b"version: \xff\n", "not UTF-8 text (bad byte at offset 9)"),
    ],
)
def test_unreadable_file_is_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "ckptd.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.lines() == [f"{path}: {message}"]
    assert str(caught.value) == f"{path}: {message}"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file$"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r": is a directory, not a config file$"):
        load_config(tmp_path)


def test_unreadable_path_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"file/ckptd\.yaml: cannot read: Not a directory$"):
        load_config(tmp_path / "file" / "ckptd.yaml")


def test_relative_root_resolves_against_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = tmp_path / "etc" / "ckptd.yaml"
    path.write_text("version: 1\nroots:\n  - path: ../runs\n  - path: ./more/\n  - path: /abs/x\n")
    config = load_config(path, check_roots=False)
    assert [root.path for root in config.roots] == [
        tmp_path / "runs",
        tmp_path / "etc" / "more",
        Path("/abs/x"),
    ]
    assert config.source == path


def test_relative_source_and_no_source_resolve_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_config(BASE).roots[0].path == tmp_path / "runs"
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "c.yaml").write_text(BASE)
    config = load_config(Path("conf/c.yaml"), check_roots=False)
    assert config.roots[0].path == tmp_path / "conf" / "runs"
    assert config.source == tmp_path / "conf" / "c.yaml"


def test_home_in_root_path_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_config("version: 1\nroots: [{path: ~/runs}]\n").roots[0].path == tmp_path / "runs"


def test_user_policy_omitted_rules_are_off_but_the_safety_nets_stay() -> None:
    """protect and min_age are overrides, not keep rules: a policy that does not set them keeps
    the default policy's (issue: a written policy silently lost them)."""
    config = parse_config(BASE + "policies:\n  default: {keep_daily: 2}\n")
    assert config.policies == {"default": Policy(name="default", keep_daily=2)}
    policy = config.policies["default"]
    assert (policy.keep_last, policy.keep_within, policy.keep_weekly) == (0, None, 0)
    assert policy.protect == DEFAULT_POLICY.protect == ("best_model.zip",)
    assert policy.min_age == DEFAULT_POLICY.min_age == timedelta(minutes=10)


def test_a_policy_can_turn_the_safety_nets_off() -> None:
    config = parse_config(
        BASE + "policies:\n  default: {keep_daily: 2, protect: [], min_age: 0s}\n"
    )
    assert config.policies["default"].protect == ()
    assert config.policies["default"].min_age == timedelta(0)


def test_config_show_prints_the_safety_nets_of_a_written_policy(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "    policy: mine\npolicies:\n  mine: {keep_last: 5}\n")
    shown = config_to_mapping(load_config(path, check_roots=False))["policies"]["mine"]
    assert shown["protect"] == ["best_model.zip"]
    assert shown["min_age"] == "10m"


def test_full_policy_values() -> None:
    text = BASE + textwrap.dedent(
        """\
        policies:
          default:
            keep_last: 2
            keep_within: 1h30m
            keep_every_steps: 100000
            keep_best: {metric: ep_rew_mean, source: logs/metrics.jsonl, count: 2, mode: min}
            protect: ["best_model.zip", "final/*.zip"]
            min_age: 90
            max_run_size: 50GiB
            timezone: Europe/Berlin
        """
    )
    assert parse_config(text).policies["default"] == Policy(
        name="default",
        keep_last=2,
        keep_within=timedelta(hours=1, minutes=30),
        keep_every_steps=100000,
        keep_best=KeepBest(metric="ep_rew_mean", source="logs/metrics.jsonl", count=2, mode="min"),
        protect=("best_model.zip", "final/*.zip"),
        min_age=timedelta(seconds=90),
        max_run_size=50 * 1024**3,
        timezone="Europe/Berlin",
    )


def test_keep_best_defaults_and_zero_keep_within_is_off() -> None:
    policy = parse_config(
        BASE + "policies:\n  default: {keep_best: {}, keep_within: 0s}\n"
    ).policies["default"]
    assert policy.keep_best == KeepBest()
    assert policy.keep_within is None


def test_keep_within_zero_alone_keeps_nothing() -> None:
    assert issues(BASE + "policies:\n  default: {keep_within: 0s}\n")[0].startswith(
        "policies.default (line 5): the policy keeps nothing"
    )


def test_schedules_interval_cron_and_null() -> None:
    text = BASE + "schedule: {prune: 1h, manifest: 30, rescan: null, scrub: '0  3 * *   sun'}\n"
    schedule = parse_config(text).schedule
    assert schedule.prune == ScheduleSpec(interval=timedelta(hours=1))
    assert schedule.manifest == ScheduleSpec(interval=timedelta(seconds=30))
    assert schedule.rescan is None
    assert schedule.scrub == ScheduleSpec(cron="0 3 * * sun")  # whitespace normalised


def test_cron_weekday_numbers_follow_crontab() -> None:
    # crontab numbers weekdays from Sunday = 0 (7 too); the scheduler translates them, so accept.
    config = parse_config(BASE + "schedule: {scrub: '30 2 * * 1-5', prune: '0 0 * * 0,7'}\n")
    assert config.schedule.scrub == ScheduleSpec(cron="30 2 * * 1-5")


def test_yaml_merge_keys_and_anchors() -> None:
    text = BASE + textwrap.dedent(
        """\
        policies:
          default: &base
            keep_last: 3
            keep_daily: 7
          long:
            <<: *base
            keep_daily: 30
        """
    )
    policies = parse_config(text).policies
    assert policies["long"] == Policy(name="long", keep_last=3, keep_daily=30)
    assert policies["default"] == Policy(name="default", keep_last=3, keep_daily=7)


def test_mapping_input_with_python_values(tmp_path: Path) -> None:
    config = parse_config(
        {
            "version": 1,
            "roots": [
                {"path": tmp_path / "runs", "run_depth": 0, "poll_interval": timedelta(seconds=2)}
            ],
            "checkpoints": {"patterns": ("*.zip",), "stable_for": timedelta(0)},
            "policies": {"default": {"keep_last": 2}},
        }
    )
    assert config.roots == (
        RootConfig(path=tmp_path / "runs", run_depth=0, poll_interval=timedelta(seconds=2)),
    )
    assert config.checkpoints == CheckpointsConfig(patterns=("*.zip",), stable_for=timedelta(0))


def test_mapping_input_issues_have_paths_without_lines() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"version": 1, "roots": [{"path": "r", "observer": "magic"}], "extra": 1})
    assert [str(issue) for issue in caught.value.issues] == [
        "extra: unknown key",
        'roots[0].observer: expected one of auto, inotify, polling, got "magic"',
    ]
    assert caught.value.path is None


def test_mapping_input_rejects_objects_yaml_cannot_hold() -> None:
    with pytest.raises(ConfigError, match="cannot use this value in a config"):
        parse_config({"version": 1, "roots": [{"path": object()}]})


def test_config_is_frozen() -> None:
    config = parse_config(BASE)
    with pytest.raises(AttributeError):
        config.state_dir = "x"  # type: ignore[misc]


# --- the shipped configs -----------------------------------------------------------------------


def test_default_config_is_exactly_the_model_defaults() -> None:
    """config/ckptd.yaml spells out every default: it must agree with the model in ckptd.config.model."""
    config = load_config(DEFAULT_CONFIG)
    assert config == Config(roots=(RootConfig(path=CHECKOUT / "runs"),), source=DEFAULT_CONFIG)


def _schema_keys(schema: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, sub in schema.get("properties", {}).items():
        keys.add(prefix + name)
        for option in [sub, *sub.get("anyOf", [])]:
            if option.get("type") == "object" and "properties" in option:
                keys |= _schema_keys(option, f"{prefix}{name}.")
            if option.get("type") == "array" and "properties" in option.get("items", {}):
                keys |= _schema_keys(option["items"], f"{prefix}{name}[].")
            if isinstance(option.get("additionalProperties"), dict):
                keys |= _schema_keys(option["additionalProperties"], f"{prefix}{name}.*.")
    return keys


def _yaml_keys(value: Any, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(value, dict):
        for name, sub in value.items():
            path = prefix + ("*" if prefix.endswith("policies.") else name)
            keys.add(path)
            keys |= _yaml_keys(sub, path + ".")
    elif isinstance(value, list):
        for item in value:
            keys |= _yaml_keys(item, prefix.removesuffix(".") + "[].")
    return keys


def test_default_config_lists_every_key() -> None:
    listed = _yaml_keys(yaml.safe_load(DEFAULT_CONFIG.read_text()))
    every_key = _schema_keys(config_schema())
    # keep_best is null in the default (off); its sub-keys are shown in a comment instead.
    missing = {key for key in every_key - listed if not key.startswith("policies.*.keep_best.")}
    assert missing == set()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_shipped_config_validates_and_round_trips(path: Path) -> None:
    config = load_config(path, check_roots=False)
    mapping = config_to_mapping(config)
    assert parse_config(mapping, source=path) == config
    # Through YAML text too, as `ckptd config show` prints it.
    assert parse_config(yaml.safe_dump(mapping, sort_keys=False), source=path) == config


def test_examples_exist() -> None:
    assert [path.name for path in EXAMPLES] == [
        "deepspeed.yaml",
        "huggingface.yaml",
        "lightning.yaml",
        "long-run-nfs.yaml",
        "rl-lab-sb2.yaml",
        "shared-disk-budget.yaml",
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_validates_with_the_cli_once_its_roots_exist(
    tmp_path: Path, path: Path
) -> None:
    """``ckptd config validate`` as a user runs it, on the example with only its roots' paths
    changed to directories that exist here; and the README has a row for it."""
    document = yaml.safe_load(path.read_text())
    for index, root in enumerate(document["roots"]):
        root["path"] = str(tmp_path / f"root{index}")
        (tmp_path / f"root{index}").mkdir()
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(document, sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "ckptd", "config", "validate", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(f"{copy}: ok")
    assert f"| `{path.name}` |" in (CHECKOUT / "README.md").read_text()


def test_the_trainer_examples_name_their_directory_checkpoints() -> None:
    examples = {path.name: load_config(path, check_roots=False) for path in EXAMPLES}
    assert examples["huggingface.yaml"].checkpoints.directories == ("checkpoint-*",)
    assert examples["deepspeed.yaml"].checkpoints.directories == ("global_step*",)
    keep_best = examples["huggingface.yaml"].policies["hf"].keep_best
    assert keep_best is not None
    assert (keep_best.metric, keep_best.source, keep_best.mode) == (
        "eval_loss",
        "trainer_state.json",
        "min",
    )


def test_config_to_mapping_formats_values(tmp_path: Path) -> None:
    text = BASE + "policies:\n  default: {keep_last: 1, max_run_size: 1536, keep_within: 90m}\n"
    mapping = config_to_mapping(parse_config(text, source=tmp_path / "c.yaml"))
    assert list(mapping) == [
        "version", "roots", "checkpoints", "convert", "policies", "delete", "schedule",
        "scrub", "monitor", "manifest", "state_dir", "log", "metrics", "limits", "coordination",
    ]  # fmt: skip
    assert mapping["limits"] == {
        "max_opcodes": 1000000,
        "max_depth": 100,
        "max_expanded_nodes": 1000000,
        "max_memory": "256MiB",
        "max_seconds": "10m",
    }
    assert mapping["roots"] == [
        {
            "path": str(tmp_path / "runs"),
            "run_depth": 1,
            "observer": "auto",
            "poll_interval": "10s",
            "policy": "default",
            "optional": False,
        }
    ]
    policy = mapping["policies"]["default"]
    assert (policy["max_run_size"], policy["keep_within"], policy["keep_best"]) == (
        "1536B",
        "1h30m",
        None,
    )
    assert mapping["scrub"] == {"max_rate": "200MiB"}
    assert mapping["schedule"] == {"prune": "15m", "manifest": "1m", "rescan": "1h", "scrub": None}


# --- the schema --------------------------------------------------------------------------------


def _validator() -> jsonschema.Draft202012Validator:
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_schema_accepts_shipped_configs_and_their_effective_form(path: Path) -> None:
    validator = _validator()
    validator.validate(yaml.safe_load(path.read_text()))
    validator.validate(config_to_mapping(load_config(path, check_roots=False)))


@pytest.mark.parametrize(
    "bad",
    [
        {"colour": "blue"},
        {"log": {"level": "info", "colour": "blue"}},
        {"roots": [{"path": "r", "polcy": "default"}]},
        {"policies": {"default": {"keep_last": 1, "keep_forever": True}}},
        {"policies": {"default": {"keep_best": {"metric": "r", "top": 3}}}},
    ],
)
def test_schema_rejects_unknown_keys_everywhere(bad: dict[str, Any]) -> None:
    document = {"version": 1, "roots": [{"path": "r"}], **bad}
    assert not _validator().is_valid(document)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(document)


@pytest.mark.parametrize(
    "bad",
    [
        {"version": 2},
        {"roots": []},
        {"roots": [{"path": "r", "poll_interval": "ten"}]},
        {"roots": [{"path": "r", "observer": "fanotify"}]},
        {"checkpoints": {"stable_for": -1}},
        {"policies": {"default": {"keep_last": 1, "max_run_size": "50GB"}}},
        {"delete": {"max_fraction": 0}},
        {"state_dir": "a/b"},
        {"metrics": {"listen": "nohost"}},
        {"schedule": {"prune": "soon"}},
    ],
)
def test_schema_and_validator_reject_the_same_bad_values(bad: dict[str, Any]) -> None:
    document = {"version": 1, "roots": [{"path": "r"}], **bad}
    assert not _validator().is_valid(document)
    with pytest.raises(ConfigError):
        parse_config(document)


def test_schema_describes_every_key_with_defaults() -> None:
    def walk(schema: dict[str, Any], where: str) -> None:
        for name, sub in schema.get("properties", {}).items():
            assert sub.get("description"), f"{where}{name} has no description"
            if name not in schema.get("required", []):
                assert "default" in sub, f"{where}{name} has no default"
            for option in [sub, *sub.get("anyOf", [])]:
                if option.get("type") == "object":
                    walk(option, f"{where}{name}.")
                    if isinstance(option.get("additionalProperties"), dict):
                        walk(option["additionalProperties"], f"{where}{name}.*.")
                if option.get("type") == "array":
                    walk(option["items"], f"{where}{name}[].")
            assert schema.get("additionalProperties") is False, f"{where} allows unknown keys"

    schema = config_schema()
    walk(schema, "")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["policies"]["default"]["default"]["keep_last"] == 3


# --- limits ------------------------------------------------------------------------------------


def test_limits_parse_into_the_library_value(tmp_path: Path) -> None:
    text = (
        BASE + "limits: {max_opcodes: 5000, max_depth: 50, max_memory: 64MiB, max_seconds: 90s}\n"
    )
    limits = parse_config(text, source=tmp_path / "c.yaml").limits
    assert limits == Limits(
        max_opcodes=5000, max_depth=50, max_memory=64 * 1024**2, max_seconds=timedelta(seconds=90)
    )
    assert limits.max_expanded_nodes == Limits().max_expanded_nodes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "limits: {max_depth: 201}",
            "limits.max_depth (line 4): expected a whole number from 1 to 200",
        ),
        ("limits: {max_opcodes: 0}", "limits.max_opcodes (line 4): expected a whole number >= 1"),
        (
            "limits: {max_memory: 1KiB}",
            "limits.max_memory (line 4): expected a size of at least 1MiB",
        ),
        (
            "limits: {max_seconds: 0s}",
            "limits.max_seconds (line 4): expected a duration of at least 1s",
        ),
        ("limits: {max_nodes: 5}", "limits.max_nodes (line 4): unknown key"),
    ],
)
def test_limits_are_validated(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + text + "\n", source=tmp_path / "c.yaml")
    assert any(line.endswith(message) or message in line for line in caught.value.lines()), (
        caught.value.lines()
    )
