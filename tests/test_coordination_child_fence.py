"""A conversion in the parser's child asks the daemon before it renames the zip and moves the
original (README, "Several daemons on one root"): the daemon answers with its lease check, and a
no leaves the source untouched and no zip or temp file behind, in the child as in-process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from ckptd.convert.conversion import convert_file
from ckptd.errors import FencedError
from ckptd.fs.files import TEMP_PREFIX
from ckptd.isolation.supervisor import Isolation
from ckptd.limits import Limits
from tests.slow_files import genuine_pickle

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_thread_leaks")]


@pytest.fixture
def isolation() -> Iterator[Isolation]:
    isolation = Isolation(Limits(max_seconds=timedelta(seconds=60)))
    yield isolation
    isolation.close()


class Fence:
    """Says yes ``allowed`` times, then no (FencedError); counts the questions."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.asked = 0

    def __call__(self) -> None:
        self.asked += 1
        if self.asked > self.allowed:
            raise FencedError("run-1: the lease of node n2 may have lapsed")


Converter = Callable[..., object]


def converters(isolation: Isolation) -> dict[str, Converter]:
    return {"child": isolation.convert, "in-process": convert_file}


@pytest.mark.parametrize("where", ["child", "in-process"])
def test_asked_before_the_rename_and_before_the_move(
    tmp_path: Path, isolation: Isolation, where: str
) -> None:
    source = genuine_pickle(tmp_path / "model_10_steps.pkl")
    fence = Fence(allowed=2)
    converters(isolation)[where](source, original="archive", fence=fence)
    assert fence.asked == 2
    assert (tmp_path / "model_10_steps.zip").exists() and not source.exists()


@pytest.mark.parametrize("where", ["child", "in-process"])
def test_a_no_before_the_rename_leaves_nothing_behind(
    tmp_path: Path, isolation: Isolation, where: str
) -> None:
    source = genuine_pickle(tmp_path / "model_10_steps.pkl")
    before = source.read_bytes()
    fence = Fence(allowed=0)
    with pytest.raises(FencedError, match="may have lapsed"):
        converters(isolation)[where](source, original="archive", fence=fence)
    assert fence.asked == 1
    assert source.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model_10_steps.pkl"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize("where", ["child", "in-process"])
def test_a_no_before_the_move_keeps_the_original(
    tmp_path: Path, isolation: Isolation, where: str
) -> None:
    # The verified zip stands; the original stays where it was for the run's next owner, which
    # finds the zip is this checkpoint's conversion and only moves the original.
    source = genuine_pickle(tmp_path / "model_10_steps.pkl")
    before = source.read_bytes()
    with pytest.raises(FencedError):
        converters(isolation)[where](source, original="archive", fence=Fence(allowed=1))
    assert source.read_bytes() == before
    outcome = convert_file(source, original="archive")
    assert outcome.status == "already-converted" and outcome.original == "archived"


def test_the_child_is_reused_after_a_no(tmp_path: Path, isolation: Isolation) -> None:
    # The question and its answer are part of one request: the next request finds the pipe clean.
    first = genuine_pickle(tmp_path / "model_10_steps.pkl")
    second = genuine_pickle(tmp_path / "model_20_steps.pkl")
    with pytest.raises(FencedError):
        isolation.convert(first, fence=Fence(allowed=0))
    outcome = isolation.convert(second, fence=Fence(allowed=2))
    assert outcome.status == "converted"
    assert isolation.kills == 0
