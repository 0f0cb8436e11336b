"""``ckptd inspect`` and ``ckptd verify``: describe or check checkpoint files; nothing is executed.

Exit codes: ``inspect`` exits 0 when the file is sound (verdict ``safe``, or ``unchecked`` for an
intact SB3 zip) and 1 otherwise (refused, broken, not a checkpoint); the report is printed either
way. ``verify`` exits 1 when any file is damaged, refused, unreadable or not a checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from ckptd.cli.convert_cmds import limits_of, limits_option
from ckptd.cli.exits import ExitStatus
from ckptd.cli.output import error_line, lit, print_json, stdout_console
from ckptd.ops.inspection import inspect_path
from ckptd.ops.verification import expand_paths, verify_file
from ckptd.textsafe import shown

if TYPE_CHECKING:
    from ckptd.ops.inspect_report import InspectReport
    from ckptd.ops.verification import FileVerdict

MAX_ROWS = 40  # longer param / member lists are cut, with a count of what was left out


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``inspect`` and ``verify``."""
    inspect = subparsers.add_parser(
        "inspect",
        help="describe a checkpoint: format, safety verdict, algorithm, data keys, params, members",
        description=(
            "Describe one checkpoint by its content, executing and importing nothing from it: "
            "format, the safety verdict (with the global, opcode and offset of anything refused), "
            "algorithm and stable-baselines version range, data keys and their kinds, parameters, "
            "zip members. Exit 0 when the file is sound, 1 when it is refused, broken or not a checkpoint."
        ),
    )
    inspect.add_argument("path", type=Path, metavar="PATH")
    inspect.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    limits_option(inspect)
    inspect.set_defaults(handler=run_inspect)

    verify = subparsers.add_parser(
        "verify",
        help="check checkpoint integrity (zip CRCs, JSON, npy headers, legacy pickle structure)",
        description=(
            "Verify checkpoints by content: zips by CRC, data JSON, npy headers and parameter_list; "
            "legacy pickles by a full static parse (structure, allowlist, array sizes). A directory "
            "verifies every checkpoint-looking file below it. Exit 1 if any file is damaged."
        ),
    )
    verify.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    verify.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    limits_option(verify)
    verify.set_defaults(handler=run_verify)


# --- inspect ---------------------------------------------------------------------------------


def run_inspect(args: argparse.Namespace) -> int:

    report = inspect_path(args.path, limits=limits_of(args))
    if args.json:
        print_json(report.as_json())
    else:
        render_report(report, stdout_console())
    if report.error:
        error_line(report.error)
    return ExitStatus.OK if report.sound else ExitStatus.FAILED


def render_report(report: InspectReport, console: Console) -> None:
    """The human-readable report: verdict, algorithm/version, data keys, params, members."""
    # Paths, names, reasons and notes quote the file: lit() shows them literally.
    console.print(f"[bold]{lit(report.path)}[/bold]: {report.format} ({lit(report.format_note)})")
    console.print(f"  size: {report.size} bytes" + _protocol(report))
    _render_verdict(report, console)
    if report.algorithm or report.sb2_version:
        version = report.sb2_version
        console.print(f"\n[bold]Algorithm[/bold]: {report.algorithm or 'unknown'}")
        if version is not None:
            console.print(f"[bold]stable-baselines version[/bold]: {version}")
            for reason in version.evidence:
                console.print(f"  - {lit(reason)}")
    if report.sb3_version or report.system_info:
        console.print(f"\n[bold]stable-baselines3[/bold]: {report.sb3_version or 'before 0.9'}")
        for key, value in report.system_info:
            console.print(f"  {lit(key)}: {lit(value)}")
    if report.data:
        console.print(_data_table(report))
    if report.params:
        console.print(_params_table(report))
    if report.members:
        console.print(_members_table(report))
    if report.globals:
        allowed = {True: "", False: " [red](not allowed)[/red]", None: ""}
        names = [f"{lit(ref.name)}{allowed[ref.allowed]}" for ref in report.globals]
        console.print(f"\n[bold]Globals referenced[/bold] ({len(names)}): " + ", ".join(names))


