"""State files read from a run are hints: every path in them must be a plain path inside the run.

Manifests, trash indexes and pins are written into a directory others can write. A path in them
that is absolute, climbs with ``..``, holds a NUL or is longer than any real name is refused when
the file is read, with one line naming the file and the field (docs/security.md, "Paths inside a
run"); a newline is legal in a file name and is only ever quoted.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ckptd.config.load import parse_config
from ckptd.errors import ManifestError, StateError
from ckptd.manifest.store import load_manifest
from ckptd.retention.deletion import read_trash_index
from ckptd.retention.plan import Candidate, plan_run
from ckptd.runs.statedir import StateLayout, read_pins

HOSTILE = {
    "absolute": "/etc/passwd",
    "dotdot": "../outside/precious.zip",
    "inner-dotdot": "sub/../../outside/precious.zip",
    "nul": "x\0.zip",
    "empty": "",
    "long": "n" * 300,
    "empty-component": "sub//x.zip",
}
WHEN = "2026-03-01T12:00:00Z"


def manifest_document(**overrides: object) -> dict[str, object]:
    entry = {
        "path": "rl_model_1_steps.zip",
        "step": 1,
        "size": 3,
        "mtime": WHEN,
        "sha256": None,
        "format": "sb2-zip",
        "state": "kept",
        "reasons": [],
    }
    removed = {"path": "rl_model_0_steps.zip", "sha256": None, "removed_at": WHEN, "reasons": []}
    for key, value in overrides.items():
        target, _, field = key.partition(".")
        (entry if target == "entry" else removed)[field] = value
    return {
        "schema": "ckptd.manifest/1",
        "run": "r",
        "generated_at": WHEN,
        "policy": "default",
        "checkpoints": [entry],
        "removed": [removed],
    }


@pytest.mark.parametrize(
    "field",
    [
        "entry.path",
        "entry.converted_from",
        "removed.path",
        "removed.trash",
        "removed.converted_from",
        "removed.converted_from_trash",
    ],
)
@pytest.mark.parametrize("variant", sorted(HOSTILE))
def test_a_manifest_with_a_hostile_path_is_refused_naming_file_and_field(
    tmp_path: Path, field: str, variant: str
) -> None:
    path = tmp_path / "ckptd-manifest.json"
    path.write_text(json.dumps(manifest_document(**{field: HOSTILE[variant]})))
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert field.partition(".")[2] in message and "not a path inside the run" in message


def test_a_manifest_path_with_a_newline_is_legal_and_quoted(tmp_path: Path) -> None:
    path = tmp_path / "ckptd-manifest.json"
    name = "evil\nckptd: forged.zip"
    path.write_text(json.dumps(manifest_document(**{"entry.path": name})))
    assert load_manifest(path).checkpoints[0].path == name


def trash_index(layout: StateLayout, entries: dict[str, dict[str, str]]) -> Path:
    layout.trash.mkdir(parents=True, exist_ok=True)
    path = layout.trash / ".index.json"
    path.write_text(json.dumps({"schema": "ckptd.trash/1", "entries": entries}))
    return path


@pytest.mark.parametrize("field", ["name", "original", "companion_of"])
@pytest.mark.parametrize("variant", sorted(HOSTILE))
def test_a_trash_index_with_a_hostile_name_is_refused(
    tmp_path: Path, field: str, variant: str
) -> None:
    layout = StateLayout(tmp_path / "run")
    hostile = HOSTILE[variant]
    body = {"original": "x.zip", "trashed_at": WHEN, "companion_of": "y.zip"}
    name = "x.zip"
    if field == "name":
        name = hostile
    else:
        body[field] = hostile
    path = trash_index(layout, {name: body})
    with pytest.raises(StateError) as caught:
        read_trash_index(layout)
    assert str(caught.value).startswith(f"{path}: trash index: ") and "\n" not in str(caught.value)


def test_a_trash_entry_or_companion_name_with_a_slash_is_refused(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path / "run")
    for entries in (
        {"sub/x.zip": {"original": "x.zip", "trashed_at": WHEN}},
        {"x.zip": {"original": "x.zip", "trashed_at": WHEN, "companion_of": "sub/y.zip"}},
    ):
        trash_index(layout, entries)
        with pytest.raises(StateError, match="is not a plain file name"):
            read_trash_index(layout)


@pytest.mark.parametrize("variant", sorted(HOSTILE))
def test_a_pins_file_with_a_hostile_path_is_refused(tmp_path: Path, variant: str) -> None:
    layout = StateLayout(tmp_path / "run")
    layout.root.mkdir(parents=True)
    layout.pins_file.write_text(json.dumps({"pins": {HOSTILE[variant]: {"reason": "x"}}}))
    with pytest.raises(StateError) as caught:
        read_pins(layout)
    assert str(caught.value).startswith(f"{layout.pins_file}: pin ")
    assert "\n" not in str(caught.value)


def test_a_symlinked_pins_file_or_trash_index_is_never_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"pins": {"x.zip": {"reason": "from outside"}}}))
    layout = StateLayout(tmp_path / "run")
    layout.trash.mkdir(parents=True)
    layout.pins_file.symlink_to(outside)
    (layout.trash / ".index.json").symlink_to(outside)
    with pytest.raises(StateError, match="is a symlink"):
        read_pins(layout)
    with pytest.raises(StateError, match="is a symlink"):
        read_trash_index(layout)


def test_protect_globs_hold_for_an_original_kept_in_place_beside_its_zip() -> None:
    """A zip and the legacy original kept beside it are one candidate: a protect glob matching
    the original keeps the pair (judged on the real files, whatever the manifest says)."""
    policy = parse_config(
        {
            "roots": [{"path": "/r", "run_depth": 1}],
            "policies": {"default": {"keep_last": 1, "protect": ["*_1_steps.pkl"]}},
        }
    ).policies["default"]
    now = datetime(2026, 3, 1, tzinfo=UTC)
    candidates = [
        Candidate(f"rl_model_{step}_steps.zip", step, now - timedelta(days=10 - step), 10)
        for step in (1, 2, 3)
    ]
    candidates[0] = Candidate(
        "rl_model_1_steps.zip",
        1,
        now - timedelta(days=9),
        10,
        companions=("rl_model_1_steps.pkl",),
    )
    plan = plan_run(candidates, policy, now=now, max_fraction=1.0)
    actions = {d.path: (d.action, d.reasons) for d in plan.decisions}
    assert actions["rl_model_1_steps.zip"] == ("keep", ("protect: *_1_steps.pkl",))
    assert actions["rl_model_2_steps.zip"][0] == "delete"


def test_a_planted_pending_note_names_nothing_outside_the_run(tmp_path: Path) -> None:
    """The trash's pending note is as untrusted as its index: paths that leave the run, junk and
    entries that match no trashed inode add no record."""
    run = tmp_path / "run"
    layout = StateLayout(run)
    layout.trash.mkdir(parents=True)
    planted = layout.trash / "planted.zip"
    planted.write_bytes(b"x")
    st = planted.stat()
    moves = [
        {"original": "../../etc/passwd", "inode": st.st_ino, "device": st.st_dev, "group": 0},
        {"original": "ok.zip", "inode": st.st_ino + 1, "device": st.st_dev, "group": 1},
    ]
    note = {"schema": "ckptd.trash-pending/1", "trashed_at": "2026-01-01T00:00:00Z"}
    (layout.trash / ".pending.json").write_text(
        json.dumps({**note, "moves": [{**m, "sha256": None} for m in moves]})
    )
    assert read_trash_index(layout) == {}
    (layout.trash / ".pending.json").write_text("{not json")
    assert read_trash_index(layout) == {}
