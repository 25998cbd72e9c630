"""A tiny transformer training run on synthetic latents, for the trainer tests and for torchrun.

Imported by test_trainer.py (the dataset and config), and run as a script by test_distributed.py:

    python -m torch.distributed.run --nproc_per_node 2 ddp_worker.py OUT_DIR

which trains on 2 gloo ranks (a full run, an interrupted run and its resume, and an FSDP2 run) and
writes what each rank saw to OUT_DIR/rank{r}.json.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from cogvx.training.config import Stage, TrainConfig, config_from_dict
from cogvx.training.trainer import TransformerTrainer

TINY = dict(num_layers=1, num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
            text_embed_dim=8, max_text_seq_length=4, time_embed_dim=16)


class SyntheticLatents(torch.utils.data.Dataset):
    """Latent-cache items for a stage: latents (F, 4, H/8, W/8) that depend on one of 3 captions."""

    def __init__(self, stage: Stage, size: int = 16):
        self.size = size
        self.shape = ((stage.frames - 1) // 4 + 1, 4, stage.height // 8, stage.width // 8)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        label = index % 3
        latents = 0.3 * torch.randn(self.shape, generator=generator) + (label - 1.0)
        text = torch.zeros(4, 8)
        text[:, label] = 1.0
        return {"latents": latents, "text_embeddings": text, "caption": f"class {label}"}


def tiny_config(output_dir, **changes) -> TrainConfig:
    data = {
        "output_dir": str(output_dir), "batch_size": 2, "seed": 3, "save_every": 3, "device": "cpu",
        "model": {"preset": "toy", "overrides": dict(TINY)},
        "stages": [{"height": 16, "width": 16, "frames": 5, "steps": 4, "lr": 3e-3},
                   {"height": 32, "width": 32, "frames": 9, "steps": 2, "lr": 1e-3}],
    }
    data.update(changes)
    return config_from_dict(data)


def run(output_dir, resume=None, **changes):
    trainer = TransformerTrainer(tiny_config(output_dir, **changes), SyntheticLatents, resume=resume)
    return trainer.fit(), trainer


def main(out_dir: str) -> None:
    rank = int(os.environ["RANK"])
    torch.distributed.init_process_group("gloo")  # kept open across the runs (the trainer reuses it)
    full, trainer = run(f"{out_dir}/full")
    params = [p.detach().flatten() for p in trainer.model.parameters()]
    _, _ = run(f"{out_dir}/resumed", stop_at_step=3)
    resumed, _ = run(f"{out_dir}/resumed", resume="latest")
    fsdp, _ = run(f"{out_dir}/fsdp2", strategy="fsdp2")
    report = {
        "rank": rank,
        "timesteps": [t for record in full.history for t in record["timesteps"]],
        "params": torch.cat(params).tolist(),
        "full_losses": full.losses,
        "resumed_losses": resumed.losses,
        "fsdp2_losses": fsdp.losses,
    }
    with open(f"{out_dir}/rank{rank}.json", "w") as handle:
        json.dump(report, handle)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
