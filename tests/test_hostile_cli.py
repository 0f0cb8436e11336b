"""Escapes from a run through the CLI (docs/security.md, "Paths inside a run").

Anyone who can write into a run directory is treated as an attacker: they plant symlinks, FIFOs
and files where ckptd keeps its state, and hand-edit trash indexes, pins, reason files and
manifests. Every test runs the real ``ckptd`` command and checks that nothing outside the run
(a sentinel directory beside the root, holding bait with the names an attack would reach for) is
touched or gains a file, that nothing is moved through the planted path, and that the refusal is
one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckptd.config.load import load_config
from ckptd.config.model import Config
from tests.hostile_helpers import STATE, ckptd, make_sentinel, plant, snapshot
from tests.ops_helpers import converted_run, prune_now, write_ops_config
from tests.sb2_fixtures import make_ppo2_checkpoint

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("sb2_stand_ins")]


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    sentinel = make_sentinel(tmp_path)
    before = snapshot(sentinel)
    yield sentinel
    assert snapshot(sentinel) == before, "a file outside the run was touched or appeared"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "runs").mkdir()
    return write_ops_config(tmp_path, tmp_path / "runs")


@pytest.fixture
def config(config_file: Path) -> Config:
    return load_config(config_file)


def one_line(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "expected an error line"
    assert any(all(needle in line for needle in needles) for line in lines), stderr


# ---- convert --original archive -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "fifo", "file"])
@pytest.mark.parametrize("where", [STATE, f"{STATE}/legacy"])
def test_convert_archive_never_goes_through_a_planted_state_dir(
    tmp_path: Path, outside: Path, kind: str, where: str
) -> None:
    run = tmp_path / "runs" / "ppo-1"
    run.mkdir(parents=True)
    source = make_ppo2_checkpoint(run / "rl_model_1000_steps.pkl")
    original = source.read_bytes()
    (run / STATE).mkdir()
    plant(run / where, kind, outside if where == STATE else outside / "legacy")
    done = ckptd("convert", source, "--original", "archive")
    assert done.returncode == 1
    one_line(done.stderr, str(run / where))
    assert source.read_bytes() == original  # the original stays where it was


# ---- trash restore / list / purge ---------------------------------------------------------------


def trashed_run(config: Config) -> tuple[Path, dict[str, dict[str, str]]]:
    """A converted run whose oldest two checkpoints a prune moved to the trash (with originals)."""
    run = converted_run(config)
    prune_now(config)
    index = json.loads((run / STATE / "trash" / ".index.json").read_text())
    return run, index


HOSTILE_NAMES = {
    "absolute": "{outside}/precious.zip",
    "dotdot": "../../../outside/precious.zip",
    "dotdot-deep": "x/../../../../outside/sub/rl_model_1000_steps.pkl",
    "nul": "precious\0.zip",
    "long": "n" * 300,
    "newline": "evil\n../../../outside/precious.zip",
}


@pytest.mark.parametrize("field", ["companion name", "companion original", "companion_of"])
@pytest.mark.parametrize("variant", sorted(HOSTILE_NAMES))
def test_trash_restore_refuses_a_planted_index_entry(
    config: Config, outside: Path, field: str, variant: str
) -> None:
    run, index = trashed_run(config)
    zip_name = next(name for name, body in index["entries"].items() if "companion_of" not in body)
    hostile = HOSTILE_NAMES[variant].format(outside=outside)
    entry = {"original": "stolen.zip", "trashed_at": "2026-01-01T00:00:00Z"}
    if field == "companion name":
        index["entries"][hostile] = {**entry, "companion_of": zip_name}
    elif field == "companion original":
        index["entries"]["companion.pkl"] = {**entry, "original": hostile, "companion_of": zip_name}
        (run / STATE / "trash" / "companion.pkl").write_bytes(b"planted")
    else:
        index["entries"]["companion.pkl"] = {**entry, "companion_of": hostile}
    index_path = run / STATE / "trash" / ".index.json"
    index_path.write_text(json.dumps(index))
    pins_before = (
        (run / STATE / "pins.json").read_bytes() if (run / STATE / "pins.json").exists() else None
    )
    run_before = snapshot(run)

    done = ckptd("trash", "restore", run / STATE / "trash" / zip_name)

    assert done.returncode == 1
    one_line(done.stderr, str(index_path))
    assert len(done.stderr.strip().splitlines()) == 1
    assert snapshot(run) == run_before  # nothing moved in, out, or pinned
    pins_now = (
        (run / STATE / "pins.json").read_bytes() if (run / STATE / "pins.json").exists() else None
    )
    assert pins_now == pins_before


@pytest.mark.parametrize("where", [STATE, f"{STATE}/trash"])
def test_trash_commands_never_go_through_a_symlinked_trash(
    config: Config, config_file: Path, outside: Path, tmp_path: Path, where: str
) -> None:
    run, _ = trashed_run(config)
    # The bait (outside the run, like the sentinel): a trash dir whose index says one of its files
    # was deleted from "stolen.zip".
    bait = tmp_path / "bait"
    trash = bait / "trash"
    trash.mkdir(parents=True)
    (trash / "precious.zip").write_bytes(b"outside trash entry")
    (trash / ".index.json").write_text(
        json.dumps(
            {
                "schema": "ckptd.trash/1",
                "entries": {
                    "precious.zip": {"original": "stolen.zip", "trashed_at": "2020-01-01T00:00:00Z"}
                },
            }
        )
    )
    sentinel_before = snapshot(bait)
    plant(run / where, "symlink", bait if where == STATE else trash)

    restore = ckptd("trash", "restore", run / STATE / "trash" / "precious.zip")
    assert restore.returncode == 1
    one_line(restore.stderr, str(run / where))
    purge = ckptd("trash", "purge", "--run", run, "--older-than", "0s")
    assert purge.returncode == 1
    one_line(purge.stderr, str(run / where))
    listing = ckptd("trash", "list", "-c", config_file, "--json")
    assert "outside trash entry" not in listing.stdout and "precious.zip" not in listing.stdout
    assert not (run / "stolen.zip").exists()
    assert snapshot(bait) == sentinel_before


# ---- pin / unpin --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(HOSTILE_NAMES))
def test_pin_and_unpin_refuse_a_planted_pins_file(
    config: Config, outside: Path, variant: str
) -> None:
    run = converted_run(config)
    pins_path = run / STATE / "pins.json"
    hostile = HOSTILE_NAMES[variant].format(outside=outside)
    pins_path.write_text(json.dumps({"pins": {hostile: {"reason": "planted"}}}))
    planted = pins_path.read_bytes()
    for args in (
        ("pin", run / "rl_model_3000_steps.zip"),
        ("unpin", run / "rl_model_3000_steps.zip"),
    ):
        done = ckptd(*args)
        assert done.returncode == 1
        one_line(done.stderr, str(pins_path), "pin ")
    assert pins_path.read_bytes() == planted


@pytest.mark.parametrize("kind", ["symlink", "fifo", "file"])
def test_pin_refuses_a_planted_state_dir(config: Config, outside: Path, kind: str) -> None:
    run = converted_run(config)
    plant(run / STATE, kind, outside)
    done = ckptd("pin", run / "rl_model_3000_steps.zip")
    assert done.returncode == 1
    one_line(done.stderr, str(run / STATE))


# ---- quarantine release -------------------------------------------------------------------------


def reason_for(content: bytes, run_path: str) -> str:
    return json.dumps(
        {
            "schema": "ckptd.quarantine/1",
            "run_path": run_path,
            "quarantined_as": "bad.pkl",
            "sha256": hashlib.sha256(content).hexdigest(),
            "refusal": "refused: planted",
            "quarantined_at": "2026-01-01T00:00:00Z",
        }
    )


@pytest.mark.parametrize("where", [STATE, f"{STATE}/quarantine"])
def test_quarantine_release_never_goes_through_a_symlinked_quarantine(
    config: Config, outside: Path, tmp_path: Path, where: str
) -> None:
    run = converted_run(config)
    jail = tmp_path / "bait" / "quarantine"
    jail.mkdir(parents=True)
    (jail / "bad.pkl").write_bytes(b"outside file")
    (jail / "bad.pkl.reason.json").write_text(reason_for(b"outside file", "stolen.pkl"))
    sentinel_before = snapshot(jail.parent)
    plant(run / where, "symlink", jail if where.endswith("quarantine") else jail.parent)

    done = ckptd(
        "quarantine", "release", run / STATE / "quarantine" / "bad.pkl", "--i-trust-this-file"
    )
    assert done.returncode == 1
    one_line(done.stderr, str(run / where))
    assert not (run / "stolen.pkl").exists()
    assert snapshot(jail.parent) == sentinel_before


@pytest.mark.parametrize("variant", sorted(HOSTILE_NAMES))
def test_quarantine_release_refuses_a_planted_reason_path(
    config: Config, outside: Path, variant: str
) -> None:
    run = converted_run(config)
    jail = run / STATE / "quarantine"
    (jail / "bad.pkl").write_bytes(b"a refused file")
    hostile = HOSTILE_NAMES[variant].format(outside=outside)
    (jail / "bad.pkl.reason.json").write_text(reason_for(b"a refused file", hostile))
    run_before = snapshot(run)
    done = ckptd("quarantine", "release", jail / "bad.pkl", "--i-trust-this-file")
    assert done.returncode == 1
    one_line(done.stderr, str(jail / "bad.pkl.reason.json"))
    assert snapshot(run) == run_before


# ---- prune: state files are hints, never authority ----------------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "fifo", "file"])
@pytest.mark.parametrize("where", [STATE, f"{STATE}/legacy", f"{STATE}/trash"])
def test_prune_refuses_a_run_with_a_planted_state_dir(
    config: Config, config_file: Path, outside: Path, kind: str, where: str
) -> None:
    run = converted_run(config)
    target = outside if where == STATE else outside / where.rpartition("/")[2]
    plant(run / where, kind, target)
    before = snapshot(run)
    for dry in (True, False):
        done = ckptd("prune", "-c", config_file, "--json", *(["--dry-run"] if dry else []))
        assert done.returncode == 1
        (report,) = json.loads(done.stdout)["runs"]
        assert str(run / where) in report["error"]
        one_line(done.stderr, str(run / where))
        assert snapshot(run) == before


def planted_manifest_run(config: Config, tmp_path: Path) -> Path:
    """Three converted checkpoints (keep_last 1) and a protected best_model.zip, all recorded."""
    run = converted_run(config)
    (run / "best_model.zip").write_bytes((run / "rl_model_3000_steps.zip").read_bytes())
    (run / "rl_model_500_steps.pkl").write_bytes(
        make_ppo2_checkpoint(tmp_path / "in-place.pkl").read_bytes()
    )
    assert ckptd("manifest", "-c", tmp_path / "ckptd.yaml").returncode == 0
    return run


@pytest.mark.parametrize(
    "claim",
    [
        "best_model.zip",
        "rl_model_500_steps.pkl",
        "rl_model_2000_steps.zip",
        "../../outside/precious.zip",
        "{outside}/precious.zip",
        ".ckptd/legacy/rl_model_3000_steps.pkl",
    ],
)
def test_a_planted_converted_from_never_makes_prune_delete_another_file(
    tmp_path: Path, outside: Path, claim: str
) -> None:
    config_file = write_ops_config(
        tmp_path,
        tmp_path / "runs",
        policies={
            "default": {
                "keep_last": 1,
                "protect": ["best_model.zip", "*_500_steps.pkl"],
                "min_age": "0s",
            }
        },
    )
    run = planted_manifest_run(load_config(config_file), tmp_path)
    manifest_path = run / "ckptd-manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["checkpoints"]:
        if entry["path"] == "rl_model_1000_steps.zip":
            entry["converted_from"] = claim.format(outside=outside)
    manifest_path.write_text(json.dumps(manifest))

    dry = ckptd("prune", "-c", config_file, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    real = ckptd("prune", "-c", config_file, "--json")
    assert real.returncode == 0, real.stderr

    dry_decisions = json.loads(dry.stdout)["runs"][0]["decisions"]
    real_decisions = json.loads(real.stdout)["runs"][0]["decisions"]
    assert dry_decisions == real_decisions  # the dry run shows exactly what the real pass did
    by_path = {d["path"]: d for d in real_decisions}
    assert by_path["best_model.zip"]["action"] == "keep"
    assert by_path["rl_model_500_steps.pkl"]["action"] == "keep"
    assert (run / "best_model.zip").exists() and (run / "rl_model_500_steps.pkl").exists()
    # The original moved with rl_model_1000_steps.zip is its own archived pickle, as shown.
    assert by_path["rl_model_1000_steps.zip"] == {
        "path": "rl_model_1000_steps.zip",
        "action": "delete",
        "reasons": ["no rule keeps it"],
        "step": 1000,
        "size": by_path["rl_model_1000_steps.zip"]["size"],
        "mtime": by_path["rl_model_1000_steps.zip"]["mtime"],
        "format": "sb2-zip",
        "original": ".ckptd/legacy/rl_model_1000_steps.pkl",
    }
    moved = {d["path"] for d in dry_decisions if d["action"] == "delete"} | {
        d["original"] for d in dry_decisions if d["action"] == "delete" and "original" in d
    }
    trash = json.loads((run / STATE / "trash" / ".index.json").read_text())["entries"]
    assert {body["original"] for body in trash.values()} == moved


@pytest.mark.parametrize("where", [STATE, f"{STATE}/trash", f"{STATE}/quarantine"])
def test_status_never_measures_through_a_planted_state_dir(
    config: Config, config_file: Path, tmp_path: Path, where: str
) -> None:
    run = converted_run(config)
    bait = tmp_path / "bait"
    for sub in ("", "trash", "quarantine"):
        (bait / sub).mkdir(parents=True, exist_ok=True)
        (bait / sub / "big.zip").write_bytes(b"x" * 1000)
    plant(run / where, "symlink", bait if where == STATE else bait / where.rpartition("/")[2])
    done = ckptd("status", "-c", config_file, "--json")
    (report,) = json.loads(done.stdout)["runs"]
    assert any(str(run / where) in problem for problem in report["problems"]), report
    assert report["trash"] == {"files": 0, "bytes": 0}
    assert report["quarantine"] == {"files": 0, "bytes": 0}
