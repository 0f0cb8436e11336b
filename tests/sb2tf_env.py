"""The genuine stable-baselines stack for the real-producer fixtures and the real-consumer test.

Python 3.7 + TensorFlow 1.14 + numpy 1.16 + cloudpickle 1.2 + gym 0.14 (+ mpi4py when OpenMPI's
``mpicc`` is there, which DDPG, PPO1, TRPO and GAIL import), all from the package index, and each
requested stable-baselines release in its own ``sb/<release>`` directory (``pip install --no-deps
--target``) so several releases share one interpreter: put ``sb/<release>`` on PYTHONPATH to pick one.

The environment lives outside the checkout, in ``${CKPTD_TEST_CACHE:-~/.cache/ckptd-tests}/
sb2tf-<hash of the pins>``. It is built in a temporary sibling directory and renamed into place only
once complete, so a killed build is never mistaken for a good one (docs/compatibility.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tests.cached_env import build_once
from tests.legacy_env import find_python37

PINS = (
    "tensorflow==1.14.0",
    "numpy==1.16.6",
    "cloudpickle==1.2.2",
    "gym==0.14.0",
    # TensorFlow 1.14 declares protobuf>=3.6.1 and gast>=0.2.0 but breaks with protobuf 4 and gast 0.3+.
    "protobuf==3.20.3",
    "gast==0.2.2",
    "h5py==2.10.0",
    # stable-baselines imports these at import time (monitor, GAIL's dataset, joblib for MPI helpers).
    "joblib==0.14.1",
    "pandas==1.1.5",
    "opencv-python-headless==4.5.5.64",
)
MPI_PIN = "mpi4py==3.1.6"
CONSUMER_RELEASES = ("2.10.2",)


def has_openmpi() -> bool:
    return shutil.which("mpicc") is not None


def env_key(python37: str, releases: tuple[str, ...], mpi: bool) -> str:
    version = subprocess.run(
        [python37, "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    text = "\n".join([version, *PINS, MPI_PIN if mpi else "no-mpi", *releases])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def sb2tf_env(releases: tuple[str, ...] = CONSUMER_RELEASES) -> Path:
    """The environment's directory, building it on first use; LookupError without Python 3.7."""
    python37 = find_python37()
    if python37 is None:
        raise LookupError("no Python 3.7 interpreter on this machine (set CKPTD_PYTHON37 to one)")
    mpi = has_openmpi()

    def populate(build: Path) -> list[str]:
        subprocess.run([python37, "-m", "venv", str(build)], check=True, timeout=300)
        pip = [str(build / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
        pins = [*PINS, MPI_PIN] if mpi else list(PINS)
        subprocess.run([*pip, "install", *pins], check=True, timeout=1500)
        for release in releases:
            target_dir = build / "sb" / release
            subprocess.run(
                [
                    *pip,
                    "install",
                    "--no-deps",
                    "--target",
                    str(target_dir),
                    f"stable-baselines=={release}",
                ],
                check=True,
                timeout=600,
            )
        return [*pins, *releases]

    return build_once(f"sb2tf-{env_key(python37, releases, mpi)}", populate)


def sb2_environ(env: Path, release: str) -> dict[str, str]:
    """Process environment for running one stable-baselines release of ``env``."""
    environ = dict(os.environ)
    environ["PYTHONPATH"] = str(env / "sb" / release)
    environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    environ["PYTHONHASHSEED"] = "0"
    # OpenMPI refuses to initialise as root (CI runs as root) unless told it may.
    environ["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
    environ["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    environ["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"
    return environ
