"""The scale fast paths give the results of the plain paths: frozen builds, manifest parsing,
mtime conversion, calendar period keys, pre-rendered JSON across forked workers, and the GC pause."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import os
import random
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ckptd.cli.exits import ExitStatus
from ckptd.cli.main import main
from ckptd.cli.prune_cmds import cyclic_gc_paused, prune_json_chunks, run_json
from ckptd.config.model import CheckpointsConfig, Config, DeleteConfig, Policy, RootConfig
from ckptd.errors import ManifestError
from ckptd.formats import Format
from ckptd.frozen_build import build_frozen
from ckptd.fs.files import FileIdentity
from ckptd.manifest.jsonio import JsonChecker
from ckptd.manifest.model import ManifestEntry
from ckptd.manifest.parse import _entry_checked, _entry_fast, manifest_from_json
from ckptd.manifest.store import MAX_MANIFEST_BYTES, load_manifest
from ckptd.retention.deletion import Deleted
from ckptd.retention.passes import PassOptions
from ckptd.retention.plan import _CALENDAR_RULES, Candidate, plan_run
from ckptd.retention.prune import prune_all, prune_all_rendered
from ckptd.retention.report import PathDecision, RunReport
from ckptd.runs.checkpoints import Checkpoint, utc_from_ns
from ckptd.timefmt import format_utc, format_utc_ns, from_ns

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# ---- build_frozen -------------------------------------------------------------------------------


def _field_values(instance: object) -> dict[str, Any]:
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "instance",
    [
        ManifestEntry("a.zip", 5, 10, NOW, "ab", Format.SB2_ZIP, "kept", ("r",), mtime_ns=7),
        FileIdentity(1, 2, 3, 4),
        PathDecision("a.zip", "keep", ("keep_last #1",)),
        Checkpoint("a.zip", 5, FileIdentity(1, 2, 3, 4), Format.SB2_ZIP, None, True, "ok"),
    ],
)
def test_build_frozen_equals_the_constructor(instance: object) -> None:
    built = build_frozen(type(instance), _field_values(instance))
    assert built == instance and hash(repr(built)) == hash(repr(instance))
    assert dataclasses.replace(built) == instance  # type: ignore[type-var]
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.path = "b"  # type: ignore[attr-defined]


# ---- manifest entries ---------------------------------------------------------------------------


def _manifest_bytes(entries: list[dict[str, Any]]) -> bytes:
    document = {
        "schema": "ckptd.manifest/1",
        "run": "r",
        "generated_at": "2026-03-01T12:00:00Z",
        "policy": "default",
        "checkpoints": entries,
        "removed": [],
    }
    return json.dumps(document).encode()


def _entry_json(path: str, **changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "path": path,
        "step": 5000,
        "size": 10,
        "mtime": "2026-03-01T11:00:00.000123Z",
        "sha256": "ab" * 32,
        "format": "sb2-zip",
        "state": "kept",
        "reasons": ["keep_last #1"],
        "mtime_ns": 1_772_362_800_000_123_000,
    }
    entry.update(changes)
    return entry


def test_fast_parsed_entries_equal_constructed_ones_with_every_field() -> None:
    manifest = manifest_from_json(
        _manifest_bytes([_entry_json("b.zip"), _entry_json("a.pkl", step=None, sha256=None)]),
        source="m.json",
    )
    expected = ManifestEntry(
        "b.zip",
        5000,
        10,
        datetime(2026, 3, 1, 11, 0, 0, 123, tzinfo=UTC),
        "ab" * 32,
        Format.SB2_ZIP,
        "kept",
        ("keep_last #1",),
        mtime_ns=1_772_362_800_000_123_000,
    )
    assert [e.path for e in manifest.checkpoints] == ["a.pkl", "b.zip"]
    assert manifest.checkpoints[1] == expected
    assert set(vars(manifest.checkpoints[1])) == {f.name for f in dataclasses.fields(expected)}
    # Round trip: what the fast path read is what gets written again.
    assert manifest_from_json(manifest.to_json_bytes(), source="m.json") == manifest


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": []}, "format: expected a string"),  # unhashable: once a TypeError crash
        ({"state": {"x": 1}}, "state: expected a string"),
        ({"format": "tarball"}, "unknown format"),
        ({"reasons": ["ok", 3]}, "reasons: expected a list of strings"),
        ({"size": True}, "size: expected a non-negative integer"),
        ({"mtime": 5}, "mtime: expected a string"),
    ],
)
def test_bad_entries_fall_back_to_the_checker_and_name_the_field(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ManifestError, match=message) as caught:
        manifest_from_json(_manifest_bytes([_entry_json("a.zip", **changes)]), source="m.json")
    assert "m.json" in str(caught.value) and "\n" not in str(caught.value)


def test_load_manifest_reads_the_whole_file_and_still_refuses_oversized_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ckptd-manifest.json"
    entries = [_entry_json(f"rl_model_{i}_steps.zip") for i in range(300)]
    path.write_bytes(_manifest_bytes(entries))
    assert len(load_manifest(path).checkpoints) == 300
    with path.open("ab") as handle:
        handle.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: no real 64 MiB written
    with pytest.raises(ManifestError, match="larger than"):
        load_manifest(path)


# ---- times and periods --------------------------------------------------------------------------


def test_utc_from_ns_equals_timefmt_from_ns() -> None:
    rng = random.Random(5)
    samples = [0, 1, 999, 1000, -1, -1001, 1_772_362_800_123_456_789, 253_402_300_799_999_999_000]
    samples += [rng.randrange(-(10**18), 10**19) for _ in range(2000)]
    for ns in samples:
        assert utc_from_ns(ns) == from_ns(ns) and utc_from_ns(ns).utcoffset() == timedelta(0)


def test_format_utc_ns_equals_format_utc_of_from_ns() -> None:
    rng = random.Random(6)
    samples = [0, 1, 999, 1000, -1, -1001, 1_772_362_800_123_456_789, 253_402_300_799_999_999_000]
    samples += [rng.randrange(-(10**18), 10**19) for _ in range(2000)]
    samples += [rng.randrange(0, 10**9) * 1_000_000_000 for _ in range(200)]  # whole seconds
    for ns in samples:
        assert format_utc_ns(ns) == format_utc(from_ns(ns)), ns


def _reference_period(rule: str, moment: datetime) -> object:
    """The period keys as first written (date tuples, isocalendar)."""
    keys = {
        "keep_hourly": (moment.year, moment.month, moment.day, moment.hour, moment.utcoffset()),
        "keep_daily": (moment.year, moment.month, moment.day),
        "keep_weekly": tuple(moment.isocalendar())[:2],
        "keep_monthly": (moment.year, moment.month),
        "keep_yearly": moment.year,
    }
    return keys[rule]


@pytest.mark.parametrize(
    "zone", ["UTC", "Europe/Berlin", "America/St_Johns", "Australia/Lord_Howe"]
)
def test_period_keys_split_time_exactly_like_calendar_tuples(zone: str) -> None:
    rng = random.Random(zone)
    tz = ZoneInfo(zone)
    start = datetime(1999, 12, 20, tzinfo=UTC)
    # Dense around year ends and DST changes, sparse elsewhere.
    moments = sorted(
        (start + timedelta(minutes=rng.randrange(0, 60 * 24 * 365 * 30))).astimezone(tz)
        for _ in range(4000)
    )
    moments += [
        datetime(2020, 10, 25, 0, 30, tzinfo=UTC) + timedelta(minutes=15 * i) for i in range(16)
    ]
    moments = [m.astimezone(tz) for m in sorted(moments)]
    for rule, period in _CALENDAR_RULES:
        for before, after in itertools.pairwise(moments):
            same = period(before) == period(after)
            assert same == (_reference_period(rule, before) == _reference_period(rule, after)), (
                rule,
                before,
                after,
            )


def test_utc_policies_plan_the_same_through_datetime_utc_and_zoneinfo() -> None:
    rng = random.Random(11)
    candidates = [
        Candidate(
            f"rl_model_{i}_steps.zip",
            i,
            NOW - timedelta(minutes=rng.randrange(0, 60 * 24 * 900)),
            1,
        )
        for i in range(400)
    ]
    rules: dict[str, Any] = {
        "keep_hourly": 5,
        "keep_daily": 9,
        "keep_weekly": 6,
        "keep_monthly": 4,
        "keep_yearly": 2,
    }
    fast = plan_run(candidates, Policy(name="p", timezone="UTC", **rules), now=NOW)
    slow = plan_run(candidates, Policy(name="p", timezone="Etc/UTC", **rules), now=NOW)
    assert fast == slow and fast.deletions


# ---- pre-rendered JSON through forked workers -----------------------------------------------------


def _make_zip(path: Path, when: datetime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", "{}")
        archive.writestr("parameters", b"x")
        archive.writestr("parameter_list", "[]")
    ns = int(when.timestamp()) * 1_000_000_000
    os.utime(path, ns=(ns, ns))


@pytest.fixture
def many_runs(tmp_path: Path) -> Iterator[Config]:
    """120 runs (enough for two forked workers), one with bad pins, and one missing root."""
    root = tmp_path / "runs"
    for index in range(120):
        for i in range(4):
            _make_zip(
                root / f"run-{index:03d}" / f"rl_model_{i}_steps.zip", NOW - timedelta(hours=5 - i)
            )
    (root / "run-007" / ".ckptd").mkdir()
    (root / "run-007" / ".ckptd" / "pins.json").write_text("[]")
    (root / "run-008" / "rl_model_9_steps.pkl").write_bytes(b"not a pickle")
    yield Config(
        roots=(RootConfig(path=root), RootConfig(path=tmp_path / "missing")),
        checkpoints=CheckpointsConfig(stable_for=timedelta(seconds=5)),
        policies={"default": Policy(name="default", keep_last=2)},
        delete=DeleteConfig(max_fraction=1.0),
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_rendered_json_is_byte_identical_to_the_report_json(
    many_runs: Config, workers: int
) -> None:
    options = PassOptions(workers=workers)
    report = prune_all(many_runs, now=NOW, dry_run=True, options=options)
    rendered = prune_all_rendered(
        many_runs, now=NOW, dry_run=True, render=run_json, options=options
    )
    assert "".join(prune_json_chunks(rendered)) == json.dumps(report.to_json_obj())
    assert rendered.ok == report.ok is False
    assert rendered.failed_runs == 1 and len(rendered.problems) == 1


def test_rendered_real_pass_writes_the_same_index_as_prune_all(tmp_path: Path) -> None:
    def tree(root: Path) -> Config:
        for index in range(3):
            for i in range(4):
                _make_zip(
                    root / f"r{index}" / f"rl_model_{i}_steps.zip", NOW - timedelta(hours=5 - i)
                )
        return Config(
            roots=(RootConfig(path=root),),
            policies={"default": Policy(name="default", keep_last=2)},
            delete=DeleteConfig(max_fraction=1.0),
        )

    plain, rendered = tree(tmp_path / "a"), tree(tmp_path / "b")
    prune_all(plain, now=NOW, dry_run=False)
    outcome = prune_all_rendered(rendered, now=NOW, dry_run=False, render=run_json)
    assert outcome.ok and len(outcome.runs) == 3
    index_a = json.loads((tmp_path / "a" / "ckptd-index.json").read_text())
    index_b = json.loads((tmp_path / "b" / "ckptd-index.json").read_text())
    assert [r["checkpoints"] for r in index_b["runs"]] == [2, 2, 2]
    assert index_a["runs"] == index_b["runs"]


def test_cli_json_output_equals_the_report_json(
    many_runs: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "ckptd.yaml"
    config.write_text(
        "version: 1\nroots:\n  - path: ./runs\n  - {path: ./missing, optional: true}\n"
        "policies:\n  default:\n    keep_last: 2\ndelete:\n  max_fraction: 1.0\n"
    )
    status = main(["prune", "-c", str(config), "--dry-run", "--json"])
    out = capsys.readouterr().out
    assert status == ExitStatus.FAILED
    report = prune_all(many_runs, now=datetime.now(UTC), dry_run=True)
    assert out == json.dumps(report.to_json_obj()) + "\n"


def test_gc_pause_restores_the_previous_state() -> None:
    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), cyclic_gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


@pytest.mark.parametrize(
    "mtime",
    [
        "2026-03-01T11:00:00.000123Z",  # what ckptd writes: parsed to UTC directly
        "2026-03-01T11:00:00Z",
        "2026-03-01T11:00:00+00:00",
        "2026-03-01T13:00:00.5+02:00",  # another offset: converted to UTC as the checker does
        "2026-03-01T06:00:00-05:00",
    ],
)
def test_fast_parsed_mtimes_equal_the_checkers(mtime: str) -> None:
    obj = _entry_json("a.zip", mtime=mtime)
    fast = _entry_fast(dict(obj))
    checked = _entry_checked(dict(obj), "checkpoints[0]", JsonChecker("m.json"))
    assert fast is not None and fast == checked
    assert fast.mtime.utcoffset() == timedelta(0) and fast.mtime.tzinfo is UTC


@pytest.mark.parametrize("mtime", ["2026-03-01T11:00:00", "yesterday", ""])
def test_mtimes_without_an_offset_or_junk_go_to_the_checker(mtime: str) -> None:
    assert _entry_fast(_entry_json("a.zip", mtime=mtime)) is None
    with pytest.raises(ManifestError, match="mtime"):
        manifest_from_json(_manifest_bytes([_entry_json("a.zip", mtime=mtime)]), source="m.json")


# ---- JSON text of a run report ------------------------------------------------------------------

_ODD_TEXT = [
    "",
    "a.zip",
    'q"uote\\back',
    "tab\tnew\nline\x00\x1f\x7f",
    "é ü 日本",
    "\udcff\udc80",
    "😀",
]


def _odd_decision(rng: random.Random) -> PathDecision:
    has_fields = rng.random() < 0.8
    return PathDecision(
        path=rng.choice(_ODD_TEXT) + f"rl_{rng.randrange(10**6)}.zip",
        action=rng.choice(["keep", "delete", "skip"]),
        reasons=tuple(
            rng.choice([*_ODD_TEXT, "no rule keeps it", "keep_last #1"])
            for _ in range(rng.randrange(4))
        ),
        original=rng.choice([None, None, *_ODD_TEXT]),
        step=rng.choice([None, 0, 7, 10**20]) if has_fields else None,
        size=rng.choice([None, 0, 371, 2**70]) if has_fields else None,
        mtime_ns=rng.choice([0, -1001, 1_796_661_098_123_456_789, rng.randrange(10**19)])
        if has_fields
        else None,
        format=rng.choice([None, "sb2-zip", "unknown"]) if has_fields else None,
    )


def test_run_report_json_text_equals_json_dumps_of_its_json_object() -> None:
    rng = random.Random(14)
    for _ in range(300):
        report = RunReport(
            root=Path("/r") / rng.choice([*_ODD_TEXT, "x"]),
            run=rng.choice([".", *_ODD_TEXT]),
            decisions=tuple(_odd_decision(rng) for _ in range(rng.randrange(6))),
            guard=rng.choice([None, *_ODD_TEXT]),
            notes=tuple(rng.choice(_ODD_TEXT) for _ in range(rng.randrange(3))),
            deleted=tuple(
                Deleted(rng.choice(_ODD_TEXT), rng.choice([None, *_ODD_TEXT]), None, None, 5)
                for _ in range(rng.randrange(3))
            ),
            bytes_freed=rng.choice([0, 5, 2**66]),
            purged=tuple(rng.choice(_ODD_TEXT) for _ in range(rng.randrange(3))),
            bytes_purged=rng.choice([0, 9]),
            error=rng.choice([None, None, *_ODD_TEXT]),
        )
        assert report.to_json_text() == json.dumps(report.to_json_obj())
