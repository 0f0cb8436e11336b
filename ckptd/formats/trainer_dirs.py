"""Directory checkpoints: which trainer wrote one, and whether it says the directory is complete.

Pure: the caller lists the directory (``DirListing``: every file's relative path, size and mtime,
the small marker files read whole, the parent's DeepSpeed ``latest``) and this module decides.
A directory is handled only when its trainer's own completion marker is there (``judge``) and its
listing has not changed for ``stable_for`` (``Quiet``); one without a known trainer needs the
quiet period alone. Each rule below follows the order in which the trainer writes its files,
read in the trainer's own source (docs/formats.md, "Directory checkpoints"):

* **Hugging Face Trainer** (``checkpoint-<step>/``): ``Trainer._save_checkpoint`` (transformers
  5.25.0, ``trainer.py`` lines 3407-3461) saves the model (``save_pretrained``: ``config.json``
  first, then the weights), then the optimizer and scheduler, the grad scaler and the RNG states,
  and only then ``trainer_state.json`` (``TrainerState.save_to_json``, ``trainer_callback.py``
  143-147). Complete when ``trainer_state.json`` is there and parses as a JSON object (it is
  written in place, not renamed, so a half-written one does not parse).
* **DeepSpeed** (``global_step<N>/`` with ``mp_rank_NN_model_states.pt`` or
  ``*_optim_states.pt``): ``DeepSpeedEngine.save_checkpoint`` (DeepSpeed 0.19.8,
  ``runtime/engine.py`` lines 4869-4964) writes every rank's files into ``<save_dir>/<tag>/``,
  then the recovery scripts beside the tags, and last writes ``<save_dir>/latest`` holding the
  tag (unless ``save_latest=False``). Complete when the parent's ``latest`` names this directory,
  or names a tag with a larger step (a later save finished, so this one had). A directory holding
  its own ``latest`` that names a subdirectory with DeepSpeed files (Lightning's DeepSpeed
  strategy saves ``<name>.ckpt/checkpoint/`` this way) is complete.
* **Orbax** (``<step>/``): ``AtomicRenameTemporaryPath.finalize`` (orbax-checkpoint 0.12.8,
  ``_src/path/atomicity.py`` lines 522-552) finishes a save written into
  ``<name>.orbax-checkpoint-tmp`` by recording ``commit_timestamp_nsecs`` in
  ``_CHECKPOINT_METADATA``, writing ``commit_success.txt`` and renaming the directory to
  ``<name>``; ``CommitFileTemporaryPath.finalize`` (lines 656-681) writes under the final name and
  marks completion with the same two markers, without a rename. A name holding
  ``.orbax-checkpoint-tmp`` is never complete; otherwise ``commit_success.txt``, or a
  ``commit_timestamp_nsecs`` in ``_CHECKPOINT_METADATA``, says it is. An Orbax whose metadata
  records no timestamps at all marked completion by the rename alone.
* **torch distributed checkpoint** (``*.distcp`` files): ``FileSystemWriter.finish`` (torch 2.13,
  ``distributed/checkpoint/filesystem.py`` lines 758-790) writes ``.metadata.tmp`` after every
  rank's data files and renames it to ``.metadata``. Complete when ``.metadata`` is there.

An empty directory is never complete: a trainer creates the directory before its first file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ckptd.formats import Format

HF_STATE = "trainer_state.json"
# Files the Trainer writes before trainer_state.json (transformers' trainer.py and
# trainer_utils constants): a directory with any of them and no state is a save in progress.
# ``save_pretrained`` writes config.json (and generation_config.json) before the weights.
HF_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "training_args.bin",
        "optimizer.pt",
        "scheduler.pt",
        "scaler.pt",
        "rng_state.pth",
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "adapter_model.safetensors",
        "adapter_config.json",
    }
)
DEEPSPEED_LATEST = "latest"
_DEEPSPEED_FILE = re.compile(r"(?:.*_)?mp_rank_\d+_model_states\.pt|.*_optim_states\.pt")
ORBAX_TMP = ".orbax-checkpoint-tmp"
ORBAX_METADATA = "_CHECKPOINT_METADATA"
ORBAX_COMMIT = "commit_success.txt"
DCP_METADATA = ".metadata"
DCP_SUFFIX = ".distcp"
# The small files whose content a rule reads (the caller reads them whole, up to MARKER_BYTES).
MARKER_FILES = frozenset({HF_STATE, ORBAX_METADATA, DEEPSPEED_LATEST})
MARKER_BYTES = 1024 * 1024
_TRAILING_STEP = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class DirFile:
    """One regular file below a directory checkpoint."""

    path: str  # relative to the checkpoint directory, "/"-separated
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class DirListing:
    """Everything the rules look at, gathered by the caller in one walk."""

    name: str  # the directory's own name
    files: tuple[DirFile, ...]
    # Content of the marker files present (relative path -> bytes), for paths in MARKER_FILES
    # at the top level or one level down (a DeepSpeed tag's own ``latest``).
    markers: Mapping[str, bytes] = field(default_factory=dict)
    parent_latest: str | None = None  # the parent directory's DeepSpeed ``latest``, stripped
    newest_dir_mtime_ns: int = 0  # the directory's and its subdirectories' newest mtime

    @property
    def size(self) -> int:
        return sum(item.size for item in self.files)

    @property
    def newest_mtime_ns(self) -> int:
        return max([self.newest_dir_mtime_ns, *(item.mtime_ns for item in self.files)])

    def signature(self) -> str:
        """A digest of every file's path, size and mtime: equal only when nothing changed."""
        digest = hashlib.sha256()
        for item in sorted(self.files, key=lambda entry: entry.path):
            digest.update(f"{item.path}\0{item.size}\0{item.mtime_ns}\n".encode())
        digest.update(f"dirs {self.newest_dir_mtime_ns}".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class Completion:
    """What the trainer's own markers say about a directory."""

    format: Format
    complete: bool
    reason: str  # one line: which marker decided


def judge(listing: DirListing) -> Completion:
    """The trainer that wrote ``listing`` and whether its completion marker is there."""
    names = {item.path for item in listing.files}
    top = {path for path in names if "/" not in path}
    if not names:
        return Completion(Format.DIRECTORY, False, "empty directory")
    if ORBAX_TMP in listing.name:
        return Completion(Format.ORBAX, False, f"orbax temporary directory ({ORBAX_TMP})")
    if HF_STATE in top:
        return _hf(listing)
    if top & HF_FILES and not _deepspeed_top(top):
        return Completion(Format.HF_TRAINER, False, f"no {HF_STATE} yet (written last)")
    if ORBAX_COMMIT in top or ORBAX_METADATA in top:
        return _orbax(listing, top)
    if DCP_METADATA in top or any(path.endswith(DCP_SUFFIX) for path in top):
        if DCP_METADATA in top:
            return Completion(Format.TORCH_DCP, True, f"{DCP_METADATA} written")
        return Completion(Format.TORCH_DCP, False, f"no {DCP_METADATA} yet (written last)")
    if _deepspeed_top(top):
        return _deepspeed_tag(listing)
    if any(_DEEPSPEED_FILE.fullmatch(path.rpartition("/")[2]) for path in names - top):
        return _deepspeed_wrapper(listing, names)
    return Completion(Format.DIRECTORY, True, "no trainer marker: quiet period alone")


def _deepspeed_top(top: set[str]) -> bool:
    return any(_DEEPSPEED_FILE.fullmatch(path) for path in top)


def _hf(listing: DirListing) -> Completion:
    raw = listing.markers.get(HF_STATE)
    if raw is None:
        return Completion(Format.HF_TRAINER, False, f"{HF_STATE} not read")
    try:
        state = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return Completion(Format.HF_TRAINER, False, f"{HF_STATE} does not parse (being written?)")
    if not isinstance(state, dict):
        return Completion(Format.HF_TRAINER, False, f"{HF_STATE} is not a JSON object")
    return Completion(Format.HF_TRAINER, True, f"{HF_STATE} written")


def _orbax(listing: DirListing, top: set[str]) -> Completion:
    if ORBAX_COMMIT in top:
        return Completion(Format.ORBAX, True, f"{ORBAX_COMMIT} written")
    raw = listing.markers.get(ORBAX_METADATA)
    try:
        metadata = json.loads(raw) if raw is not None else None
    except (ValueError, UnicodeDecodeError):
        metadata = None
    if not isinstance(metadata, dict):
        return Completion(Format.ORBAX, False, f"{ORBAX_METADATA} does not parse (being written?)")
    if metadata.get("commit_timestamp_nsecs") is not None:
        return Completion(Format.ORBAX, True, f"{ORBAX_METADATA} has commit_timestamp_nsecs")
    if metadata.get("init_timestamp_nsecs") is not None:
        return Completion(Format.ORBAX, False, f"{ORBAX_METADATA} has no commit timestamp yet")
    return Completion(Format.ORBAX, True, "renamed from its temporary name (no timestamps)")


def _step_of(name: str) -> int | None:
    found = _TRAILING_STEP.search(name)
    return int(found.group(1)) if found else None


def _deepspeed_tag(listing: DirListing) -> Completion:
    latest = listing.parent_latest
    if latest is None:
        return Completion(Format.DEEPSPEED, False, "no latest beside it (written last)")
    if latest == listing.name:
        return Completion(Format.DEEPSPEED, True, "the parent's latest names it")
    mine, theirs = _step_of(listing.name), _step_of(latest)
    if mine is not None and theirs is not None and theirs > mine:
        return Completion(Format.DEEPSPEED, True, "the parent's latest names a later tag")
    return Completion(Format.DEEPSPEED, False, "the parent's latest does not name it yet")


def _deepspeed_wrapper(listing: DirListing, names: set[str]) -> Completion:
    """DeepSpeed's files one level down: complete once its own ``latest`` names that tag."""
    raw = listing.markers.get(DEEPSPEED_LATEST)
    if raw is None:
        return Completion(Format.DEEPSPEED, False, "no latest naming its tag yet (written last)")
    try:
        tag = raw.decode().strip()
    except UnicodeDecodeError:
        tag = ""
    prefix = f"{tag}/"
    if (
        tag
        and "/" not in tag
        and any(
            path.startswith(prefix) and _DEEPSPEED_FILE.fullmatch(path[len(prefix) :])
            for path in names
        )
    ):
        return Completion(Format.DEEPSPEED, True, f"its latest names its tag {tag}")
    return Completion(Format.DEEPSPEED, False, "its latest does not name a tag inside it")


@dataclass(frozen=True)
class Quiet:
    """When a listing's signature was first seen (seconds on the caller's clock)."""

    signature: str
    since: float


def observe(previous: Quiet | None, listing: DirListing, now: float) -> Quiet:
    """The quiet record after seeing ``listing`` at ``now`` (reset when anything changed)."""
    signature = listing.signature()
    if previous is not None and previous.signature == signature:
        return previous
    return Quiet(signature, now)


def is_quiet(
    listing: DirListing, now: float, stable_for: float, record: Quiet | None = None
) -> bool:
    """Nothing in it changed for ``stable_for`` (``now`` is wall-clock seconds, like mtimes).

    No mtime in the listing may be that recent; with a ``record`` from earlier observations, the
    same listing must also have been seen for that long (a copy that keeps its source's old
    mtimes still changes the listing). One-shot commands, which see a directory once, have the
    mtimes alone.
    """
    if now - listing.newest_mtime_ns / 1e9 < stable_for:
        return False
    if record is None:
        return True
    return record.signature == listing.signature() and now - record.since >= stable_for
