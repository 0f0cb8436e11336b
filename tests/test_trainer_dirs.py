"""Completion of directory checkpoints, judged on layouts the trainers wrote (tests/data/trainers)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ckptd.formats import Format
from ckptd.formats.trainer_dirs import (
    MARKER_FILES,
    DirFile,
    DirListing,
    Quiet,
    is_quiet,
    judge,
    observe,
)

FIXTURES = Path(__file__).resolve().parent / "data" / "trainers"
ORDER = json.loads((FIXTURES / "order.json").read_text())


def listing_of(directory: Path) -> DirListing:
    """What the daemon's walk gathers (a plain os.walk: fixtures hold no links)."""
    files = []
    newest_dir = directory.stat().st_mtime_ns
    for top, dirs, names in os.walk(directory):
        for name in dirs:
            newest_dir = max(newest_dir, (Path(top) / name).stat().st_mtime_ns)
        for name in names:
            path = Path(top) / name
            st = path.stat()
            files.append(DirFile(str(path.relative_to(directory)), st.st_size, st.st_mtime_ns))
    markers = {
        item.path: (directory / item.path).read_bytes()
        for item in files
        if item.path in MARKER_FILES
    }
    latest = directory.parent / "latest"
    return DirListing(
        name=directory.name,
        files=tuple(files),
        markers=markers,
        parent_latest=latest.read_text().strip() if latest.is_file() else None,
        newest_dir_mtime_ns=newest_dir,
    )


def as_recorded(name: str, sizes: dict[str, int], parent_latest: str | None = None) -> DirListing:
    """A listing as a trainer had written it at a recorded moment (order.json)."""
    files = tuple(DirFile(path, size, 1) for path, size in sizes.items())
    return DirListing(name, files, {}, parent_latest)


@pytest.mark.parametrize(
    ("relative", "fmt", "complete"),
    [
        ("hf/checkpoint-2", Format.HF_TRAINER, True),
        ("hf/checkpoint-6", Format.HF_TRAINER, True),
        ("deepspeed/global_step2", Format.DEEPSPEED, True),  # latest names a later tag
        ("deepspeed/global_step4", Format.DEEPSPEED, True),  # latest names it
        ("deepspeed/global_step6", Format.DEEPSPEED, False),  # interrupted: latest not moved
        ("deepspeed-zero2/global_step2", Format.DEEPSPEED, True),
        ("deepspeed-zero2/global_step6", Format.DEEPSPEED, False),
        ("orbax/2", Format.ORBAX, True),
        ("orbax/4", Format.ORBAX, True),
        ("orbax/6.orbax-checkpoint-tmp", Format.ORBAX, False),
        ("dcp/step_2", Format.TORCH_DCP, True),
        ("lightning", Format.DIRECTORY, True),  # files, no trainer's directory layout
    ],
)
def test_real_layouts(relative: str, fmt: Format, complete: bool) -> None:
    verdict = judge(listing_of(FIXTURES / relative))
    assert (verdict.format, verdict.complete) == (fmt, complete), verdict.reason


@pytest.mark.parametrize("directory", sorted(ORDER["hf"]))
def test_hf_is_incomplete_at_every_moment_before_its_state(directory: str) -> None:
    """Everything the Trainer had written when it began trainer_state.json, and every subset."""
    before = ORDER["hf"][directory]
    assert set(before) == {path.name for path in (FIXTURES / "hf" / directory).iterdir()} - {
        "trainer_state.json"
    }
    names = sorted(before)
    for count in range(len(names) + 1):
        partial = {name: before[name] for name in names[:count]}
        assert not judge(as_recorded(directory, partial)).complete, partial


@pytest.mark.parametrize("save_dir", sorted(ORDER["deepspeed"]))
def test_deepspeed_tag_is_whole_before_latest_names_it(save_dir: str) -> None:
    """When DeepSpeed opened ``latest``, the tag it names was already written in full."""
    saves = ORDER["deepspeed"][save_dir]
    assert len(saves) == 2  # global_step2 and global_step4; global_step6 never moved latest
    for index, before in enumerate(saves):
        tag = f"global_step{2 * (index + 1)}"
        final = FIXTURES / save_dir / tag
        assert before[tag] == {p.name: p.stat().st_size for p in final.iterdir()}
        earlier = None if index == 0 else f"global_step{2 * index}"
        assert not judge(as_recorded(tag, before[tag], earlier)).complete
        assert judge(as_recorded(tag, before[tag], tag)).complete


@pytest.mark.parametrize("directory", sorted(ORDER["dcp"]))
def test_dcp_is_incomplete_before_its_metadata(directory: str) -> None:
    verdict = judge(as_recorded(directory, ORDER["dcp"][directory]))
    assert (verdict.format, verdict.complete) == (Format.TORCH_DCP, False)


def test_orbax_in_progress_is_incomplete_under_either_name(tmp_path: Path) -> None:
    """The real temporary directory as finalize began: incomplete as it is, and still incomplete
    under the final name (CommitFileTemporaryPath writes there) without a commit marker."""
    recorded = ORDER["orbax"]["4.orbax-checkpoint-tmp"]
    in_progress = FIXTURES / "orbax" / "6.orbax-checkpoint-tmp"
    assert {item.path: item.size for item in listing_of(in_progress).files} == recorded
    assert not judge(listing_of(in_progress)).complete
    renamed = tmp_path / "6"
    shutil.copytree(in_progress, renamed)
    verdict = judge(listing_of(renamed))
    assert (verdict.format, verdict.complete) == (Format.ORBAX, False), verdict.reason


def _copy(relative: str, tmp_path: Path) -> Path:
    target = tmp_path / relative
    shutil.copytree(FIXTURES / relative, target)
    return target


