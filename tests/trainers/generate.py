"""Write real checkpoint layouts with the real trainers (run inside the trainers env).

    python tests/trainers/generate.py OUT_DIR

run by ``tests/trainers/make_fixtures.py`` (committed fixtures) and by tests that need fresh
output, under ``tests/trainers_env.py``'s interpreter (torch CPU, transformers, accelerate,
Lightning, safetensors). Writes under OUT_DIR:

* ``hf/checkpoint-<N>/``: transformers' ``Trainer`` on a tiny GPT-2 (save every 2 steps, evaluate
  every 2 steps so ``trainer_state.json`` carries ``eval_loss`` in ``log_history``);
* ``lightning/*.ckpt``: Lightning's ``Trainer.fit`` with ``ModelCheckpoint`` (every 2 steps, all
  kept, ``last.ckpt``);
* ``torch/``: ``torch.save`` of a state dict as ``.pt``, ``.pth``, ``.bin`` (zip format) and as
  ``legacy.pt`` (``_use_new_zipfile_serialization=False``), an optimizer state;
* ``dcp/step_<N>/``: ``torch.distributed.checkpoint.save`` in one process (no process group);
* ``safetensors/``: ``safetensors.torch.save_file`` (with metadata) and ``safetensors.numpy``;
* ``deepspeed/``, ``deepspeed-zero2/``: DeepSpeed's ``engine.save_checkpoint`` on CPU
  (``deepspeed_save.py``, ZeRO stage 0 and 2; ``global_step6`` saved with ``save_latest=False``);
* ``orbax/``: Orbax's ``CheckpointManager`` on CPU jax (``orbax_save.py``): steps 2 and 4
  committed, and ``6.orbax-checkpoint-tmp`` a copy of step 4's temporary directory taken as its
  finalize began (a save in progress, before any commit marker).

It also records, in ``OUT_DIR/order.json``, what each trainer had written at the moment it wrote
its completion marker: the files of ``checkpoint-<N>`` (with sizes) when ``TrainerState.save_to_json``
was entered, of a DCP directory when ``FileSystemWriter.finish`` was entered, of DeepSpeed's
tag directories when ``latest`` was opened, and of Orbax's temporary directories when
``AtomicRenameTemporaryPath.finalize`` began, so the rules of
``ckptd.formats.trainer_dirs`` are checked against the pinned releases, not only their source.
Deterministic seeds; nothing here touches a network (HF_HUB_OFFLINE).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ORDER: dict[str, Any] = {}


def _listing(directory: Path) -> dict[str, int]:
    return {
        str(path.relative_to(directory)): path.stat().st_size
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def write_hf(out: Path) -> None:
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    from transformers.trainer_callback import TrainerState

    original = TrainerState.save_to_json

    def recording_save_to_json(self: Any, json_path: str) -> None:
        directory = Path(json_path).parent
        ORDER.setdefault("hf", {})[directory.name] = _listing(directory)
        original(self, json_path)

    TrainerState.save_to_json = recording_save_to_json  # type: ignore[method-assign]
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config)
    generator = torch.Generator().manual_seed(0)
    samples = [
        {"input_ids": ids, "labels": ids}
        for ids in torch.randint(0, 16, (16, 8), generator=generator)
    ]
    args = TrainingArguments(
        output_dir=str(out / "hf"),
        max_steps=6,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=samples, eval_dataset=samples[:8])
    trainer.train()
    ORDER["versions"]["transformers"] = transformers.__version__


def write_lightning(out: Path) -> None:
    import lightning
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Tiny(LightningModule):  # type: ignore[misc]
        def __init__(self, hidden: int = 8, lr: float = 0.01) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = _tiny_model()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            loss = torch.nn.functional.mse_loss(self.net(inputs), targets)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 2))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    checkpoints = ModelCheckpoint(
        dirpath=out / "lightning", every_n_train_steps=2, save_top_k=-1, save_last=True
    )
    trainer = Trainer(
        max_steps=6,
        accelerator="cpu",
        devices=1,
        callbacks=[checkpoints],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out / "lightning-root",
    )
    trainer.fit(Tiny(), loader)
    ORDER["versions"]["lightning"] = lightning.__version__


def write_torch(out: Path) -> None:
    directory = out / "torch"
    directory.mkdir(parents=True, exist_ok=True)
    model = _tiny_model()
    state = model.state_dict()
    torch.save(state, directory / "state_dict.pt")
    torch.save(state, directory / "model.pth")
    torch.save(state, directory / "pytorch_model.bin")
    torch.save(state, directory / "legacy.pt", _use_new_zipfile_serialization=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    torch.save(
        {"model": state, "optimizer": optimizer.state_dict(), "step": 3}, directory / "full.pt"
    )


def write_dcp(out: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import filesystem

    original = filesystem.FileSystemWriter.finish

    def recording_finish(self: Any, metadata: Any, results: Any) -> None:
        directory = Path(self.path)
        ORDER.setdefault("dcp", {})[directory.name] = _listing(directory)
        original(self, metadata, results)

    filesystem.FileSystemWriter.finish = recording_finish  # type: ignore[method-assign]
    model = _tiny_model()
    for step in (2, 4):
        dcp.save(
            {"model": model.state_dict(), "step": step}, checkpoint_id=out / "dcp" / f"step_{step}"
        )


def write_safetensors(out: Path) -> None:
    import safetensors
    import safetensors.numpy
    import safetensors.torch

    directory = out / "safetensors"
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in _tiny_model().state_dict().items()}
    safetensors.torch.save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    arrays = {
        "f16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "i64": np.arange(4, dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scalar": np.array(1.5, dtype=np.float64),
    }
    safetensors.numpy.save_file(arrays, str(directory / "arrays.safetensors"))
    ORDER["versions"]["safetensors"] = safetensors.__version__


def write_deepspeed(out: Path) -> None:
    """DeepSpeed itself, on CPU, in a process of its own (ZeRO stage 0, and 2 in fp32)."""
    for stage, name in ((0, "deepspeed"), (2, "deepspeed-zero2")):
        with socket.socket() as probe:  # a free port for the one-process gloo group
            probe.bind(("127.0.0.1", 0))
            port = str(probe.getsockname()[1])
        order = out / f".deepspeed-order-{stage}.json"
        subprocess.run(
            [
                sys.executable,
                str(HERE / "deepspeed_save.py"),
                str(out / name),
                str(stage),
                port,
                str(order),
            ],
            check=True,
            timeout=600,
            env={**os.environ, "DS_ACCELERATOR": "cpu"},
            cwd=out,
        )
        recorded = json.loads(order.read_text())
        order.unlink()
        ORDER["versions"]["deepspeed"] = recorded.pop("deepspeed")
        ORDER.setdefault("deepspeed", {})[name] = recorded[f"stage{stage}"]
        # DeepSpeed copies its recovery scripts beside the tags; the fixtures carry one-line
        # stand-ins under the same names instead of DeepSpeed's code.
        for script in sorted((out / name).glob("zero_to_*.py")):
            script.write_text(f"# stand-in for DeepSpeed's {script.name} (not copied)\n")


def write_orbax(out: Path) -> None:
    """Orbax's CheckpointManager on CPU jax, in a process of its own (``orbax_save.py``)."""
    order = out / ".orbax-order.json"
    subprocess.run(
        [sys.executable, str(HERE / "orbax_save.py"), str(out / "orbax"), str(order)],
        check=True,
        timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        cwd=out,
    )
    recorded = json.loads(order.read_text())
    order.unlink()
    ORDER["versions"]["orbax"] = recorded["orbax"]
    ORDER["orbax"] = recorded["finalize"]


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # Lightning and the Trainer put stray logs in the working directory
    ORDER["versions"] = {"torch": torch.__version__, "numpy": np.__version__}
    write_torch(out)
    write_deepspeed(out)
    write_orbax(out)
    write_safetensors(out)
    write_dcp(out)
    write_lightning(out)
    write_hf(out)
    (out / "order.json").write_text(json.dumps(ORDER, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
