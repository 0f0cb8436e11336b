"""Names in pickles: a module or name that is not a dotted Python identifier is refused everywhere.

The attack (issue 9, class 1): a STACK_GLOBAL module string that starts like an allowed one and
goes on with a newline and opcodes (``gym.spaces.box\\nBox\\n0cposix\\nsystem\\n...``) is harmless
to load (ModuleNotFoundError), but a converter that writes it back verbatim into a text GLOBAL
produces a pickle that runs ``posix.system``. These tests build the whole class, not one sample:
every allowlisted entry and package with every kind of non-identifier character appended,
prepended or inserted, as protocol 2 text GLOBAL and protocol 4 STACK_GLOBAL (and INST), through
the static check, the emitter, inspect, convert, verify, the CLI and the pipeline. A marker file
that the payload would create must never appear; a live test proves the payload does create it
when a trusting writer emits it and a real unpickler loads the result.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckptd.convert.conversion import convert_file
from ckptd.errors import CkptdError, UnsafeCheckpoint, VerifyError
from ckptd.ops.inspection import inspect_path
from ckptd.ops.verification import verify_file
from ckptd.pickles import allowlist
from ckptd.pickles.allowlist import lookup
from ckptd.pickles.emit import emit_pickle
from ckptd.pickles.graph_check import check_pickle_bytes
from ckptd.pickles.nodes import Global
from ckptd.pickles.pynames import in_package, is_dotted_name, is_identifier
from tests.daemon_harness import REPO, NotifySocket
from tests.test_hostile_pickles import Asm

# Every exact allowlist entry, and one member of each package family the allowlist accepts.
FAMILIES = [
    ("gym.spaces.box", "Box"),
    ("stable_baselines.common.policies", "MlpPolicy"),
    ("tensorflow.python.ops.gen_nn_ops", "relu"),
    ("numpy.random._mt19937", "MT19937"),
]
ALLOWED = sorted(set(allowlist._EXACT) | set(FAMILIES))
PACKAGES = ["gym.spaces", "stable_baselines", "tensorflow.python.ops", "numpy.random"]

# Every kind of character that is not part of an identifier, and strings that look like one.
BAD_PIECES = {
    "newline": "\n",
    "cr": "\r",
    "nul": "\x00",
    "tab": "\t",
    "space": " ",
    "dot": ".",
    "double dot": "..",
    "esc": "\x1b[2J",
    "del": "\x7f",
    "c1 nel": "\x85",
    "bidi override": "\u202e",
    "bom": "\ufeff",
    "cyrillic a": "\u0430",
    "fullwidth dot": "\uff0e",
    "latin e acute": "\u00e9",
    "lone surrogate": "\udc80",
    "slash": "/",
    "quote": "'",
    "very long": "." + ".".join(["a"] * 150),
}


def _payload(module: str, name: str, marker: Path) -> str:
    """A module string that a writer trusting names turns into a text GLOBAL that runs ``touch``."""
    return f"{module}\n{name}\n0cposix\nsystem\n(Vtouch {marker}\ntR0c{module}"


def variants(module: str, name: str) -> Iterator[tuple[str, str, str]]:
    """(label, module, name) with a bad piece at each end of the module and name, and inside."""
    for label, piece in BAD_PIECES.items():
        yield f"module+{label}", module + piece, name
        yield f"{label}+module", piece + module, name
        yield f"name+{label}", module, name + piece
        yield f"{label}+name", module, piece + name
        if "." in module:
            yield f"module.{label}.", module.replace(".", "." + piece, 1), name
    yield "injection", _payload(module, name, Path("/nonexistent/pwned")), name


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates too, as the reader accepts


def _unicode(text: str) -> bytes:
    """BINUNICODE of ``text``."""
    return b"X" + struct.pack("<I", len(_utf8(text))) + _utf8(text)


def _stack_global(module: str, name: str) -> bytes:
    return _unicode(module) + _unicode(name) + b"\x93"


def _stack_global_pickle(module: str, name: str) -> bytes:
    return b"\x80\x04" + _stack_global(module, name) + b"."


def _text_global_pickle(module: str, name: str) -> bytes:
    return b"\x80\x02c" + _utf8(module) + b"\n" + _utf8(name) + b"\n."


def _inst_pickle(module: str, name: str) -> bytes:
    return b"\x80\x02(i" + _utf8(module) + b"\n" + _utf8(name) + b"\n."


OPCODES = {"STACK_GLOBAL": _stack_global_pickle, "GLOBAL": _text_global_pickle}


def checkpoint(module: str, name: str, opcode: str, marker: Path | None = None) -> bytes:
    """A legacy checkpoint ``({"policy": <global>}, OrderedDict())`` naming ``module.name``."""
    if marker is not None:
        module = _payload(module, name, marker)
    asm = Asm(4 if opcode == "STACK_GLOBAL" else 2).raw(b"}")
    asm.str("policy")
    if opcode == "STACK_GLOBAL":
        asm.raw(_stack_global(module, name))
    else:
        asm.raw(b"c" + _utf8(module) + b"\n" + _utf8(name) + b"\n")
    asm.raw(b"s").raw(b"ccollections\nOrderedDict\n)R")
    return asm.raw(b"\x86").stop()


# --- the grammar -------------------------------------------------------------------------------


def test_grammar_is_anchored_ascii_and_bounded() -> None:
    assert is_dotted_name("gym.spaces.box") and is_identifier("Box")
    for bad in (
        "gym.spaces.box\n",
        "gym.spaces.\nbox",
        ".gym",
        "gym.",
        "gym..spaces",
        "g\u0443m",
        "",
    ):
        assert not is_dotted_name(bad), bad
    assert not is_identifier("Box\n") and not is_identifier("a.b") and not is_identifier("B\u043ex")
    assert not is_dotted_name("a" * 201)
    assert in_package("gym.spaces.box", "gym.spaces") and in_package("gym.spaces", "gym.spaces")
    assert not in_package("gym.spacesX", "gym.spaces")
    assert not in_package("gym.spaces\n.box", "gym.spaces")
    assert not in_package("gym.spaces.\nbox", "gym.spaces")


@pytest.mark.parametrize("package", PACKAGES)
def test_package_entries_match_at_identifier_boundaries_only(package: str) -> None:
    name = {"numpy.random": "MT19937", "tensorflow.python.ops": "relu"}.get(package, "Box")
    for module in (package + "X.box", package + "_evil", package + ".box\n", package + "\x00.b"):
        assert lookup(module, name) is None, module


# --- every entry, every bad piece, both opcodes: the static check ------------------------------


@pytest.mark.parametrize("entry", ALLOWED, ids=lambda e: f"{e[0]}.{e[1]}")
def test_every_allowlisted_name_with_a_bad_piece_is_refused(entry: tuple[str, str]) -> None:
    module, name = entry
    assert lookup(module, name) is not None  # the entry itself is allowed
    checked = 0
    for label, bad_module, bad_name in variants(module, name):
        assert lookup(bad_module, bad_name) is None, label
        for opcode, build in {**OPCODES, "INST": _inst_pickle}.items():
            blob = build(bad_module, bad_name)
            with pytest.raises(CkptdError):
                check_pickle_bytes(blob, source=f"{opcode} {label}")
            checked += 1
        with pytest.raises(UnsafeCheckpoint, match="cannot write global"):
            emit_pickle(Global(bad_module, bad_name, 0, "GLOBAL"))
    assert checked >= 2 * 3 * len(BAD_PIECES)


# --- inspect, convert, verify on whole checkpoints -----------------------------------------------


@pytest.mark.parametrize("opcode", sorted(OPCODES))
@pytest.mark.parametrize("entry", FAMILIES, ids=lambda e: e[0])
def test_checkpoints_with_bad_names_are_refused_by_inspect_convert_and_verify(
    entry: tuple[str, str], opcode: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    files = 0
    for index, (label, module, name) in enumerate(variants(*entry)):
        source = tmp_path / f"rl_model_{index}_steps.pkl"
        blob = checkpoint(module, name, opcode, marker if label == "injection" else None)
        source.write_bytes(blob)
        report = inspect_path(source)
        assert report.verdict != "safe" and not report.sound, label
        with pytest.raises(CkptdError):
            convert_file(source, original="delete")
        assert not source.with_suffix(".zip").exists(), label
        assert source.read_bytes() == blob, label
        assert not verify_file(source).ok, label
        files += 1
    assert files > len(BAD_PIECES) * 4
    assert not marker.exists()


def test_the_genuine_names_still_convert(tmp_path: Path) -> None:
    """The control: the same checkpoints with the names intact are safe and convert."""
    for index, (module, name) in enumerate(FAMILIES):
        for opcode in OPCODES:
            source = tmp_path / f"ok_{index}_{opcode}.pkl"
            source.write_bytes(checkpoint(module, name, opcode))
            assert inspect_path(source).verdict == "safe", (module, opcode)
            outcome = convert_file(source)
            assert verify_file(outcome.output).ok


# --- the emitter and the converter's own check ---------------------------------------------------


def test_converter_rereads_what_it_emitted_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault: the emitter writes a hostile pickle. The post-write check refuses it before the
    rename (on the old code the byte compare passed and the zip got its name)."""
    from ckptd.convert import legacy_data
    from ckptd.pickles.emit import EmittedPickle

    marker = tmp_path / "pwned"
    hostile = bytes(Asm(2).global_("posix", "system").call(f"touch {marker}").raw(b"."))

    def bad_emit(node: object, *, source: str | None = None) -> EmittedPickle:
        return EmittedPickle(hostile, ("posix.system",))

    monkeypatch.setattr(legacy_data, "emit_pickle", bad_emit)
    source = tmp_path / "rl_model_1_steps.pkl"
    source.write_bytes(checkpoint(*FAMILIES[0], "STACK_GLOBAL"))
    with pytest.raises(VerifyError, match=r"posix\.system is not on the allowlist"):
        convert_file(source, original="archive")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rl_model_1_steps.pkl"]
    assert not marker.exists()


