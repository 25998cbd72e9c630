"""Explicit uniform timestep sampling on vs off: per-step loss variance and final loss.

The method is described in docs/reference.md, 'Training recipes'.

Two data-parallel ranks are simulated in one process: every step draws a per-rank batch with each
rank's own `TimestepSampler` (explicit uniform: rank 0 in [0, 500), rank 1 in [500, 1000); off:
both in [0, 1000)) and optimises the mean loss of the global batch, which is what DDP's gradient
average computes. Same model init, data order and noise in both arms; only the timestep draws
differ. A tiny CogVideoX transformer (toy preset, 2 layers) learns synthetic caption-conditioned
latents (a blob whose channel mix names a colour and whose motion names a direction).

Measured per seed and arm: the variance of the per-step training loss (around its 21-step moving
average, so the downward trend does not count), the mean loss of the last 50 steps, and the
final evaluation loss (fixed clips x 10 stratified timesteps x fixed noise).
Results: benchmarks/results/explicit_uniform.json and explicit_uniform.png.

    python benchmarks/explicit_uniform.py [--steps 600] [--seeds 5] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from cogvx.modeling.configs import SchedulerConfig
from cogvx.modeling.transformer import CogVideoXTransformer
from cogvx.runtime.schedulers import DDIMScheduler
from cogvx.training.losses import transformer_loss
from cogvx.training.sampling import TimestepSampler

RESULTS = Path(__file__).parent / "results"
MODEL = dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
             text_embed_dim=8, max_text_seq_length=4, time_embed_dim=32)
SHAPE = (3, 4, 8, 8)  # latent frames, channels, height, width
RANKS = 2


def synthetic_world(num_clips: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (N, F, C, h, w) of a moving blob and text (N, 4, 8) naming its colour and direction."""
    g = torch.Generator().manual_seed(seed)
    frames, channels, height, width = SHAPE
    colours = torch.tensor([[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.5], [0.0, 0.0, 1.0, 0.5], [0.7, 0.7, 0.0, -0.5]])
    directions = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]])
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    latents, text = torch.zeros(num_clips, *SHAPE), torch.zeros(num_clips, 4, 8)
    for n in range(num_clips):
        colour, direction = n % 4, (n // 4) % 4
        start = torch.randint(2, 6, (2,), generator=g).float()
        for f in range(frames):
            centre = start + f * directions[direction]
            blob = torch.exp(-((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2) / 3.0)  # (h, w)
            latents[n, f] = 2.0 * colours[colour][:, None, None] * blob - 0.5
        text[n, :, colour] = 1.0
        text[n, :, 4 + direction] = 1.0
    return latents, text


def train(explicit_uniform: bool, seed: int, steps: int, batch: int, lr: float,
          data: tuple[torch.Tensor, torch.Tensor], evaluation: tuple) -> dict:
    latents, text = data
    schedule = DDIMScheduler(SchedulerConfig(snr_shift_scale=1.0))
    model = CogVideoXTransformer.from_preset("toy", seed=seed, **MODEL).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    samplers = [TimestepSampler(1000, r, RANKS, explicit_uniform, seed) for r in range(RANKS)]
    data_order = torch.Generator().manual_seed(seed)
    noise_draws = torch.Generator().manual_seed(seed + 1)
    losses, curve = [], []
    for step in range(steps):
        index = torch.randint(0, latents.shape[0], (RANKS * batch,), generator=data_order)
        timesteps = torch.cat([s.sample(batch) for s in samplers])  # (R*b,): rank 0's then rank 1's
        noise = torch.randn((RANKS * batch, *SHAPE), generator=noise_draws)
        loss = transformer_loss(model, schedule, latents[index], text[index], timesteps, noise).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            curve.append((step + 1, evaluate(model, schedule, evaluation)))
    residual = [x - statistics.fmean(losses[max(0, i - 10):i + 11]) for i, x in enumerate(losses)]
    return {
        "losses": losses,
        "eval_curve": curve,
        "loss_variance_detrended": statistics.pvariance(residual),
        "loss_variance_last_half": statistics.pvariance(losses[steps // 2:]),
        "train_loss_last_50": statistics.fmean(losses[-50:]),
        "final_eval_loss": curve[-1][1] if curve else evaluate(model, schedule, evaluation),
    }


@torch.no_grad()
def evaluate(model, schedule, evaluation) -> float:
    latents, text, timesteps, noise = evaluation
    return transformer_loss(model, schedule, latents, text, timesteps, noise).mean().item()


def evaluation_set(data) -> tuple:
    """16 clips x 10 stratified timesteps (50, 150, ..., 950) with fixed noise."""
    latents, text = data[0][:16], data[1][:16]
    timesteps = torch.arange(50, 1000, 100)
    g = torch.Generator().manual_seed(1234)
    repeat = lambda x: x.repeat_interleave(len(timesteps), dim=0)
    noise = torch.randn((16 * len(timesteps), *SHAPE), generator=g)
    return repeat(latents), repeat(text), timesteps.repeat(16), noise


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    smooth = lambda xs: [statistics.fmean(xs[max(0, i - 10):i + 11]) for i in range(len(xs))]
    for arm, colour in (("on", "tab:blue"), ("off", "tab:orange")):
        run = runs[arm][0]
        left.plot(run["losses"], color=colour, alpha=0.25, linewidth=0.7)
        left.plot(smooth(run["losses"]), color=colour, label=f"explicit uniform {arm} (seed 0)")
        for k, run in enumerate(runs[arm]):
            steps, values = zip(*run["eval_curve"])
            right.plot(steps, values, color=colour, marker="o", markersize=3, alpha=0.8,
                       label=f"{arm}" if k == 0 else None)
    left.set(xlabel="step", ylabel="training loss (global batch)", yscale="log", title="per-step loss")
    right.set(xlabel="step", ylabel="evaluation loss", title="fixed evaluation set, every seed")
    left.legend()
    right.legend(title="explicit uniform")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2, help="clips per simulated rank per step")
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = synthetic_world(64, seed=0)
    evaluation = evaluation_set(data)
    runs = {"on": [], "off": []}
    start = time.perf_counter()
    for seed in range(args.seeds):
        for arm in ("on", "off"):
            runs[arm].append(train(arm == "on", seed, args.steps, args.batch, args.lr, data, evaluation))
            r = runs[arm][-1]
            print(f"seed {seed} explicit uniform {arm:>3}: loss variance {r['loss_variance_detrended']:.5f} "
                  f"(last half {r['loss_variance_last_half']:.5f}), final eval loss {r['final_eval_loss']:.4f}")
    summary = {
        arm: {key: statistics.fmean(r[key] for r in runs[arm])
              for key in ("loss_variance_detrended", "loss_variance_last_half", "train_loss_last_50", "final_eval_loss")}
        for arm in runs
    }
    results = {
        "setup": {"steps": args.steps, "seeds": args.seeds, "ranks": RANKS, "clips_per_rank": args.batch,
                  "lr": args.lr, "model": MODEL, "latent_shape": list(SHAPE), "torch": torch.__version__,
                  "machine": platform.processor() or platform.machine(), "seconds": time.perf_counter() - start},
        "summary": summary,
        "variance_ratio_off_over_on": summary["off"]["loss_variance_detrended"] / summary["on"]["loss_variance_detrended"],
        "per_seed": {arm: [{k: v for k, v in r.items() if k != "losses"} for r in runs[arm]] for arm in runs},
        "seed0_losses": {arm: [round(x, 5) for x in runs[arm][0]["losses"]] for arm in runs},
    }
    RESULTS.mkdir(exist_ok=True)
    plot(runs, RESULTS / "explicit_uniform.png")
    text = json.dumps(results, indent=1)
    for arm in runs:  # one line per loss list, not one line per number
        text = text.replace(json.dumps(results["seed0_losses"][arm], indent=1).replace("\n", "\n  "),
                            json.dumps(results["seed0_losses"][arm]))
    (RESULTS / "explicit_uniform.json").write_text(text + "\n")
    print(json.dumps({"summary": summary, "variance_ratio_off_over_on": results["variance_ratio_off_over_on"]}, indent=1))


if __name__ == "__main__":
    main()
