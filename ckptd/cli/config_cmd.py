"""``ckptd config validate | show [--json] | schema | dropin``: check, print and describe the config.

Every action but ``schema`` takes the config as an optional argument, found like ``-c CONFIG``
elsewhere (:mod:`ckptd.cli.config_path`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ckptd.cli.config_path import HELP, resolve_config
from ckptd.cli.output import say
from ckptd.cli.systemd_dropin import render_dropin
from ckptd.config.load import load_config
from ckptd.config.spec import config_schema, config_to_mapping
from ckptd.runs.series_dirs import layout_warnings
from ckptd.textsafe import shown
from ckptd.units import plural


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``ckptd config`` and its actions."""
    parser = subparsers.add_parser(
        "config",
        help="validate, show or describe the config file",
        description="Validate a config file, print the effective config, or print its JSON Schema.",
    )
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)

    validate = actions.add_parser(
        "validate", help="check a config file; every problem is printed with its line (exit 2)"
    )
    _config_argument(validate)
    validate.set_defaults(handler=_validate)

    show = actions.add_parser(
        "show", help="print the effective config: defaults filled in, paths absolute"
    )
    _config_argument(show)
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    show.set_defaults(handler=_show)

    schema = actions.add_parser("schema", help="print the config's JSON Schema (draft 2020-12)")
    schema.set_defaults(handler=_schema)

    dropin = actions.add_parser(
        "dropin",
        help="print the systemd drop-in that opens the config's roots to ckptd.service",
        description=(
            "Print a drop-in for ckptd.service with RequiresMountsFor= and ReadWritePaths= for "
            "every root of the config, so the roots are written down once (install it as "
            "/etc/systemd/system/ckptd.service.d/roots.conf)."
        ),
    )
    _config_argument(dropin)
    dropin.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="GROUP",
        help="a shared group whose members write the runs: SupplementaryGroups= (repeatable)",
    )
    dropin.set_defaults(handler=_dropin)


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, nargs="?", metavar="CONFIG", help=HELP)


def _validate(args: argparse.Namespace) -> int:
    # A ConfigError propagates: cli.main prints one line per issue and exits 2.
    args.config = resolve_config(args.config)
    config = load_config(args.config)
    roots = plural(len(config.roots), "root")
    policies = plural(len(config.policies), "policy", "policies")
    say(f"{args.config}: ok ({roots}, {policies})")
    for warning in layout_warnings(config):
        print(shown(f"{args.config}: {warning}"), file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    # show what is there, even a root that does not exist
    config = load_config(resolve_config(args.config), check_roots=False)
    mapping = config_to_mapping(config)
    if args.json:
        print(json.dumps(mapping, indent=2))
    else:
        print(f"# effective config of {config.source}")
        sys.stdout.write(yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True))
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2))
    return 0


def _dropin(args: argparse.Namespace) -> int:
    path = resolve_config(args.config)
    config = load_config(path)
    roots = [PurePosixPath(root.path) for root in config.roots]
    sys.stdout.write(render_dropin(roots, source=str(path), groups=args.group))
    return 0
