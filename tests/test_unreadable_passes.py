"""An unreadable checkpoint stays ``pending`` with its error on every manifest and prune pass.

A read error (EACCES, EIO) says nothing about a file's content, so it is not a ``broken`` verdict:
the passes record it as the daemon's pipeline does (``pending``, ``error: "cannot read: ..."``, the
retry mark), write the same entry every time, never delete the file, and see it again once it can
be read. As root, mode 000 stops nothing, so these in-process tests inject the read error through
the identifier the passes and the pipeline take (a fake, not a mock);
test_permissions.py runs the real thing as an unprivileged user.
"""

from __future__ import annotations

import dataclasses
import errno
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ckptd.config.model import Config
from ckptd.errors import FormatError
from ckptd.formats import Format
from ckptd.formats.sniff import Identification, identify, identify_format
from ckptd.fs.files import FileIdentity
from ckptd.manifest.model import ManifestEntry
from ckptd.manifest.store import load_manifest, write_manifest
from ckptd.manifest.updates import set_entry
from ckptd.pipeline.batch import process_batch, process_path
from ckptd.pipeline.discovery import find_work, needs_processing
from ckptd.pipeline.types import PipelineDeps
from ckptd.retention.manifest_pass import write_manifests
from ckptd.retention.passes import PassOptions
from ckptd.retention.prune import prune_all
from ckptd.retention.report import PruneReport
from ckptd.runs.checkpoints import RETRY_KEY, UNREADABLE, InventoryOptions
from ckptd.runs.inventory import inventory_run
from ckptd.runs.listing import CheckpointMatcher
from ckptd.runs.roots import RunRef
from ckptd.timefmt import from_ns
from tests.ops_helpers import (
    MANIFEST,
    converted_run,
    decisions,
    manifest_of,
    ops_config,
    run_report,
)
from tests.sb2_fixtures import make_ppo2_checkpoint

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("sb2_stand_ins")]

# The oldest step: were it judged like a readable checkpoint, keep_last 1 would delete it.
LOCKED = "rl_model_500_steps.pkl"
DENIED = "cannot read: Permission denied"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return ops_config(tmp_path / "runs")


@pytest.fixture
def run(config: Config) -> Path:
    """Three converted checkpoints and one legacy pickle nobody has looked at yet."""
    run = converted_run(config)
    make_ppo2_checkpoint(run / LOCKED)
    return run


class Denying:
    """The real identifier, except that reading ``locked`` fails with EACCES; counts the reads."""

    def __init__(self, locked: Path) -> None:
        self.locked = locked
        self.calls: list[str] = []

    def _check(self, path: Path) -> None:
        self.calls.append(path.name)
        if path == self.locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def format_of(self, path: Path) -> Format:  # what the manifest and prune passes call
        self._check(path)
        return identify_format(path)

    def identification(self, path: Path) -> Identification:  # what the pipeline calls
        self._check(path)
        return identify(path)


def now() -> datetime:
    return datetime.now(UTC)


def manifest_pass(config: Config, identifier: Denying) -> PruneReport:
    return write_manifests(config, now=now(), options=PassOptions(identify=identifier.format_of))


def locked_entry(run: Path) -> ManifestEntry:
    return manifest_of(run).by_path()[LOCKED]


def test_every_pass_writes_the_entry_the_pipeline_writes_and_leaves_the_manifest_alone(
    config: Config, run: Path
) -> None:
    denying = Denying(run / LOCKED)
    (ref,) = (RunRef(config.roots[0].path, run, "ppo-1"),)
    result = process_batch(
        config,
        config.roots[0],
        ref,
        [run / LOCKED],
        deps=PipelineDeps(identify=denying.identification),
    )
    assert [(o.action, o.message) for o in result.outcomes] == [("failed", DENIED)]
    recorded = locked_entry(run)
    assert (recorded.state, recorded.error, recorded.format) == ("pending", DENIED, Format.UNKNOWN)
    assert recorded.sha256 is None and recorded.extra == {RETRY_KEY: True}
    content = (run / MANIFEST).read_bytes()

    for _ in range(3):
        report = run_report(manifest_pass(config, denying), "ppo-1")
        assert not report.manifest_written  # the daemon and the passes agree: nothing to write
        assert locked_entry(run) == recorded
    assert (run / MANIFEST).read_bytes() == content
    assert denying.calls == [LOCKED] * 4  # not final: read again each time (and only it)


def test_passes_without_the_daemon_alternate_nothing(config: Config, run: Path) -> None:
    denying = Denying(run / LOCKED)
    manifest_pass(config, denying)
    first = locked_entry(run)
    assert (first.state, first.error, first.extra) == ("pending", DENIED, {RETRY_KEY: True})
    assert first.step == 500 and first.sha256 is None and first.format is Format.UNKNOWN
    content = (run / MANIFEST).read_bytes()
    for _ in range(2):
        assert not run_report(manifest_pass(config, denying), "ppo-1").manifest_written
    assert (run / MANIFEST).read_bytes() == content
    assert needs_processing(first, FileIdentity.of((run / LOCKED).stat()), config)


