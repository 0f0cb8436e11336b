"""Parsing in a child process (ckptd.isolation.supervisor): same answers as in-process, a deadline, a memory cap.

Real child processes, real files. The deadline tests use valid checkpoints that are slow to parse
(tests/slow_files.py) under budgets that let them through; the memory test, content under the
counted ``max_memory`` that needs more than the process's address-space cap.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import OrderedDict
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptd.convert.conversion import convert_file
from ckptd.convert.naming import zip_path_for
from ckptd.errors import BudgetExceeded, FencedError, FormatError, UnsafeCheckpoint
from ckptd.formats import Format
from ckptd.formats.sniff import identify
from ckptd.formats.verify import verify_zip
from ckptd.fs.files import TEMP_PREFIX, temp_path_for
from ckptd.isolation.codec import decode, decode_error, encode, encode_error
from ckptd.isolation.process import IsolatedProcess
from ckptd.isolation.supervisor import Isolation
from ckptd.limits import Limits
from ckptd.ops.scrub_check import verify_structure
from tests.sb2_fixtures import ppo2_data, stand_ins, write_checkpoint
from tests.sb2zip_helpers import make_sb3_zip
from tests.slow_files import big_data_pickle, genuine_pickle, padded_pickle, shared_memo_pickle

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_thread_leaks")]


def limits(seconds: int = 60) -> Limits:
    # Opcodes to spare: padded_pickle's 2,000,000 are then parsed (about 5 s), not refused.
    return Limits(max_seconds=timedelta(seconds=seconds), max_opcodes=10_000_000)


@pytest.fixture
def isolation() -> Isolation:
    return Isolation(limits())


def test_child_answers_exactly_what_the_library_answers(
    tmp_path: Path, isolation: Isolation
) -> None:
    source = genuine_pickle(tmp_path / "model_10_steps.pkl")
    zipped = tmp_path / "sb3.zip"
    make_sb3_zip(zipped)
    try:
        assert isolation.identify(source) == identify(source)
        assert isolation.identify(zipped) == identify(zipped)
        assert isolation.verify(zipped) == verify_zip(zipped)  # the prefetched report
        assert isolation.verify(zipped) == verify_zip(zipped)  # asked again: a real call
        outcome = isolation.convert(source, output=tmp_path / "child.zip")
        expected = convert_file(source, output=tmp_path / "parent.zip")
        assert outcome.output == tmp_path / "child.zip"
        assert outcome.output_sha256 == expected.output_sha256
        assert outcome == expected.__class__(
            **{**vars(expected), "output": outcome.output, "globals": outcome.globals}
        )
    finally:
        isolation.close()


def test_errors_cross_with_their_class_and_text(tmp_path: Path, isolation: Isolation) -> None:
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(b"\x80\x04\x95garbage")
    try:
        with pytest.raises(FileNotFoundError):
            isolation.identify(tmp_path / "absent.pkl")
        with pytest.raises(FormatError) as in_child:
            isolation.convert(broken)
        with pytest.raises(FormatError) as in_parent:
            convert_file(broken)
        assert str(in_child.value) == str(in_parent.value)
        assert type(in_child.value) is type(in_parent.value)
        assert in_child.value.message == in_parent.value.message
        assert isolation.kills == 0
    finally:
        isolation.close()


def test_codec_rebuilds_unsafe_checkpoint_fields_and_never_other_classes() -> None:
    err = UnsafeCheckpoint("global os.system", path="/r/x.pkl", offset=7, opcode="GLOBAL")
    again = decode_error(encode_error(err))
    assert isinstance(again, UnsafeCheckpoint)
    assert (str(again), again.message, again.offset, again.opcode) == (
        str(err),
        err.message,
        7,
        "GLOBAL",
    )
    # A class name the child sends that is not ckptd's own error is never looked up elsewhere.
    forged = decode_error({"type": "SystemExit", "text": "bye", "attrs": {}})
    assert type(forged) is RuntimeError and str(forged) == "SystemExit: bye"
    assert decode(tuple[Path, ...], encode((Path("/a"), Path("b")))) == (Path("/a"), Path("b"))


def test_a_file_over_the_deadline_is_refused_and_the_child_replaced(tmp_path: Path) -> None:
    isolation = Isolation(limits(seconds=1))
    slow = padded_pickle(tmp_path / "slow.pkl")
    slower = padded_pickle(tmp_path / "slower.pkl", 1_500_000)
    hang = shared_memo_pickle(tmp_path / "hang.pkl")
    genuine = genuine_pickle(tmp_path / "ok.pkl")
    try:
        # What used to hang the converter is refused by the parser's own budget, in the child.
        with pytest.raises(BudgetExceeded) as budget:
            isolation.convert(hang)
        assert budget.value.limit == "max_expanded_nodes" and isolation.kills == 0
        isolation.identify(genuine)
        first = isolation._state().child
        assert first is not None
        # What a conversion killed while writing leaves (fsio.atomic_write's name for its
        # target), and a temp file of another target that must stay.
        left = temp_path_for(zip_path_for(slow))
        left.write_bytes(b"partial zip")
        other = temp_path_for(tmp_path / "other.zip")
        other.write_bytes(b"someone else's")
        for path in (slow, slower):
            started = time.monotonic()
            with pytest.raises(BudgetExceeded) as refused:
                isolation.identify(path)
                isolation.convert(path)
            assert time.monotonic() - started < 5
            assert refused.value.limit == "max_seconds"
            assert str(refused.value).endswith(
                "refused: exceeds limits.max_seconds (1s): still being parsed; the process parsing"
                " it was killed"
            )
        assert first.proc.poll() is not None  # killed, and reaped
        # The killed conversions' temp files are gone; the next file is served by a new child.
        assert [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)] == [other]
        assert isolation.convert(genuine).status == "converted"
        assert isolation._state().child is not first
        assert isolation.kills == 2 and isolation.exceeded_in_thread() == 2
    finally:
        isolation.close()


def test_a_file_over_the_address_space_cap_is_refused_and_the_next_one_converts(
    tmp_path: Path,
) -> None:
    # 250 MiB of text is under the counted max_memory (256 MiB), but converting it takes about
    # five times that in address space (the text, its JSON, the zip's buffers): over the child's
    # RLIMIT_AS of max_memory + 768 MiB + the file's size. In-process it converts (1.37 GiB peak).
    assert limits().address_space == 1024**3
    isolation = Isolation(limits())
    big = big_data_pickle(tmp_path / "big.pkl", 250 * 1024**2)
    genuine = genuine_pickle(tmp_path / "ok.pkl")
    try:
        with pytest.raises(BudgetExceeded) as refused:
            isolation.identify(big)
            isolation.convert(big)
        assert refused.value.limit == "max_memory"
        assert str(refused.value).endswith(
            "refused: exceeds limits.max_memory (268435456): needs more than 1.2GiB of address"
            " space to parse (limits.max_memory plus the parser's headroom and the file's size)"
        )
        assert isolation.kills == 1
        assert isolation.convert(genuine).status == "converted"
        assert big.stat().st_size > 250 * 1024**2  # untouched
    finally:
        isolation.close()


@pytest.mark.slow
def test_a_legacy_checkpoint_larger_than_the_base_cap_converts(tmp_path: Path) -> None:
    # Reading a legacy pickle maps a sparse buffer as large as the file; RLIMIT_AS counts it
    # although its untouched pages cost nothing. With a fixed cap of max_memory + 768 MiB, a
    # genuine 2 GB checkpoint was refused for max_memory; the child adds the file's size.
    small = Limits(max_memory=1024**2)  # a 769 MiB base cap, below this file's size
    source = tmp_path / "big_model.pkl"
    params = OrderedDict(
        (f"model/layer{index}/w:0", np.zeros((256, 25 * 1024), dtype=np.float32))
        for index in range(32)
    )  # 800 MiB of parameters
    with stand_ins():
        write_checkpoint(source, ppo2_data(), params, protocol=4)
    assert source.stat().st_size > small.address_space
    isolation = Isolation(small)
    try:
        assert isolation.convert(source, output=tmp_path / "big_model.zip").status == "converted"
        assert isolation.kills == 0
    finally:
        isolation.close()


def test_prefetch_examines_a_batch_in_one_request(tmp_path: Path) -> None:
    isolation = Isolation(limits())
    zips = []
    for index in range(3):
        zips.append(tmp_path / f"z{index}.zip")
        make_sb3_zip(zips[-1])
    legacy = genuine_pickle(tmp_path / "legacy.pkl")
    stale = tmp_path / "stale.zip"
    make_sb3_zip(stale)
    absent = tmp_path / "absent.zip"
    try:
        isolation.prefetch([zips[0], absent, zips[1], stale, legacy, zips[2]])
        child = isolation._state().child
        prefetched = dict(isolation._state().prefetched)
        assert set(prefetched) == {*zips, absent, stale, legacy}
        assert isinstance(prefetched[absent], FileNotFoundError)
        stale.write_bytes(stale.read_bytes() + b"changed")  # examined before it changed
        for path in [*zips, legacy]:
            assert isolation.identify(path) == identify(path)
        for path in zips:
            assert isolation.identify(path) == identify(path)
            assert isolation.verify(path) == verify_zip(path)
        with pytest.raises(FileNotFoundError):
            isolation.identify(absent)
        assert isolation.identify(stale) == identify(stale)  # asked again, not the stale answer
        assert isolation.verify(stale) == verify_zip(stale)
        assert isolation._state().child is child and isolation.kills == 0
        # A legacy pickle ends the prefetch: the batch's time goes to its conversion.
        isolation.prefetch([zips[0], legacy, zips[1], zips[2]])
        assert set(isolation._state().prefetched) == {zips[0], legacy}
    finally:
        isolation.close()


def test_the_scrubs_structure_check_runs_in_the_child_within_the_limits(tmp_path: Path) -> None:
    isolation = Isolation(limits(seconds=1))
    zipped = tmp_path / "ok.zip"
    make_sb3_zip(zipped)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(zipped.read_bytes()[:-40])
    slow = padded_pickle(tmp_path / "slow.pkl")  # a full static parse: over 1 s
    try:
        assert isolation.structure(zipped, Format.SB3_ZIP) == ()
        assert isolation.structure(broken, Format.SB3_ZIP) == verify_structure(
            broken, Format.SB3_ZIP
        )
        assert isolation.structure(broken, Format.SB3_ZIP) != ()
        (problem,) = isolation.structure(slow, Format.SB2_PICKLE)
        assert problem.startswith("refused: exceeds limits.max_seconds (1s)")
        assert isolation.kills == 1
    finally:
        isolation.close()


def test_a_child_that_dies_under_a_file_refuses_it_and_is_replaced(tmp_path: Path) -> None:
    # What the kernel's OOM killer (or a crash in C code) does to a child mid-file.
    isolation = Isolation(limits(seconds=60))
    slow = padded_pickle(tmp_path / "slow.pkl")
    genuine = genuine_pickle(tmp_path / "ok.pkl")
    try:
        isolation.identify(genuine)
        child = isolation._state().child
        assert child is not None
        threading.Timer(1.0, os.kill, (child.pid, signal.SIGKILL)).start()
        with pytest.raises(UnsafeCheckpoint) as refused:
            isolation.convert(slow)
        assert str(refused.value).endswith(
            "refused: the process parsing it died (killed by SIGKILL)"
        )
        assert not isinstance(refused.value, BudgetExceeded)
        assert not [name for name in os.listdir(tmp_path) if name.startswith(TEMP_PREFIX)]
        assert isolation.convert(genuine).status == "converted"
        assert isolation.kills == 1
    finally:
        isolation.close()


PAUSE_SECONDS = 2.0  # the daemon's pause: twice the 1 s deadline


def pause_before_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's thread pauses (as under SIGSTOP, a long GC or a stall) after it has sent its
    request, before it reads the answer: the real read then runs on the real pipe."""
    real_read = IsolatedProcess.read

    def read(self: IsolatedProcess, deadline: float) -> dict[str, Any] | None:
        time.sleep(PAUSE_SECONDS)
        return real_read(self, deadline)

    monkeypatch.setattr(IsolatedProcess, "read", read)


