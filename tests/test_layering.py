"""The import rules that keep the package's shape: one import direction, a pure core, one edge per library.

Packages are layered (docs/architecture.md, "Packages"): a module imports only from its own package,
from a package below it in ``PACKAGE_ORDER``, or from the shared top-level modules every layer may
use. Imports are read from the code itself, function-level ones included, so the shape cannot drift
back: no cycles between modules, and no import deferred into a function between ckptd modules.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ckptd"

# Bottom to top: the pipeline from the watch event to the manifest reads upward through these.
PACKAGE_ORDER = (
    "config",
    "logs",
    "fs",
    "pickles",
    "formats",
    "convert",
    "manifest",
    "runs",
    "coordination",
    "watch",
    "pipeline",
    "retention",
    "ops",
    "isolation",
    "daemon",
    "cli",
)
# What every layer may import: values and helpers with no knowledge of the pipeline.
SHARED = ("errors", "units", "timefmt", "textsafe", "limits", "frozen_build")
ENTRY_POINTS = ("__main__",)  # ``python -m ckptd`` runs the CLI: the one module above everything

# Pure core: no I/O, no clock, no threads, no outside world.
PURE = [
    "retention/plan.py",
    "units.py",
    "watch/stabilize.py",
    "formats/sb2meta.py",
    "formats/model.py",
    "limits.py",
    "manifest/updates.py",
]
IMPURE_MODULES = {"os", "socket", "subprocess", "threading", "time", "shutil", "signal", "tempfile"}

# Each outside library (or capability) and the only modules allowed to import it.
EDGES = {
    "watchdog": {"watch/watcher.py", "watch/events.py"},
    # The config validates cron expressions with the trigger the scheduler runs (config/cron.py).
    "apscheduler": {"daemon/scheduling.py", "config/cron.py"},
    "argparse": {
        "cli/main.py",
        "cli/config_cmd.py",
        "cli/config_path.py",
        "cli/convert_args.py",
        "cli/convert_cmds.py",
        "cli/convert_config.py",
        "cli/inspect_cmds.py",
        "cli/ops_options.py",
        "cli/pin_cmds.py",
        "cli/prune_cmds.py",
        "cli/quarantine_cmds.py",
        "cli/run_cmd.py",
        "cli/scrub_cmd.py",
        "cli/status_cmd.py",
        "cli/trash_cmds.py",
    },
    "socket": {"daemon/notify.py"},
    "isal": {"fs/digest.py"},  # the CRC-32 every other module takes from there
    "prometheus_client": {"daemon/metrics.py"},
    "psycopg": {"coordination/pgstore.py"},
    "cloudpickle": set(),  # only tests may import it: ckptd never unpickles a checkpoint
    "pickle": set(),  # the default path never unpickles (re-emitting uses our own emitter)
}

# Small modules, one job each: a module that outgrows this is split by job, not trimmed.
MAX_MODULE_LINES = 500

# Outside libraries a function may import when it is called rather than at module load, because
# most processes never need them (the one place this list lives).
# psycopg: an optional extra, needed only by ``coordination.backend: postgres``.
# apscheduler: only a cron expression in the config (config/cron.py) needs it outside the daemon;
# with the asyncio it imports it cost every ``ckptd prune`` 25 ms.
# rich: only a progress bar or markup needs it in ``ckptd convert``, which for one file shows
# neither (ckptd.cli.progress; 20 ms of a 0.3 s conversion), and only a table in ``ckptd prune``,
# which with --json draws none (ckptd.cli.output).
DEFERRED_LIBRARIES = frozenset({"numpy", "zipfile", "psycopg", "apscheduler", "rich"})


@dataclass(frozen=True)
class Edge:
    """One import of a ckptd module by another, as written."""

    importer: str
    imported: str
    line: int
    in_function: bool


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _function_imports(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside a function (or method) body."""
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            nested.update(
                id(inner)
                for inner in ast.walk(node)
                if isinstance(inner, ast.Import | ast.ImportFrom)
            )
    return nested


