"""The VAE and transformer trainers: progressive stages, DDP / FSDP2, checkpoints, exact resume.

One loop for both (`Trainer.fit`): stages run in sequence, each continuing from the weights and
optimizer of the previous one at its own resolution, length and learning rate. Every random
number comes from generators the trainer owns per rank (noise, text dropout, timesteps, data
order), and a checkpoint saves all of them with the optimizer, so a resumed run logs exactly the
losses the uninterrupted run would have logged.

The module that DDP / FSDP2 wraps is a small adapter whose forward computes the loss
(`DenoiserLoss`, `VAEReconstruction`); checkpoints strip its prefix, so the weights are the plain
component in the diffusers layout.

A NaN or infinite loss or gradient norm stops the run (`TrainingDivergedError`, naming the trainer,
the stage and the global step) before the optimizer applies it and before any checkpoint is written:
the checkpoints on disk only ever hold finite weights, and the newest one is where to resume from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from cogvx.errors import CogvxError
from cogvx.modeling.checkpoint import read_state_dict
from cogvx.modeling.configs import SchedulerConfig, get_preset
from cogvx.modeling.precision import Precision
from cogvx.modeling.transformer import CogVideoXTransformer
from cogvx.modeling.vae import CogVideoXVAE
from cogvx.progress import Progress, or_silent
from cogvx.runtime.schedulers import DDIMScheduler

from . import checkpoints as ckpt
from . import distributed as dist_utils
from .conditioning import Conditioning
from .config import Stage, TrainConfig, TrainConfigError
from .discriminator import PatchDiscriminator3D
from .loss_log import CURVE_FILE, LossLog, plot_loss_curve
from .losses import PerceptualLoss, VAELoss, drop_text, transformer_loss
from .pack import clip_tokens, packed_loss, plan_packs
from .sampling import ShardedBatchSampler, TimestepSampler

logger = logging.getLogger(__name__)

DatasetFactory = Callable[[Stage], torch.utils.data.Dataset]


class TrainingDivergedError(CogvxError):
    """A NaN or infinite loss or gradient norm: the run stops before it writes a checkpoint of such weights."""


@dataclass
class TrainResult:
    """What a `fit` did: steps done in total, the losses it logged, where things went."""

    step: int
    losses: list[float]
    checkpoint: Path | None
    log_path: Path
    curve_path: Path | None
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)  # per step on this rank: timesteps drawn, ...


def _component_dir(checkpoint: str | Path, component: str) -> Path:
    """checkpoint/<component> of a model folder, or the folder itself when it is the component."""
    path = Path(checkpoint)
    return path / component if (path / component / "config.json").is_file() else path


def _scalar(norm: torch.Tensor) -> float:
    """A gradient norm as a float (FSDP2 returns it as a DTensor: its full value)."""
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def default_dataset(config: TrainConfig, stage: Stage) -> torch.utils.data.Dataset:
    """The dataset [data] names, at the stage's clip size (cogvx.training.data's folder dataset or latent cache)."""
    if not (config.data.cache or config.data.folder):
        raise TrainConfigError("[data] is empty: set folder (videos with captions) or cache (a latent cache)")
    try:
        from . import data

        if config.data.cache:
            return data.LatentCache(config.data.cache)
        return data.VideoFolder(config.data.folder, frames=stage.frames, height=stage.height, width=stage.width)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cogvx.training.data cannot build the [data] dataset ({error}); pass a dataset_factory "
                         "to the trainer") from None


class Trainer:
    """The shared loop; subclasses build the component and define one optimisation step."""

    component: ClassVar[str] = ""

    def __init__(self, config: TrainConfig, dataset_factory: DatasetFactory | None = None,
                 resume: str | Path | None = None, progress: Progress | None = None):
        self.config = config
        self.context = dist_utils.init_distributed(config.device)
        self.dataset_factory = dataset_factory or (lambda stage: default_dataset(config, stage))
        self.resume = resume
        self.progress = progress  # None: silent; only rank 0 reports
        self.output_dir = Path(config.output_dir)
        rank, seed = self.context.rank, config.seed
        self.noise_generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (rank + 1))
        self.history: list[dict] = []
        self.newest_checkpoint: Path | None = None  # the last one written or resumed from (for the error's advice)
        self.position: tuple[int, int, int] = (0, 0, 0)  # (global step being made, stage, its step), 1-based steps

    # -- to be defined by each trainer ------------------------------------------------------------

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_adapter(self, model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
        """The module to wrap (its forward computes the loss) and the FSDP2 shard units."""
        raise NotImplementedError

    def train_step(self, items: list[dict], step: int) -> tuple[float, dict[str, float]]:
        raise NotImplementedError

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def rank_generators(self) -> dict[str, torch.Generator]:
        return {"noise": self.noise_generator}

    # -- the loop ---------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        config, context = self.config, self.context
        resume_from = ckpt.resolve_resume(self.output_dir, self.resume)
        self.model = self.build_model()
        if resume_from is not None:
            ckpt.check_architecture(resume_from, self.component, self.model.config.to_dict())
        self.model.to(context.device)
        adapter, shard_units = self.build_adapter(self.model)
        self.prefix = self.component + "."
        self.module = dist_utils.wrap_model(adapter, config.strategy, context, shard_units)
        o = config.optimizer
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=config.stages[0].lr, betas=o.betas,
                                           eps=o.eps, weight_decay=o.weight_decay)
        step, stage_index, stage_step, data_state = 0, 0, 0, None
        log = LossLog(self.output_dir)
        if resume_from is not None:
            step, stage_index, stage_step, data_state = self._load(resume_from)
            logger.info("resumed from %s at step %d (stage %d, step %d of it)", resume_from, step, stage_index, stage_step)
        if context.is_main:
            log.truncate(step)
        dist_utils.barrier(context)

        progress = or_silent(self.progress if context.is_main else None)
        progress.start(f"train {self.component}", config.total_steps, done=step, unit="step")
        losses, last_saved, stopped = [], None, False
        self.newest_checkpoint = resume_from
        try:
            for index in range(stage_index, len(config.stages)):
                stage = config.stages[index]
                start = stage_step if index == stage_index else 0
                if start >= stage.steps:
                    continue
                dataset = self.dataset_factory(stage)
                self.sampler = ShardedBatchSampler(len(dataset), config.batch_size, context.rank, context.world_size,
                                                   seed=config.seed + 1009 * index)
                if index == stage_index and data_state is not None:
                    self.sampler.load_state_dict(data_state)
                for stage_step in range(start, stage.steps):
                    lr = stage.lr * min(1.0, (stage_step + 1) / stage.warmup_steps) if stage.warmup_steps else stage.lr
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    items = [dataset[i] for i in self.sampler.next_batch()]
                    self.position = (step + 1, index, stage_step + 1)
                    loss, parts = self.train_step(items, step)
                    step += 1
                    loss = dist_utils.mean_across_ranks(loss, context)  # the same on every rank: all stop together
                    self.check_finite("loss", loss)
                    losses.append(loss)
                    if step % config.log_every == 0:
                        parts = {k: dist_utils.mean_across_ranks(v, context) for k, v in sorted(parts.items())}
                        if context.is_main:
                            log.append({"step": step, "stage": index, "loss": loss, "lr": lr, **parts})
                    progress.update(1, f"loss={loss:.4f}, stage={index}")
                    stopped = config.stop_at_step is not None and step >= config.stop_at_step
                    if step % config.save_every == 0 or stage_step + 1 == stage.steps or stopped:
                        last_saved = self.newest_checkpoint = self._save(step, index, stage_step + 1)
                    if stopped:
                        break
                if stopped:
                    break
        finally:
            progress.close()
        curve = None
        if context.is_main and log.path.is_file():
            curve = plot_loss_curve(log.path, self.output_dir / CURVE_FILE, f"{self.component} training loss")
        dist_utils.barrier(context)
        dist_utils.shutdown(context)
        return TrainResult(step, losses, last_saved, log.path, curve, stopped, self.history)

    # -- checkpoints ------------------------------------------------------------------------------

    def _rank_state(self) -> dict:
        state = {name: g.get_state() for name, g in self.rank_generators().items()}
        state["data"] = self.sampler.state_dict()
        state["torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _save(self, step: int, stage_index: int, stage_step: int) -> Path:
        """Gather full weights and optimizer state (collective), then rank 0 writes checkpoint-STEP."""
        context = self.context
        weights = dist_utils.full_model_state(self.module)
        optimizer = dist_utils.full_optimizer_state(self.module, self.optimizer)
        rank_states = [self._rank_state()]
        if context.distributed:
            rank_states = [None] * context.world_size
            torch.distributed.all_gather_object(rank_states, self._rank_state())
        path = ckpt.checkpoint_dir(self.output_dir, step)
        if context.is_main:
            weights = {k.removeprefix(self.prefix): v for k, v in weights.items()}
            state = {"component": self.component, "step": step, "stage": stage_index, "stage_step": stage_step,
                     "optimizer": optimizer, "ranks": rank_states, "world_size": context.world_size,
                     "extra": self.extra_state()}
            ckpt.write_checkpoint(self.output_dir, step, self.component, weights, self.model.config.to_dict(),
                                  state, self.config.model.checkpoint)
        dist_utils.barrier(context)
        return path

    def _load(self, path: Path) -> tuple[int, int, int, dict | None]:
        state = ckpt.read_state(path)
        weights = read_state_dict(path / self.component)
        weights = {self.prefix + k: v.to(self.context.device) for k, v in weights.items()}
        dist_utils.load_full_state(self.module, weights, self.optimizer, state["optimizer"])
        self.load_extra_state(state["extra"])
        ranks = state["ranks"]
        if len(ranks) != self.context.world_size:
            logger.warning("checkpoint written by %d ranks, resumed on %d: weights and optimizer continue, the "
                           "random streams restart (the loss sequence will differ)", len(ranks), self.context.world_size)
            return state["step"], state["stage"], state["stage_step"], ranks[0]["data"]
        mine = ranks[self.context.rank]
        for name, generator in self.rank_generators().items():
            generator.set_state(mine[name])
        torch.set_rng_state(mine["torch"])
        if "cuda" in mine and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(mine["cuda"])
        return state["step"], state["stage"], state["stage_step"], mine["data"]

    def autocast(self):
        precision = self.config.precision  # fp32: autocast off; bf16: matmuls and convs in bfloat16
        return torch.autocast(self.context.device.type, dtype=precision.torch_dtype,
                              enabled=precision != Precision.FP32)

    def clip_and_step(self, loss: torch.Tensor) -> None:
        """Backward, clip, step; a NaN / inf gradient norm stops the run before the optimizer applies it."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.check_gradients(self.module, loss, "", self.config.optimizer.grad_clip)
        self.optimizer.step()

    def check_gradients(self, module: nn.Module, loss: torch.Tensor, whose: str, clip: float | None = None) -> None:
        """Clip `module`'s gradients to norm `clip` (None: measure only); stop on a NaN / inf norm, saying
        whether the loss itself was not finite.

        The norm is over the gradients after DDP's all-reduce (FSDP2: over all shards), so every rank
        sees the same number and all stop together (a NaN loss on one rank makes every rank's norm NaN).
        """
        params = [p for p in module.parameters() if p.grad is not None]
        if clip is not None:
            norm = _scalar(torch.nn.utils.clip_grad_norm_(params, clip))
        else:
            norm = _scalar(torch.nn.utils.get_total_norm([p.grad for p in params]))
        if math.isfinite(norm):
            return
        value = float(loss.detach())
        raise self.diverged(f"{whose}loss", value) if not math.isfinite(value) \
            else self.diverged(f"{whose}gradient norm", norm)

    def check_finite(self, what: str, value: float) -> None:
        if not math.isfinite(value):
            raise self.diverged(what, value)

    def diverged(self, what: str, value: float) -> TrainingDivergedError:
        """The error for a NaN / inf `what` at the current step: trainer, global step, stage, what to do."""
        step, index, stage_step = self.position
        stage = self.config.stages[index]
        named = f" {stage.name!r}" if stage.name else ""
        advice = "lower the lr" + ("" if self.config.optimizer.grad_clip is not None else " or set optimizer.grad_clip")
        newest = self.newest_checkpoint
        if newest is not None:
            latest = ckpt.list_checkpoints(self.output_dir)[-1:] == [newest]
            advice = (f"{newest} is the newest checkpoint (finite weights): {advice} and continue from it with "
                      f"--resume {'latest' if latest else newest}")
        else:
            advice = f"no checkpoint was written yet: {advice} and start again"
        return TrainingDivergedError(
            f"{type(self).__name__} diverged at global step {step} (stage {index}{named}, step {stage_step} of "
            f"{stage.steps}, lr {stage.lr:g}): the {what} is {value}; nothing of this step was saved, {advice}"
        )


