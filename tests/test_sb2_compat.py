"""Converted zips load where their users load them: stable-baselines' own loading steps on the
SB2-era stack (Python 3.7, numpy 1.16, cloudpickle 1.2), compared with a trusted load of the original.

The legacy files are written fresh by that same old stack (tests/legacy37/make_legacy.py), so the
cloudpickle 1.x function shapes are the real ones, not imitations.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptd.convert.conversion import convert_file
from tests.legacy_env import legacy_python, run_script

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def py37() -> Path:
    try:
        return legacy_python()
    except LookupError as err:
        pytest.skip(f"SB2-era compatibility check needs Python 3.7: {err}")


KINDS = (
    "ppo2",
    "dqn",
    "sac",
    "dqn-tf",
    "ddpg-tf",
    "sac-251",
    "her",
    "odd-keys",
    "equal-keys",
    "shared-schedule",
)
# SB2 <= 2.5.1 saved a list; its names come from the rebuilt graph (here: given).
LIST_NAMES = {"sac-251": ["model/pi/fc0/kernel:0", "model/pi/fc0/bias:0", "model/log_ent_coef:0"]}


@pytest.mark.parametrize("kind", KINDS)
def test_converted_zip_loads_with_sb2_loader_on_the_old_stack(
    py37: Path, tmp_path: Path, kind: str
) -> None:
    """Also what SB2's own save of the loaded original would hold: parameters as np.savez stores
    them (numpy scalars as 0-d arrays, a duplicated list as its first copy) and the ``data`` JSON
    of save_util.data_to_json (equal keys merged, keys named as json.dumps names them)."""
    source = tmp_path / f"rl_model_{kind}_1000_steps.pkl"
    run_script(py37, "make_legacy.py", kind, str(source))
    original_bytes = source.read_bytes()
    names = LIST_NAMES.get(kind)
    extra: list[str] = []
    if names is not None:
        (tmp_path / "names.json").write_text(json.dumps(names))
        extra = [str(tmp_path / "names.json")]

    outcome = convert_file(source, param_names=names)

    assert source.read_bytes() == original_bytes
    result = json.loads(run_script(py37, "check_zip.py", str(source), str(outcome.output), *extra))
    assert result["problems"] == []
    assert result["ok"] is True
    assert result["params"] == outcome.params_count > 0


def test_committed_sb2_era_fixtures_are_what_the_old_stack_writes(
    py37: Path, tmp_path: Path
) -> None:
    """The committed fixtures (used where Python 3.7 is missing) still match a fresh old-stack save."""
    fixtures = Path(__file__).parent / "data" / "sb2-era"
    for kind in KINDS:
        fresh = tmp_path / f"{kind}.pkl"
        run_script(py37, "make_legacy.py", kind, str(fresh))
        committed = (fixtures / f"{kind}.pkl").read_bytes()
        # Same opcodes and globals; code objects embed no paths, so the bytes match exactly.
        assert fresh.read_bytes() == committed, kind
