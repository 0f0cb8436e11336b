"""Checkpoint formats: identification by content (never by name), readers and writers."""

from __future__ import annotations

import enum


class Format(enum.StrEnum):
    """The formats ckptd recognizes (the manifest's ``format`` values)."""

    SB2_PICKLE = "sb2-pickle"
    SB2_ZIP = "sb2-zip"
    SB3_ZIP = "sb3-zip"
    PICKLE = "pickle"  # a plain pickle (protocol 0-5) that is not a stable-baselines file
    JOBLIB = "joblib"  # joblib.dump output, possibly compressed
    TORCH_ZIP = "torch-zip"  # torch.save's zip format (.pt/.pth/.bin, Lightning .ckpt)
    TORCH_LEGACY = "torch-legacy"  # torch.save's pre-1.6 format (a magic-number pickle first)
    SAFETENSORS = "safetensors"  # a safetensors file (JSON header, raw tensor bytes; no pickle)
    # Directory checkpoints, one unit each (ckptd.formats.trainer_dirs), by the trainer that wrote
    # them; DIRECTORY when no trainer's layout is recognized.
    HF_TRAINER = "hf-trainer"
    DEEPSPEED = "deepspeed"
    ORBAX = "orbax"
    TORCH_DCP = "torch-dcp"
    DIRECTORY = "directory"
    UNKNOWN = "unknown"


# Formats whose files hold pickles that ckptd judges (docs/security.md, "Verdicts").
VERDICT_FORMATS = frozenset(
    {Format.PICKLE, Format.JOBLIB, Format.TORCH_ZIP, Format.TORCH_LEGACY, Format.SB3_ZIP}
)

# Formats of directory checkpoints (never a single file's label).
DIRECTORY_FORMATS = frozenset(
    {Format.HF_TRAINER, Format.DEEPSPEED, Format.ORBAX, Format.TORCH_DCP, Format.DIRECTORY}
)
