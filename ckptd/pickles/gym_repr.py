"""``str()`` of a gym space, computed statically from its pickled attributes.

SB2's ``data_to_json`` writes ``str(value)`` of every attribute of a pickled object as an extra
(docs/conversion.md); a gym space inside a container (HER's observation space is a ``Dict`` of
spaces) shows there through its ``__repr__``. These are gym 0.14's, the version stable-baselines 2
ran on (``gym/spaces/*.py``), e.g. ``Box(4,)``, ``Discrete(2)``, ``MultiBinary(4)``,
``Dict(observation:Box(3,), ...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ckptd.pickles.nodes import Node

SPACES = frozenset({"Box", "Discrete", "MultiBinary", "MultiDiscrete", "Tuple", "Dict"})


def space_repr(
    name: str,
    attributes: Mapping[str, Node],
    show: Callable[[Node], str],
    items: Callable[[Node], list[tuple[str, Node]] | None],
) -> str | None:
    """gym's ``__repr__`` of the space class ``name`` with ``attributes``; None where unknown.

    ``show`` renders a node as ``str()`` would; ``items`` lists a container's (key, value) pairs
    (an empty key for sequence items), or None if the node is not a container.
    """
    if name in ("Discrete", "MultiBinary") and "n" in attributes:
        return f"{name}({show(attributes['n'])})"
    if name == "MultiDiscrete" and "nvec" in attributes:
        return f"MultiDiscrete({show(attributes['nvec'])})"
    if name == "Box" and "shape" in attributes:
        return f"Box{show(attributes['shape'])}"
    spaces = items(attributes["spaces"]) if "spaces" in attributes else None
    if spaces is None:
        return None
    if name == "Tuple":
        return "Tuple(" + ", ".join(show(space) for _, space in spaces) + ")"
    if name == "Dict":
        return "Dict(" + ", ".join(f"{key}:{show(space)}" for key, space in spaces) + ")"
    return None