def test_an_answer_sent_in_time_while_the_daemon_was_paused_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolation = Isolation(limits(seconds=1))
    genuine = genuine_pickle(tmp_path / "model_10_steps.pkl")
    zips = []
    for index in range(3):
        zips.append(tmp_path / f"z{index}.zip")
        make_sb3_zip(zips[-1])
    try:
        isolation.identify(zips[0])  # a child started, before the pauses begin
        pause_before_reading(monkeypatch)
        assert isolation.identify(genuine) == identify(genuine)
        outcome = isolation.convert(genuine, output=tmp_path / "out.zip")  # one deadline for both
        assert outcome.status == "converted" and verify_zip(tmp_path / "out.zip").ok
        isolation.prefetch(zips[1:])  # one request, two answers read a pause apart
        assert set(isolation._state().prefetched) == set(zips[1:])
        assert not [a for a in isolation._state().prefetched.values() if isinstance(a, Exception)]
        assert isolation.verify(zips[1]) == verify_zip(zips[1])
        assert isolation.kills == 0 and isolation.exceeded_in_thread() == 0
    finally:
        isolation.close()


def test_a_child_that_has_not_answered_when_the_paused_daemon_wakes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolation = Isolation(limits(seconds=1))
    genuine = genuine_pickle(tmp_path / "ok.pkl")
    slow = padded_pickle(tmp_path / "slow.pkl")
    try:
        isolation.identify(genuine)
        pause_before_reading(monkeypatch)
        started = time.monotonic()
        with pytest.raises(BudgetExceeded) as refused:
            isolation.identify(slow)  # a quick look, answered in time during the first pause
            isolation.convert(slow)  # about 5 s of parsing: still at it when the thread wakes
        assert refused.value.limit == "max_seconds"
        assert time.monotonic() - started < 2 * PAUSE_SECONDS + 2.5  # not waited out
        assert isolation.kills == 1 and isolation.exceeded_in_thread() == 1
    finally:
        isolation.close()


