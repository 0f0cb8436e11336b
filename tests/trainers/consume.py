"""The real consumers, run inside the trainers env: what torch and safetensors make of each file.

    python tests/trainers/consume.py PATH...

Prints one JSON object: for each path, ``weights_only`` is ``"ok"`` when
``torch.load(path, weights_only=True)`` loads it and ``"refused: <error type and the start of its first line>"`` when it raises;
``safetensors`` (for files that ``safetensors.safe_open`` opens) lists each tensor's dtype and
shape and the header's ``__metadata__``, else ``"error: <first line>"``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from safetensors import safe_open


def _first_line(err: BaseException) -> str:
    # The type and the start of the first line: torch's own text carries terminal escapes.
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:60] if text else ''}".strip()


def consume(path: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    try:
        torch.load(path, weights_only=True, map_location="cpu")
        result["weights_only"] = "ok"
    except Exception as err:
        result["weights_only"] = f"refused: {_first_line(err)}"
    try:
        with safe_open(path, framework="pt") as handle:
            result["safetensors"] = {
                "tensors": {
                    key: [str(handle.get_tensor(key).dtype), list(handle.get_tensor(key).shape)]
                    for key in handle.keys()  # noqa: SIM118 - safe_open is not iterable
                },
                "metadata": handle.metadata(),
            }
    except Exception as err:
        result["safetensors"] = f"error: {_first_line(err)}"
    return result


if __name__ == "__main__":
    print(json.dumps({path: consume(path) for path in sys.argv[1:]}, indent=1))
