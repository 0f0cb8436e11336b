"""The grammar of the names a pickle may import: dotted ASCII Python identifiers, nothing else.

A text ``GLOBAL`` is two newline-terminated lines, so a module or name holding a newline (or any
other byte that is not part of an identifier) can carry opcodes into a pickle that writes it back
as text. Matching names by prefix (``module.startswith("gym.spaces.")``) lets such a string through;
every check in ckptd therefore first requires the whole string to match this grammar (anchored at
both ends, ASCII only, as every allowlisted name is) and then matches packages at identifier
boundaries only (``gym.spaces`` covers ``gym.spaces.box``, never ``gym.spacesX``). See
``docs/security.md`` (Names in pickles).
"""

from __future__ import annotations

import re

# Longer than any name stable-baselines, numpy, gym or cloudpickle uses; a name past this is not
# something a pickler of a real checkpoint wrote.
MAX_NAME_LENGTH = 200

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", re.ASCII)


def is_identifier(text: object) -> bool:
    """One ASCII Python identifier (``Box``), the whole string (``fullmatch``: no trailing newline)."""
    return (
        isinstance(text, str)
        and len(text) <= MAX_NAME_LENGTH
        and _IDENTIFIER.fullmatch(text) is not None
        and text.isidentifier()
    )


def is_dotted_name(text: object) -> bool:
    """A module path (``gym.spaces.box``): ASCII identifiers joined by single dots, nothing else."""
    return (
        isinstance(text, str)
        and len(text) <= MAX_NAME_LENGTH
        and _DOTTED.fullmatch(text) is not None
        and all(part.isidentifier() for part in text.split("."))
    )


def in_package(module: str, package: str) -> bool:
    """``module`` is ``package`` or one of its submodules, compared at identifier boundaries."""
    return is_dotted_name(module) and (module == package or module.startswith(package + "."))


def name_problem(module: object, name: object) -> str | None:
    """Why ``module``/``name`` is not an importable global's name, or None when both are well formed."""
    if not is_dotted_name(module):
        return "its module is not a dotted Python identifier"
    if not is_identifier(name):
        return "its name is not a Python identifier"
    return None
