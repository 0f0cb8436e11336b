"""``ckptd convert``, ``ckptd inspect`` and ``ckptd verify``: the file-level commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptd.cli.exits import ExitStatus
from ckptd.cli.output import error_line, lit, print_json, progress_bar, stdout_console
from ckptd.config.load import load_config
from ckptd.config.model import DEFAULT_STATE_DIR
from ckptd.convert.conversion import convert_file
from ckptd.errors import CkptdError, FormatError, HeldCheckpoint, UnsafeCheckpoint, unexpected_text
from ckptd.formats import Format
from ckptd.formats.sniff import identify
from ckptd.fs import files as fsio
from ckptd.fs.walk import walk_entries
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.textsafe import shown

if TYPE_CHECKING:
    from ckptd.convert.conversion import ConversionOutcome

# The converter (numpy, the pickle reader, the zip writer) is imported by the handler that needs
# it, so every other command starts without paying for it.

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``convert`` (and, from their own functions, ``inspect`` and ``verify``)."""
    convert = subparsers.add_parser(
        "convert",
        help="re-save legacy stable-baselines pickles as SB2 zips, executing nothing from them",
        description=(
            "Convert legacy stable-baselines pickle checkpoints into the SB2 zip format without "
            "executing anything from the file. x.pkl is written as x.zip beside it; a directory "
            "converts every legacy checkpoint below it. Exit 0 only when every input was converted "
            "and verified."
        ),
    )
    convert.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    convert.add_argument(
        "-o", "--output", type=Path, help="output file (only with a single input file)"
    )
    convert.add_argument(
        "--original",
        choices=("keep", "archive", "delete"),
        default="keep",
        help=f"what to do with a converted original: keep it, move it under {DEFAULT_STATE_DIR}/legacy/, or delete it",
    )
    convert.add_argument(
        "--no-code",
        action="store_true",
        help="refuse checkpoints whose data carries pickled functions (learning-rate schedules, lambdas)",
    )
    convert.add_argument(
        "--param-names",
        type=Path,
        metavar="FILE",
        help="parameter names (one per line, or a JSON list) for SB2 <= 2.5.1 checkpoints whose "
        "unnamed parameter list ckptd cannot name itself (docs/param-names.md)",
    )
    convert.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    limits_option(convert)
    convert.set_defaults(handler=run_convert)


def _legacy_files_below(directory: Path, unreadable: list[tuple[Path, str]]) -> Iterator[Path]:
    """Legacy pickles below ``directory``, by content; never follows links, skips ckptd state.

    A file or directory that cannot be read is added to ``unreadable`` (with the one-line reason)
    rather than skipped: it may well be a checkpoint, and the user must hear it was not converted.
    """

    def cannot_list(directory: str, err: OSError) -> None:
        unreadable.append((Path(directory), f"cannot list directory: {err.strerror or err}"))

    def is_state_dir(name: str) -> bool:
        return name == DEFAULT_STATE_DIR

    for entry in walk_entries(
        str(directory), is_state_dir, cannot_list, report_top=True, sort=True
    ):
        if fsio.is_temp_name(entry.name):
            continue
        path = Path(entry.path)
        try:
            # Links are never followed, and opening a FIFO to read it would block forever.
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            if identify(path).format is Format.SB2_PICKLE:
                yield path
        except FileNotFoundError:
            continue  # gone since the listing
        except OSError as err:
            unreadable.append((path, f"cannot read: {err.strerror or err}"))
        except CkptdError:
            continue  # not a regular file: never a checkpoint to convert