def test_the_time_a_child_waits_for_the_lease_check_is_not_its_time(tmp_path: Path) -> None:
    isolation = Isolation(limits(seconds=1))
    genuine = genuine_pickle(tmp_path / "model_10_steps.pkl")

    def slow_check() -> None:  # a lease check that takes the daemon longer than the deadline
        time.sleep(PAUSE_SECONDS)

    def slow_no() -> None:
        time.sleep(PAUSE_SECONDS)
        raise FencedError("lost the lease while paused")

    try:
        isolation.identify(genuine)
        outcome = isolation.convert(genuine, output=tmp_path / "out.zip", fence=slow_check)
        assert outcome.status == "converted"
        (tmp_path / "out.zip").unlink()
        isolation.identify(genuine)  # as the pipeline starts a file: its clock starts again
        with pytest.raises(FencedError, match="lost the lease while paused"):
            isolation.convert(genuine, output=tmp_path / "out.zip", fence=slow_no)
        assert not (tmp_path / "out.zip").exists()
        assert isolation.kills == 0
    finally:
        isolation.close()


def test_the_daemons_own_time_between_two_calls_on_a_file_is_not_the_files(
    tmp_path: Path,
) -> None:
    """identify and convert of one file share its deadline; the daemon's work (or a pause)
    between the two is not the child's time."""
    isolation = Isolation(limits(seconds=1))
    genuine = genuine_pickle(tmp_path / "model_10_steps.pkl")
    try:
        isolation.identify(genuine)
        time.sleep(PAUSE_SECONDS)
        assert isolation.convert(genuine, output=tmp_path / "out.zip").status == "converted"
        assert isolation.kills == 0
    finally:
        isolation.close()
