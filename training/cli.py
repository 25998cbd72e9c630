"""`cogvx train vae|transformer|toy`: the training commands (the CLI talks, the trainers log).

Several processes: `torchrun --nproc_per_node N $(which cogvx) train transformer --config run.toml`
(each process reads the same config; rank 0 writes checkpoints, the log and the summary).

As in every cogvx command, an error the user can fix (a `CogvxError`, or a file that is missing,
exists already or cannot be opened) is one line `error: ...` on stderr and exit code 2; anything
else is a bug in cogvx and keeps its traceback. The progress bars are drawn here (`BarProgress`),
the trainers only report to it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click

from cogvx.progress import BarProgress, Progress
from cogvx.training.config import PRECISIONS, STRATEGIES

def user_errors(progress: Progress | None = None):
    from cogvx.cli import user_errors  # cogvx.cli imports this module: import it when a command runs

    return user_errors(progress)


def _bars(no_progress: bool) -> Progress | None:
    return None if no_progress else BarProgress()


def _options(function):
    options = [
        click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
                     help="Run file (.toml, .yaml): model, data, stages, batch size, ..."),
        click.option("--output-dir", help="Override output_dir (checkpoints, loss.jsonl, loss.png)."),
        click.option("--resume", help="'latest' (the newest checkpoint in output_dir) or a checkpoint-STEP folder."),
        click.option("--checkpoint", help="Override [model] checkpoint (a diffusers model folder, or 'toy')."),
        click.option("--data", "data_folder", help="Override [data] folder (videos with captions)."),
        click.option("--cache", "data_cache", help="Override [data] cache (a latent cache)."),
        click.option("--batch-size", type=int, help="Override batch_size (per rank)."),
        click.option("--seed", type=int, help="Override seed."),
        click.option("--device", help="Override device: auto, cpu, cuda."),
        click.option("--strategy", type=click.Choice(STRATEGIES), help="Override the data-parallel strategy."),
        click.option("--precision", type=click.Choice([p.value for p in PRECISIONS]),
                     help="Override precision (float16 overflows in 5B training)."),
        click.option("--stop-at-step", type=int, help="Leave after this global step (resume later with --resume latest)."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _load(config_path: str, output_dir, checkpoint, data_folder, data_cache, **top_level):
    """The run file with the command line's overrides, checked; a TrainConfigError names the file."""
    from cogvx.training.config import TrainConfigError, config_from_dict, read_config_file

    try:
        data = read_config_file(config_path)
        if output_dir is not None:
            data["output_dir"] = output_dir
        if checkpoint is not None:
            data.setdefault("model", {})["checkpoint"] = checkpoint
        if data_folder is not None or data_cache is not None:
            data["data"] = {"folder": data_folder} if data_folder is not None else {"cache": data_cache}
        data.update({k: v for k, v in top_level.items() if v is not None})
        config = config_from_dict(data)
    except TrainConfigError as error:
        message = str(error)
        raise TrainConfigError(message if str(config_path) in message else f"{config_path}: {message}") from None
    model_checkpoint = config.model.checkpoint
    if model_checkpoint is not None and not Path(model_checkpoint).is_dir():
        if model_checkpoint != "toy":
            raise TrainConfigError(f"[model] checkpoint {model_checkpoint} is not a folder; give a diffusers model "
                                   "folder (model_index.json, transformer/, vae/, ...) or 'toy'")
        from cogvx.models import resolve_model

        config = config.replace(model=dataclasses.replace(config.model, checkpoint=str(resolve_model("toy"))))
    return config


def _run(trainer_class, config_path, resume, no_progress, **overrides) -> None:
    progress = _bars(no_progress)
    with user_errors(progress):
        config = _load(config_path, **overrides)
        result = trainer_class(config, resume=resume, progress=progress).fit()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    final = f"{result.losses[-1]:.5f}" if result.losses else "-"
    rows = [
        ("steps", f"{result.step} of {config.total_steps}" + (" (stopped early)" if result.stopped_early else "")),
        ("final loss", final),
        ("checkpoint", str(result.checkpoint) if result.checkpoint else "-"),
        ("loss log", str(result.log_path)),
        ("loss curve", str(result.curve_path) if result.curve_path else "-"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")


@click.group()
def train() -> None:
    """Train the VAE or the transformer (torchrun launches several processes)."""


@train.command("transformer")
@_options
def train_transformer(config_path, resume, no_progress, **overrides) -> None:
    """v-prediction training of the expert transformer, stage by stage."""
    from cogvx.training.trainer import TransformerTrainer

    _run(TransformerTrainer, config_path, resume, no_progress, **overrides)


@train.command("vae")
@_options
def train_vae(config_path, resume, no_progress, **overrides) -> None:
    """L1 + KL (+ LPIPS) (+ 3D GAN) training of the causal VAE, stage by stage."""
    from cogvx.training.trainer import VAETrainer

    _run(VAETrainer, config_path, resume, no_progress, **overrides)


@train.command("toy")
@click.option("--work", required=True, type=click.Path(file_okay=False),
              help="Working folder: data, both runs, latent cache, report (an interrupted build continues here).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The finished model (a new folder).")
@click.option("--clips", type=int, help="Training clips (default: the recipe's, 3000).")
@click.option("--vae-steps", type=int, help="VAE steps (default: the recipe's).")
@click.option("--transformer-steps", type=int, help="Transformer steps (default: the recipe's).")
@click.option("--seed", type=int, help="Seed of the whole build (default 0).")
@click.option("--no-eval", is_flag=True, help="Skip the evaluation (VAE PSNR, judged generations).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def train_toy(work, out, clips, vae_steps, transformer_steps, seed, no_eval, no_progress) -> None:
    """The built-in toy model from nothing: toy data -> VAE -> latent cache -> transformer -> judged report.

    The shipped model is `cogvx train toy --work runs/toy --out toy-model` (under an hour on 2 CPU cores).
    """
    from cogvx.training.toy.build import ToyRecipe, build_toy

    changes = {"train_clips": clips, "vae_steps": vae_steps, "transformer_steps": transformer_steps, "seed": seed}
    recipe = ToyRecipe().replace(**{k: v for k, v in changes.items() if v is not None})
    progress = _bars(no_progress)
    with user_errors(progress):
        model = build_toy(work, out, recipe, progress=progress, evaluate=not no_eval,
                          say=lambda message: click.echo(message, err=True))
    click.echo(f"model   {model}")
    if not no_eval:
        click.echo(f"report  {Path(work) / 'report' / 'report.md'}")
