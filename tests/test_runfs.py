"""ckptd.fs.runfs: relative paths from run files are checked, and nothing below a run is followed.

Every test plants a symlink or a hostile name and checks both the refusal and that a sentinel
directory beside the run is untouched byte for byte, with no file appearing in it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from ckptd.errors import UnsafePathError
from ckptd.fs import runfs
from ckptd.fs.runfs import RunFS, check_name, check_relpath, relpath_problem


def snapshot(directory: Path) -> dict[str, bytes | str]:
    """Every entry below ``directory``: file bytes, link targets, and directories by name."""
    found: dict[str, bytes | str] = {}
    for current, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(current) / name
            rel = path.relative_to(directory).as_posix()
            if path.is_symlink():
                found[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = path.read_bytes()
    return found


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "precious.zip").write_bytes(b"precious")
    (outside / "sub" / "deep.zip").write_bytes(b"deep")
    (outside / ".ckptd-tmp-old.tmp").write_bytes(b"looks like a temp file")
    os.utime(outside / ".ckptd-tmp-old.tmp", (0, 0))
    return outside


@pytest.fixture
def run(tmp_path: Path) -> Path:
    directory = tmp_path / "run"
    (directory / "a" / "b").mkdir(parents=True)
    (directory / "a" / "b" / "x.zip").write_bytes(b"x")
    (directory / "top.zip").write_bytes(b"top")
    return directory


@pytest.mark.parametrize(
    ("relpath", "problem"),
    [
        ("", "is empty"),
        ("/etc/passwd", "is absolute"),
        ("../outside/precious.zip", "'..' component"),
        ("a/../../outside", "'..' component"),
        ("a/./x.zip", "'.' component"),
        ("a//x.zip", "empty component"),
        ("a/", "empty component"),
        ("x\0.zip", "NUL"),
        ("n" * 256, "longer than 255 bytes"),
        ("/".join(["d" * 200] * 21), "longer than 4095 bytes"),
        (7, "is a int"),
        (None, "is a NoneType"),
    ],
)
def test_hostile_relpaths_are_refused_with_the_reason(relpath: object, problem: str) -> None:
    assert problem in (relpath_problem(relpath) or "")
    with pytest.raises(UnsafePathError) as caught:
        check_relpath(relpath, what="original", source="/run/.ckptd/trash/.index.json")
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("/run/.ckptd/trash/.index.json: original ")


def test_plain_relpaths_pass_and_a_newline_is_quoted_on_one_line() -> None:
    for good in ("x.zip", "a/b/x.zip", ".ckptd/legacy/a.pkl", "..x", "x..", "sp ace.zip"):
        assert relpath_problem(good) is None
    # A newline is legal in a file name: accepted, and every message quotes it with repr.
    assert relpath_problem("evil\nckptd: forged line") is None
    with pytest.raises(UnsafePathError) as caught:
        check_name("a/evil\nname", what="entry", source="index")
    assert "\n" not in str(caught.value) and "'a/evil\\nname'" in str(caught.value)


# ---- a symlink at each component -----------------------------------------------------------------

Operation = Callable[[RunFS], object]
OPERATIONS: dict[str, Operation] = {
    "lstat": lambda fs: fs.lstat("a/b/x.zip"),
    "open_read": lambda fs: fs.open_read("a/b/x.zip").close(),
    "write_atomic": lambda fs: fs.write_atomic("a/b/new.json", b"{}"),
    "unlink": lambda fs: fs.unlink("a/b/x.zip"),
    "chmod": lambda fs: fs.chmod("a/b/x.zip", 0o777),
    "move_out": lambda fs: fs.move("a/b/x.zip", "moved.zip"),
    "move_in": lambda fs: fs.move("top.zip", "a/b/top.zip", create_parents=True),
    "move_unique": lambda fs: fs.move_unique("top.zip", "a/b", "x.zip", create=True),
    "create_dirs": lambda fs: fs.write_atomic("a/b/c/d/new.json", b"{}"),
    "listdir": lambda fs: fs.listdir("a/b"),
    "remove_stale_temps": lambda fs: fs.remove_stale_temps("a/b", older_than_s=0, now=1e12),
}


@pytest.mark.parametrize("component", ["a", "a/b"])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_symlink_at_any_component_is_refused(
    run: Path, sentinel: Path, component: str, operation: str
) -> None:
    before = snapshot(sentinel)
    target = sentinel if component == "a" else sentinel / "sub"
    if component == "a":
        # a/b exists in the sentinel too, so a followed link would find a real a/b/x.zip there.
        (sentinel / "b").mkdir()
        (sentinel / "b" / "x.zip").write_bytes(b"bait")
        before = snapshot(sentinel)
    else:
        (sentinel / "sub" / "x.zip").write_bytes(b"bait")
        before = snapshot(sentinel)
    moved_away = run.parent / "moved-away"
    os.rename(run / component, moved_away)
    (run / component).symlink_to(target)
    with pytest.raises(UnsafePathError, match=rf"run/{component}: is a symlink; refusing"):
        OPERATIONS[operation](RunFS(run))
    assert snapshot(sentinel) == before
    assert (run / "top.zip").read_bytes() == b"top"


@pytest.mark.parametrize("kind", ["fifo", "file", "dangling"])
def test_a_component_that_is_no_directory_is_named_with_its_kind(run: Path, kind: str) -> None:
    os.rename(run / "a", run.parent / "a-away")
    if kind == "fifo":
        os.mkfifo(run / "a")
    elif kind == "file":
        (run / "a").write_bytes(b"")
    else:
        (run / "a").symlink_to(run.parent / "nowhere")
    fs = RunFS(run)
    expected = {"fifo": "a FIFO", "file": "a regular file", "dangling": "a symlink"}[kind]
    with pytest.raises(UnsafePathError, match=f"run/a: is {expected}; refusing"):
        fs.write_atomic("a/new.json", b"{}")
    with pytest.raises(UnsafePathError):
        fs.is_real_dir("a")


def test_a_final_symlink_is_never_read_chmodded_or_moved_through(run: Path, sentinel: Path) -> None:
    before = snapshot(sentinel)
    (run / "link.zip").symlink_to(sentinel / "precious.zip")
    fs = RunFS(run)
    with pytest.raises(UnsafePathError, match="is a symlink"):
        fs.open_read("link.zip")
    with pytest.raises(UnsafePathError, match="is a symlink"):
        fs.chmod("link.zip", 0o777)
    with pytest.raises(UnsafePathError, match="not a regular file"):
        fs.regular("link.zip")
    fs.unlink("link.zip")  # a link is removed as a link, its target stays
    assert snapshot(sentinel) == before
    assert stat.S_IMODE((sentinel / "precious.zip").stat().st_mode) != 0o777


def test_a_symlink_swapped_in_after_the_check_is_refused_by_the_open(
    run: Path, sentinel: Path
) -> None:
    """Check, then an attacker swaps a directory for a link, then use: the no-follow open at use
    time refuses it (there is no path-based step in between that would follow it)."""
    (sentinel / "b").mkdir()
    (sentinel / "b" / "x.zip").write_bytes(b"bait")
    before = snapshot(sentinel)
    fs = RunFS(run)
    assert fs.is_real_dir("a/b")  # the check passes
    os.rename(run / "a", run.parent / "a-away")  # the swap
    (run / "a").symlink_to(sentinel)
    with pytest.raises(UnsafePathError, match="run/a: is a symlink"):
        fs.move("a/b/x.zip", "stolen.zip")  # the use
    with pytest.raises(UnsafePathError, match="run/a: is a symlink"):
        fs.unlink("a/b/x.zip")
    assert snapshot(sentinel) == before
    assert not (run / "stolen.zip").exists()


def test_a_held_directory_descriptor_stays_on_the_real_directory(run: Path, sentinel: Path) -> None:
    before = snapshot(sentinel)
    fs = RunFS(run)
    with fs.directory("a/b") as fd:
        os.rename(run / "a", run.parent / "a-away")
        (run / "a").symlink_to(sentinel)
        os.unlink("x.zip", dir_fd=fd)  # acts on the directory that was opened, not the link
    assert not (run.parent / "a-away" / "b" / "x.zip").exists()
    assert snapshot(sentinel) == before


def test_move_never_overwrites_and_move_unique_picks_a_free_name(run: Path) -> None:
    fs = RunFS(run)
    (run / "a" / "b" / "top.zip").write_bytes(b"older")
    with pytest.raises(FileExistsError):
        fs.move("top.zip", "a/b/top.zip")
    assert (run / "a" / "b" / "top.zip").read_bytes() == b"older"
    assert fs.move_unique("top.zip", "a/b", "top.zip") == "top.zip.1"
    assert (run / "a" / "b" / "top.zip.1").read_bytes() == b"top"
    assert not (run / "top.zip").exists()


def test_write_atomic_replaces_and_leaves_no_temp(run: Path) -> None:
    fs = RunFS(run)
    fs.write_atomic("a/state.json", b"1")
    fs.write_atomic("a/state.json", b"22", mode=0o600)
    assert (run / "a" / "state.json").read_bytes() == b"22"
    assert stat.S_IMODE((run / "a" / "state.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in (run / "a").iterdir()) == ["b", "state.json"]


def test_read_bytes_refuses_a_huge_planted_state_file_and_a_fifo(run: Path) -> None:
    (run / "big.json").write_bytes(b"x" * 1001)
    os.mkfifo(run / "pipe.json")
    fs = RunFS(run)
    with pytest.raises(UnsafePathError, match="larger than 1000 bytes"):
        fs.read_bytes("big.json", limit=1000)
    with pytest.raises(UnsafePathError, match="a FIFO, not a regular file"):
        fs.read_bytes("pipe.json", limit=1000)  # and returns at once: O_NONBLOCK


def test_a_move_is_one_atomic_rename_that_never_overwrites(tmp_path: Path) -> None:
    """A kill between a hard link and its unlink left a trashed checkpoint under two names (found by
    the kill -9 during prune test); on Linux the move is one renameat2(RENAME_NOREPLACE)."""
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            runfs._rename_noreplace(fd, "a", fd, "b")
        assert (tmp_path / "a").read_bytes() == b"A" and (tmp_path / "b").read_bytes() == b"B"
        assert runfs._rename_noreplace(fd, "a", fd, "c") is True
    finally:
        os.close(fd)
    assert not (tmp_path / "a").exists()
    assert (tmp_path / "c").read_bytes() == b"A"
    assert (tmp_path / "c").stat().st_nlink == 1