def test_hf_state_half_written_is_incomplete(tmp_path: Path) -> None:
    directory = _copy("hf/checkpoint-4", tmp_path)
    state = directory / "trainer_state.json"
    state.write_bytes(state.read_bytes()[:100])
    verdict = judge(listing_of(directory))
    assert (verdict.format, verdict.complete) == (Format.HF_TRAINER, False)
    state.write_text("[1, 2]")
    assert not judge(listing_of(directory)).complete


def test_hf_with_deepspeed_inside_waits_for_its_state(tmp_path: Path) -> None:
    """Trainer + DeepSpeed: checkpoint-N/ holds global_stepN/ and latest, then trainer_state.json."""
    directory = _copy("hf/checkpoint-4", tmp_path)
    state = (directory / "trainer_state.json").read_bytes()
    (directory / "trainer_state.json").unlink()
    (directory / "optimizer.pt").unlink()
    shutil.copytree(FIXTURES / "deepspeed" / "global_step4", directory / "global_step4")
    (directory / "latest").write_text("global_step4")
    assert judge(listing_of(directory)).format is Format.HF_TRAINER
    assert not judge(listing_of(directory)).complete
    (directory / "trainer_state.json").write_bytes(state)
    assert judge(listing_of(directory)).complete


def test_deepspeed_without_latest_or_with_an_earlier_one(tmp_path: Path) -> None:
    directory = _copy("deepspeed/global_step4", tmp_path)
    verdict = judge(listing_of(directory))
    assert (verdict.format, verdict.complete) == (Format.DEEPSPEED, False)
    (tmp_path / "deepspeed" / "latest").write_text("global_step2")
    assert not judge(listing_of(directory)).complete
    (tmp_path / "deepspeed" / "latest").write_text("global_step4\n")
    assert judge(listing_of(directory)).complete
    (tmp_path / "deepspeed" / "latest").write_text("my-own-tag")  # not comparable: not complete
    assert not judge(listing_of(directory)).complete


def test_lightning_deepspeed_strategy_directory(tmp_path: Path) -> None:
    """Lightning's DeepSpeed strategy: ``<name>.ckpt/checkpoint/`` and its own ``latest``."""
    directory = tmp_path / "epoch=0-step=4.ckpt"
    shutil.copytree(FIXTURES / "deepspeed" / "global_step4", directory / "checkpoint")
    assert not judge(listing_of(directory)).complete
    (directory / "latest").write_text("checkpoint")
    verdict = judge(listing_of(directory))
    assert (verdict.format, verdict.complete) == (Format.DEEPSPEED, True)
    (directory / "latest").write_text("elsewhere")
    verdict = judge(listing_of(directory))
    assert (verdict.format, verdict.complete) == (Format.DEEPSPEED, False)


def test_orbax_commit_file_mode_and_old_orbax(tmp_path: Path) -> None:
    """CommitFileTemporaryPath writes under the final name: only commit_success.txt says done."""
    directory = _copy("orbax/4", tmp_path)
    (directory / "commit_success.txt").unlink()
    assert judge(listing_of(directory)).complete  # the commit timestamp was recorded
    metadata = json.loads((directory / "_CHECKPOINT_METADATA").read_text())
    metadata["commit_timestamp_nsecs"] = None
    (directory / "_CHECKPOINT_METADATA").write_text(json.dumps(metadata))
    verdict = judge(listing_of(directory))
    assert (verdict.format, verdict.complete) == (Format.ORBAX, False)
    (directory / "_CHECKPOINT_METADATA").write_text('{"item_handlers": null')
    assert not judge(listing_of(directory)).complete
    (directory / "_CHECKPOINT_METADATA").write_text('{"item_handlers": null}')
    assert judge(listing_of(directory)).complete  # no timestamps: the rename alone committed


def test_dcp_without_metadata(tmp_path: Path) -> None:
    directory = _copy("dcp/step_4", tmp_path)
    (directory / ".metadata").rename(directory / ".metadata.tmp")
    verdict = judge(listing_of(directory))
    assert (verdict.format, verdict.complete) == (Format.TORCH_DCP, False)


def test_plain_and_empty_directories(tmp_path: Path) -> None:
    empty = tmp_path / "checkpoint-9"
    empty.mkdir()
    assert not judge(listing_of(empty)).complete
    (empty / "weights.npz").write_bytes(b"x")
    verdict = judge(listing_of(empty))
    assert (verdict.format, verdict.complete) == (Format.DIRECTORY, True)


def test_quiet_needs_old_mtimes_and_an_unchanged_listing() -> None:
    files = (DirFile("a", 1, 100 * 10**9), DirFile("b/c", 2, 90 * 10**9))
    listing = DirListing("d", files, newest_dir_mtime_ns=95 * 10**9)
    assert listing.size == 3
    assert not is_quiet(listing, 104.0, 5.0)  # a file changed 4 s ago
    assert is_quiet(listing, 105.0, 5.0)  # one look: the mtimes alone
    record = observe(None, listing, 105.0)
    assert not is_quiet(listing, 106.0, 5.0, record)  # seen for 1 s only
    assert is_quiet(listing, 110.0, 5.0, record)
    grown = DirListing("d", (DirFile("a", 1, 100 * 10**9), DirFile("b/c", 3, 90 * 10**9)))
    assert observe(record, grown, 111.0) == Quiet(grown.signature(), 111.0)  # a change resets
    assert not is_quiet(grown, 115.0, 5.0, observe(record, grown, 111.0))
    assert observe(record, listing, 120.0) is record  # unchanged keeps the first sighting
    copied = DirListing("d", (*files, DirFile("e", 1, 1)), newest_dir_mtime_ns=95 * 10**9)
    assert not is_quiet(copied, 130.0, 5.0, record)  # a copy with old mtimes still changed it
