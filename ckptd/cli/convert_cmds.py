"""``ckptd convert``'s work; its arguments are ``ckptd.cli.convert_args``'s, and this module is
imported only once they are parsed (``ckptd.cli.main.HANDLER_MODULES``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptd.cli.exits import ExitStatus
from ckptd.cli.lines import error_line, print_json
from ckptd.cli.lines import say as say_line
from ckptd.cli.progress import lit, progress_bar
from ckptd.config.model import DEFAULT_STATE_DIR
from ckptd.convert.conversion import convert_file
from ckptd.errors import CkptdError, FormatError, HeldCheckpoint, UnsafeCheckpoint, unexpected_text
from ckptd.formats import Format
from ckptd.formats.sniff import identify
from ckptd.fs import files as fsio
from ckptd.fs.digest_child import ChildRead
from ckptd.fs.walk import walk_entries
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.textsafe import shown
from ckptd.units import format_size_human

if TYPE_CHECKING:
    from rich.progress import Progress

    from ckptd.convert.conversion import ConversionOutcome

# The converter (numpy, the pickle reader, the zip writer) is imported only with this module
# (ckptd.cli.main imports only the typed command's), so every other command starts without it;
# rich only when a progress bar is shown (ckptd.cli.progress).

logger = logging.getLogger(__name__)


def _files_below(
    directory: Path, unreadable: list[tuple[Path, str]]
) -> Iterator[tuple[Path, Format]]:
    """Regular files below ``directory`` and their format by content; never follows links, skips
    ckptd state.

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
            yield path, identify(path).format
        except FileNotFoundError:
            continue  # gone since the listing
        except OSError as err:
            unreadable.append((path, f"cannot read: {err.strerror or err}"))
        except CkptdError:
            continue  # not a regular file: never a checkpoint to convert


@dataclass
class _Tally:
    """The summary line of one ``ckptd convert`` (README: converted / already converted /
    refused / broken / skipped, bytes, seconds)."""

    converted: int = 0
    already: int = 0
    refused: int = 0
    broken: int = 0
    held: int = 0
    failed: int = 0  # unreadable, or an error that is none of the above
    skipped: int = 0  # files below a directory that are not legacy checkpoints or SB2 zips
    bytes: int = 0  # of the originals converted
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        counts = [f"{self.converted} converted", f"{self.already} already converted"]
        for count, what in (
            (self.refused, "refused"),
            (self.broken, "broken"),
            (self.held, "held"),
            (self.failed, "failed"),
        ):
            if count:
                counts.append(f"{count} {what}")
        counts.append(f"{self.skipped} skipped")
        seconds = time.monotonic() - self.started
        return f"{', '.join(counts)}; {format_size_human(self.bytes)} in {seconds:.1f}s"

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "converted": self.converted,
            "already_converted": self.already,
            "refused": self.refused,
            "broken": self.broken,
            "held": self.held,
            "failed": self.failed,
            "skipped": self.skipped,
            "bytes": self.bytes,
            "seconds": round(time.monotonic() - self.started, 3),
        }


def _expand(paths: Sequence[Path], tally: _Tally) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files to convert (a directory: its legacy pickles; its SB2 zips are counted as already
    converted, anything else as skipped), and the files or directories that could not be read."""
    files: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        for found, fmt in _files_below(path, unreadable):
            if fmt is Format.SB2_PICKLE:
                files.append(found)
            elif fmt is Format.SB2_ZIP:
                tally.already += 1
            else:
                tally.skipped += 1
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


def handle(args: argparse.Namespace) -> int:
    """Run ``ckptd convert`` (with ``args.limits``, or the defaults); the digests
    ``ckptd.cli.convert_args.start_source_reads`` started are used by their files' conversions,
    and any left over stopped."""
    source_reads: dict[Path, ChildRead] = getattr(args, "source_reads", {})
    try:
        return _convert_all(args, source_reads)
    finally:
        for read in source_reads.values():
            read.close()


def _convert_all(args: argparse.Namespace, source_reads: dict[Path, ChildRead]) -> int:
    tally = _Tally()
    files, unreadable = _expand(args.paths, tally)
    if args.output is not None and (len(args.paths) != 1 or args.paths[0].is_dir()):
        error_line("-o/--output names the output of a single input file")
        return ExitStatus.USAGE
    param_names = _read_param_names(args.param_names) if args.param_names else None
    limits: Limits = args.limits or DEFAULT_LIMITS  # -c: ckptd.cli.convert_config
    results: list[dict[str, Any]] = [
        {"source": str(path), "status": "error", "error": f"{path}: {reason}"}
        for path, reason in unreadable
    ]
    failed = tally.failed = len(unreadable)
    for path, reason in unreadable:
        error_line(f"{path}: {reason}")
    sizes = {path: _size_or_zero(path) for path in files}
    # One file shows no bar: rich is not even imported (ckptd.cli.progress).
    bar = progress_bar(enabled=True) if not args.json and len(files) > 1 else None
    with _Lines(bar, sum(sizes.values())) as lines:
        for path in files:
            lines.current(path.name)
            try:
                outcome = convert_file(
                    path,
                    output=args.output,
                    original=args.original,
                    state_dir=DEFAULT_STATE_DIR,
                    allow_code=not args.no_code,
                    param_names=param_names,
                    limits=limits,
                    keep_if_unwritable=True,
                    source_read=source_reads.get(path),
                )
            except Exception as err:  # one file's problem is one line, never a traceback
                failed += 1
                _count_failure(tally, _status_of(err))
                message = _error_message(path, err)
                lines.error(message)
                result = {"source": str(path), "status": _status_of(err), "error": message}
                if isinstance(err, HeldCheckpoint):
                    result["note"] = err.note
                results.append(result)
            else:
                results.append(_outcome_json(outcome))
                if outcome.status == "converted":
                    tally.converted += 1
                    tally.bytes += sizes[path]
                else:
                    tally.already += 1
                if not args.json:
                    lines.say(_describe_outcome(outcome))
            lines.advance(sizes[path])
    if args.json:
        print_json({"results": results, "summary": tally.to_json_obj()})
    else:
        say_line(tally.line())
    if not files and not unreadable and not tally.already:
        # Not one checkpoint: most likely the wrong directory.
        error_line("no legacy checkpoints found in " + ", ".join(str(p) for p in args.paths))
        return ExitStatus.FAILED
    return ExitStatus.FAILED if failed else ExitStatus.OK


class _Lines:
    """Where ``run_convert``'s lines go: plain lines, or above a live progress bar (several files
    on a terminal: while the bar is live, lines go through its console to print above it)."""

    def __init__(self, bar: Progress | None, total: int) -> None:
        self._bar = bar if bar is not None and not bar.disable else None
        self._context = bar
        self._task = (
            self._bar.add_task("converting", total=total, current="") if self._bar else None
        )

    def current(self, name: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, current=lit(name))  # the column reads markup

    def say(self, line: str) -> None:
        if self._bar is None:
            say_line(line)
        else:
            self._bar.console.print(shown(line), markup=False, highlight=False)

    def error(self, message: str) -> None:
        if self._bar is None:
            error_line(message)
        else:
            self._bar.console.print(f"ckptd: {shown(message)}", markup=False, highlight=False)

    def advance(self, nbytes: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, nbytes)

    def __enter__(self) -> _Lines:
        if self._context is not None:
            self._context.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)


def _count_failure(tally: _Tally, status: str) -> None:
    if status == "refused":
        tally.refused += 1
    elif status == "broken":
        tally.broken += 1
    elif status == "held":
        tally.held += 1
    else:
        tally.failed += 1


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
