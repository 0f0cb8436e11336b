"""The real trainers for the directory-checkpoint and torch/safetensors fixtures and consumers.

CPU-only torch (from PyTorch's own CPU index when it answers, else the package index), Hugging Face
transformers with accelerate (its Trainer needs it), Lightning, safetensors, Orbax with CPU jax,
and DeepSpeed (its Python part only, ``DS_BUILD_OPS=0``: it runs on CPU with
``DS_ACCELERATOR=cpu``), pinned, in a venv of
the interpreter running the tests. Like ``tests/sb2tf_env.py`` it lives outside the checkout, in
``${CKPTD_TEST_CACHE:-~/.cache/ckptd-tests}/trainers-<hash of the pins>``, is built in a temporary
sibling directory and renamed into place only once complete, so a killed build is never mistaken for
a good one. None of these packages is a dependency of ckptd or of its tests' own venv.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests.cached_env import build_once

TORCH_PIN = "torch==2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PINS = (
    "transformers==5.25.0",
    "accelerate==1.16.0",
    "lightning==2.6.6",
    "safetensors==0.8.0",
    "orbax-checkpoint==0.12.8",
    "jax==0.10.2",
)
# Built from its source distribution against the torch above (hence no build isolation).
DEEPSPEED_PIN = "deepspeed==0.19.8"


def base_python() -> str:
    """The interpreter the env is made from: the one under this venv, same minor version."""
    return getattr(sys, "_base_executable", sys.executable)


def env_key(python: str) -> str:
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    text = "\n".join([version, TORCH_PIN, *PINS, DEEPSPEED_PIN])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _install_torch(pip: list[str]) -> str:
    """Install the CPU build of torch; returns where it came from.

    First a CPU wheel pip can already reach without a network index (``find-links``, a local
    mirror), then PyTorch's CPU index, then the package index (whose Linux wheel pulls CUDA
    libraries: much larger, but it runs on CPU).
    """
    attempts = (
        ("a local wheel", ["--no-index", f"{TORCH_PIN}+cpu"]),
        (TORCH_CPU_INDEX, ["--retries", "1", "--timeout", "30", "--index-url", TORCH_CPU_INDEX]),
    )
    for origin, args in attempts:
        pins = args if origin == "a local wheel" else [*args, TORCH_PIN]
        done = subprocess.run(
            [*pip, "install", *pins], capture_output=True, text=True, timeout=1500, check=False
        )
        if done.returncode == 0:
            return origin
    subprocess.run([*pip, "install", TORCH_PIN], check=True, timeout=2400)
    return "the package index"


def trainers_env() -> Path:
    """The environment's directory, building it on first use."""
    python = base_python()

    def populate(build: Path) -> list[str]:
        subprocess.run([python, "-m", "venv", str(build)], check=True, timeout=300)
        pip = [str(build / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
        origin = _install_torch(pip)
        # torch is pinned again so that no later requirement can replace the CPU wheel.
        subprocess.run([*pip, "install", TORCH_PIN, *PINS], check=True, timeout=1500)
        subprocess.run(
            [*pip, "install", "--no-build-isolation", TORCH_PIN, DEEPSPEED_PIN],
            check=True,
            timeout=1500,
            env={**os.environ, "DS_BUILD_OPS": "0"},
        )
        return [f"{TORCH_PIN} from {origin}", *PINS, DEEPSPEED_PIN]

    return build_once(f"trainers-{env_key(python)}", populate)


def trainers_python() -> Path:
    return trainers_env() / "bin" / "python"


def trainers_environ() -> dict[str, str]:
    """Process environment for the trainers: CPU only, offline, no telemetry, reproducible."""
    environ = dict(os.environ)
    environ.pop("PYTHONPATH", None)
    environ.update(
        CUDA_VISIBLE_DEVICES="",
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONHASHSEED="0",
        OMP_NUM_THREADS="1",
        JAX_PLATFORMS="cpu",
        DS_ACCELERATOR="cpu",
    )
    return environ


if __name__ == "__main__":
    print(trainers_env())
