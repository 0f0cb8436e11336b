"""``ckptd scrub``: re-hash and re-verify every kept checkpoint against its manifest.

Exit codes: 0 ok, 1 something failed (any mismatch), 2 bad usage or config. JSON shapes (times are ``...Z``
UTC strings, sizes bytes, paths relative to the run unless named ``run``/``root``, which are
absolute)::

    scrub:    {"ok", "checked", "bytes", "seconds", "corrupt", "interrupted", "errors": [str],
               "runs": [{"run", "root", "checked", "bytes", "healed": [path], "superseded": [path],
                         "error", "manifest_written", "interrupted",
                         "corrupt": [{"path", "role", "problems": [str], "expected_sha256",
                                      "actual_sha256"}]}]}
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.progress import Progress

from ckptd.cli.config_path import add_config_option, resolve_config
from ckptd.cli.exits import ExitStatus
from ckptd.cli.ops_options import (
    json_option,
    new_console,
    now_utc,
    print_errors,
    size_arg,
)
from ckptd.cli.output import lit, print_json, progress_bar
from ckptd.config.load import load_config
from ckptd.ops.ratelimit import RateLimiter
from ckptd.ops.scrub import scrub_all
from ckptd.units import format_size_human, plural


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``scrub``."""
    parser = subparsers.add_parser(
        "scrub",
        help="re-hash and re-verify every kept checkpoint against its manifest",
        description=(
            "Re-hash every kept checkpoint and archived original against its manifest's sha256 "
            "and re-verify its structure; record the results in the manifest. Exit 1 on any "
            "mismatch. Nothing is deleted or rewritten."
        ),
    )
    add_config_option(parser)
    parser.add_argument("--run", metavar="GLOB", help="only runs whose path matches GLOB")
    parser.add_argument(
        "--max-rate",
        type=size_arg,
        metavar="SIZE",
        help="bytes per second to read (default: scrub.max_rate from the config; 0: unlimited)",
    )
    json_option(parser)
    parser.set_defaults(handler=run_scrub)


class _BarProgress:
    """ScrubProgress on a rich progress bar (bytes and bytes/s)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("scrub", total=None, current="")

    def start(self, total_bytes: int, files: int) -> None:
        self.progress.update(
            self.task, total=total_bytes, description=f"scrub {plural(files, 'file')}"
        )

    def advance(self, nbytes: int) -> None:
        self.progress.advance(self.task, nbytes)

    def current(self, label: str) -> None:
        self.progress.update(self.task, current=lit(label))


def run_scrub(args: argparse.Namespace) -> int:

    config = load_config(resolve_config(args.config))
    rate = config.scrub.max_rate if args.max_rate is None else (args.max_rate or None)
    with progress_bar(enabled=not args.json) as bar:
        report = scrub_all(
            config, args.run, now_utc(), RateLimiter(rate), progress=_BarProgress(bar)
        )
    if args.json:
        print_json(report.to_json_obj())
    else:
        console = new_console()
        for run in report.runs:
            for finding in run.corrupt:
                console.print(
                    f"[bold red]MISMATCH[/] {lit(str(run.run_dir / finding.path))} "
                    f"({finding.role}): {lit('; '.join(finding.problems))}"
                )
            if run.error:
                console.print(f"[bold red]error[/] {lit(str(run.run_dir))}: {lit(run.error)}")
        rate_text = format_size_human(int(report.bytes / report.seconds)) if report.seconds else "-"
        console.print(
            f"scrubbed {plural(sum(r.checked for r in report.runs), 'file')} in "
            f"{plural(len(report.runs), 'run')}, "
            f"{format_size_human(report.bytes)} in {report.seconds:.1f}s ({rate_text}/s): "
            f"{plural(report.corrupt_count, 'mismatch', 'mismatches')}"
        )
    print_errors(list(report.errors))
    return ExitStatus.OK if report.ok else ExitStatus.FAILED
