"""Keep attacking it: structure-aware and coverage-guided fuzzing of every reader, in CI.

Three layers, each bounded in time:
- hypothesis generates legacy pickles and SB2 zips from opcode programs (tests/fuzz_gen.py) and
  checks the invariants of tests/fuzz_checks.py on each (derandomized, so CI is reproducible);
- every input in the stored corpus (tests/fuzz/corpus/: genuine files and every input that once
  broke an invariant) is replayed;
- atheris (libFuzzer) mutates the corpus under coverage guidance for a fixed number of inputs in a
  subprocess with a memory limit and a per-input timeout, where it installs.

Any exception other than a CkptdError, a multi-line error, an output that fails ``verify``, a
changed input, a slow input or memory past the limit fails the test.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.fuzz_checks import CheckWorker
from tests.fuzz_gen import legacy_pickles, opcode_floods, sb2_zips

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "fuzz" / "corpus"
GENUINE = sorted((Path(__file__).resolve().parent / "data").glob("sb2-*/*.pkl"))
# The coverage-guided run is reproducible: a fixed seed, a fixed number of inputs and a fixed
# PYTHONHASHSEED (set iteration order changes coverage), so CI judges the same inputs every time.
# A longer campaign: CKPTD_FUZZ_RUNS=200000 CKPTD_FUZZ_SEED=$RANDOM CKPTD_FUZZ_SECONDS=3600.
FUZZ_RUNS = int(os.environ.get("CKPTD_FUZZ_RUNS", "2500"))
FUZZ_SEED = int(os.environ.get("CKPTD_FUZZ_SEED", "1"))
FUZZ_SECONDS = int(os.environ.get("CKPTD_FUZZ_SECONDS", "180"))

FUZZ_SETTINGS = settings(
    max_examples=int(os.environ.get("CKPTD_FUZZ_EXAMPLES", "250")),
    deadline=timedelta(seconds=10),
    derandomize=True,
    database=None,
    # No shrinking: an input that hangs would be re-run for 15 s per shrink step. The failure
    # message names the input and the worker saves it for tests/fuzz/corpus/.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CheckWorker]:
    """One child process checks the inputs, each bounded to 15 s and 1.5 GiB (a hang fails it)."""
    with CheckWorker(tmp_path_factory.mktemp("fuzz")) as worker:
        yield worker


@pytest.mark.slow
@FUZZ_SETTINGS
@given(data=legacy_pickles())
def test_generated_legacy_pickles_keep_the_invariants(checker: CheckWorker, data: bytes) -> None:
    checker.check(data)


@pytest.mark.slow
@FUZZ_SETTINGS
@given(data=sb2_zips())
def test_generated_sb2_zips_keep_the_invariants(checker: CheckWorker, data: bytes) -> None:
    checker.check(data, name="rl_model_1000_steps.zip")


@pytest.mark.slow
@settings(FUZZ_SETTINGS, max_examples=12)
@given(data=opcode_floods())
def test_opcode_floods_are_handled_quickly(checker: CheckWorker, data: bytes) -> None:
    checker.check(data)


def test_the_generators_reach_the_emitter(checker: CheckWorker) -> None:
    """The fuzzing is only worth something if a good share of inputs convert (reach the emitter)."""
    outcomes: list[str] = []

    @settings(FUZZ_SETTINGS, max_examples=80)
    @given(data=legacy_pickles())
    def collect(data: bytes) -> None:
        outcomes.append(checker.check(data))

    collect()
    converted = outcomes.count("converted")
    assert converted >= len(outcomes) // 10, f"only {converted} of {len(outcomes)} converted"
    assert any(outcome.startswith("refused") for outcome in outcomes)


def _corpus_files() -> list[Path]:
    return sorted(path for path in CORPUS.iterdir() if path.is_file()) + GENUINE


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda path: path.name)
def test_the_stored_corpus_keeps_the_invariants(checker: CheckWorker, path: Path) -> None:
    checker.check(path.read_bytes(), name=f"rl_model_1_steps{path.suffix or '.pkl'}")


def _atheris_available() -> str | None:
    if platform.system() != "Linux":
        return "atheris (libFuzzer) runs on Linux only"
    probe = subprocess.run(
        [sys.executable, "-c", "import atheris"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"atheris does not install for this interpreter: {probe.stderr.strip()[-200:]}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(FUZZ_SECONDS + 120)
def test_coverage_guided_fuzzing_finds_nothing(tmp_path: Path) -> None:
    reason = _atheris_available()
    if reason is not None:
        pytest.skip(reason)
    work_corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, work_corpus)
    for path in GENUINE:
        shutil.copy(path, work_corpus / f"genuine-{path.parent.name}-{path.name}")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.atheris_target",
            str(work_corpus),
            f"-runs={FUZZ_RUNS}",
            f"-seed={FUZZ_SEED}",
            f"-max_total_time={FUZZ_SECONDS}",
            "-rss_limit_mb=1536",
            "-timeout=10",
            "-max_len=65536",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 90,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=False,
    )
    crashes = sorted(artifacts.iterdir())
    tail = "\n".join(result.stderr.splitlines()[-40:])
    if result.returncode != 0 or crashes:
        # libFuzzer's log rarely shows the Python error: replay each input to name it.
        (tmp_path / "replay").mkdir()
        with CheckWorker(tmp_path / "replay") as worker:
            replayed = [f"{path.name}: {_replay(worker, path)}" for path in crashes]
        raise AssertionError(
            f"the fuzzer broke an invariant (inputs saved in {artifacts}; save each in "
            f"tests/fuzz/corpus/ once fixed):\n" + "\n".join(replayed) + f"\n{tail}"
        )
    assert "stat::number_of_executed_units" in result.stderr, tail


def _replay(worker: CheckWorker, path: Path) -> str:
    try:
        return f"passes when replayed ({worker.check(path.read_bytes())})"
    except AssertionError as err:
        return str(err)[-2000:]
