"""Converted zips load where their users load them: stable-baselines' own loading steps on the
SB2-era stack (Python 3.7, numpy 1.16, cloudpickle 1.2), compared with a trusted load of the original.

The legacy files are written fresh by that same old stack (tests/legacy37/make_legacy.py), so the
cloudpickle 1.x function shapes are the real ones, not imitations.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptd.convert import convert_file
from tests.legacy_env import legacy_python, run_script

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def py37() -> Path:
    try:
        return legacy_python()
    except LookupError as err:
        pytest.skip(f"SB2-era compatibility check needs Python 3.7: {err}")


@pytest.mark.parametrize("kind", ["ppo2", "dqn", "sac"])
def test_converted_zip_loads_with_sb2_loader_on_the_old_stack(
    py37: Path, tmp_path: Path, kind: str
) -> None:
    source = tmp_path / f"rl_model_{kind}_1000_steps.pkl"
    run_script(py37, "make_legacy.py", kind, str(source))
    original_bytes = source.read_bytes()

    outcome = convert_file(source)

    assert source.read_bytes() == original_bytes
    result = json.loads(run_script(py37, "check_zip.py", str(source), str(outcome.output)))
    assert result["problems"] == []
    assert result["ok"] is True
    assert result["params"] == outcome.params_count > 0


def test_committed_sb2_era_fixtures_are_what_the_old_stack_writes(
    py37: Path, tmp_path: Path
) -> None:
    """The committed fixtures (used where Python 3.7 is missing) still match a fresh old-stack save."""
    fixtures = Path(__file__).parent / "data" / "sb2-era"
    for kind in ("ppo2", "dqn", "sac"):
        fresh = tmp_path / f"{kind}.pkl"
        run_script(py37, "make_legacy.py", kind, str(fresh))
        committed = (fixtures / f"{kind}.pkl").read_bytes()
        # Same opcodes and globals; code objects embed no paths, so the bytes match exactly.
        assert fresh.read_bytes() == committed, kind