def _protocol(report: InspectReport) -> str:
    return f", pickle protocol {report.protocol}" if report.protocol is not None else ""


def _render_verdict(report: InspectReport, console: Console) -> None:
    colour = {"safe": "green", "unchecked": "yellow"}.get(report.verdict, "red")
    console.print(f"\n[bold]Verdict[/bold]: [{colour}]{report.verdict}[/{colour}]")
    for refusal in report.refusals:
        console.print(f"  - {shown(refusal.line())}", markup=False)
    for problem in report.problems:
        console.print(f"  - {shown(problem)}", markup=False)
    if report.error and not report.problems:
        console.print(f"  - {shown(report.error)}", markup=False)
    if report.carries_code:
        console.print(f"  carries code: {lit(', '.join(report.carries_code))}")
    judged = report.pickle_verdict
    if judged is not None and judged.safe:
        console.print(f"  pickles: {lit(judged.reason)}")


def _data_table(report: InspectReport) -> Table:
    table = Table(title=f"data ({len(report.data)} keys)", title_justify="left")
    for column in ("key", "kind", "type", "code", "safety"):
        table.add_column(column)
    for entry in report.data:
        table.add_row(
            lit(entry.key),
            entry.kind,
            lit(entry.type_name or ""),
            "yes" if entry.carries_code else "",
            lit(entry.safety),
        )
    return table


def _params_table(report: InspectReport) -> Table:
    params = report.params
    title = f"parameters ({len(params)} arrays, {report.params_bytes} bytes"
    title += ", saved as a list)" if report.params_were_list else ")"
    table = Table(title=title, title_justify="left")
    for column in ("name", "dtype", "shape", "bytes"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for param in params[:MAX_ROWS]:
        table.add_row(lit(param.name), lit(param.dtype), str(param.shape), str(param.nbytes))
    if len(params) > MAX_ROWS:
        table.add_row(f"... and {len(params) - MAX_ROWS} more", "", "", "")
    return table


def _members_table(report: InspectReport) -> Table:
    members = report.members
    table = Table(title=f"members ({len(members)})", title_justify="left")
    for column in ("name", "size", "compressed"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for member in members[:MAX_ROWS]:
        table.add_row(lit(member.name), str(member.size), str(member.compressed_size))
    if len(members) > MAX_ROWS:
        table.add_row(f"... and {len(members) - MAX_ROWS} more", "", "")
    return table


# --- verify ----------------------------------------------------------------------------------


def run_verify(args: argparse.Namespace) -> int:

    limits = limits_of(args)
    files = expand_paths(args.paths)
    verdicts = [verify_file(path, limits=limits) for path in files]
    if args.json:
        print_json(
            {
                "ok": bool(files) and all(v.ok for v in verdicts),
                "results": [_json(v) for v in verdicts],
            }
        )
    console = stdout_console()
    for verdict in verdicts:
        if verdict.ok:
            if not args.json:
                console.print(shown(_ok_line(verdict)), markup=False)
        else:
            for problem in verdict.problems or (verdict.status,):
                error_line(f"{verdict.path}: {problem}")
    if not files:
        error_line("no checkpoints found in " + ", ".join(str(path) for path in args.paths))
        return ExitStatus.FAILED
    return ExitStatus.OK if all(v.ok for v in verdicts) else ExitStatus.FAILED


def _ok_line(verdict: FileVerdict) -> str:
    code = f", carries code: {', '.join(verdict.carries_code)}" if verdict.carries_code else ""
    return (
        f"{verdict.path}: ok ({verdict.format}, {verdict.params_count} params, "
        f"{verdict.params_bytes} bytes{code})"
    )


def _json(verdict: FileVerdict) -> dict[str, Any]:
    return {
        "path": str(verdict.path),
        "format": str(verdict.format),
        "status": verdict.status,
        "ok": verdict.ok,
        "problems": list(verdict.problems),
        "params": {"count": verdict.params_count, "bytes": verdict.params_bytes},
        "carries_code": list(verdict.carries_code),
    }
