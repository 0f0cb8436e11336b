"""``ckptd convert``'s arguments, and what it starts before the converter is imported.

``ckptd.cli.main`` imports this module to parse a ``convert`` command line, calls ``prepare``
(``start_source_reads``, and the choice of the module that does the work), and only then imports
the converter (``ckptd.cli.convert_cmds``: numpy,
the pickle reader, the zip writer; 0.06-0.1 s). Meanwhile a child process hashes the first input
file on the other core (``ckptd.fs.digest_child``): the conversion records that file's sha256, and
its 0.13 CPU s per 200 MiB would otherwise start only once the imports are done (README,
"Benchmarks"). Only the first file: by the second, the converter is imported and the conversion's
own helper thread hashes it beside the parse.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
from pathlib import Path
from typing import Any

from ckptd.config.defaults import DEFAULT_STATE_DIR
from ckptd.errors import CkptdError
from ckptd.fs.digest import THREADED_MIN_BYTES
from ckptd.fs.digest_child import ChildRead

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``convert``; its work is ``ckptd.cli.convert_cmds.handle`` (``ckptd.cli.main.HANDLER_MODULES``)."""
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
        help=f"what to do with a converted original: keep it (the default), move it under "
        f"{DEFAULT_STATE_DIR}/legacy/ beside it (what the daemon does: convert.original, default "
        "archive), or delete it; an original in a read-only directory is kept, and the output says so",
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
    convert.set_defaults(prepare=prepare, limits=None)


def limits_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        help="take the per-file budgets (limits:) from this ckptd config; defaults otherwise",
    )


def prepare(args: argparse.Namespace) -> str:
    """Start the first input's digest (``start_source_reads``); the module to handle the command:
    ``ckptd.cli.convert_config`` with ``-c`` (it loads the config's limits), else
    ``ckptd.cli.convert_cmds`` alone (no config loader to import)."""
    start_source_reads(args)
    return "ckptd.cli.convert_config" if args.config is not None else "ckptd.cli.convert_cmds"


def start_source_reads(args: argparse.Namespace) -> None:
    """Set ``args.source_reads``: {path: ChildRead} for the first input, if it is a regular file
    big enough for a helper to pay (``THREADED_MIN_BYTES``); empty when the child cannot be
    started or the file opened: the conversion then hashes it itself and reports any error."""
    args.source_reads = {}
    first: Path = args.paths[0]
    try:
        info = os.lstat(first)
        if not stat.S_ISREG(info.st_mode) or info.st_size < THREADED_MIN_BYTES:
            return
        args.source_reads[first] = ChildRead(first)
    except (OSError, CkptdError) as err:
        logger.debug("%s: hashed by the conversion itself (%s)", first, err)
