"""Manifest model: deterministic JSON, strict validation, pure update helpers, the root index."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ckptd.errors import ManifestError
from ckptd.formats import Format
from ckptd.manifest.model import MAX_REMOVED, Manifest, ManifestEntry, ParamsSummary, RemovedEntry
from ckptd.manifest.parse import manifest_from_json
from ckptd.manifest.root_index import IndexRun, RootIndex, index_run
from ckptd.manifest.store import load_index, load_manifest, write_index, write_manifest
from ckptd.manifest.updates import add_removed, drop_entry, set_entry, with_conversion, with_state

NOW = datetime(2026, 11, 23, 20, 0, tzinfo=UTC)
SHA = "ab" * 32
ENTRY_2 = r"checkpoints\[2\] \(rl_model_5000_steps\.zip\)"


def entry(path: str, step: int | None = 5000, **changes: object) -> ManifestEntry:
    base = ManifestEntry(
        path=path,
        step=step,
        size=59746,
        mtime=datetime(2026, 11, 23, 19, 0, 0, 123456, tzinfo=UTC),
        sha256=SHA,
        format=Format.SB2_ZIP,
        state="kept",
        reasons=("keep_last #1",),
        mtime_ns=1_795_460_400_123_456_789,
    )
    import dataclasses

    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def sample() -> Manifest:
    converted = with_conversion(
        entry("rl_model_5000_steps.zip"),
        converted_from="rl_model_5000_steps.pkl",
        algorithm="PPO2",
        params=ParamsSummary(count=14, bytes=37140),
        carries_code=["learning_rate", "cliprange"],
    )
    return Manifest(
        run="ppo-cartpole-3",
        generated_at=NOW,
        policy="default",
        checkpoints=(
            entry("z_last_1_steps.zip", step=1),
            converted,
            entry(
                ".ckptd/legacy/rl_model_5000_steps.pkl",
                step=None,
                format=Format.SB2_PICKLE,
                state="converted",
            ),
            entry("pending_9_steps.pkl", step=9, sha256=None, state="pending", reasons=()),
        ),
        removed=(
            RemovedEntry(
                path="rl_model_1000_steps.zip",
                sha256=SHA,
                removed_at=NOW,
                reasons=("no rule keeps it",),
                trash=".ckptd/trash/rl_model_1000_steps.zip",
            ),
        ),
    )


def test_manifest_json_matches_the_contract_shape() -> None:
    obj = json.loads(sample().to_json_bytes())
    assert obj["schema"] == "ckptd.manifest/1"
    assert obj["run"] == "ppo-cartpole-3"
    assert obj["generated_at"] == "2026-11-23T20:00:00Z"
    assert obj["policy"] == "default"
    by_path = {item["path"]: item for item in obj["checkpoints"]}
    converted = by_path["rl_model_5000_steps.zip"]
    assert converted == {
        "path": "rl_model_5000_steps.zip",
        "step": 5000,
        "size": 59746,
        "mtime": "2026-11-23T19:00:00.123456Z",
        "sha256": SHA,
        "format": "sb2-zip",
        "state": "kept",
        "reasons": ["keep_last #1"],
        "converted_from": "rl_model_5000_steps.pkl",
        "algorithm": "PPO2",
        "params": {"count": 14, "bytes": 37140},
        "carries_code": ["learning_rate", "cliprange"],
        "mtime_ns": 1_795_460_400_123_456_789,
    }
    assert by_path["pending_9_steps.pkl"]["sha256"] is None
    assert obj["removed"] == [
        {
            "path": "rl_model_1000_steps.zip",
            "sha256": SHA,
            "removed_at": "2026-11-23T20:00:00Z",
            "reasons": ["no rule keeps it"],
            "trash": ".ckptd/trash/rl_model_1000_steps.zip",
        }
    ]


def test_manifest_bytes_are_deterministic_sorted_and_end_with_newline() -> None:
    first = sample()
    shuffled = Manifest(
        run=first.run,
        generated_at=first.generated_at,
        policy=first.policy,
        checkpoints=tuple(reversed(first.checkpoints)),
        removed=first.removed,
    )
    assert first.to_json_bytes() == shuffled.to_json_bytes()
    data = first.to_json_bytes()
    assert data.endswith(b"}\n")
    paths = [item["path"] for item in json.loads(data)["checkpoints"]]
    assert paths == sorted(paths)


def test_manifest_round_trips_through_json_including_unknown_keys() -> None:
    obj = json.loads(sample().to_json_bytes())
    obj["written_by_a_newer_ckptd"] = {"x": 1}
    obj["checkpoints"][0]["future_field"] = [1, 2]
    loaded = manifest_from_json(json.dumps(obj), source="m.json")
    assert loaded.extra == {"written_by_a_newer_ckptd": {"x": 1}}
    again = json.loads(loaded.to_json_bytes())
    assert again == obj
    assert manifest_from_json(sample().to_json_bytes(), source="m.json") == sample()


def test_manifest_keeps_undecodable_file_names_as_ascii_json(tmp_path: Path) -> None:
    weird = b"run_\xff_10_steps.zip".decode("utf-8", "surrogateescape")
    manifest = Manifest(run="r", generated_at=NOW, policy="p", checkpoints=(entry(weird),))
    write_manifest(tmp_path / "m.json", manifest)
    assert load_manifest(tmp_path / "m.json").checkpoints[0].path == weird


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda o, c: o.update(schema="ckptd.manifest/2"),
            r"schema: expected 'ckptd.manifest/1'",
        ),
        (lambda o, c: o.pop("run"), r"run: missing"),
        (
            lambda o, c: c.update(size="big"),
            r"checkpoints\[2\] \(rl_model_5000_steps\.zip\)\.size: expected a non-neg",
        ),
        (lambda o, c: c.update(size=-1), r"\.size: expected a non-negative integer, got -1"),
        (lambda o, c: c.update(state="lost"), r"\.state: unknown state 'lost'"),
        (lambda o, c: c.update(format="pt"), r"\.format: unknown format 'pt'"),
        (lambda o, c: c.update(mtime="yesterday"), r"\.mtime: bad timestamp 'yesterday'"),
        (lambda o, c: c.update(mtime="2026-01-01T00:00:00"), r"\.mtime: bad timestamp"),
        (lambda o, c: c.update(reasons="keep"), r"\.reasons: expected a list of strings"),
        (lambda o, c: c.update(step=True), r"\.step: expected a non-negative integer"),
        (lambda o, c: c["params"].pop("count"), r"\.params\.count: missing"),
        (lambda o, c: o.update(checkpoints={}), r"checkpoints: expected a list"),
        (lambda o, c: o["removed"][0].pop("removed_at"), r"removed\[0\]\.removed_at: missing"),
    ],
)
def test_hand_edited_manifest_is_rejected_with_one_line_naming_file_and_field(
    mutate, message
) -> None:  # type: ignore[no-untyped-def]
    obj = json.loads(sample().to_json_bytes())
    converted = next(c for c in obj["checkpoints"] if c["path"] == "rl_model_5000_steps.zip")
    mutate(obj, converted)
    if message.startswith("\\."):
        message = ENTRY_2 + message
    with pytest.raises(ManifestError, match=rf"^/runs/r/m\.json: {message}") as info:
        manifest_from_json(json.dumps(obj), source="/runs/r/m.json")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"not valid JSON"),
        (b"{", r"not valid JSON"),
        (b"[1, 2]", r"expected a JSON object at the top, got list"),
        (b'{"schema": NaN}', r"not valid JSON \(NaN is not valid JSON\)"),
        (b"\xff\xfe", r"not valid JSON"),
    ],
)
def test_corrupt_manifest_bytes_raise_manifest_error(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=rf"^m\.json: {message}"):
        manifest_from_json(data, source="m.json")


def test_load_manifest_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_manifest(tmp_path / "absent.json")


def test_write_manifest_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "ckptd-manifest.json"
    write_manifest(path, sample())
    write_manifest(path, sample())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckptd-manifest.json"]
    assert path.read_bytes() == sample().to_json_bytes()


def test_set_and_drop_entry_keep_the_list_sorted_and_unique() -> None:
    manifest = sample()
    updated = set_entry(manifest, entry("a_first.zip"))
    updated = set_entry(updated, entry("a_first.zip", size=1))
    paths = [e.path for e in updated.checkpoints]
    assert paths == sorted(paths)
    assert paths.count("a_first.zip") == 1
    assert updated.by_path()["a_first.zip"].size == 1
    assert "a_first.zip" not in drop_entry(updated, "a_first.zip").by_path()
    assert manifest == sample()  # the original value is untouched


def test_with_state_requires_texts_and_clears_stale_ones() -> None:
    broken = with_state(entry("x.zip"), "broken", error="CRC mismatch in parameters")
    assert (broken.state, broken.error) == ("broken", "CRC mismatch in parameters")
    refused = with_state(broken, "refused", refusal="global os.system")
    assert (refused.error, refused.refusal) == (None, "global os.system")
    assert with_state(refused, "kept").refusal is None
    with pytest.raises(ValueError, match="needs an error"):
        with_state(entry("x.zip"), "broken")
    with pytest.raises(ValueError, match="needs a refusal"):
        with_state(entry("x.zip"), "refused")


def test_add_removed_keeps_the_newest_entries_only() -> None:
    removed = [
        RemovedEntry(f"r{i}.zip", None, NOW, ("no rule keeps it",), None)
        for i in range(MAX_REMOVED + 5)
    ]
    manifest = add_removed(sample(), removed)
    assert len(manifest.removed) == MAX_REMOVED
    assert manifest.removed[-1].path == f"r{MAX_REMOVED + 4}.zip"


def test_same_content_ignores_only_generated_at() -> None:
    later = Manifest(
        run="ppo-cartpole-3", generated_at=datetime(2030, 1, 1, tzinfo=UTC), policy="default"
    )
    base = sample()
    assert base.same_content(
        Manifest(
            base.run, datetime(2030, 1, 1, tzinfo=UTC), base.policy, base.checkpoints, base.removed
        )
    )
    assert not base.same_content(later)
    assert not base.same_content(None)


def test_index_summarizes_runs_without_counting_archived_originals(tmp_path: Path) -> None:
    summary = index_run(
        sample(), run="ppo-cartpole-3", manifest_relpath="ppo-cartpole-3/ckptd-manifest.json"
    )
    assert summary.checkpoints == 3  # the archived .pkl belongs to its zip
    assert summary.bytes == 4 * 59746  # but its bytes are on the disk
    assert summary.newest_step == 5000
    index = RootIndex(
        "/runs", NOW, (summary, IndexRun("a", "a/ckptd-manifest.json", 0, 0, None, None, "boom"))
    )
    write_index(tmp_path / "ckptd-index.json", index)
    loaded = load_index(tmp_path / "ckptd-index.json")
    assert [run.run for run in loaded.runs] == ["a", "ppo-cartpole-3"]
    assert loaded == RootIndex("/runs", NOW, tuple(sorted(index.runs, key=lambda r: r.run)))
    obj = json.loads((tmp_path / "ckptd-index.json").read_bytes())
    assert obj["schema"] == "ckptd.index/1"
    assert obj["runs"][1]["newest_mtime"] == "2026-11-23T19:00:00.123456Z"