def test_prune_skips_an_unreadable_file_and_never_deletes_it(config: Config, run: Path) -> None:
    denying = Denying(run / LOCKED)
    content = (run / LOCKED).read_bytes()
    options = PassOptions(identify=denying.format_of)
    dry = run_report(prune_all(config, now=now(), dry_run=True, options=options), "ppo-1")
    assert decisions(dry)[LOCKED] == ("skip", ("skip: unreadable",))

    report = run_report(prune_all(config, now=now(), dry_run=False, options=options), "ppo-1")
    assert report.error is None and len(report.deleted) == 2  # a real pass that deleted others
    assert decisions(report)[LOCKED] == ("skip", ("skip: unreadable",))
    entry = locked_entry(run)
    assert (entry.state, entry.error, entry.reasons) == ("pending", DENIED, ("skip: unreadable",))
    assert (run / LOCKED).read_bytes() == content

    again = run_report(prune_all(config, now=now(), dry_run=False, options=options), "ppo-1")
    assert again.deleted == () and locked_entry(run) == entry
    assert not run_report(manifest_pass(config, denying), "ppo-1").manifest_written


def test_a_permissions_fix_is_picked_up_by_the_next_pass_and_the_rescan(
    config: Config, run: Path
) -> None:
    manifest_pass(config, Denying(run / LOCKED))
    # Readable now: the pass identifies it; the retry mark stays until the daemon converts it.
    manifest_pass(config, Denying(run / "nothing-is-locked"))
    entry = locked_entry(run)
    assert (entry.state, entry.error, entry.format) == ("kept", None, Format.SB2_PICKLE)
    assert entry.sha256 is not None and entry.extra == {RETRY_KEY: True}

    (ref,) = (RunRef(config.roots[0].path, run, "ppo-1"),)
    assert [found.path.name for found in find_work(config, ref)] == [LOCKED]
    assert process_path(config, config.roots[0], run / LOCKED).action == "converted"
    converted = manifest_of(run).by_path()
    assert converted["rl_model_500_steps.zip"].converted_from == LOCKED
    assert RETRY_KEY not in converted[f".ckptd/legacy/{LOCKED}"].extra
    assert find_work(config, ref) == []


def older_ckptd_entry(run: Path) -> ManifestEntry:
    """What ckptd wrote before this fix on every other pass: ``broken`` with the raw OSError."""
    identity = FileIdentity.of((run / LOCKED).stat())
    return ManifestEntry(
        path=LOCKED,
        step=500,
        size=identity.size,
        mtime=from_ns(identity.mtime_ns),
        mtime_ns=identity.mtime_ns,
        sha256=None,
        format=Format.UNKNOWN,
        state="broken",
        error=f"[Errno 13] Permission denied: '{run / LOCKED}'",
    )


@pytest.mark.parametrize("readable", [False, True])
def test_an_older_ckptds_read_error_verdict_is_looked_at_again(
    config: Config, run: Path, readable: bool
) -> None:
    manifest_path = run / MANIFEST
    write_manifest(manifest_path, set_entry(load_manifest(manifest_path), older_ckptd_entry(run)))
    denying = Denying(run / ("nothing-is-locked" if readable else LOCKED))
    manifest_pass(config, denying)
    assert denying.calls == [LOCKED]
    entry = locked_entry(run)
    expected = ("kept", None) if readable else ("pending", DENIED)
    assert (entry.state, entry.error, entry.extra) == (*expected, {RETRY_KEY: True})


def test_a_real_broken_verdict_is_final_and_keeps_its_error(config: Config, run: Path) -> None:
    """The contrast: a verdict on the content (it was hashed) is not read again while unchanged."""
    manifest_path = run / MANIFEST
    judged = dataclasses.replace(
        older_ckptd_entry(run), sha256="0" * 64, error="truncated pickle", format=Format.SB2_PICKLE
    )
    write_manifest(manifest_path, set_entry(load_manifest(manifest_path), judged))
    denying = Denying(run / LOCKED)
    manifest_pass(config, denying)
    assert denying.calls == [] and locked_entry(run) == judged


def inventory_options(config: Config, identifier: Denying) -> InventoryOptions:
    return InventoryOptions(
        matcher=CheckpointMatcher(config.checkpoints, config.manifest.filename),
        state_dir=config.state_dir,
        stable_for_ns=0,
        hash_files=True,
        identify=identifier.format_of,
    )


def test_inventory_tells_a_read_error_from_a_broken_file(config: Config, run: Path) -> None:
    (run / "junk_7_steps.pkl").write_bytes(b"\x80\x04 not really")

    class Failing(Denying):
        def format_of(self, path: Path) -> Format:
            if path.name.startswith("junk"):
                raise FormatError("not a pickle", path=str(path))
            return super().format_of(path)

    ref = RunRef(config.roots[0].path, run, "ppo-1")
    inventory = inventory_run(
        ref, inventory_options(config, Failing(run / LOCKED)), now=now(), previous={}
    )
    by_path = {c.path: c for c in inventory.checkpoints}
    locked, junk = by_path[LOCKED], by_path["junk_7_steps.pkl"]
    assert (locked.status, locked.complete, locked.error, locked.sha256) == (
        UNREADABLE,
        True,
        DENIED,
        None,
    )
    assert junk.status == "broken" and junk.error is not None and "not a pickle" in junk.error
