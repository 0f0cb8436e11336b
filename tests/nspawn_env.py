"""A stock Debian 12 booted with its own systemd, to run the README's install blocks as written.

The root file system comes from Debian's own packages (``debootstrap`` from deb.debian.org) and is
cached as a tarball under ``~/.cache/ckptd-tests`` (a cold build takes a minute or two; reruns
unpack it in seconds). The container is started with ``systemd-nspawn --boot`` and commands run in
it through ``nsenter`` into its namespaces, so nothing needs machined or a host systemd. Python
packages come from a wheelhouse built on the host (the container has no package index), handed to
the container's pip through the environment, so the README's ``pip install .`` stays as written.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CKPTD_TEST_CACHE", Path.home() / ".cache" / "ckptd-tests"))
SUITE = "bookworm"
MIRROR = os.environ.get("CKPTD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# A stock Debian 12 with systemd as init, plus what the README names as prerequisites
# (python3-venv, acl for the shared-group recipe); dbus because a stock system has it.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "acl")
README = REPO / "README.md"
BLOCK_MARKER = re.compile(r"<!-- install-block: ([\w-]+) -->\n```sh\n(.*?)```", re.DOTALL)
CONTAINER_PYTHON = "3.11"  # Debian 12's python3
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Unavailable(Exception):
    """This machine cannot build or boot the container; the message says precisely why."""


def readme_blocks(text: str | None = None) -> dict[str, str]:
    """The README's install blocks by marker name (``<!-- install-block: NAME -->`` + sh fence)."""
    source = README.read_text() if text is None else text
    return {match.group(1): match.group(2) for match in BLOCK_MARKER.finditer(source)}


def check_host() -> None:
    """Raise Unavailable unless this host has what building and booting need."""
    if os.geteuid() != 0:
        raise Unavailable("needs root (debootstrap and systemd-nspawn)")
    missing = [
        tool for tool in ("debootstrap", "systemd-nspawn", "nsenter") if not shutil.which(tool)
    ]
    if missing:
        raise Unavailable(
            f"{', '.join(missing)} not installed (apt-get install debootstrap systemd-container)"
        )


def rootfs_tarball() -> Path:
    """The cached Debian root as a tarball, built with debootstrap on first use."""
    key = hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
    tarball = CACHE / f"debian-{SUITE}-systemd-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    build = CACHE / f"build-{key}-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    try:
        result = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(build),
                MIRROR,
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
            raise Unavailable(f"debootstrap {SUITE} from {MIRROR} failed: {' | '.join(tail)}")
        # The downloaded .debs are not part of a stock system's state; leave them out of the cache.
        for deb in (build / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        partial = tarball.with_suffix(f".tar.{os.getpid()}.tmp")
        subprocess.run(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--acls",
                "-C",
                str(build),
                "-cf",
                str(partial),
                ".",
            ],
            check=True,
            timeout=600,
        )
        partial.rename(tarball)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return tarball


def unpack_rootfs(tarball: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "--acls", "-C", str(dest), "-xf", str(tarball)],
        check=True,
        timeout=600,
    )


def build_wheelhouse(dest: Path) -> None:
    """ckptd's dependencies and build backend as wheels for the container's Python, for its pip.

    Downloaded for Debian 12's CPython 3.11 whatever Python runs the tests; ckptd itself is built
    by the README's own ``pip install .`` from the copied checkout.
    """
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    machine = platform.machine()
    tags = [
        "manylinux2014",
        *(f"manylinux_2_{minor}" for minor in (17, 24, 27, 28, 31, 34, 35, 36)),
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            CONTAINER_PYTHON,
            "--abi",
            "cp" + CONTAINER_PYTHON.replace(".", ""),
            *(f"--platform={tag}_{machine}" for tag in tags),
            "--dest",
            str(dest),
            *wanted,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise Unavailable(f"pip download for the container failed: {result.stderr.strip()[-300:]}")


def copy_checkout(dest: Path) -> None:
    """The files of this checkout (tracked and new, as git sees them), as a user's clone has them."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if not source.is_file():  # deleted in the work tree but still in the index
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


@dataclass
class Container:
    """A booted container: ``run`` executes a shell command as root inside it."""

    leader: int
    nspawn: subprocess.Popen[bytes]
    env: dict[str, str]

    def run(
        self, script: str, *, check: bool = True, timeout: float = 300, cwd: str = "/"
    ) -> subprocess.CompletedProcess[str]:
        env_args = [f"{key}={value}" for key, value in self.env.items()]
        result = subprocess.run(
            [
                "nsenter",
                "--target",
                str(self.leader),
                "--all",
                "--wdns=" + cwd,
                "/usr/bin/env",
                "-i",
                *env_args,
                "/bin/bash",
                "-euo",
                "pipefail",
                "-c",
                script,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in the container, exit {result.returncode}:\n{script}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            )
        return result


def _leader_pid(nspawn_pid: int) -> int | None:
    """The container's PID 1 as the host sees it: the child of systemd-nspawn."""
    for task in Path(f"/proc/{nspawn_pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        if children:
            return int(children[0])
    return None


def _exe_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


@contextmanager
def booted(root: Path, log: Path, env: dict[str, str]) -> Iterator[Container]:
    """Boot ``root`` with systemd-nspawn; power it off (then kill it) on the way out."""
    name = f"ckptd-e2e-{os.getpid()}"
    with log.open("wb") as out:
        nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "--register=no",
                # No scope of its own through the host bus: the host may have no systemd.
                "--keep-unit",
                "--boot",
                f"--machine={name}",
                f"--directory={root}",
                "--console=pipe",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    container: Container | None = None
    try:
        deadline = time.monotonic() + 60
        while container is None:
            if nspawn.poll() is not None:
                raise Unavailable(
                    f"systemd-nspawn --boot exited {nspawn.returncode}: "
                    + " | ".join(log.read_text(errors="replace").strip().splitlines()[-4:])
                )
            leader = _leader_pid(nspawn.pid)
            if leader is not None and _exe_name(leader) == "systemd":
                container = Container(
                    leader, nspawn, {"PATH": CONTAINER_PATH, "HOME": "/root", **env}
                )
            elif time.monotonic() > deadline:
                raise Unavailable("systemd-nspawn started no systemd within 60 s")
            else:
                time.sleep(0.2)
        state = ""
        while state not in ("running", "degraded"):
            # Fails to connect until systemd's own socket is up; --wait then waits for the boot.
            result = container.run("systemctl is-system-running --wait", check=False, timeout=120)
            state = result.stdout.strip()
            if time.monotonic() > deadline + 60:
                raise Unavailable(
                    f"the container's systemd did not finish booting: {state!r} {result.stderr!r}"
                )
            if state not in ("running", "degraded"):
                time.sleep(0.5)
        yield container
    finally:
        if container is not None:
            container.run("systemctl poweroff", check=False, timeout=30)
        try:
            nspawn.wait(timeout=30)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait(timeout=30)
