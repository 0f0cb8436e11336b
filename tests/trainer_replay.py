"""Write a directory checkpoint the way its trainer does, from the real fixtures in tests/data/trainers.

``tests/data/trainers/order.json`` records which files each trainer had written when it began to
write its completion marker (tests/trainers/generate.py). A replay writes those files in the
trainer's own order (transformers' ``Trainer._save_checkpoint``: ``save_pretrained``'s config
files and weights, ``training_args.bin``, optimizer, scheduler, RNG state; docs/formats.md,
"Directory checkpoints"), each in two chunks, with a pause after each chunk, and the marker
(``trainer_state.json``; DeepSpeed's ``latest`` beside the tag) only at the end.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "data" / "trainers"
ORDER = json.loads((FIXTURES / "order.json").read_text())

# transformers' Trainer._save_checkpoint order; any other file goes after these, before the state.
HF_WRITE_ORDER = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state.pth",
)


def hf_files_before_marker(name: str) -> list[str]:
    """The files of the fixture's ``hf/<name>`` that the Trainer wrote before its state, in order."""
    present = ORDER["hf"][name]
    ranked = {file: index for index, file in enumerate(HF_WRITE_ORDER)}
    return sorted(present, key=lambda file: (ranked.get(file, len(ranked)), file))


def deepspeed_files_before_latest(save_dir: str, tag: str) -> list[str]:
    """The files of tag directory ``tag`` DeepSpeed had written when it opened ``latest``."""
    for snapshot in ORDER["deepspeed"][save_dir]:
        if tag in snapshot:
            return sorted(snapshot[tag])
    raise KeyError(f"{save_dir}/{tag} not in order.json")


def write_slowly(source: Path, dest: Path, pause: float) -> None:
    """Copy ``source`` to ``dest`` in two chunks, pausing after each (file left closed)."""
    data = source.read_bytes()
    half = len(data) // 2
    with dest.open("wb") as handle:
        handle.write(data[:half])
        handle.flush()
        os.fsync(handle.fileno())
        time.sleep(pause)
        handle.write(data[half:])
    time.sleep(pause)


def replay_hf(
    name: str, dest: Path, pause: float, before_marker: Callable[[], None] = lambda: None
) -> None:
    """Write ``hf/<name>`` into ``dest`` (created) as the Trainer does; ``before_marker`` runs
    when every file but ``trainer_state.json`` is written."""
    source = FIXTURES / "hf" / name
    dest.mkdir()
    for file in hf_files_before_marker(name):
        write_slowly(source / file, dest / file, pause)
    before_marker()
    (dest / "trainer_state.json").write_bytes((source / "trainer_state.json").read_bytes())


def replay_deepspeed(
    save_dir: str,
    tag: str,
    dest_save_dir: Path,
    pause: float,
    before_marker: Callable[[], None] = lambda: None,
) -> None:
    """Write tag ``tag`` of ``deepspeed/<save_dir>`` into ``dest_save_dir`` as DeepSpeed does,
    then its ``latest``; ``before_marker`` runs before ``latest`` is written."""
    source = FIXTURES / save_dir / tag
    (dest_save_dir / tag).mkdir(parents=True)
    for file in deepspeed_files_before_latest(save_dir, tag):
        write_slowly(source / file, dest_save_dir / tag / file, pause)
    before_marker()
    (dest_save_dir / "latest").write_text(tag)
