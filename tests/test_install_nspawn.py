"""The README's systemd install, as written, on a stock Debian 12 booted with real systemd 252.

The three ``<!-- install-block: ... -->`` blocks of README ("Running under systemd") are read from
the README itself and run in order in a container made by debootstrap from Debian's packages
(tests/nspawn_env.py), with only what the README names as prerequisites. Between them the test does
what the README tells the operator to do: set ``roots:`` (the installed config is rejected until
then) and create the roots. Then the hardened unit must be active, convert a genuine
stable-baselines checkpoint that another user's trainer wrote into a group-shared root, survive a
bad reload, apply a good one, write in a root whose path needs quoting in a unit file and in one
under /home (which the unit hides), and stop cleanly. Skips, with the reason, where the host cannot build or boot the container (not root, no
debootstrap or systemd-nspawn, no route to deb.debian.org).
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nspawn_env import (
    Container,
    Unavailable,
    booted,
    build_wheelhouse,
    check_host,
    copy_checkout,
    readme_blocks,
    rootfs_tarball,
    unpack_rootfs,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

FIXTURE = (
    Path(__file__).resolve().parent
    / "data"
    / "sb2-genuine"
    / "ppo2-mlp-cartpole-netarch-sb2.10.2.pkl"
)
SOURCE = "/usr/local/src/ckptd"
CKPTD = "/opt/ckptd/venv/bin/ckptd"
SHARED_ROOT = "/data/runs"  # the README's example root and group (the shared-group block)
GROUP = "rl-lab"
ODD_ROOT = "/srv/lab runs%1"  # a space and a specifier character: the drop-in must quote both
HOME_ROOT = "/home/lab/runs"  # hidden by ProtectHome=yes unless the drop-in binds it in
ROOTS_YAML = f'roots:\n  - path: {SHARED_ROOT}\n  - path: "{ODD_ROOT}"\n  - path: {HOME_ROOT}\n'
EXPECTED_BLOCKS = ["software", "start", "shared-group"]


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    try:
        check_host()
        tarball = rootfs_tarball()
    except Unavailable as err:
        pytest.skip(f"cannot build the Debian 12 container: {err}")
    base = tmp_path_factory.mktemp("nspawn")
    root = base / "root"
    unpack_rootfs(tarball, root)
    try:
        build_wheelhouse(root / "wheelhouse")
    except Unavailable as err:
        pytest.skip(str(err))
    copy_checkout(root / SOURCE.lstrip("/"))
    shutil.copy2(FIXTURE, root / "fixture.pkl")
    (root / "fixture.pkl").chmod(0o644)
    # pip inside the container reads the wheelhouse: the README's `pip install .` stays as written.
    env = {
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": "/wheelhouse",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    try:
        with booted(root, base / "boot.log", env) as booted_container:
            yield booted_container
    except Unavailable as err:
        pytest.skip(f"cannot boot the Debian 12 container with systemd-nspawn: {err}")
    finally:
        shutil.rmtree(root, ignore_errors=True)  # about 600 MB once ckptd is installed


def wait_for(container: Container, check: str, what: str, timeout: float = 120) -> None:
    """Poll a shell condition inside the container until it holds."""
    deadline = time.monotonic() + timeout
    while container.run(check, check=False).returncode != 0:
        if time.monotonic() > deadline:
            journal = container.run("journalctl -u ckptd --no-pager -o cat | tail -30", check=False)
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{journal.stdout}")
        time.sleep(1)


def prop(container: Container, name: str) -> str:
    return container.run(f"systemctl show -p {name} --value ckptd").stdout.strip()


def journal_count(container: Container, text: str) -> int:
    result = container.run(
        f"journalctl -u ckptd --no-pager -o cat | grep -c -F {shlex.quote(text)} || true"
    )
    return int(result.stdout.strip() or 0)


def assert_converted(container: Container, run: str, name: str) -> None:
    """``run/name``.pkl became a verified zip recorded in the manifest; the original archived."""
    q = shlex.quote
    zip_path = f"{run}/{name}.zip"
    wait_for(
        container,
        f"test -f {q(zip_path)} && grep -q {q(name + '.zip')} {q(run + '/ckptd-manifest.json')}",
        f"{zip_path} converted and recorded",
    )
    container.run(f"{CKPTD} verify {q(zip_path)}")
    assert (
        container.run(
            f"test -f {q(run + '/.ckptd/legacy/' + name + '.pkl')}", check=False
        ).returncode
        == 0
    )
    manifest = json.loads(container.run(f"cat {q(run + '/ckptd-manifest.json')}").stdout)
    entry = next(item for item in manifest["checkpoints"] if item["path"] == f"{name}.zip")
    assert entry["format"] == "sb2-zip"
    assert entry["converted_from"] == f"{name}.pkl"


def test_readme_install_blocks_run_as_written_on_debian12(container: Container) -> None:
    blocks = readme_blocks()
    assert list(blocks) == EXPECTED_BLOCKS

    # 1. Software, user, config and unit, from a checkout, as root.
    container.run(blocks["software"], cwd=SOURCE, timeout=600)
    assert container.run("id -nG ckptd").stdout.split() == ["ckptd"]
    for doc in prop(container, "Documentation").split():
        assert doc.startswith("file://")
        container.run(f"test -s {shlex.quote(doc.removeprefix('file://'))}")

    # 2. The installed config is rejected until roots: is set, with a message saying so.
    rejected = container.run(f"{CKPTD} config validate", check=False)
    assert rejected.returncode == 2, rejected
    assert "/etc/ckptd/ckptd.yaml: roots" in rejected.stderr
    # What the README asks of the operator: list the roots (which exist), and the trainers' group.
    container.run(
        f"python3 -c {shlex.quote(EDIT_ROOTS)} {shlex.quote(ROOTS_YAML)}\n"
        f"mkdir -p {SHARED_ROOT} && install -d -o ckptd -g ckptd {shlex.quote(ODD_ROOT)}\n"
        f"install -d /home/lab && install -d -o ckptd -g ckptd {HOME_ROOT}\n"
        f"groupadd {GROUP} && useradd -m -G {GROUP} alice"
    )

    # 3. Drop-in and start.
    container.run(blocks["start"], cwd=SOURCE)
    assert prop(container, "ActiveState") == "active"
    assert ODD_ROOT in prop(container, "ReadWritePaths")
    assert ODD_ROOT in prop(container, "RequiresMountsFor")

    # 4. The shared group: a checkpoint another user's trainer writes (umask 022) is converted.
    container.run(blocks["shared-group"], cwd=SOURCE)
    assert prop(container, "ActiveState") == "active"
    assert prop(container, "SupplementaryGroups") == GROUP
    run = f"{SHARED_ROOT}/ppo-cartpole"
    container.run(
        f"runuser -u alice -- sh -c 'umask 022 && mkdir {run} && "
        f"cp /fixture.pkl {run}/rl_model_5000_steps.pkl'"
    )
    assert_converted(container, run, "rl_model_5000_steps")

    # 5. A bad reload is logged and changes nothing; the daemon keeps its pid and keeps serving.
    pid = prop(container, "MainPID")
    container.run(
        "cp /etc/ckptd/ckptd.yaml /root/good.yaml && echo 'bogus_key: 1' >> /etc/ckptd/ckptd.yaml"
    )
    container.run("systemctl reload ckptd")
    wait_for(
        container,
        "journalctl -u ckptd --no-pager -o cat | grep -q 'reload rejected.*bogus_key'",
        "the bad reload logged",
    )
    assert prop(container, "ActiveState") == "active"
    assert prop(container, "MainPID") == pid

    # 6. A good reload is applied; then checkpoints convert in the root whose path needs quoting
    # and in the one under /home.
    container.run("cp /root/good.yaml /etc/ckptd/ckptd.yaml && systemctl reload ckptd")
    wait_for(
        container,
        "journalctl -u ckptd --no-pager -o cat | grep -q 'reloaded: 3 roots'",
        "the good reload applied",
    )
    assert prop(container, "MainPID") == pid
    odd_run = f"{ODD_ROOT}/run-b"
    container.run(
        f"install -d -o ckptd -g ckptd {shlex.quote(odd_run)} && "
        f"cp /fixture.pkl {shlex.quote(odd_run + '/rl_model_100_steps.pkl')}"
    )
    home_run = f"{HOME_ROOT}/run-c"
    container.run(
        f"install -d -o ckptd -g ckptd {home_run} && cp /fixture.pkl {home_run}/rl_model_7_steps.pkl"
    )
    assert_converted(container, odd_run, "rl_model_100_steps")
    assert_converted(container, home_run, "rl_model_7_steps")
    assert journal_count(container, "Traceback") == 0

    # 7. A clean stop: SIGTERM, exit 0, well within TimeoutStopSec.
    started = time.monotonic()
    container.run("systemctl stop ckptd")
    stop_seconds = time.monotonic() - started
    assert prop(container, "ActiveState") == "inactive"
    assert prop(container, "Result") == "success"
    assert prop(container, "ExecMainStatus") == "0"
    assert stop_seconds < 10, stop_seconds


# Sets roots: in the installed config (argv[1] replaces the line `roots: []`), as an editor would.
EDIT_ROOTS = """
import sys
path = "/etc/ckptd/ckptd.yaml"
text = open(path).read()
assert "\\nroots: []\\n" in text, "the installed config has no `roots: []` line to fill in"
open(path, "w").write(text.replace("\\nroots: []\\n", "\\n" + sys.argv[1], 1))
"""
