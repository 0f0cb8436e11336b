"""Which config file a command reads: ``-c CONFIG``, else ``$CKPTD_CONFIG``, else the system config.

An operator on the daemon's host types ``ckptd status`` and gets the config the service runs with
(README, "Running under systemd"); a script or a second instance points ``$CKPTD_CONFIG`` elsewhere.
When none of the three gives a file, the error names every place that was looked at.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from ckptd.errors import ConfigError, ConfigIssue

ENV_VAR = "CKPTD_CONFIG"
SYSTEM_CONFIG = Path("/etc/ckptd/ckptd.yaml")
HELP = f"the ckptd YAML config (default: ${ENV_VAR}, else {SYSTEM_CONFIG})"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``-c/--config``, optional: :func:`resolve_config` fills it in."""
    parser.add_argument("-c", "--config", type=Path, default=None, metavar="CONFIG", help=HELP)


def resolve_config(
    given: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    system_config: Path | None = None,
) -> Path:
    """The config path to load; a missing *default* is a config error naming where it looked.

    A path given with ``-c`` is returned as is (loading it reports a missing file by its name);
    one from ``$CKPTD_CONFIG`` or the system default is checked here, so the error can say where
    the path came from.
    """
    if given is not None:
        return given
    env = os.environ if environ is None else environ
    from_env = env.get(ENV_VAR, "")
    if from_env:
        if not Path(from_env).exists():
            # Said here because the user may not know the variable is set.
            raise ConfigError(from_env, [ConfigIssue("", f"no such file (named by ${ENV_VAR})")])
        return Path(from_env)
    system_config = SYSTEM_CONFIG if system_config is None else system_config
    if system_config.exists():
        return system_config
    looked = f"no config given, ${ENV_VAR} is not set, and {system_config} does not exist"
    raise ConfigError(None, [ConfigIssue("", f"{looked}: name one with -c CONFIG")])


def resolve_optional_config(given: Path | None) -> Path | None:
    """Like :func:`resolve_config` for commands that can also work from a run directory alone
    (pin, unpin, trash, quarantine): None when no config is given, named or installed."""
    if given is None and not os.environ.get(ENV_VAR, "") and not SYSTEM_CONFIG.exists():
        return None
    return resolve_config(given)
