"""The import rules that keep the core pure and each outside library behind one edge module.

Imports point one way (docs/architecture.md, "The pipeline"): cli/daemon -> pipeline -> formats ->
pure core. A pure module reads no files, clocks or sockets, so it can be tested with literal values
and reused anywhere; an outside library imported in one place can be replaced or upgraded in one
place.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ckptd"

# Pure core: no I/O, no clock, no threads, no outside world.
PURE = [
    "retention.py",
    "units.py",
    "stabilize.py",
    "formats/sb2meta.py",
    "formats/model.py",
    "limits.py",
]
IMPURE_MODULES = {"os", "socket", "subprocess", "threading", "time", "shutil", "signal", "tempfile"}

# Each outside library (or capability) and the only modules allowed to import it.
EDGES = {
    "watchdog": {"watcher.py", "watch_events.py"},
    "apscheduler": {"scheduling.py"},
    "argparse": {
        "cli/__init__.py",
        "cli/config_cmd.py",
        "cli/convert_cmds.py",
        "cli/inspect_cmds.py",
        "cli/ops_cmds.py",
        "cli/prune_cmds.py",
        "cli/run_cmd.py",
    },
    "socket": {"notify.py"},
    "prometheus_client": {"metrics.py"},
    "cloudpickle": set(),  # only tests may import it: ckptd never unpickles a checkpoint
    "pickle": set(),  # the default path never unpickles (re-emitting uses our own emitter)
}


@functools.cache
def imported_modules(path: Path) -> frozenset[str]:
    """Top-level names of every module ``path`` imports, at any depth (function-level too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return frozenset(names)


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("relative", PURE)
def test_pure_core_modules_do_no_io(relative: str) -> None:
    found = imported_modules(PACKAGE / relative) & IMPURE_MODULES
    assert not found, f"{relative} imports {sorted(found)}; keep I/O at the edges"


@pytest.mark.parametrize("library", sorted(EDGES))
def test_outside_libraries_stay_behind_their_edge_module(library: str) -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in modules()
        if library in imported_modules(path)
        and str(path.relative_to(PACKAGE)) not in EDGES[library]
    ]
    assert not offenders, f"{library} imported outside {sorted(EDGES[library])}: {offenders}"


def test_formats_never_import_the_daemon_or_cli() -> None:
    upward = {"ckptd.daemon", "ckptd.cli", "ckptd.pipeline", "ckptd.watcher", "ckptd.scheduling"}
    for path in sorted((PACKAGE / "formats").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not any(node.module.startswith(name) for name in upward), (
                    path.name,
                    node.module,
                )
