"""One-off: write the torch / joblib / SB3 files in this directory with the real producers.

Run from the repository root with a venv that has torch (CPU wheel), joblib, cloudpickle and
stable-baselines3 + gymnasium installed (none of them is a test dependency):

    .venv/bin/python tests/data/verdicts/make_verdict_fixtures.py

The files were made with torch 2.13.0+cpu, joblib 1.5/1.6, stable-baselines3 2.9.2, gymnasium
1.4.0, cloudpickle 3.1, numpy 2.x on Python 3.11 (see PROVENANCE.md). The malicious ones run
``echo`` (a harmless command) when loaded; tests that need proof a payload really runs build
their own payloads with a marker file at test time.
"""

from __future__ import annotations

import base64
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import cloudpickle
import joblib
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
PAYLOAD = "echo ckptd-fixture-payload-ran >&2"


class Payload:
    """Unpickling this runs ``os.system(PAYLOAD)``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (PAYLOAD,))


class TorchLoadPayload:
    """Unpickling this calls torch.load on a nested file (a pickle inside the pickle)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (torch.load, ("/nonexistent/inner.pt",))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _lightning_like(model: torch.nn.Module) -> dict[str, Any]:
    """The dict Lightning's Trainer.save_checkpoint hands to torch.save (its documented keys)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    return {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": model.state_dict(),
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25)}
        },
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"hidden": 8, "lr": 1e-3},
    }


def _replace_member(source: Path, dest: Path, name: str, data: bytes) -> None:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info, data if info.filename == name else src.read(info.filename))


def main() -> None:
    clean, bad = HERE / "clean", HERE / "malicious"
    clean.mkdir(exist_ok=True)
    bad.mkdir(exist_ok=True)
    model = _model()
    torch.save(model.state_dict(), clean / "state_dict.pt")
    torch.save(model.state_dict(), clean / "pytorch_model.bin")
    torch.save(model.state_dict(), clean / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(_lightning_like(model), clean / "epoch=3-step=1200.ckpt")
    torch.save({"model": model.state_dict(), "x": Payload()}, bad / "os_system.pt")
    torch.save(
        {"model": model.state_dict(), "x": TorchLoadPayload()}, bad / "torch_load_inside.pth"
    )
    torch.save({"x": Payload()}, bad / "legacy_os_system.pt", _use_new_zipfile_serialization=False)
    lam = {"state_dict": model.state_dict(), "lr_lambda": lambda epoch: 0.95**epoch}
    torch.save(lam, bad / "lambda.ckpt", pickle_module=cloudpickle)

    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros(4), "n": 7}
    joblib.dump(arrays, clean / "joblib_arrays.pkl")
    joblib.dump(arrays, clean / "joblib_zlib.pkl", compress=3)
    joblib.dump(arrays, clean / "joblib_gzip.pkl", compress=("gzip", 3))
    joblib.dump(arrays, clean / "joblib_xz.pkl", compress=("xz", 3))
    joblib.dump({**arrays, "x": Payload()}, bad / "joblib_os_system.pkl")
    joblib.dump({**arrays, "x": Payload()}, bad / "joblib_zlib_os_system.pkl", compress=3)

    from stable_baselines3 import DQN, PPO, SAC

    agent = PPO(
        "MlpPolicy",
        "CartPole-v1",
        n_steps=64,
        batch_size=32,
        seed=0,
        device="cpu",
        policy_kwargs={"net_arch": [8]},
    )
    agent.learn(total_timesteps=128)  # finished episodes fill ep_info_buffer (a deque)
    agent.save(clean / "sb3_ppo.zip")
    small = {"net_arch": [8]}
    DQN("MlpPolicy", "CartPole-v1", policy_kwargs=small, seed=0, device="cpu").save(
        clean / "sb3_dqn.zip"
    )
    sac = SAC(
        "MlpPolicy", "Pendulum-v1", policy_kwargs=small, learning_starts=100, seed=0, device="cpu"
    )
    sac.learn(total_timesteps=110)  # a few gradient steps: the optimizers have state
    sac.save(clean / "sb3_sac.zip")
    with zipfile.ZipFile(clean / "sb3_ppo.zip") as archive:
        data = json.loads(archive.read("data"))
    data["policy_class"][":serialized:"] = base64.b64encode(cloudpickle.dumps(Payload())).decode()
    _replace_member(
        clean / "sb3_ppo.zip", bad / "sb3_serialized_payload.zip", "data", json.dumps(data).encode()
    )
    buffer = io.BytesIO()
    torch.save({"x": Payload()}, buffer)
    _replace_member(
        clean / "sb3_ppo.zip", bad / "sb3_pth_payload.zip", "policy.pth", buffer.getvalue()
    )


if __name__ == "__main__":
    main()
