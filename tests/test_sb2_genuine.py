"""Genuine stable-baselines checkpoints through ckptd and back into stable-baselines itself.

tests/data/sb2-genuine/ holds legacy pickles written by real stable-baselines releases 2.4.1-2.10.2
(tests/sb2real/generate.py; provenance, true parameter names and reference outputs in its
index.json). Every one is converted with ``ckptd convert FILE`` as a user would, then loaded with
stable-baselines 2.10.2's own ``Model.load`` on its own stack (tests/sb2tf_env.py) and compared with
the original: parameters bit for bit, predictions, action probabilities and LSTM states, and the
zip's members against stable-baselines' own format-only conversion (docs/compatibility.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickletools
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.sb2real import specs
from tests.sb2tf_env import has_openmpi, sb2_environ, sb2tf_env

GENUINE = Path(__file__).parent / "data" / "sb2-genuine"
STAND_INS = Path(__file__).parent / "data" / "sb2-era"
INDEX: dict[str, Any] = json.loads((GENUINE / "index.json").read_text())
FIXTURES: list[dict[str, Any]] = INDEX["fixtures"]
CHECKER = Path(__file__).parent / "sb2real" / "check_genuine.py"
MPI_ALGORITHMS = {"DDPG", "PPO1", "TRPO", "GAIL"}

TAMPERED = "tampered"


def globals_of(payload: bytes) -> set[str]:
    """Every module.name a pickle references, from its opcodes (nothing is unpickled)."""
    found: set[str] = set()
    strings: list[str] = []
    for opcode, arg, _ in pickletools.genops(payload):
        if opcode.name in {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE"}:
            strings.append(str(arg))
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif opcode.name == "GLOBAL":
            found.add(str(arg).replace(" ", "."))
    return found


def test_index_matches_the_committed_files() -> None:
    on_disk = {path.name for path in GENUINE.glob("*.pkl")}
    assert on_disk == {fixture["file"] for fixture in FIXTURES}
    for fixture in FIXTURES:
        payload = (GENUINE / fixture["file"]).read_bytes()
        assert hashlib.sha256(payload).hexdigest() == fixture["sha256"], fixture["id"]
        assert len(payload) == fixture["size"], fixture["id"]
        assert len(fixture["param_names"]) == len(fixture["param_shapes"]) > 0, fixture["id"]


def test_index_accounts_for_every_generator_spec() -> None:
    made = {fixture["id"] for fixture in FIXTURES}
    not_made = {entry["id"] for entry in INDEX["not_made"]}
    assert made | not_made == {spec["id"] for spec in specs.all_specs()}
    assert not made & not_made


def test_no_fixture_is_a_stand_in() -> None:
    """Written by stable-baselines on TensorFlow, not by tests/legacy37/standins.py."""
    stand_in_bytes = {path.read_bytes() for path in STAND_INS.glob("*.pkl")}
    for fixture in FIXTURES:
        payload = (GENUINE / fixture["file"]).read_bytes()
        assert payload not in stand_in_bytes
        assert payload[:2] == b"\x80\x04", fixture["id"]  # Python 3.7's HIGHEST_PROTOCOL
        stack = fixture["stack"]
        assert stack["stable_baselines"] == fixture["sb2_version"]
        assert stack["tensorflow"].startswith("1.") and stack["python"].startswith("3.7.")
        referenced = globals_of(payload)
        assert not any("standins" in name or name.startswith("tests.") for name in referenced)
        assert any(name.startswith("stable_baselines.") for name in referenced), fixture["id"]
        assert all(name.endswith(":0") for name in fixture["param_names"]), fixture["id"]


def test_fixtures_cover_both_sides_of_the_format_changes() -> None:
    """List params (<= 2.5.1) and dict params (>= 2.6.0); pickle default (<= 2.7.0) and
    save(cloudpickle=True) (>= 2.8.0); every algorithm."""
    formats = {(f["params_format"], f["saved_with"]) for f in FIXTURES}
    assert formats == {
        ("list", "save(path)"),
        ("dict", "save(path)"),
        ("dict", "save(path, cloudpickle=True)"),
    }
    assert {f["algorithm"] for f in FIXTURES} == {
        "A2C", "ACER", "ACKTR", "DDPG", "DQN", "GAIL", "HER", "PPO1", "PPO2", "SAC", "TD3", "TRPO",
    }  # fmt: skip


def ckptd_command() -> list[str]:
    script = Path(sys.executable).parent / "ckptd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ckptd"]


@pytest.fixture(scope="module")
def consumer_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Convert every fixture with the CLI, then check all of them in one stable-baselines process."""
    try:
        env = sb2tf_env()
    except LookupError as err:
        pytest.skip(f"the genuine stable-baselines stack needs Python 3.7: {err}")
    work = tmp_path_factory.mktemp("genuine")
    converted: dict[str, dict[str, Any]] = {}
    cases = []
    for fixture in FIXTURES:
        source = work / fixture["file"]
        shutil.copyfile(GENUINE / fixture["file"], source)
        result = subprocess.run(
            [*ckptd_command(), "convert", str(source)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        output = source.with_suffix(".zip")
        converted[fixture["id"]] = {"rc": result.returncode, "stderr": result.stderr.strip()}
        if result.returncode == 0 and output.exists():
            cases.append(
                {"id": fixture["id"], "pkl": str(source), "zip": str(output), "record": fixture}
            )
    cases.extend(tampered_case(work, cases))
    cases_path = work / "cases.json"
    cases_path.write_text(json.dumps(cases))
    checked = subprocess.run(
        [str(env / "bin" / "python"), str(CHECKER), str(cases_path)],
        env=sb2_environ(env, "2.10.2"),
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    if checked.returncode != 0:
        raise AssertionError(
            f"check_genuine.py failed ({checked.returncode}):\n{checked.stderr[-4000:]}"
        )
    return {"converted": converted, "checked": json.loads(checked.stdout), "env": env}


def tampered_case(work: Path, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A converted zip with one parameter's last byte flipped: the checker must catch it."""
    if not cases:
        return []
    case = cases[0]
    source = Path(case["zip"])
    target = work / f"{TAMPERED}.zip"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            payload = original.read(info)
            if info.filename == "parameters":
                payload = flip_last_array_byte(payload)
            copy.writestr(info, payload)
    return [{**case, "id": TAMPERED, "zip": str(target)}]


def flip_last_array_byte(npz: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(npz)) as inner, zipfile.ZipFile(out, "w") as copy:
        names = inner.namelist()
        for name in names:
            payload = inner.read(name)
            if name == names[0]:
                payload = payload[:-1] + bytes([payload[-1] ^ 0x01])
            copy.writestr(inner.getinfo(name), payload)
    return out.getvalue()


def consumer_case(fixture: dict[str, Any]) -> Any:
    marks = [pytest.mark.slow, pytest.mark.timeout(1800)]
    return pytest.param(fixture, id=fixture["id"], marks=marks)


@pytest.mark.parametrize("fixture", [consumer_case(f) for f in FIXTURES])
def test_genuine_checkpoint_converts_and_loads_identically(
    consumer_results: dict[str, Any], fixture: dict[str, Any]
) -> None:
    needs_mpi = fixture["algorithm"] in MPI_ALGORITHMS or fixture.get("her_model") == "DDPG"
    if needs_mpi and not has_openmpi():
        pytest.skip(f"{fixture['algorithm']} needs mpi4py, which needs OpenMPI (libopenmpi-dev)")
    conversion = consumer_results["converted"][fixture["id"]]
    assert conversion["rc"] == 0, f"ckptd convert failed: {conversion['stderr']}"
    result = consumer_results["checked"][fixture["id"]]
    assert result["problems"] == []
    assert "outputs" in result["checked"]


def schedule_keys(fixture: dict[str, Any]) -> set[str]:
    """The data keys the generator set to a schedule function (kwargs ``linear:<value>``)."""
    keys = {k for k, v in fixture["kwargs"].items() if str(v).startswith("linear:")}
    release = tuple(int(part) for part in fixture["sb2_version"].split("."))
    if fixture["algorithm"] == "PPO2" and "cliprange" in keys and release >= (2, 9):
        keys.add("cliprange_vf")  # PPO2 >= 2.9 sets cliprange_vf = cliprange (the same closure)
    return keys


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_schedules_of_the_zip_are_called(consumer_results: dict[str, Any]) -> None:
    """Every schedule in a converted zip was called at several progress values and agreed with the
    original's (an empty closure cell only fails on call); the schedule fixtures are covered."""
    covered = 0
    for fixture in FIXTURES:
        result = consumer_results["checked"].get(fixture["id"])
        wanted = schedule_keys(fixture)
        if result is None or not wanted:
            continue
        called = [entry for entry in result["checked"] if entry.startswith("functions: ")]
        assert called, fixture["id"]
        assert wanted <= set(called[0][len("functions: ") :].split(", ")), fixture["id"]
        covered += 1
    assert covered >= 2  # PPO2 2.5.1 and 2.9.0 (cliprange_vf); SAC 2.7.0 once it converts


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_consumer_check_catches_a_changed_parameter(consumer_results: dict[str, Any]) -> None:
    """The comparison can fail: one flipped bit in one array of a converted zip is reported."""
    result = consumer_results["checked"][TAMPERED]
    assert any("differs" in problem for problem in result["problems"]), result


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fixtures_load_real_stable_baselines_classes(consumer_results: dict[str, Any]) -> None:
    """The policy classes the converted files name are stable-baselines' own, from the real package."""
    real = consumer_results["env"] / "sb" / "2.10.2" / "stable_baselines"
    files = [r["policy_file"] for k, r in consumer_results["checked"].items() if "policy_file" in r]
    assert files
    assert all(Path(f).resolve().is_relative_to(real.resolve()) for f in files), files


def test_extras_show_gym_spaces_and_ordered_dicts_as_their_repr(tmp_path: Path) -> None:
    """SB2 writes ``str()`` of each attribute: HER's goal space is an OrderedDict of gym spaces,
    shown as gym 0.14's ``__repr__`` (ckptd once wrote ``OrderedDict(['k': <... object>])``)."""
    source = tmp_path / "her.pkl"
    shutil.copyfile(GENUINE / "her_dqn-mlp-bitflip-sb2.10.2.pkl", source)
    result = subprocess.run(
        [*ckptd_command(), "convert", str(source)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(source.with_suffix(".zip")) as archive:
        data = json.loads(archive.read("data"))
    assert data["her_obs_space"]["spaces"] == (
        "OrderedDict([('achieved_goal', MultiBinary(4)), ('desired_goal', MultiBinary(4)), "
        "('observation', MultiBinary(4))])"
    )
