"""Unsafe pickle-bearing files in a run: refused, quarantined by the daemon, never the newest.

The issue's case: a plain ``os.system`` pickle named ``rl_model_6000_steps.pkl`` (not a
stable-baselines file) beside real checkpoints. Before verdicts it was recorded ``unknown`` and
``kept``, and ``status`` called it the run's newest checkpoint.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import urllib.request
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ckptd.cli.exits import ExitStatus
from ckptd.cli.main import main
from ckptd.config.load import parse_config
from ckptd.config.model import Config
from ckptd.formats import Format
from ckptd.manifest.model import Manifest, ManifestEntry
from ckptd.manifest.store import load_manifest
from ckptd.pipeline.batch import process_path
from tests.daemon_harness import REPO, DaemonProcess, NotifySocket, daemon_config, write_config
from tests.helpers import wait_until
from tests.sb2_fixtures import Exploit
from tests.test_hostile_pickles import _Reduce, _touch
from tests.test_verify_zip import DATA, sb2_way_zip

FIXTURES = Path(__file__).parent / "data" / "verdicts"
NOW = datetime.now(UTC)


def _age(path: Path, hours: float) -> None:
    ns = int((NOW - timedelta(hours=hours)).timestamp()) * 1_000_000_000
    os.utime(path, ns=(ns, ns))


def _populate(run: Path, marker: Path, *, ages: bool = True) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "rl_model_1000_steps.pkl").write_bytes(
        pickle.dumps({"w": np.ones(4, np.float32), "step": 1000}, protocol=4)
    )
    shutil.copyfile(FIXTURES / "clean" / "state_dict.pt", run / "rl_model_2000_steps.pt")
    (run / "rl_model_6000_steps.pkl").write_bytes(
        pickle.dumps(_Reduce(os.system, _touch(marker)), protocol=4)
    )
    shutil.copyfile(FIXTURES / "malicious" / "os_system.pt", run / "rl_model_7000_steps.pt")
    if ages:
        for name, hours in (("1000_steps.pkl", 3), ("2000_steps.pt", 2), ("6000_steps.pkl", 1)):
            _age(run / f"rl_model_{name}", hours)
        _age(run / "rl_model_7000_steps.pt", 0.5)


def _config_text(extra: str = "") -> str:
    return (
        "version: 1\n"
        "roots:\n"
        "  - path: ./runs\n"
        "checkpoints:\n"
        '  patterns: ["*.pkl", "*.pt"]\n'
        "  stable_for: 1s\n"
        "policies:\n"
        "  default:\n"
        "    keep_last: 1\n"
        "    min_age: 0s\n"
        "delete:\n"
        "  max_fraction: 1.0\n" + extra
    )


def test_passes_refuse_unsafe_files_and_status_never_calls_them_newest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    run = tmp_path / "runs" / "ppo-1"
    _populate(run, marker)
    config = tmp_path / "ckptd.yaml"
    config.write_text(_config_text())

    assert main(["prune", "-c", str(config), "--dry-run", "--json"]) == ExitStatus.OK
    decisions = {d["path"]: d for d in json.loads(capsys.readouterr().out)["runs"][0]["decisions"]}
    assert decisions["rl_model_6000_steps.pkl"]["action"] == "skip"
    assert decisions["rl_model_6000_steps.pkl"]["reasons"] == ["skip: refused"]
    assert decisions["rl_model_7000_steps.pt"]["reasons"] == ["skip: refused"]
    newest = decisions["rl_model_2000_steps.pt"]
    assert {key: newest[key] for key in ("path", "action", "reasons", "step", "format")} == {
        "path": "rl_model_2000_steps.pt",
        "action": "keep",
        "reasons": ["keep_last #1", "newest"],
        "step": 2000,
        "format": "torch-zip",
    }
    assert decisions["rl_model_1000_steps.pkl"]["action"] == "delete"

    assert main(["manifest", "-c", str(config)]) == ExitStatus.OK
    entries = load_manifest(run / "ckptd-manifest.json").by_path()
    evil = entries["rl_model_6000_steps.pkl"]
    assert (evil.state, evil.format) == ("refused", Format.PICKLE)
    assert evil.verdict is not None and not evil.verdict.safe
    assert evil.verdict.globals == ("posix.system",) and evil.refusal == evil.verdict.reason
    assert entries["rl_model_7000_steps.pt"].state == "refused"
    clean = entries["rl_model_2000_steps.pt"]
    assert (clean.state, clean.format) == ("kept", Format.TORCH_ZIP)
    assert clean.verdict is not None and clean.verdict.safe

    capsys.readouterr()
    assert main(["status", "-c", str(config), "--json"]) == ExitStatus.OK
    status = json.loads(capsys.readouterr().out)["runs"][0]
    assert status["newest"]["path"] == "rl_model_2000_steps.pt"
    assert status["counts"]["refused"] == 2
    assert any("2 refused" in problem for problem in status["problems"])
    assert not marker.exists()


def test_inspect_shows_the_verdict_of_each_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path, safe in (
        (FIXTURES / "clean" / "joblib_zlib.pkl", True),
        (FIXTURES / "clean" / "sb3_sac.zip", True),
        (FIXTURES / "malicious" / "lambda.ckpt", False),
    ):
        code = main(["inspect", str(path), "--json"])
        document = json.loads(capsys.readouterr().out)
        assert code == (ExitStatus.OK if safe else ExitStatus.FAILED)
        assert document["pickle_verdict"]["safe"] is safe
        assert document["verdict"] == ("safe" if safe else "refused")
        main(["inspect", str(path)])
        text = capsys.readouterr().out
        assert "Verdict" in text and "Globals referenced" in text


# --- the real daemon -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_daemon_quarantines_unsafe_files_of_every_kind(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    marker = tmp_path / "pwned"
    root = tmp_path / "runs"
    run = root / "ppo-1"
    run.mkdir(parents=True)
    port = _free_port()
    config = daemon_config(
        root,
        keep_last=5,
        schedule={"prune": "1h", "manifest": "1m"},
        checkpoints={"patterns": ["*.pkl", "*.pt", "*.zip"], "stable_for": "1s"},
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    daemon = DaemonProcess(
        write_config(tmp_path / "ckptd.yaml", config), tmp_path / "daemon.log", notify_socket
    )
    try:
        daemon.wait_ready()
        _populate(run, marker, ages=False)
        shutil.copyfile(FIXTURES / "clean" / "sb3_ppo.zip", run / "sb3_8000_steps.zip")
        shutil.copyfile(
            FIXTURES / "malicious" / "sb3_serialized_payload.zip", run / "sb3_9000_steps.zip"
        )
        sb2_evil = {
            **DATA,
            "learning_rate": {
                ":type:": "<class 'function'>",
                ":serialized:": base64.b64encode(
                    pickle.dumps(Exploit(marker), protocol=2)
                ).decode(),
            },
        }
        sb2_way_zip(run / "rl_model_10000_steps.zip", data=json.dumps(sb2_evil).encode())
        expected = {
            "rl_model_10000_steps.zip": "refused",
            "rl_model_1000_steps.pkl": "kept",
            "rl_model_2000_steps.pt": "kept",
            "rl_model_6000_steps.pkl": "refused",
            "rl_model_7000_steps.pt": "refused",
            "sb3_8000_steps.zip": "kept",
            "sb3_9000_steps.zip": "refused",
        }

        def recorded() -> bool:
            try:
                entries = load_manifest(run / "ckptd-manifest.json").by_path()
            except (FileNotFoundError, ValueError):
                return False
            return {p: e.state for p, e in entries.items() if p in expected} == expected

        wait_until(recorded, 30, f"every file judged:\n{daemon.log_text()}")
        entries = load_manifest(run / "ckptd-manifest.json").by_path()
        quarantine = run / ".ckptd" / "quarantine"
        for name, state in expected.items():
            entry = entries[name]
            if name == "rl_model_10000_steps.zip":  # SB2: judged by verify_zip (allowlist)
                assert entry.verdict is not None and not entry.verdict.safe
            else:
                assert entry.verdict is not None and entry.verdict.safe is (state == "kept"), name
            if state == "refused":
                assert not (run / name).exists()
                assert (quarantine / name).is_file()
                assert entry.extra["quarantine"] == f".ckptd/quarantine/{name}"
        assert entries["sb3_8000_steps.zip"].format is Format.SB3_ZIP

        def scraped() -> str:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as reply:
                text: str = reply.read().decode()
                return text

        # The manifest is written before the daemon's loop counts the batch's outcomes.
        refused_line = 'ckptd_refused_files_total{reason="global"} 4.0'
        wait_until(lambda: refused_line in scraped(), 10, f"{refused_line}:\n{scraped()}")

        status = subprocess.run(
            [sys.executable, "-m", "ckptd", "status", "-c", str(tmp_path / "ckptd.yaml"), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
        report = json.loads(status.stdout)["runs"][0]
        assert report["counts"]["refused"] == 4
        assert report["newest"]["path"] in ("sb3_8000_steps.zip", "rl_model_2000_steps.pt")
        assert daemon.log_text().count("quarantined as") == 4 and not marker.exists()
    finally:
        assert daemon.stop() == 0


def test_verify_refuses_unsafe_files_and_checks_torch_zips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = [FIXTURES / "clean" / name for name in ("state_dict.pt", "joblib_zlib.pkl")]
    assert main(["verify", *map(str, clean), str(FIXTURES / "clean" / "sb3_sac.zip")]) == 0
    evil = FIXTURES / "malicious" / "sb3_serialized_payload.zip"
    capsys.readouterr()
    assert main(["verify", str(evil), "--json"]) == ExitStatus.FAILED
    assert "posix.system" in capsys.readouterr().out
    damaged = tmp_path / "model.pt"
    raw = bytearray((FIXTURES / "clean" / "state_dict.pt").read_bytes())
    with zipfile.ZipFile(FIXTURES / "clean" / "state_dict.pt") as archive:
        info = archive.getinfo("state_dict/data/0")
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    raw[info.header_offset + 30 + name_len + extra_len + 5] ^= 0xFF  # a weight: only its CRC says
    damaged.write_bytes(bytes(raw))
    assert main(["verify", str(damaged)]) == ExitStatus.FAILED
    assert "CRC" in capsys.readouterr().err


# --- the pipeline, in process ------------------------------------------------------------------


def _pipeline_config(root: Path, on_unsafe: str) -> Config:
    return parse_config(
        {
            "roots": [{"path": str(root), "run_depth": 1, "observer": "polling"}],
            "checkpoints": {"patterns": ["*.pkl", "*.pt"], "stable_for": "0s"},
            "convert": {"on_unsafe": on_unsafe},
        }
    )


def test_on_unsafe_leave_records_refused_and_leaves_the_file(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    evil = root / "r" / "rl_model_6000_steps.pkl"
    evil.parent.mkdir(parents=True)
    blob = pickle.dumps(_Reduce(os.system, _touch(tmp_path / "pwned")), protocol=5)
    evil.write_bytes(blob)
    config = _pipeline_config(root, "leave")
    outcome = process_path(config, config.roots[0], evil)
    assert outcome.action == "refused" and "left in place" in outcome.message
    assert evil.read_bytes() == blob
    entry = load_manifest(root / "r" / "ckptd-manifest.json").by_path()[evil.name]
    assert entry.state == "refused" and entry.verdict is not None and not entry.verdict.safe
    assert "quarantine" not in entry.extra


def test_files_an_older_ckptd_recorded_unknown_are_judged_again(tmp_path: Path) -> None:
    """Manifests written before verdicts hold plain pickles as ``unknown``/``kept``: the daemon
    looks at each once more (and then not again)."""
    root = tmp_path / "runs"
    run = root / "r"
    evil = run / "rl_model_6000_steps.pkl"
    run.mkdir(parents=True)
    evil.write_bytes(pickle.dumps(_Reduce(os.system, "true"), protocol=4))
    (run / "notes.pkl").write_text("just text\n")
    config = _pipeline_config(root, "quarantine")
    st = evil.stat()
    old = Manifest(
        run="r",
        generated_at=NOW,
        policy="default",
        checkpoints=(
            ManifestEntry(
                path=evil.name,
                step=6000,
                size=st.st_size,
                mtime=NOW,
                sha256="0" * 64,
                format=Format.UNKNOWN,
                state="kept",
                mtime_ns=st.st_mtime_ns,
            ),
        ),
    )
    (run / "ckptd-manifest.json").write_bytes(old.to_json_bytes())
    outcome = process_path(config, config.roots[0], evil)
    assert outcome.action == "refused"
    assert (run / ".ckptd" / "quarantine" / evil.name).is_file()
    # An unknown file judged by this ckptd is not read again while it is unchanged.
    notes = run / "notes.pkl"
    assert process_path(config, config.roots[0], notes).action == "kept"
    assert process_path(config, config.roots[0], notes).action == "unchanged"