def test_full_verify_before_archiving_removes_a_bad_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two faults at once (a hostile emitter and no post-write check): the full verify that runs
    before the original is archived catches it, removes the zip and leaves the original."""
    from ckptd.convert import legacy_data
    from ckptd.formats import sb2zip
    from ckptd.pickles.emit import EmittedPickle

    hostile = bytes(Asm(2).global_("posix", "system").call("true").raw(b"."))
    monkeypatch.setattr(
        legacy_data, "emit_pickle", lambda node, source=None: EmittedPickle(hostile, ())
    )
    monkeypatch.setattr(sb2zip, "check_emitted_pickles", lambda data, dest: None)
    source = tmp_path / "rl_model_1_steps.pkl"
    blob = checkpoint(*FAMILIES[1], "GLOBAL")
    source.write_bytes(blob)
    with pytest.raises(VerifyError, match="failed verification and was removed") as info:
        convert_file(source, original="archive")
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rl_model_1_steps.pkl"]
    assert source.read_bytes() == blob


# --- the payload is genuine ------------------------------------------------------------------------

_STUBS = {
    "gym/__init__.py": "",
    "gym/spaces/__init__.py": "",
    "gym/spaces/box.py": "class Box:\n    pass\n",
    "stable_baselines/__init__.py": "",
    "stable_baselines/common/__init__.py": "",
    "stable_baselines/common/policies.py": "class MlpPolicy:\n    pass\n",
    "tensorflow/__init__.py": "",
    "tensorflow/python/__init__.py": "",
    "tensorflow/python/ops/__init__.py": "",
    "tensorflow/python/ops/gen_nn_ops.py": "def relu(x):\n    return x\n",
}


def stub_packages(root: Path) -> Path:
    """gym / stable_baselines / tensorflow stand-ins on disk, for a real unpickler in a subprocess."""
    for relative, text in _STUBS.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize("entry", FAMILIES, ids=lambda e: e[0])
def test_payload_runs_when_a_trusting_writer_emits_it(
    entry: tuple[str, str], tmp_path: Path
) -> None:
    """What the old emitter wrote for the injection (``c`` + module + newline + name + newline),
    loaded by a real unpickler, runs ``touch``: the attack class is real, not inert bytes."""
    marker = tmp_path / "pwned"
    module, name = entry
    written = b"\x80\x02" + f"c{_payload(module, name, marker)}\n{name}\nq\x00.".encode()
    (tmp_path / "emitted.pkl").write_bytes(written)
    env = dict(os.environ, PYTHONPATH=str(stub_packages(tmp_path / "stubs")))
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import pickle,sys; pickle.load(open(sys.argv[1], 'rb'))",
            str(tmp_path / "emitted.pkl"),
        ],
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=True,
        capture_output=True,
    )
    assert marker.exists()


# --- the CLI and the daemon's pipeline ---------------------------------------------------------------


def _ckptd(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "ckptd", *args], capture_output=True, timeout=120, cwd=cwd
    )


def test_cli_refuses_every_injection(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    sources = []
    for index, entry in enumerate(FAMILIES):
        for opcode in OPCODES:
            source = run / f"rl_model_{index}{len(sources)}_steps.pkl"
            source.write_bytes(checkpoint(*entry, opcode, marker))
            sources.append(source)
    for source in sources[::3]:
        inspected = _ckptd("inspect", str(source), cwd=REPO)
        assert inspected.returncode == 1
        assert b"Verdict: refused" in inspected.stdout
        assert b"Verdict: safe" not in inspected.stdout
        assert b"\x1b" not in inspected.stdout + inspected.stderr
    converted = _ckptd("convert", str(run), "--original", "delete", cwd=REPO)
    assert converted.returncode == 1
    assert converted.stderr.count(b": refused: ") == len(sources)
    verified = _ckptd("verify", str(run), cwd=REPO)
    assert verified.returncode == 1 and verified.stdout == b""
    assert sorted(run.iterdir()) == sorted(sources)
    assert not marker.exists()


def test_pipeline_quarantines_every_bad_name(tmp_path: Path) -> None:
    from ckptd.config.load import parse_config
    from ckptd.manifest.store import load_manifest
    from ckptd.pipeline.batch import process_path

    root = tmp_path / "runs"
    run = root / "ppo-1"
    run.mkdir(parents=True)
    marker = tmp_path / "pwned"
    config = parse_config(
        {
            "roots": [{"path": str(root), "run_depth": 1, "observer": "polling"}],
            "checkpoints": {"stable_for": "0s"},
        }
    )
    labels = []
    for index, (label, module, name) in enumerate(variants(*FAMILIES[0])):
        source = run / f"rl_model_{index}_steps.pkl"
        source.write_bytes(
            checkpoint(module, name, "STACK_GLOBAL", marker if "inj" in label else None)
        )
        outcome = process_path(config, config.roots[0], source)
        assert outcome.action in ("refused", "broken"), (label, outcome)
        labels.append(label)
    manifest = load_manifest(run / "ckptd-manifest.json")
    assert not any(entry.format == "sb2-zip" for entry in manifest.checkpoints)
    assert not list(run.glob("*.zip"))
    assert not marker.exists()
    assert len(labels) > len(BAD_PIECES)


def test_daemon_pipeline_keeps_the_original_when_its_output_fails_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon archives originals by default: with the emitter and the post-write check both
    broken (faults), the full verify before archiving fails, the zip is removed, the original
    stays in the run untouched, and the outcome and the log carry one line."""
    from ckptd.config.load import parse_config
    from ckptd.convert import legacy_data
    from ckptd.formats import sb2zip
    from ckptd.manifest.store import load_manifest
    from ckptd.pickles.emit import EmittedPickle
    from ckptd.pipeline.batch import process_path

    hostile = bytes(Asm(2).global_("posix", "system").call("true").raw(b"."))
    monkeypatch.setattr(
        legacy_data, "emit_pickle", lambda node, source=None: EmittedPickle(hostile, ())
    )
    monkeypatch.setattr(sb2zip, "check_emitted_pickles", lambda data, dest: None)
    root = tmp_path / "runs"
    run = root / "ppo-1"
    run.mkdir(parents=True)
    config = parse_config(
        {
            "roots": [{"path": str(root), "run_depth": 1, "observer": "polling"}],
            "checkpoints": {"stable_for": "0s"},
        }
    )
    assert config.convert.original == "archive"
    source = run / "rl_model_1_steps.pkl"
    blob = checkpoint(*FAMILIES[1], "STACK_GLOBAL")
    source.write_bytes(blob)
    outcome = process_path(config, config.roots[0], source)
    assert outcome.action == "failed"
    assert "failed verification and was removed" in outcome.message
    assert "\n" not in outcome.message
    assert source.read_bytes() == blob
    assert not list(run.rglob("*.zip"))
    assert not (run / ".ckptd" / "legacy" / source.name).exists()
    entry = load_manifest(run / "ckptd-manifest.json").by_path()[source.name]
    assert entry.state == "kept" and entry.error is not None


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_daemon_quarantines_every_injection(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """``ckptd run``: each family's injection, as GLOBAL and STACK_GLOBAL, is refused and
    quarantined; no zip is written and the payload's marker never appears."""

    from tests.daemon_harness import DaemonProcess, daemon_config, write_config
    from tests.helpers import wait_until

    root = tmp_path / "runs"
    run = root / "ppo-1"
    run.mkdir(parents=True)
    marker = tmp_path / "pwned"
    config = write_config(
        tmp_path / "ckptd.yaml", daemon_config(root, stable_for="1s", keep_last=5)
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log", notify_socket)
    try:
        daemon.wait_ready(timeout=30)
        count = 0
        for index, entry in enumerate(FAMILIES):
            for opcode in OPCODES:
                name = f"rl_model_{index}{opcode.lower()}_{count}_steps.pkl"
                (run / name).write_bytes(checkpoint(*entry, opcode, marker))
                count += 1
        jail = run / ".ckptd" / "quarantine"
        wait_until(
            lambda: len(list(jail.glob("*.pkl"))) == count if jail.is_dir() else False,
            60,
            f"{count} quarantined files:\n{daemon.log_text()}",
        )
    finally:
        assert daemon.stop(timeout=10) == 0
    assert not list(run.rglob("*.zip"))
    assert not list(run.glob("*.pkl"))  # every one moved to the quarantine
    assert not marker.exists()
    assert "Traceback" not in daemon.log_text()
