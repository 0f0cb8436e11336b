"""``ckptd inspect`` and ``ckptd verify``: describe or check checkpoint files; nothing is executed.

Exit codes: ``inspect`` exits 0 when the file is sound (verdict ``safe``, or ``unchecked`` for an
intact SB3 zip) and 1 otherwise (refused, broken, not a checkpoint); the report is printed either
way. ``verify`` exits 1 when any file is damaged, refused, unreadable or not a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from ckptd.cli.convert_args import limits_option
from ckptd.cli.convert_config import limits_of
from ckptd.cli.exits import ExitStatus
from ckptd.cli.output import Column, error_line, lit, print_json, print_table, stdout_console
from ckptd.errors import CkptdError
from ckptd.ops.inspect_dir import inspect_directory
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
    if _is_real_dir(args.path):
        return _inspect_directory(args)
    report = inspect_path(args.path, limits=limits_of(args))
    if args.json:
        print_json(report.as_json())
    else:
        render_report(report, stdout_console())
    if report.error:
        error_line(report.error)
    return ExitStatus.OK if report.sound else ExitStatus.FAILED


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _inspect_directory(args: argparse.Namespace) -> int:
    """A directory checkpoint (docs/formats.md, "Directory checkpoints")."""
    path = Path(os.path.abspath(args.path))
    try:
        report = inspect_directory(path)
    except (CkptdError, OSError) as err:
        error_line(err)
        return ExitStatus.FAILED
    if args.json:
        print_json(report.as_json())
        return ExitStatus.OK if report.sound else ExitStatus.FAILED
    console = stdout_console()
    state = "complete" if report.complete else "not complete"
    console.print(
        f"[bold]{lit(str(report.path))}[/bold]: {report.format} directory ({state}: "
        f"{lit(report.completion)})"
    )
    console.print(f"  size: {report.size} bytes in {len(report.files)} files")
    rows = [
        (
            item.path,
            str(item.size),
            "" if item.verdict is None else ("safe" if item.verdict.safe else "refused"),
            "" if item.verdict is None or item.verdict.safe else item.verdict.reason,
        )
        for item in report.files
    ]
    columns = [Column("file"), Column("size", justify="right"), Column("verdict")]
    print_table("files", [*columns, Column("reason", wrap=True)], rows, console=console)
    if report.irregular:
        console.print(f"  not files (never followed): {lit(', '.join(report.irregular))}")
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
        _data_table(report, console)
    if report.params:
        _params_table(report, console)
    if report.members:
        _members_table(report, console)
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


def _data_table(report: InspectReport, console: Console) -> None:
    columns = [Column("key"), Column("kind"), Column("type"), Column("code")]
    rows = [
        (
            entry.key,
            entry.kind,
            entry.type_name or "",
            "yes" if entry.carries_code else "",
            entry.safety,
        )
        for entry in report.data
    ]
    columns.append(Column("safety", wrap=True))
    print_table(f"data ({len(report.data)} keys)", columns, rows, console=console)


def _params_table(report: InspectReport, console: Console) -> None:
    params = report.params
    title = f"parameters ({len(params)} arrays, {report.params_bytes} bytes"
    title += ", saved as a list)" if report.params_were_list else ")"
    columns = [Column("name"), Column("dtype"), Column("shape"), Column("bytes", justify="right")]
    rows = [
        (param.name, param.dtype, str(param.shape), str(param.nbytes))
        for param in params[:MAX_ROWS]
    ]
    if len(params) > MAX_ROWS:
        rows.append((f"... and {len(params) - MAX_ROWS} more", "", "", ""))
    print_table(title, columns, rows, console=console)


def _members_table(report: InspectReport, console: Console) -> None:
    members = report.members
    columns = [Column("name"), Column("size", justify="right")]
    columns.append(Column("compressed", justify="right"))
    rows = [
        (member.name, str(member.size), str(member.compressed_size))
        for member in members[:MAX_ROWS]
    ]
    if len(members) > MAX_ROWS:
        rows.append((f"... and {len(members) - MAX_ROWS} more", "", ""))
    print_table(f"members ({len(members)})", columns, rows, console=console)


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
