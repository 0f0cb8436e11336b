"""The per-run state dir: layout, pins, and the advisory lock shared by daemon, prune and pin."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ckptd.errors import RunLockedError, StateError, UnsafePathError
from ckptd.runs.statedir import Pin, StateLayout, read_pins, run_lock, write_pins


def test_layout_paths_and_ensure_create_every_subdirectory(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path, ".ckptd")
    assert layout.legacy_relpath("sub/x.pkl") == ".ckptd/legacy/sub/x.pkl"
    assert layout.legacy_path("x.pkl") == tmp_path / ".ckptd" / "legacy" / "x.pkl"
    layout.ensure()
    layout.ensure()  # idempotent
    assert sorted(p.name for p in layout.root.iterdir()) == ["legacy", "quarantine", "trash"]


def test_symlinked_state_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".ckptd").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(
        UnsafePathError, match=r"\.ckptd: ckptd state directory is a symlink; refusing"
    ):
        StateLayout(tmp_path / "run").ensure()
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_pins_round_trip_and_absent_file_means_no_pins(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    assert read_pins(layout) == {}
    pins = {"b.zip": Pin("best eval", datetime(2026, 1, 2, tzinfo=UTC)), "a.zip": Pin("paper")}
    write_pins(layout, pins)
    assert read_pins(layout) == pins
    assert layout.pins_file.read_text().splitlines()[2].strip() == '"a.zip": {'  # sorted


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", r"pins file is not valid JSON"),
        ('{"pins": []}', r'pins file must be \{"pins"'),
        ('{"pins": {"a.zip": "yes"}}', r"pin 'a.zip' must be an object with a text reason"),
        (
            '{"pins": {"a.zip": {"reason": "x", "pinned_at": "noon"}}}',
            r"pin 'a.zip': bad pinned_at",
        ),
    ],
)
def test_invalid_pins_file_raises_state_error_naming_it(
    tmp_path: Path, text: str, message: str
) -> None:
    layout = StateLayout(tmp_path)
    layout.ensure()
    layout.pins_file.write_text(text)
    with pytest.raises(StateError, match=rf"^{layout.pins_file}: {message}"):
        read_pins(layout)


def test_run_lock_excludes_a_second_holder_until_released(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    with run_lock(layout, timeout=1) as held:
        assert held
        start = time.monotonic()
        locked = r"lock: run is locked by another ckptd process \(waited 0.2s\)"
        with pytest.raises(RunLockedError, match=locked), run_lock(layout, timeout=0.2):
            pass
        assert 0.2 <= time.monotonic() - start < 2
        with pytest.raises(RunLockedError), run_lock(layout, timeout=0, shared=True, create=False):
            pass
    with run_lock(layout, timeout=0) as held:  # released on exit
        assert held


def test_shared_lock_without_a_lock_file_creates_nothing(tmp_path: Path) -> None:
    with run_lock(StateLayout(tmp_path), timeout=0, shared=True, create=False) as held:
        assert held is False
    assert list(tmp_path.iterdir()) == []


def test_shared_locks_coexist(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    with run_lock(layout, timeout=0):
        pass
    with (
        run_lock(layout, timeout=0, shared=True, create=False) as first,
        run_lock(layout, timeout=0, shared=True, create=False) as second,
    ):
        assert first and second
