"""`cogvx train toy`: the built-in toy model, trained from nothing by one command.

    work/
      data/          toy clips (mp4) + captions.jsonl               toy world
      vae/           VAE run: checkpoint-STEP/, loss.jsonl, loss.png  VAETrainer
      base/          the model with the trained VAE (its scaling factor measured on the data), the
                     frozen tiny T5 + sentencepiece tokenizer, and an untrained transformer
      latents/       latent cache of every clip (17 frames) + text embeddings
      transformer/   transformer run                                  TransformerTrainer
      report/        report.md / report.json / contact_sheet.png      evaluate.py
    out/             the finished model, diffusers layout

Every step is skipped when its output is already complete, and the two trainers resume from their
newest checkpoint, so an interrupted build continues where it stopped with the same result. The
trainers are the general ones (`cogvx train vae|transformer`) with the configs written to
work/*.toml for reference; nothing here is toy-specific except the data and the recipe.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from cogvx.progress import Progress

from ..config import TrainConfigError

logger = logging.getLogger(__name__)

DATA_SEED = 1  # toy data seeds: 1 = training clips; evaluate.HELD_OUT_SEED = held-out clips


@dataclass(frozen=True)
class ToyRecipe:
    """Everything that decides the toy model (the defaults are what ships; under an hour on 2 CPU cores)."""

    seed: int = 0
    train_clips: int = 3000
    frames: int = 17
    height: int = 64
    width: int = 64
    vae_frames: int = 9  # VAE trains on the first 9 frames of each clip (8k+1), evaluated on all 17
    vae_steps: int = 3000  # then vae_final_steps at vae_final_lr: a second stage, the learning rate lowered
    vae_final_steps: int = 1000
    vae_batch: int = 2
    vae_lr: float = 1e-3
    vae_final_lr: float = 2e-4
    vae_warmup: int = 100
    transformer_steps: int = 3500
    transformer_final_steps: int = 700
    transformer_batch: int = 32
    transformer_lr: float = 5e-4
    transformer_final_lr: float = 1e-4
    transformer_warmup: int = 200
    scale_clips: int = 64  # clips whose latent spread sets the VAE scaling factor
    eval_clips: int = 64  # held-out clips for the VAE PSNR
    eval_pairs: int = 40  # prompt/seed pairs for the judge
    eval_steps: int = 50
    eval_guidance: float = 6.0

    def replace(self, **changes) -> ToyRecipe:
        return dataclasses.replace(self, **changes)


def _toml(data: dict) -> str:
    """A flat TOML writer for the run configs (values: str, int, float, bool, dict, list of dicts)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        return repr(v)

    lines, tables = [], []
    for key, v in data.items():
        if isinstance(v, dict):
            tables.append((f"[{key}]", v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            tables += [(f"[[{key}]]", item) for item in v]
        elif v is not None:
            lines.append(f"{key} = {value(v)}")
    for header, table in tables:
        lines += ["", header] + [f"{k} = {value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def _stages(height: int, width: int, frames: int, steps: tuple[int, int], lrs: tuple[float, float],
            warmup: int) -> list[dict]:
    """A main stage and (when it has steps) a final one at a lower learning rate, same clip size."""
    stages = [{"height": height, "width": width, "frames": frames, "steps": steps[0], "lr": lrs[0],
               "warmup_steps": warmup, "name": "main"}]
    if steps[1]:
        stages.append({"height": height, "width": width, "frames": frames, "steps": steps[1], "lr": lrs[1],
                       "name": "final"})
    return stages


def vae_run_config(work: Path, recipe: ToyRecipe) -> dict:
    r = recipe
    return {"output_dir": str(work / "vae"), "batch_size": r.vae_batch, "seed": r.seed, "save_every": 500,
            "model": {"preset": "toy"}, "data": {"folder": str(work / "data")},
            "vae_loss": {"reconstruction": "mse"},
            "stages": _stages(r.height, r.width, r.vae_frames, (r.vae_steps, r.vae_final_steps),
                              (r.vae_lr, r.vae_final_lr), r.vae_warmup)}


def transformer_run_config(work: Path, recipe: ToyRecipe) -> dict:
    r = recipe
    return {"output_dir": str(work / "transformer"), "batch_size": r.transformer_batch, "seed": r.seed,
            "save_every": 1000, "text_dropout": 0.1, "model": {"checkpoint": str(work / "base")},
            "data": {"cache": str(work / "latents")},
            "stages": _stages(r.height, r.width, r.frames, (r.transformer_steps, r.transformer_final_steps),
                              (r.transformer_lr, r.transformer_final_lr), r.transformer_warmup)}


def _train(trainer_class, config: dict, path: Path, progress: Progress | None) -> Path:
    """Run (or finish) one trainer; returns its newest checkpoint folder."""
    from cogvx.training.checkpoints import list_checkpoints, read_state
    from cogvx.training.config import config_from_dict

    run = config_from_dict(config)
    done = list_checkpoints(run.output_dir)
    if done and read_state(done[-1])["step"] >= run.total_steps:
        return done[-1]  # finished earlier: leave the run (its log and curve) untouched
    path.write_text(_toml(config))
    trainer_class(run, resume="latest", progress=progress).fit()
    return list_checkpoints(run.output_dir)[-1]


@torch.no_grad()
def measure_scaling_factor(vae, dataset, clips: int) -> float:
    """1 / std of posterior means over `clips` clips (as Stable Diffusion / CogVideoX set theirs)."""
    means = [vae.encode(dataset[k]["video"][None]).mean for k in range(min(clips, len(dataset)))]
    return float(1.0 / torch.cat([m.flatten() for m in means]).std())


def build_base(work: Path, recipe: ToyRecipe, vae_checkpoint: Path) -> Path:
    """work/base: trained VAE (scaling factor measured), frozen T5 + tokenizer, untrained transformer."""
    import tempfile

    from transformers import AutoTokenizer

    from cogvx.modeling.configs import PRESETS
    from cogvx.modeling.model_dir import save_model
    from cogvx.modeling.text_encoder import TextEncoder
    from cogvx.modeling.transformer import CogVideoXTransformer
    from cogvx.modeling.vae import CogVideoXVAE

    from .captions import train_tokenizer
    from .world import ToyClips

    preset = PRESETS["toy"]
    trained = CogVideoXVAE.from_pretrained(vae_checkpoint / "vae")
    scale = measure_scaling_factor(trained, ToyClips(recipe.scale_clips, DATA_SEED, recipe.frames, recipe.height,
                                                     recipe.width), recipe.scale_clips)
    vae = CogVideoXVAE(trained.config.replace(scaling_factor=round(scale, 6)))
    vae.load_state_dict(trained.state_dict())
    logger.info("VAE scaling factor %.4f (1 / std of the latents of %d clips)", scale, recipe.scale_clips)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = AutoTokenizer.from_pretrained(train_tokenizer(Path(scratch) / "tokenizer"))
    text_encoder = TextEncoder.from_config(preset.text_encoder.replace(vocab_size=len(tokenizer)), tokenizer,
                                           preset.max_text_len, seed=recipe.seed)
    transformer = CogVideoXTransformer.from_preset("toy", seed=recipe.seed)
    return save_model(work / "base", transformer, vae, text_encoder, preset.scheduler)


def finish_model(base: Path, transformer_checkpoint: Path, out: Path) -> Path:
    """out/: base with the trained transformer, written whole (staged) or not at all."""
    from cogvx.modeling.checkpoint import staged_directory

    with staged_directory(out) as staging:
        shutil.copytree(base, staging, dirs_exist_ok=True)
        shutil.rmtree(staging / "transformer")
        shutil.copytree(transformer_checkpoint / "transformer", staging / "transformer")
    return out


@contextmanager
def _timed(work: Path, name: str):
    """Add the block's wall time to work/timings.json[name] (summed over resumed builds)."""
    import time

    started = time.perf_counter()
    yield
    path = work / "timings.json"
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - started, 1)
    path.write_text(json.dumps(timings, indent=2) + "\n")


def build_toy(work: str | Path, out: str | Path, recipe: ToyRecipe = ToyRecipe(), progress: Progress | None = None,
              evaluate: bool = True, say: Callable[[str], None] = logger.info) -> Path:
    """Data -> VAE -> base model -> latent cache -> transformer -> out (+ the evaluation report).

    `progress` (a `cogvx.progress.Progress`, None = silent) follows every step that counts units: both
    trainers, the latent cache and the evaluation.
    """
    from ..conditioning import Conditioning
    from ..data import VideoFolder, cache_latents
    from ..trainer import TransformerTrainer, VAETrainer
    from .evaluate import evaluate_model
    from .world import write_dataset

    work, out = Path(work), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder for the toy model")
    work.mkdir(parents=True, exist_ok=True)
    recipe_file = work / "recipe.json"
    if recipe_file.is_file() and json.loads(recipe_file.read_text()) != dataclasses.asdict(recipe):
        raise TrainConfigError(f"{work} holds a build with another recipe ({recipe_file}); use a new --work folder")
    recipe_file.write_text(json.dumps(dataclasses.asdict(recipe), indent=2) + "\n")
    torch.manual_seed(recipe.seed)

    if not (work / "data" / "captions.jsonl").is_file():
        say(f"[1/6] writing {recipe.train_clips} toy clips to {work / 'data'}")
        with _timed(work, "data"):
            write_dataset(work / "data", recipe.train_clips, DATA_SEED, recipe.frames, recipe.height, recipe.width)
    say(f"[2/6] VAE: {recipe.vae_steps + recipe.vae_final_steps} steps (run in {work / 'vae'})")
    with _timed(work, "vae"):
        vae_checkpoint = _train(VAETrainer, vae_run_config(work, recipe), work / "vae.toml", progress)
    if not (work / "base" / "model_index.json").is_file():
        say(f"[3/6] base model (trained VAE, its scaling factor, frozen T5 + tokenizer) in {work / 'base'}")
        with _timed(work, "base"):
            build_base(work, recipe, vae_checkpoint)
    if not (work / "latents").is_dir():
        say(f"[4/6] latent cache of every clip in {work / 'latents'}")
        with _timed(work, "latents"):
            encoders = Conditioning.from_checkpoint(work / "base")  # the base's VAE and T5, as the trainer loads them
            clips = VideoFolder(work / "data", recipe.frames, recipe.height, recipe.width)
            cache_latents(clips, encoders.vae, encoders.text_encoder, work / "latents",
                          torch.Generator().manual_seed(recipe.seed), progress=progress)
    say(f"[5/6] transformer: {recipe.transformer_steps + recipe.transformer_final_steps} steps "
        f"(run in {work / 'transformer'})")
    with _timed(work, "transformer"):
        transformer_checkpoint = _train(TransformerTrainer, transformer_run_config(work, recipe),
                                        work / "transformer.toml", progress)
    finish_model(work / "base", transformer_checkpoint, out)
    if evaluate:
        say(f"[6/6] evaluation: VAE PSNR on {recipe.eval_clips} held-out clips, judge on {recipe.eval_pairs} "
            f"generations -> {work / 'report'}")
        with _timed(work, "evaluation"):
            evaluate_model(out, work / "report", vae_clips=recipe.eval_clips, pairs=recipe.eval_pairs,
                           steps=recipe.eval_steps, guidance=recipe.eval_guidance, seed=recipe.seed,
                           progress=progress)
    return out