# -- transformer ----------------------------------------------------------------------------------

class DenoiserLoss(nn.Module):
    """What DDP / FSDP2 wrap for the transformer: forward -> per-sample v-prediction loss (B,)."""

    def __init__(self, transformer: CogVideoXTransformer, schedule):
        super().__init__()
        self.transformer = transformer
        self.schedule = schedule

    def forward(self, latents: list[torch.Tensor], text_embeds: torch.Tensor, timesteps: torch.Tensor,
                noise: list[torch.Tensor], rows: list[list[int]] | None = None) -> torch.Tensor:
        if rows is not None:
            return packed_loss(self.transformer, self.schedule, latents, list(text_embeds), timesteps, noise, rows)
        if any(x.shape != latents[0].shape for x in latents):
            raise TrainConfigError("clips of one batch differ in shape; set pack_tokens to pack them, or batch by size")
        return transformer_loss(self.transformer, self.schedule, torch.stack(latents), text_embeds, timesteps,
                                torch.stack(noise))


class TransformerTrainer(Trainer):
    """v-prediction training of the expert transformer (see docs/reference.md, 'Training recipes')."""

    component = "transformer"

    def __init__(self, config: TrainConfig, dataset_factory: DatasetFactory | None = None,
                 resume: str | Path | None = None, progress: Progress | None = None,
                 conditioning: Conditioning | None = None):
        super().__init__(config, dataset_factory, resume, progress)
        rank, world = self.context.rank, self.context.world_size
        self.dropout_generator = torch.Generator().manual_seed(config.seed * 1_000_003 + 104729 * (rank + 1))
        self.timesteps = TimestepSampler(1000, rank, world, config.explicit_uniform, config.seed)
        self.conditioning = conditioning
        self.scheduler_config = self._scheduler_config()
        self.timesteps.num_train_timesteps = self.scheduler_config.num_train_timesteps

    def _scheduler_config(self) -> SchedulerConfig:
        model = self.config.model
        if model.checkpoint and (Path(model.checkpoint) / "scheduler" / "scheduler_config.json").is_file():
            return SchedulerConfig.from_file(Path(model.checkpoint) / "scheduler" / "scheduler_config.json")
        if model.preset:
            return get_preset(model.preset).scheduler
        logger.warning("no scheduler/ in %s and no preset: using the default CogVideoX schedule", model.checkpoint)
        return SchedulerConfig()

    def build_model(self) -> CogVideoXTransformer:
        model = self.config.model
        if model.preset:
            transformer = CogVideoXTransformer.from_preset(model.preset, seed=self.config.seed, **model.overrides)
        else:
            transformer = CogVideoXTransformer.from_pretrained(_component_dir(model.checkpoint, "transformer"))
        if transformer.config.in_channels != transformer.config.out_channels:
            raise TrainConfigError("image-to-video transformers (latent + image channels) cannot be trained here yet; "
                                   "train the text-to-video variant")
        transformer.gradient_checkpointing = self.config.gradient_checkpointing
        if self.conditioning is None:
            device = self.context.device
            self.conditioning = Conditioning.from_checkpoint(model.checkpoint, device) if model.checkpoint \
                else Conditioning(device=device)
        return transformer.float().train().requires_grad_(True)

    def build_adapter(self, model):
        schedule = DDIMScheduler(self.scheduler_config)
        return DenoiserLoss(model, schedule), list(model.transformer_blocks)

    def rank_generators(self) -> dict[str, torch.Generator]:
        return {"noise": self.noise_generator, "dropout": self.dropout_generator, "timesteps": self.timesteps.generator}

    def train_step(self, items: list[dict], step: int) -> tuple[float, dict[str, float]]:
        latents = self.conditioning.latents(items, self.noise_generator)  # (F, C, h, w) each
        text = self.conditioning.text_embeddings(items)  # (B, L, Dt)
        text, dropped = drop_text(text, self.conditioning.empty_embedding(text), self.config.text_dropout,
                                  self.dropout_generator)
        timesteps = self.timesteps.sample(len(latents))  # (B,)
        noise = [torch.randn(x.shape, generator=self.noise_generator).to(x.device) for x in latents]
        rows = None
        if self.config.pack_tokens is not None:
            counts = [clip_tokens(self.model.config, x.shape, text.shape[1]) for x in latents]
            rows = plan_packs(counts, self.config.pack_tokens)
        with self.autocast():
            per_sample = self.module(latents, text, timesteps.to(self.context.device), noise, rows)  # (B,)
        loss = per_sample.mean()
        self.clip_and_step(loss)
        self.history.append({"step": step + 1, "timesteps": timesteps.tolist(), "dropped": int(dropped.sum())})
        return loss.item(), {}


