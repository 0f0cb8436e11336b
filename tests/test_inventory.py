"""Inventory on real trees: which runs and files are listed, steps, formats, completeness, caching."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import random
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ckptd.config.model import CheckpointsConfig
from ckptd.formats import Format
from ckptd.fs.files import FileIdentity, hash_if_unchanged, is_temp_name, temp_path_for
from ckptd.manifest.model import ManifestEntry
from ckptd.runs.checkpoints import InventoryOptions
from ckptd.runs.inventory import _checkpoint, default_identifier, inventory_run
from ckptd.runs.listing import CheckpointMatcher, walk_files
from ckptd.runs.roots import RunRef, find_runs
from ckptd.runs.statedir import StateLayout

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SB2_PICKLE = b"\x80\x02cstable_baselines.ppo2\nPPO2\nq\x00}q\x01\x86q\x02."


def set_mtime(path: Path, when: datetime) -> None:
    ns = int(when.timestamp()) * 1_000_000_000
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def make_zip(
    path: Path, when: datetime = NOW - timedelta(hours=1), *, payload: bytes = b"x"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", "{}")
        archive.writestr("parameters", payload)
        archive.writestr("parameter_list", "[]")
    set_mtime(path, when)
    return path


def make_pickle(path: Path, when: datetime = NOW - timedelta(hours=1)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(SB2_PICKLE)
    set_mtime(path, when)
    return path


class CountingIdentifier:
    """The real sniffer, counting which files it was asked to read."""

    def __init__(self) -> None:
        self.calls: list[Path] = []
        self._real = default_identifier()

    def __call__(self, path: Path) -> Format:
        self.calls.append(path)
        return self._real(path)


def options(
    identify: object = None, *, hash_files: bool = True, stable_for: float = 5.0
) -> InventoryOptions:
    return InventoryOptions(
        matcher=CheckpointMatcher(CheckpointsConfig(), "ckptd-manifest.json"),
        state_dir=".ckptd",
        stable_for_ns=int(stable_for * 1e9),
        hash_files=hash_files,
        identify=identify or default_identifier(),  # type: ignore[arg-type]
    )


# ---- opens seen by the interpreter (a real count of file reads, not a mock) --------------------

# ---- runs ---------------------------------------------------------------------------------------


def test_find_runs_lists_directories_exactly_at_run_depth(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for rel in (
        "lab-a/run-1",
        "lab-a/run-2",
        "lab-b/run-1",
        "lab-b/.hidden",
        "lab-b/.ckptd",
        ".git/x",
    ):
        (root / rel).mkdir(parents=True)
    (root / "lab-c").mkdir()  # no runs inside: fine
    (root / "lab-a" / "run-1" / "deeper").mkdir()
    make_zip(root / "lab-a" / "stray_1_steps.zip")  # a file at depth 1 is not a run
    outside = tmp_path / "outside"
    (outside / "run-x").mkdir(parents=True)
    (root / "linked").symlink_to(outside)  # never followed out of the root
    (root / "lab-a" / "run-link").symlink_to(outside / "run-x")
    scan = find_runs(root, 2, ".ckptd")
    assert [run.relpath for run in scan.runs] == ["lab-a/run-1", "lab-a/run-2", "lab-b/run-1"]
    assert scan.runs[0].run_dir == root / "lab-a" / "run-1"
    assert scan.errors == ()
    assert [run.relpath for run in find_runs(root, 1, ".ckptd").runs] == ["lab-a", "lab-b", "lab-c"]


def test_find_runs_with_depth_zero_is_the_root_itself(tmp_path: Path) -> None:
    assert find_runs(tmp_path, 0, ".ckptd").runs == (RunRef(tmp_path, tmp_path, "."),)


def test_find_runs_on_a_missing_root_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="root is not a directory"):
        find_runs(tmp_path / "absent", 1, ".ckptd")


# ---- checkpoints --------------------------------------------------------------------------------


def test_inventory_lists_only_matching_regular_files_outside_the_state_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_zip(run / "rl_model_1000_steps.zip")
    make_pickle(run / "rl_model_2000_steps.pkl")
    make_zip(run / "best" / "best_model.zip")  # subdirectories of a run are part of it
    make_zip(run / "tmp-rl_model_3000_steps.zip")  # ignored name
    make_zip(run / "rl_model_4000_steps.zip.part")
    make_zip(temp_path_for(run / "rl_model_5000_steps.zip"))  # a ckptd temp file
    make_zip(run / "ckptd-manifest.json")  # the manifest and the index are ckptd's own
    make_zip(run / "ckptd-index.json")
    (run / "notes.txt").write_text("not a checkpoint")
    make_zip(run / ".ckptd" / "trash" / "rl_model_0_steps.zip")
    make_zip(run / ".cache" / "rl_model_6_steps.zip")
    outside = make_zip(tmp_path / "outside_7_steps.zip")
    (run / "link_7_steps.zip").symlink_to(outside)
    inventory = inventory_run(RunRef(tmp_path, run, "run"), options(), now=NOW, previous={})
    assert [c.path for c in inventory.checkpoints] == [
        "best/best_model.zip",
        "rl_model_1000_steps.zip",
        "rl_model_2000_steps.pkl",
    ]
    best, zipped, pickled = inventory.checkpoints
    assert (best.step, zipped.step, pickled.step) == (None, 1000, 2000)
    assert (best.format, zipped.format, pickled.format) == (
        Format.SB2_ZIP,
        Format.SB2_ZIP,
        Format.SB2_PICKLE,
    )
    assert all(c.complete and c.status == "ok" and c.sha256 for c in inventory.checkpoints)
    assert zipped.size == (run / "rl_model_1000_steps.zip").stat().st_size
    assert zipped.mtime == NOW - timedelta(hours=1)


def test_step_comes_from_the_first_group_of_step_pattern(tmp_path: Path) -> None:
    matcher = CheckpointMatcher(CheckpointsConfig(step_pattern=r"ckpt-(\d+)-(\d+)"), "m.json")
    assert matcher.step_of("ckpt-12-34.zip") == 12
    assert matcher.step_of("model.zip") is None
    assert (
        CheckpointMatcher(CheckpointsConfig(step_pattern=r"_\d+_"), "m.json").step_of("a_1_.zip")
        is None
    )


def test_directory_globs_name_checkpoint_directories_and_steps_come_from_their_names() -> None:
    matcher = CheckpointMatcher(
        CheckpointsConfig(
            directories=("checkpoint-*", "global_step*"),
            ignore=("*.tmp",),
            step_pattern=r"(?:_|-|global_step)(\d+)",
        ),
        "m.json",
    )
    assert matcher.matches_directory("checkpoint-500")
    assert matcher.matches_directory("global_step12")
    assert not matcher.matches_directory("checkpoint-500.tmp")  # ignore applies to directories
    assert not matcher.matches_directory("logs")
    assert not matcher.matches("checkpoint-500")  # file patterns are separate
    assert (matcher.step_of("checkpoint-500"), matcher.step_of("global_step12")) == (500, 12)
    assert not CheckpointMatcher(CheckpointsConfig(), "m.json").matches_directory("checkpoint-1")


@pytest.mark.parametrize(
    ("patterns", "ignore"),
    [
        (("*.zip", "*.pkl"), ("*.tmp", "*.part", "tmp-*")),
        (("*.zip",), ()),
        ((), ("*.zip",)),
        (("rl_*", "*.[pz]*", "a?c"), ("*_1*", "[!r]*")),
    ],
)
def test_file_names_match_as_some_pattern_and_no_ignore_glob(
    patterns: tuple[str, ...], ignore: tuple[str, ...]
) -> None:
    """The matcher's one regex says what fnmatch says of the globs one by one."""
    matcher = CheckpointMatcher(CheckpointsConfig(patterns=patterns, ignore=ignore), "m.json")
    names = ["rl_model_1_steps.zip", "rl_model_2_steps.pkl", "x.tmp", "a.zip.part", "tmp-a.zip"]
    names += ["abc", "a\nc", "zip", ".zip", "x.ZIP", "m.json", "ckptd-index.json", "rl_1.pz"]
    rng = random.Random(5)
    names += [
        "".join(rng.choice("ar_1.zpkt-*?\n") for _ in range(rng.randint(0, 9))) for _ in range(500)
    ]
    for name in names:
        plain = any(fnmatch.fnmatchcase(name, glob) for glob in patterns) and not any(
            fnmatch.fnmatchcase(name, glob) for glob in ignore
        )
        expected = plain and name not in ("m.json", "ckptd-index.json") and not is_temp_name(name)
        assert matcher.matches(name) == expected, name


