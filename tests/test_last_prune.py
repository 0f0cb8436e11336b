"""``last_prune`` in the manifest and sizes in its ``removed`` list, and what ``status`` shows of them.

Every real prune pass records itself (also one that deleted nothing, or that the guard stopped);
a dry run writes nothing; manifests written before these fields load as they are.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ckptd.config.model import Config
from ckptd.errors import ManifestError
from ckptd.formats import Format
from ckptd.manifest.model import Manifest, ManifestEntry, PruneRecord, RemovedEntry
from ckptd.manifest.parse import manifest_from_json
from ckptd.ops.status import RunFacts, Usage, status_all, summarize
from ckptd.retention.prune import prune_all
from ckptd.runs.roots import RunRef
from ckptd.timefmt import format_utc
from tests.ops_helpers import MANIFEST, converted_run, manifest_of, ops_config, run_report

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SHA = "ab" * 32


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return ops_config(tmp_path / "runs")


def sample(**changes: object) -> Manifest:
    entry = ManifestEntry("a_3_steps.zip", 3, 100, NOW, SHA, Format.SB2_ZIP, "kept")
    removed = RemovedEntry(
        "a_1_steps.zip",
        SHA,
        NOW,
        ("no rule keeps it",),
        ".ckptd/trash/a_1_steps.zip",
        converted_from="a_1_steps.pkl",
        converted_from_sha256=SHA,
        converted_from_trash=".ckptd/trash/a_1_steps.pkl",
        size=100,
        converted_from_size=250,
    )
    record = PruneRecord(NOW, deleted=1, bytes_freed=350, guard=None)
    manifest = Manifest("a", NOW, "default", (entry,), (removed,), last_prune=record)
    return dataclasses.replace(manifest, **changes)  # type: ignore[arg-type]


def test_last_prune_and_removed_sizes_round_trip_in_the_json() -> None:
    manifest = sample()
    obj = json.loads(manifest.to_json_bytes())
    assert obj["last_prune"] == {
        "at": "2026-03-01T12:00:00Z",
        "deleted": 1,
        "bytes_freed": 350,
        "guard": None,
    }
    assert obj["removed"][0]["size"] == 100 and obj["removed"][0]["converted_from_size"] == 250
    loaded = manifest_from_json(manifest.to_json_bytes(), source="m.json")
    assert loaded == manifest
    assert loaded.removed[0].bytes_freed == 350


def test_a_manifest_written_before_these_fields_still_loads() -> None:
    obj = json.loads(sample().to_json_bytes())
    del obj["last_prune"]
    for removed in obj["removed"]:
        del removed["size"], removed["converted_from_size"]
    loaded = manifest_from_json(json.dumps(obj), source="old.json")
    assert loaded.last_prune is None
    assert (loaded.removed[0].size, loaded.removed[0].bytes_freed) == (None, None)
    assert "last_prune" not in json.loads(loaded.to_json_bytes())  # nothing made up
    assert "size" not in json.loads(loaded.to_json_bytes())["removed"][0]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"deleted": -1}, "last_prune.deleted"),
        ({"bytes_freed": "lots"}, "last_prune.bytes_freed"),
        ({"at": "yesterday"}, "last_prune.at"),
        ({"guard": 3}, "last_prune.guard"),
    ],
)
def test_a_bad_last_prune_is_a_one_line_error_naming_the_field(
    change: dict[str, object], where: str
) -> None:
    obj = json.loads(sample().to_json_bytes())
    obj["last_prune"].update(change)
    with pytest.raises(ManifestError, match=f"m.json: {where}") as caught:
        manifest_from_json(json.dumps(obj), source="m.json")
    assert "\n" not in str(caught.value)


def test_every_real_prune_pass_records_itself_and_a_dry_run_writes_nothing(
    config: Config,
) -> None:
    run = converted_run(config)
    trash = run / ".ckptd" / "trash"
    first_at = datetime.now(UTC)

    report = run_report(prune_all(config, now=first_at, dry_run=False), "ppo-1")

    manifest = manifest_of(run)
    assert manifest.last_prune == PruneRecord(first_at, 2, report.bytes_freed, None)
    assert report.bytes_freed == sum(p.stat().st_size for p in trash.glob("rl_model_*"))
    for removed in manifest.removed:
        assert removed.size == (trash / Path(removed.trash or "").name).stat().st_size
        original = trash / Path(removed.converted_from_trash or "").name
        assert removed.converted_from_size == original.stat().st_size
    assert sum(r.bytes_freed or 0 for r in manifest.removed) == report.bytes_freed

    before = (run / MANIFEST).read_bytes()
    prune_all(config, now=first_at + timedelta(minutes=5), dry_run=True)
    assert (run / MANIFEST).read_bytes() == before

    second_at = first_at + timedelta(minutes=15)
    report = run_report(prune_all(config, now=second_at, dry_run=False), "ppo-1")
    assert report.deleted == () and report.manifest_written
    manifest = manifest_of(run)
    assert manifest.last_prune == PruneRecord(second_at, 0, 0, None)
    assert len(manifest.removed) == 2  # the earlier removals stay listed


def test_a_guarded_pass_records_the_guard(tmp_path: Path) -> None:
    config = ops_config(tmp_path / "runs", delete={"mode": "trash", "max_fraction": 0.5})
    run = converted_run(config, steps=(1000, 2000, 3000, 4000))
    at = datetime.now(UTC)
    prune_all(config, now=at, dry_run=False)
    record = manifest_of(run).last_prune
    assert record is not None and (record.at, record.deleted, record.bytes_freed) == (at, 0, 0)
    assert record.guard == "guard: max_fraction 0.5 (would delete 3 of 4)"


def test_status_shows_the_last_pass_even_when_it_deleted_nothing(config: Config) -> None:
    run = converted_run(config)
    first_at = datetime.now(UTC)
    prune_all(config, now=first_at, dry_run=False)
    (status,) = status_all(config, now=first_at).runs
    assert status.last_prune is not None
    assert (status.last_prune.at, status.last_prune.removed) == (first_at, 2)
    assert status.last_prune.bytes == status.trash.bytes > 0

    second_at = first_at + timedelta(minutes=15)
    prune_all(config, now=second_at, dry_run=False)
    (status,) = status_all(config, now=second_at).runs
    assert status.last_prune is not None
    assert (status.last_prune.at, status.last_prune.removed, status.last_prune.bytes) == (
        second_at,
        0,
        0,
    )
    shown = status.to_json_obj()["last_prune"]
    assert shown == {"at": format_utc(second_at), "removed": 0, "bytes": 0, "guard": None}
    assert manifest_of(run).last_prune is not None


RUN = RunRef(Path("/r"), Path("/r/ppo"), "ppo")


def facts(last_prune_bytes: int | None = None) -> RunFacts:
    return RunFacts({}, Usage(), Usage(), 0, last_prune_bytes)


def test_summarize_prefers_the_record_then_recorded_sizes_then_the_trash(tmp_path: Path) -> None:
    config = ops_config(tmp_path)
    guarded = PruneRecord(NOW, 0, 0, "guard: max_fraction 0.5 (would delete 3 of 4)")
    status = summarize(RUN, sample(last_prune=guarded), facts(999), config, now=NOW)
    assert status.last_prune is not None
    assert (status.last_prune.removed, status.last_prune.bytes) == (0, 0)
    assert status.last_prune.guard == guarded.guard

    # An older manifest: no record; its newest removals know their sizes (the trash may be purged).
    status = summarize(RUN, sample(last_prune=None), facts(None), config, now=NOW)
    assert status.last_prune is not None
    assert (status.last_prune.at, status.last_prune.removed, status.last_prune.bytes) == (
        NOW,
        1,
        350,
    )

    # Older still: no sizes either; what the trash files measured is all there is.
    sizeless = RemovedEntry("x.zip", None, NOW, ("r",), ".ckptd/trash/x.zip")
    old = sample(last_prune=None, removed=(sizeless,))
    status = summarize(RUN, old, facts(123), config, now=NOW)
    assert status.last_prune is not None and status.last_prune.bytes == 123
