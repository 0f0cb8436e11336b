"""Save a tiny pytree with Orbax's CheckpointManager on CPU (run by generate.py).

    JAX_PLATFORMS=cpu python orbax_save.py OUT_DIR ORDER_JSON

Steps 2 and 4 are saved and committed as Orbax does (``AtomicRenameTemporaryPath``: written
under ``<step>.orbax-checkpoint-tmp``, then the commit timestamp, ``commit_success.txt`` and the
rename). While step 4 is finalized, its temporary directory is copied as it stands (before any
commit marker) to ``OUT_DIR/6.orbax-checkpoint-tmp``: a save in progress, as Orbax left it on
disk. ORDER_JSON receives each temporary directory's files (with sizes) when finalize began.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint._src.path import atomicity

out, order_path = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
ORDER: dict[str, Any] = {"orbax": ocp.__version__}
original = atomicity.AtomicRenameTemporaryPath.finalize


async def recording_finalize(self: Any) -> None:
    tmp = Path(str(self.get()))
    ORDER.setdefault("finalize", {})[str(tmp.relative_to(out))] = {
        str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()
    }
    if tmp.name.startswith("4."):
        shutil.copytree(tmp, out / "6.orbax-checkpoint-tmp")
    await original(self)


atomicity.AtomicRenameTemporaryPath.finalize = recording_finalize  # type: ignore[method-assign]
manager = ocp.CheckpointManager(out, options=ocp.CheckpointManagerOptions(max_to_keep=None))
for step in (2, 4):
    state = {"w": jnp.arange(8, dtype=jnp.float32) * step, "b": jnp.ones(2)}
    manager.save(step, args=ocp.args.StandardSave(state), metrics={"loss": 1.0 / step})
    manager.wait_until_finished()
manager.close()
order_path.write_text(json.dumps(ORDER))