def _expand(paths: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files to convert, and the files or directories below a directory that could not be read."""
    files: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    for path in paths:
        files.extend(_legacy_files_below(path, unreadable) if path.is_dir() else [path])
    return files, unreadable


def _status_of(err: BaseException) -> str:
    if isinstance(err, UnsafeCheckpoint):
        return "refused"
    if isinstance(err, HeldCheckpoint):
        return "held"
    if isinstance(err, FormatError) or not isinstance(err, CkptdError | OSError):
        return "broken"
    return "error"


def _outcome_json(outcome: ConversionOutcome) -> dict[str, Any]:
    return {
        "source": str(outcome.source),
        "status": outcome.status,
        "output": str(outcome.output),
        "sha256": outcome.output_sha256,
        "size": outcome.output_size,
        "source_sha256": outcome.source_sha256,
        "algorithm": outcome.algorithm,
        "sb2_version": outcome.sb2_version,
        "params": {"count": outcome.params_count, "bytes": outcome.params_bytes},
        "carries_code": list(outcome.carries_code),
        "original": outcome.original,
        "archived_to": str(outcome.archived_to) if outcome.archived_to else None,
        "notes": list(outcome.notes),
    }


def run_convert(args: argparse.Namespace) -> int:

    files, unreadable = _expand(args.paths)
    if args.output is not None and (len(args.paths) != 1 or args.paths[0].is_dir()):
        error_line("-o/--output names the output of a single input file")
        return ExitStatus.USAGE
    param_names = _read_param_names(args.param_names) if args.param_names else None
    limits = limits_of(args)
    results: list[dict[str, Any]] = [
        {"source": str(path), "status": "error", "error": f"{path}: {reason}"}
        for path, reason in unreadable
    ]
    failed = len(unreadable)
    for path, reason in unreadable:
        error_line(f"{path}: {reason}")
    sizes = {path: _size_or_zero(path) for path in files}
    with progress_bar(enabled=not args.json and len(files) > 1) as progress:
        # While the bar is live, lines go through its console so they print above the bar.
        say = progress.console.print if not progress.disable else stdout_console().print
        task = progress.add_task("converting", total=sum(sizes.values()), current="")
        for path in files:
            progress.update(task, current=lit(path.name))  # the column reads markup
            try:
                outcome = convert_file(
                    path,
                    output=args.output,
                    original=args.original,
                    state_dir=DEFAULT_STATE_DIR,
                    allow_code=not args.no_code,
                    param_names=param_names,
                    limits=limits,
                )
            except Exception as err:  # one file's problem is one line, never a traceback
                failed += 1
                message = _error_message(path, err)
                if progress.disable:
                    error_line(message)
                else:
                    progress.console.print(
                        f"ckptd: {shown(message)}", markup=False, highlight=False
                    )
                result = {"source": str(path), "status": _status_of(err), "error": message}
                if isinstance(err, HeldCheckpoint):
                    result["note"] = err.note
                results.append(result)
            else:
                results.append(_outcome_json(outcome))
                if not args.json:
                    say(shown(_describe_outcome(outcome)), markup=False, highlight=False)
            progress.advance(task, sizes[path])
    if args.json:
        print_json({"results": results})
    if not files and not unreadable:
        error_line("no legacy checkpoints found in " + ", ".join(str(p) for p in args.paths))
        return ExitStatus.FAILED
    return ExitStatus.FAILED if failed else ExitStatus.OK


def limits_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        help="take the per-file budgets (limits:) from this ckptd config; defaults otherwise",
    )


def limits_of(args: argparse.Namespace) -> Limits:
    """The config's ``limits`` with -c, else the defaults (a bad config is a usage error, exit 2)."""
    if args.config is None:
        return DEFAULT_LIMITS

    return load_config(args.config).limits


def _error_message(path: Path, err: Exception) -> str:
    if isinstance(err, CkptdError):
        return str(err)
    if isinstance(err, OSError):
        return f"{path}: {err.strerror or err}"
    logger.debug("unexpected error converting %s", path, exc_info=True)
    return f"{path}: broken: {unexpected_text(err)}"


def _describe_outcome(outcome: ConversionOutcome) -> str:
    if outcome.status == "already sb2-zip":
        return f"{outcome.source}: already sb2-zip, verified"
    code = f", carries code: {', '.join(outcome.carries_code)}" if outcome.carries_code else ""
    original = {
        "kept": "",
        "archived": f", original archived to {outcome.archived_to}",
        "deleted": ", original deleted",
    }[outcome.original]
    notes = "".join(f"\n  note: {note}" for note in outcome.notes)
    return (
        f"{outcome.source} -> {outcome.output}: {outcome.status} "
        f"({outcome.algorithm or 'unknown algorithm'}, {outcome.params_count} params, "
        f"{outcome.params_bytes} bytes{code}{original}){notes}"
    )


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_param_names(path: Path) -> list[str]:
    """One TF variable name per line (what ``held`` notes ask for), or a JSON list of them."""
    try:
        text = path.read_text()
    except (OSError, ValueError) as err:
        raise FormatError(f"cannot read parameter names: {err}", path=str(path)) from err
    if not text.lstrip().startswith("["):
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise FormatError("no parameter names in the file", path=str(path))
        return names
    try:
        loaded = json.loads(text)
    except ValueError as err:
        raise FormatError(f"cannot read parameter names: {err}", path=str(path)) from err
    if not isinstance(loaded, list) or not all(isinstance(name, str) for name in loaded):
        raise FormatError("parameter names must be a JSON list of strings", path=str(path))
    return loaded