def test_a_subdirectory_swapped_for_a_symlink_after_the_listing_is_not_entered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The walk opens a subdirectory from its parent's handle with O_NOFOLLOW: one replaced by a
    symlink between the listing and the open (here: while the listing is judged) is refused with
    a warning, and nothing outside the run is listed through it."""
    run, outside = tmp_path / "run", tmp_path / "outside"
    make_zip(run / "sub" / "rl_model_1_steps.zip")
    make_zip(outside / "rl_model_2_steps.zip")

    def swap_then_keep(name: str) -> bool:
        if name == "sub" and (run / "sub").is_dir() and not (run / "sub").is_symlink():
            (run / "sub").rename(tmp_path / "moved")
            (run / "sub").symlink_to(outside, target_is_directory=True)
        return False

    found = list(walk_files(str(run), "", swap_then_keep, lambda name: name.endswith(".zip")))
    assert found == []
    assert "cannot list directory" in caplog.text


def test_unidentified_content_is_listed_with_status_unknown(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "junk_5_steps.zip").write_bytes(b"not a zip at all")
    set_mtime(run / "junk_5_steps.zip", NOW - timedelta(hours=1))
    (checkpoint,) = inventory_run(
        RunRef(tmp_path, run, "run"), options(), now=NOW, previous={}
    ).checkpoints
    assert (checkpoint.format, checkpoint.status) == (Format.UNKNOWN, "unknown")


def test_young_file_is_incomplete_and_never_read(tmp_path: Path, opened: list[str]) -> None:
    run = tmp_path / "run"
    young = make_zip(run / "rl_model_9_steps.zip", NOW - timedelta(seconds=2))
    future = make_zip(run / "rl_model_10_steps.zip", NOW + timedelta(hours=1))  # clock skew: wait
    identify = CountingIdentifier()
    opened.clear()
    inventory = inventory_run(RunRef(tmp_path, run, "run"), options(identify), now=NOW, previous={})
    assert [(c.complete, c.status, c.sha256) for c in inventory.checkpoints] == [
        (False, "incomplete", None)
    ] * 2
    assert identify.calls == []
    assert str(young) not in opened and str(future) not in opened


def test_warm_inventory_reads_no_file_contents(tmp_path: Path, opened: list[str]) -> None:
    run = tmp_path / "run"
    for step in range(5):
        make_zip(run / f"rl_model_{step}_steps.zip")
    make_pickle(run / "rl_model_9_steps.pkl")
    ref = RunRef(tmp_path, run, "run")
    opened.clear()
    cold = inventory_run(ref, options(), now=NOW, previous={})
    assert str(run / "rl_model_9_steps.pkl") in opened  # the hook does see reads
    previous = {c.path: _entry(c) for c in cold.checkpoints}
    identify = CountingIdentifier()
    opened.clear()
    warm = inventory_run(ref, options(identify), now=NOW, previous=previous)
    assert identify.calls == []
    assert [p for p in opened if p.startswith(str(run))] == []
    assert [(c.path, c.format, c.sha256) for c in warm.checkpoints] == [
        (c.path, c.format, c.sha256) for c in cold.checkpoints
    ]


def test_changed_file_is_read_again_despite_the_cache(tmp_path: Path) -> None:
    run = tmp_path / "run"
    path = make_zip(run / "rl_model_1_steps.zip")
    ref = RunRef(tmp_path, run, "run")
    (cold,) = inventory_run(ref, options(), now=NOW, previous={}).checkpoints
    make_zip(path, payload=b"different and longer")
    identify = CountingIdentifier()
    (warm,) = inventory_run(
        ref, options(identify), now=NOW, previous={cold.path: _entry(cold)}
    ).checkpoints
    assert identify.calls == [path]
    assert warm.sha256 != cold.sha256 and warm.cached is None


def test_cached_refused_and_broken_states_are_kept_as_status(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_pickle(run / "evil_1_steps.pkl")
    make_zip(run / "bad_2_steps.zip")
    ref = RunRef(tmp_path, run, "run")
    cold = inventory_run(ref, options(), now=NOW, previous={}).checkpoints
    states = {"bad_2_steps.zip": "broken", "evil_1_steps.pkl": "refused"}
    previous = {c.path: dataclasses.replace(_entry(c), state=states[c.path]) for c in cold}  # type: ignore[arg-type]
    warm = inventory_run(ref, options(), now=NOW, previous=previous).checkpoints
    assert [(c.path, c.status) for c in warm] == [
        ("bad_2_steps.zip", "broken"),
        ("evil_1_steps.pkl", "refused"),
    ]


def test_a_manifest_converted_from_alone_never_links_an_archived_original(tmp_path: Path) -> None:
    """The link that makes prune delete a second file is judged from the files (the archived
    original's name makes this zip), never from a hand-editable manifest."""
    run = tmp_path / "run"
    zipped = make_zip(run / "rl_model_5_steps.zip")
    make_pickle(StateLayout(run).legacy_path("old_name_5_steps.pkl"))
    orphan = make_pickle(StateLayout(run).legacy_path("sub/orphan_1_steps.pkl"))
    ref = RunRef(tmp_path, run, "run")
    (cold,) = inventory_run(ref, options(), now=NOW, previous={}).checkpoints
    assert cold.legacy is None  # no sibling name: nothing links them
    previous = {cold.path: dataclasses.replace(_entry(cold), converted_from="old_name_5_steps.pkl")}
    inventory = inventory_run(ref, options(), now=NOW, previous=previous)
    (checkpoint,) = inventory.checkpoints
    assert checkpoint.legacy is None and checkpoint.converted_from is None
    assert checkpoint.total_size == zipped.stat().st_size
    assert [a.path for a in inventory.archived] == [
        ".ckptd/legacy/old_name_5_steps.pkl",
        ".ckptd/legacy/sub/orphan_1_steps.pkl",
    ]
    assert inventory.archived[1].identity == FileIdentity.of(orphan.stat())


def test_rebuild_without_manifest_links_original_by_sibling_name(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_zip(run / "sub" / "rl_model_5_steps.zip")
    make_pickle(StateLayout(run).legacy_path("sub/rl_model_5_steps.pkl"))
    (checkpoint,) = inventory_run(
        RunRef(tmp_path, run, "run"), options(), now=NOW, previous={}
    ).checkpoints
    assert checkpoint.converted_from == "sub/rl_model_5_steps.pkl"
    assert (
        checkpoint.legacy is not None
        and checkpoint.legacy.path == ".ckptd/legacy/sub/rl_model_5_steps.pkl"
    )


def test_original_kept_in_place_is_part_of_its_zip_not_a_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_zip(run / "rl_model_5_steps.zip")
    make_pickle(run / "rl_model_5_steps.pkl")
    ref = RunRef(tmp_path, run, "run")
    cold = inventory_run(ref, options(), now=NOW, previous={}).checkpoints
    assert len(cold) == 2  # without a manifest they are two checkpoints
    previous = {c.path: _entry(c) for c in cold}
    previous["rl_model_5_steps.zip"] = dataclasses.replace(
        previous["rl_model_5_steps.zip"], converted_from="rl_model_5_steps.pkl"
    )
    (checkpoint,) = inventory_run(ref, options(), now=NOW, previous=previous).checkpoints
    assert checkpoint.legacy is not None and checkpoint.legacy.path == "rl_model_5_steps.pkl"


def test_hash_if_unchanged_refuses_a_file_that_changed_since_stat(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip")
    identity = FileIdentity.of(path.stat())
    assert hash_if_unchanged(path, identity) is not None
    make_zip(path, payload=b"grown")
    assert hash_if_unchanged(path, identity) is None


def _entry(checkpoint: object) -> ManifestEntry:
    from ckptd.runs.checkpoints import Checkpoint

    assert isinstance(checkpoint, Checkpoint)
    return ManifestEntry(
        path=checkpoint.path,
        step=checkpoint.step,
        size=checkpoint.size,
        mtime=checkpoint.mtime,
        sha256=checkpoint.sha256,
        format=checkpoint.format,
        state="kept",
        mtime_ns=checkpoint.identity.mtime_ns,
    )


# ---- the warm fast path builds what the general path builds ---------------------------------------


@pytest.mark.parametrize("state", ["kept", "converted", "held", "refused", "broken", "pending"])
@pytest.mark.parametrize("fmt", [Format.SB2_ZIP, Format.UNKNOWN])
@pytest.mark.parametrize("sha256", ["ab" * 32, None])
@pytest.mark.parametrize("hash_files", [True, False])
def test_an_unchanged_file_gets_the_checkpoint_the_general_path_builds(
    tmp_path: Path, state: str, fmt: Format, sha256: str | None, hash_files: bool
) -> None:
    run = tmp_path / "run"
    make_zip(run / "rl_model_7_steps.zip")
    ref = RunRef(tmp_path, run, "run")
    (cold,) = inventory_run(ref, options(), now=NOW, previous={}).checkpoints
    cached = dataclasses.replace(
        _entry(cold),
        state=state,  # type: ignore[arg-type]
        format=fmt,
        sha256=sha256,
        converted_from="rl_model_7_steps.pkl",
    )
    opts = options(CountingIdentifier(), hash_files=hash_files)
    (warm,) = inventory_run(ref, opts, now=NOW, previous={cached.path: cached}).checkpoints
    (found,) = walk_files(str(run), "", lambda name: False, opts.matcher.matches)
    now_ns = int(NOW.timestamp()) * 1_000_000_000
    general = _checkpoint(found, options(hash_files=hash_files), now_ns, cached)
    assert general is not None
    # Linking then drops a converted_from no archived original confirms: compare before that.
    assert dataclasses.replace(warm, converted_from=None) == dataclasses.replace(
        general, converted_from=None
    )


def test_a_file_rewritten_in_place_with_its_old_size_is_read_again(tmp_path: Path) -> None:
    """Same name, same size, same inode, new bytes and mtime (torch.save over last.ckpt): the
    cache key (size, mtime_ns) no longer matches, so the file is identified and hashed again."""
    run = tmp_path / "run"
    path = make_zip(run / "rl_model_1_steps.zip", payload=b"a")
    ref = RunRef(tmp_path, run, "run")
    (cold,) = inventory_run(ref, options(), now=NOW, previous={}).checkpoints
    inode = path.stat().st_ino
    data = path.read_bytes()
    changed = data.replace(b"parametersa", b"parametersb")
    assert changed != data and len(changed) == len(data)
    with open(path, "r+b") as handle:  # in place: the directory's mtime does not move
        handle.write(changed)
    set_mtime(path, NOW - timedelta(minutes=30))
    assert path.stat().st_ino == inode
    identify = CountingIdentifier()
    (warm,) = inventory_run(
        ref, options(identify), now=NOW, previous={cold.path: _entry(cold)}
    ).checkpoints
    assert identify.calls == [path]
    assert warm.cached is None and warm.sha256 == hash_if_unchanged(path, warm.identity)
    assert warm.sha256 != cold.sha256