# -- VAE ------------------------------------------------------------------------------------------

class VAEReconstruction(nn.Module):
    """What DDP / FSDP2 wrap for the VAE: video -> (reconstruction, posterior mean, logvar)."""

    def __init__(self, vae: CogVideoXVAE):
        super().__init__()
        self.vae = vae

    def forward(self, video: torch.Tensor, generator: torch.Generator):
        posterior = self.vae.encode(video)  # over (B, C, F, h, w)
        return self.vae.decode(posterior.sample(generator)), posterior.mean, posterior.logvar  # (B, 3, T, H, W)


class VAETrainer(Trainer):
    """L1 + KL (+ LPIPS) (+ 3D GAN late) training of the causal VAE."""

    component = "vae"

    def __init__(self, config: TrainConfig, dataset_factory: DatasetFactory | None = None,
                 resume: str | Path | None = None, progress: Progress | None = None):
        for k, stage in enumerate(config.stages):
            # An even latent frame count decodes to 4x frames, not 4(n-1)+1: the clip would not round-trip.
            if stage.frames > 1 and ((stage.frames - 1) // 4) % 2:
                raise TrainConfigError(f"stages[{k}]: VAE training needs frames 8k+1 (got {stage.frames}): an even "
                                       f"number of latent frames decodes to another length; try {stage.frames + 4}")
        super().__init__(config, dataset_factory, resume, progress)

    def build_model(self) -> CogVideoXVAE:
        model, losses = self.config.model, self.config.vae_loss
        if model.preset:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed)
                vae = CogVideoXVAE(get_preset(model.preset).vae.replace(**model.overrides))
        else:
            vae = CogVideoXVAE.from_pretrained(_component_dir(model.checkpoint, "vae"))
        discriminator = None
        if losses.gan_start_step is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed + 1)
                discriminator = PatchDiscriminator3D(vae.config.out_channels, losses.discriminator_channels,
                                                     losses.discriminator_layers)
            discriminator.to(self.context.device)
            self.discriminator_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=losses.discriminator_lr,
                                                             betas=(0.5, 0.9))
        perceptual = None
        if losses.vgg16_weights:
            perceptual = PerceptualLoss(losses.vgg16_weights, losses.lpips_weights).to(self.context.device)
        self.loss = VAELoss(losses.kl_weight, perceptual, losses.perceptual_weight, discriminator,
                            losses.gan_weight, losses.gan_start_step or 0, losses.adaptive_gan_weight,
                            losses.reconstruction)
        return vae.float().train().requires_grad_(True)

    def build_adapter(self, model):
        return VAEReconstruction(model), []

    def extra_state(self) -> dict:
        if self.loss.discriminator is None:
            return {}
        return {"discriminator": self.loss.discriminator.state_dict(),
                "discriminator_optimizer": self.discriminator_optimizer.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if self.loss.discriminator is not None and "discriminator" in state:
            self.loss.discriminator.load_state_dict(state["discriminator"])
            self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])

    def train_step(self, items: list[dict], step: int) -> tuple[float, dict[str, float]]:
        video = torch.stack([item["video"] for item in items]).to(self.context.device, torch.float32)  # (B, 3, T, H, W)
        with self.autocast():
            reconstruction, mean, logvar = self.module(video, self.noise_generator)
        last_layer = self.model.decoder.conv_out.conv.weight if self.loss.adaptive else None
        loss, parts = self.loss.generator_loss(video, reconstruction.float(), mean.float(), logvar.float(), step,
                                               last_layer)
        self.clip_and_step(loss)
        if self.loss.gan_active(step):
            self.discriminator_optimizer.zero_grad(set_to_none=True)
            d_loss, d_parts = self.loss.discriminator_loss(video, reconstruction.float())
            d_loss.backward()
            dist_utils.average_gradients(self.loss.discriminator, self.context)
            self.check_gradients(self.loss.discriminator, d_loss, "discriminator ")
            self.discriminator_optimizer.step()
            parts.update(d_parts)
        return loss.item(), parts