def ckptd_edges(package: Path) -> list[Edge]:
    """Every import between modules of ``package`` (absolute imports, any depth)."""
    paths = sorted(package.rglob("*.py"))
    names = {module_name(path, package) for path in paths}
    edges: list[Edge] = []
    for path in paths:
        importer = module_name(path, package)
        tree = _tree(path)
        nested = _function_imports(tree)
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # ``from ckptd.fs import files`` imports the module ckptd.fs.files.
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            for target in targets:
                if target in names and target != importer:
                    edges.append(Edge(importer, target, node.lineno, id(node) in nested))
        edges.extend(_command_table_edges(tree, importer, names))
    return edges


# The CLI imports a command's module only when that command is typed (ckptd.cli.main); the table
# naming them is read as that module's imports, so the rules above still see every edge.
COMMAND_TABLES = ("COMMAND_MODULES", "HANDLER_MODULES")


def _command_table_edges(tree: ast.Module, importer: str, names: set[str]) -> list[Edge]:
    edges = []
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign | ast.Assign)
            and any(t.id in COMMAND_TABLES for t in _targets(node) if isinstance(t, ast.Name))
            and isinstance(node.value, ast.Dict)
        ):
            for entry in node.value.values:
                values = entry.elts if isinstance(entry, ast.Tuple) else [entry]
                for value in values:
                    if isinstance(value, ast.Constant) and value.value in names:
                        edges.append(Edge(importer, value.value, value.lineno, False))
    return edges


def _targets(node: ast.AnnAssign | ast.Assign) -> list[ast.expr]:
    return [node.target] if isinstance(node, ast.AnnAssign) else node.targets


def dynamic_imports(package: Path) -> list[str]:
    """Every ``importlib.import_module`` call (or ``__import__``) in ``package``, by place."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            ):
                found.append(f"{path.relative_to(package).as_posix()}:{node.lineno}")
    return found


def rank(module: str) -> int:
    """The layer of a module: shared modules at the bottom, the entry point at the top."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the package itself (its __init__: the version)
    if parts[1] in SHARED:
        return 0
    if parts[1] in ENTRY_POINTS:
        return len(PACKAGE_ORDER) + 1
    return PACKAGE_ORDER.index(parts[1]) + 1


def layering_problems(edges: Iterable[Edge]) -> list[str]:
    """Imports that point up the package order, or that a function defers."""
    problems = []
    for edge in edges:
        if edge.in_function:
            problems.append(
                f"{edge.importer}:{edge.line} imports {edge.imported} inside a function"
            )
        if rank(edge.imported) > rank(edge.importer):
            problems.append(
                f"{edge.importer}:{edge.line} imports {edge.imported}, a layer above it"
            )
    return problems


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan's algorithm, iteratively)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
        graph.setdefault(edge.imported, set())
    return [sorted(group) for group in _strong_components(graph) if len(group) > 1]


def _strong_components(graph: Mapping[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                found.append(group)
    return found


def oversized(package: Path, limit: int) -> dict[str, int]:
    """Modules of ``package`` longer than ``limit`` lines, by path relative to it."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > limit:
            found[path.relative_to(package).as_posix()] = lines
    return found


# ---- the rules, on ckptd itself -------------------------------------------------------------------


def test_packages_import_only_downward_and_never_inside_functions() -> None:
    problems = layering_problems(ckptd_edges(PACKAGE))
    assert not problems, "\n".join(problems)


def test_the_command_table_is_the_only_dynamic_import() -> None:
    """Nothing hides an import from these rules but the CLI's tables of command modules."""
    found = dynamic_imports(PACKAGE)
    assert {place.split(":")[0] for place in found} == {"cli/main.py"}, found
    table = [e for e in ckptd_edges(PACKAGE) if e.importer == "ckptd.cli.main"]
    assert {e.imported for e in table} >= {
        "ckptd.cli.prune_cmds",
        "ckptd.cli.run_cmd",
        "ckptd.cli.convert_args",
        "ckptd.cli.convert_cmds",
        "ckptd.cli.convert_config",
    }


def test_no_import_cycles_between_modules() -> None:
    found = cycles(ckptd_edges(PACKAGE))
    assert not found, f"import cycles: {found}"


def test_no_module_is_over_the_line_limit() -> None:
    found = oversized(PACKAGE, MAX_MODULE_LINES)
    assert not found, f"modules over {MAX_MODULE_LINES} lines (split them by job): {found}"


def test_top_level_holds_only_shared_modules_and_the_packages_in_order() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert modules == set(SHARED) | set(ENTRY_POINTS)
    assert packages == set(PACKAGE_ORDER)


def test_every_module_logs_under_its_own_name() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "getLogger"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).startswith("ckptd")
            ):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, f"use logging.getLogger(__name__): {offenders}"


