"""Train a tiny model with DeepSpeed on CPU and save checkpoints (run by generate.py).

    DS_ACCELERATOR=cpu python deepspeed_save.py SAVE_DIR ZERO_STAGE PORT ORDER_JSON

One process, world size 1, gloo. Saves at steps 2 and 4 with ``engine.save_checkpoint(SAVE_DIR)``,
then at step 6 with ``save_latest=False`` (the tag is written, ``latest`` is not moved: what an
interrupted save leaves behind as far as the marker goes). ORDER_JSON receives, for each save that
writes ``latest``, every tag directory's files (with sizes) at the moment it was opened.
"""

from __future__ import annotations

import builtins
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

save_dir, stage, port, order_path = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ.update(
    MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
)
import deepspeed  # noqa: E402 - after the distributed environment is set

ORDER: dict[str, Any] = {"deepspeed": deepspeed.__version__}
_open = builtins.open


def recording_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    path = Path(str(file))
    if path.name == "latest" and "w" in mode:
        tag_dirs = [d for d in path.parent.iterdir() if d.is_dir()]
        ORDER.setdefault(f"stage{stage}", []).append(
            {
                d.name: {str(f.relative_to(d)): f.stat().st_size for f in d.rglob("*")}
                for d in tag_dirs
            }
        )
    return _open(file, mode, *args, **kwargs)


builtins.open = recording_open
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
config = {
    "train_batch_size": 4,
    "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}},
    "zero_optimization": {"stage": stage},
}
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
for _ in range(6):
    loss = engine(torch.randn(4, 4)).pow(2).mean()
    engine.backward(loss)
    engine.step()
    if engine.global_steps in (2, 4):
        engine.save_checkpoint(str(save_dir))
    elif engine.global_steps == 6:
        engine.save_checkpoint(str(save_dir), save_latest=False)
builtins.open = _open
Path(order_path).write_text(json.dumps(ORDER))
