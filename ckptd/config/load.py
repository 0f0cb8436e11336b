"""Reading a config: YAML text (or a Python mapping) -> a validated, frozen :class:`ckptd.config.model.Config`.

The YAML is composed into a node tree with PyYAML's safe loader (no object construction, no tags
beyond the YAML core schema) so line numbers survive; the key table in ``ckptd.config.spec`` walks
it. Every issue is collected before one :class:`ckptd.errors.ConfigError` is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path, PurePath
from typing import Any

import yaml
from yaml.representer import SafeRepresenter

from ckptd import units
from ckptd.config.model import Config
from ckptd.config.spec import CONFIG
from ckptd.config.walk import INVALID, Walk
from ckptd.errors import ConfigError, ConfigIssue

logger = logging.getLogger(__name__)


def _file_error(label: str | None, message: str) -> ConfigError:
    return ConfigError(label, [ConfigIssue(where="", message=message)])


def _compose(text: str, label: str | None) -> yaml.Node:
    """The document's node tree; a ConfigError for syntax errors, several documents or no content."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = err.problem or err.context or "unreadable"
        raise _file_error(label, f"YAML syntax error{where}: {problem}") from None
    except yaml.YAMLError as err:
        raise _file_error(label, f"YAML syntax error: {err}") from None
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
        raise _file_error(label, "the config is empty (expected a mapping with version and roots)")
    if not isinstance(node, yaml.MappingNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
        raise _file_error(label, f"expected a mapping at the top level, got {kind}")
    return node


def _plain(value: Any) -> Any:
    """Python config values as YAML would give them (paths as text, durations as 10s)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, timedelta):
        return units.format_duration(value)
    return value


def _represent(mapping: Mapping[str, Any], label: str | None) -> yaml.Node:
    """A node tree for a Python mapping, so it is validated by exactly the same walk as YAML text."""
    representer = SafeRepresenter(sort_keys=False)
    try:
        node = representer.represent_data(_plain(mapping))
    except yaml.YAMLError as err:
        raise _file_error(label, f"cannot use this value in a config: {err}") from None
    if not isinstance(node, yaml.MappingNode):
        raise _file_error(label, "expected a mapping at the top level")
    return node


def parse_config(
    data: str | Mapping[str, Any], *, source: Path | None = None, check_roots: bool = False
) -> Config:
    """Validate YAML text or an already-loaded mapping; raise ConfigError listing every issue.

    ``source`` is the file the text came from: it names the file in messages, and relative root
    paths resolve against its directory (against the current directory when it is None). With
    ``check_roots`` (what :func:`load_config` does), a root that is not a directory is an issue
    unless it is marked ``optional``; the validation itself does no I/O.
    """
    label = str(source) if source is not None else None
    absolute_source = source.absolute() if source is not None else None
    base_dir = absolute_source.parent if absolute_source is not None else Path.cwd()
    root = _compose(data, label) if isinstance(data, str) else _represent(data, label)
    walk = Walk(base_dir)
    walk.visit("", root)
    config = CONFIG.parse_with(root, walk, "", {"source": absolute_source})
    if check_roots and isinstance(config, Config):
        _check_roots_exist(config, walk)
    if walk.issues:
        # File order reads best; the walk visits policies first (roots refer to them).
        raise ConfigError(label, sorted(walk.issues, key=lambda issue: issue.line))
    if config is INVALID or not isinstance(config, Config):  # pragma: no cover - issues say why
        raise _file_error(label, "invalid config")
    logger.debug(
        "config %s: %d roots, %d policies",
        label or "<mapping>",
        len(config.roots),
        len(config.policies),
    )
    return config


def _check_roots_exist(config: Config, walk: Walk) -> None:
    for index, root in enumerate(config.roots):
        if root.optional:
            continue
        try:
            is_dir = root.path.is_dir()
        except OSError as err:
            walk.report(f"roots[{index}].path", f"cannot check {root.path}: {err.strerror or err}")
            continue
        if not is_dir:
            what = "is not a directory" if root.path.exists() else "does not exist"
            walk.report(
                f"roots[{index}].path",
                f"{root.path} {what} (fix the path, or set optional: true on this root for a mount"
                " that comes later)",
            )


def load_config(path: Path, *, check_roots: bool = True) -> Config:
    """Read and validate a config file; any problem (unreadable, not UTF-8, not YAML) is a ConfigError.

    A missing root that is not ``optional`` is one too, unless ``check_roots`` is False (commands
    that only read other sections, or print the config).
    """
    label = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _file_error(label, "no such file") from None
    except IsADirectoryError:
        raise _file_error(label, "is a directory, not a config file") from None
    except OSError as err:
        raise _file_error(label, f"cannot read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _file_error(label, f"not UTF-8 text (bad byte at offset {err.start})") from None
    return parse_config(text, source=path, check_roots=check_roots)