def test_only_listed_libraries_are_imported_inside_functions() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = _tree(path)
        nested = _function_imports(tree)
        for node in ast.walk(tree):
            if id(node) not in nested:
                continue
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            if roots - DEFERRED_LIBRARIES - {"ckptd"}:  # ckptd ones fail the layering test
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {sorted(roots)}")
    assert not offenders, offenders


@functools.cache
def imported_modules(path: Path) -> frozenset[str]:
    """Top-level names of every module ``path`` imports, at any depth (function-level too)."""
    names: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return frozenset(names)


@pytest.mark.parametrize("relative", PURE)
def test_pure_core_modules_do_no_io(relative: str) -> None:
    found = imported_modules(PACKAGE / relative) & IMPURE_MODULES
    assert not found, f"{relative} imports {sorted(found)}; keep I/O at the edges"


@pytest.mark.parametrize("library", sorted(EDGES))
def test_outside_libraries_stay_behind_their_edge_module(library: str) -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if library in imported_modules(path)
        and str(path.relative_to(PACKAGE)) not in EDGES[library]
    ]
    assert not offenders, f"{library} imported outside {sorted(EDGES[library])}: {offenders}"


# ---- the checker itself finds what it is meant to find ---------------------------------------------


def _package(tmp_path: Path, files: Mapping[str, str]) -> Path:
    package = tmp_path / "ckptd"
    for relative, text in files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for directory in [package, *(p for p in package.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    return package


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # The cycles and upward imports the package had before it was layered (issue 10).
        (
            {"manifest/model.py": "def f():\n    from ckptd.manifest.parse import g\n",
             "manifest/parse.py": "from ckptd.manifest.model import f\n"},
            ["ckptd.manifest.model", "ckptd.manifest.parse"],
        ),
        (
            {"retention/pins.py": "from ckptd.retention import trash\n",
             "retention/trash.py": "from ckptd.retention.pins import x\n"},
            ["ckptd.retention.pins", "ckptd.retention.trash"],
        ),
    ],
)  # fmt: skip
def test_checker_finds_cycles(
    tmp_path: Path, files: Mapping[str, str], expected: list[str]
) -> None:
    assert cycles(ckptd_edges(_package(tmp_path, files))) == [expected]


@pytest.mark.parametrize(
    ("importer", "text", "kinds"),
    [
        ("watch/settling.py", "from ckptd.pipeline.discovery import FoundFile\n", ("a layer above",)),
        ("config/schedule.py", "def f():\n    from ckptd.daemon.scheduling import c\n", ("inside a function", "a layer above")),
        ("ops/status.py", "def f():\n    from ckptd.pipeline.discovery import w\n", ("inside a function",)),
        ("units.py", "from ckptd.config.model import Config\n", ("a layer above",)),
    ],
)  # fmt: skip
def test_checker_finds_upward_and_deferred_imports(
    tmp_path: Path, importer: str, text: str, kinds: tuple[str, ...]
) -> None:
    files = {
        importer: text,
        "pipeline/discovery.py": "",
        "daemon/scheduling.py": "",
        "config/model.py": "",
    }
    problems = layering_problems(ckptd_edges(_package(tmp_path, files)))
    assert [kind for kind in kinds for line in problems if kind in line] == list(kinds), problems
    assert len(problems) == len(kinds), problems


def test_line_limit_checker_counts_every_module(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "long.py").write_text("x = 1\n" * 501)
    (package / "sub" / "limit.py").write_text("x = 1\n" * 500)
    assert oversized(package, 500) == {"sub/long.py": 501}
