"""The CLI loads only the typed command's module: ``ckptd prune`` never imports the daemon, the
converter, watchdog, APScheduler or numpy (docs/architecture.md, "Performance targets")."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ckptd.cli.main import COMMAND_MODULES, build_parser

# Never needed by a prune or manifest pass without keep_best and without a cron schedule.
NOT_FOR_PRUNE = (
    "numpy",
    "apscheduler",
    "asyncio",
    "watchdog",
    "prometheus_client",
    "ckptd.daemon",
    "ckptd.convert.conversion",
    "ckptd.pipeline",
    "ckptd.watch",
    "ckptd.isolation",
    "ckptd.ops",
)


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_the_command_table_names_every_command_and_the_module_that_registers_it() -> None:
    full = _commands(build_parser())
    assert list(full) == list(COMMAND_MODULES)
    for command in COMMAND_MODULES:
        alone = _commands(build_parser(command))
        assert command in alone
        assert alone[command].format_help() == full[command].format_help()


def test_an_unknown_command_is_refused_with_every_choice_listed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser("prnue").parse_args(["prnue"])
    err = capsys.readouterr().err
    assert "invalid choice: 'prnue'" in err and "'quarantine'" in err


def _python(
    code: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in ``cwd``, a fresh interpreter (nothing imported yet); it must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    return done


def _modules_after(argv: list[str], cwd: Path) -> list[str]:
    code = (
        "import contextlib, io, json, sys\n"
        "from ckptd.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    code = main({argv!r})\n"
        "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n"
    )
    out = _python(code, cwd)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["code"] == 0, out.stderr
    modules: list[str] = result["modules"]
    return modules


def _loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in names)]


def test_prune_and_manifest_import_only_what_a_pass_needs(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "rl_model_1_steps.zip").write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    config = tmp_path / "ckptd.yaml"
    config.write_text(
        f"version: 1\nroots:\n  - path: {tmp_path / 'runs'}\n"
        "policies:\n  default:\n    keep_last: 2\n"
    )
    for argv in (
        ["prune", "-c", str(config), "--dry-run", "--json"],
        ["prune", "-c", str(config), "--dry-run"],
        ["manifest", "-c", str(config)],
    ):
        modules = _modules_after(argv, tmp_path)
        assert "ckptd.retention.prune" in modules  # the probe does see what is imported
        assert _loaded(modules, NOT_FOR_PRUNE) == [], argv
        # rich draws prune's tables; JSON and manifest's plain lines do not need it
        draws_tables = argv[0] == "prune" and "--json" not in argv
        assert bool(_loaded(modules, ("rich",))) == draws_tables, argv


def test_a_keep_best_policy_still_loads_numpy_when_it_reads_evaluations(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    for step in (1, 2, 3):
        (run / f"rl_model_{step}_steps.zip").write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    np.savez(run / "evaluations.npz", timesteps=np.array([1, 2, 3]), results=np.ones((3, 2)))
    config = tmp_path / "ckptd.yaml"
    config.write_text(
        f"version: 1\nroots:\n  - path: {tmp_path / 'runs'}\n"
        "policies:\n  default:\n    keep_last: 1\n"
        "    keep_best: {metric: mean_reward, count: 1}\n"
    )
    modules = _modules_after(["prune", "-c", str(config), "--dry-run", "--json"], tmp_path)
    assert "numpy" in modules


def test_converting_one_file_starts_no_blas_threads_and_never_imports_rich(tmp_path: Path) -> None:
    """``ckptd convert FILE`` (what benchmarks/convert.py times): OpenBLAS is told to keep to
    one thread (its pool would spin on the cores the conversion's threads need), rich is not
    imported (no progress bar for one file), nor the config loader without ``-c``, and every
    helper thread is gone at the end."""
    source = tmp_path / "rl_model_5_steps.pkl"
    shutil.copy(Path(__file__).parent / "data" / "sb2-era" / "ppo2.pkl", source)
    code = (
        "import contextlib, io, json, os, sys\n"
        "from ckptd.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    code = main(['convert', {str(source)!r}, '-o', {str(tmp_path / 'out.zip')!r}])\n"
        "print(json.dumps({'code': code, 'modules': sorted(sys.modules), 'out': out.getvalue(),\n"
        "    'threads': len(os.listdir('/proc/self/task')),\n"
        "    'blas': os.environ.get('OPENBLAS_NUM_THREADS')}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    done = _python(code, tmp_path, env)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 0 and "converted" in result["out"], result["out"]
    assert "numpy" in result["modules"]  # the probe does see the converter's imports
    assert _loaded(result["modules"], ("rich",)) == []
    # No -c: the config loader (yaml and the schema) is not imported (ckptd.cli.convert_config).
    assert _loaded(result["modules"], ("yaml", "ckptd.config.load")) == []
    assert result["blas"] == "1"
    assert result["threads"] == 1  # no OpenBLAS pool, no helper thread left behind


def test_a_blas_thread_count_the_user_set_is_kept_and_the_collector_runs_after_start_up(
    tmp_path: Path,
) -> None:
    """The collector is off only while the command's modules are imported (they are then frozen,
    out of its way): a command, the daemon above all, runs with it on."""
    code = (
        "import contextlib, gc, io, os\n"
        "from ckptd.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['config', 'schema'])\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 10_000)\n"
        "print(os.environ['OPENBLAS_NUM_THREADS'])\n"
    )
    done = _python(code, tmp_path, {**os.environ, "OPENBLAS_NUM_THREADS": "3"})
    assert done.stdout.splitlines()[-2:] == ["True True", "3"]


def test_the_convert_command_loads_without_numpy(tmp_path: Path) -> None:
    """numpy is imported by the conversion itself, in a helper thread while the first pass reads
    the file (ckptd.convert.conversion), not with the command's modules."""
    code = (
        "import sys\n"
        "import ckptd.cli.convert_cmds, ckptd.convert.conversion, ckptd.formats.sb2zip\n"
        "print('numpy' in sys.modules)\n"
    )
    done = _python(code, tmp_path)
    assert done.stdout.split() == ["False"]
