"""The `cogvx` command line. The CLI talks (progress bars, tables); the rooms only log."""

from __future__ import annotations

import logging
import resource
import sys
import time
from pathlib import Path

import click
import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class UserError(click.ClickException):
    """One clear line on stderr, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    click.echo("-" * (width + 24))
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")
    click.echo("-" * (width + 24))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what the library does.")
def main(verbose: bool) -> None:
    """cogvx: CogVideoX checkpoints -> engines, validated inference, calibration, training."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _generate(model: str, prompt: str, negative_prompt: str, image: str | None, frames: int | None,
              height: int | None, width: int | None, steps: int, guidance: float, dynamic_cfg: bool,
              scheduler: str, seed: int, dtype: str, device: str, out: str) -> None:
    from tqdm import tqdm

    from cogvx.models import resolve_model
    from cogvx.modeling.checkpoint import CheckpointError
    from cogvx.modeling.configs import ConfigError
    from cogvx.runtime.pipeline import CogVideoXPipeline, PipelineInputError
    from cogvx.runtime.video_io import check_output_path, write_video

    try:
        out_path = check_output_path(out)
        started = time.perf_counter()
        directory = resolve_model(model)
        pipe = CogVideoXPipeline.from_pretrained(directory, dtype=DTYPES[dtype], device=device)
        load_seconds = time.perf_counter() - started
        bar = tqdm(total=steps, desc="denoising", unit="step", file=sys.stderr)

        def advance(step: int, timestep: int, latents: torch.Tensor) -> None:
            bar.update(1)
            if step == steps - 1:
                bar.close()  # before the decode, so the bar's rate is the denoiser's

        result = pipe(prompt=prompt, negative_prompt=negative_prompt, image=image, num_frames=frames,
                      height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                      use_dynamic_cfg=dynamic_cfg, scheduler=scheduler, seed=seed,
                      on_step=advance)
        bar.close()
        started_writing = time.perf_counter()
        write_video(result.frames[0], out_path, fps=result.fps)
        write_seconds = time.perf_counter() - started_writing
    except (PipelineInputError, CheckpointError, ConfigError, FileNotFoundError, FileExistsError,
            PermissionError, ValueError) as error:
        raise UserError(str(error)) from None
    video = result.frames[0]
    rows = [("model", f"{directory} ({pipe.config.name})"),
            ("video", f"{video.shape[0]} frames {video.shape[2]}x{video.shape[1]} @ {result.fps} fps"),
            ("load", f"{load_seconds:8.2f} s")]
    rows += [(stage, f"{seconds:8.2f} s") for stage, seconds in result.seconds.items()]
    rows += [("write", f"{write_seconds:8.2f} s"),
             ("peak memory", f"{peak_memory_bytes(torch.device(device)) / 2**20:8.0f} MiB"),
             ("output", str(out_path))]
    print_table(rows)


_GENERATE_OPTIONS = [
    click.option("--negative-prompt", default="", show_default=True, help="What to steer away from."),
    click.option("--image", type=click.Path(dir_okay=False), default=None, help="Input image (image-to-video models)."),
    click.option("--frames", type=int, default=None, help="Video frames, 4k+1 (default: the model's, e.g. 49)."),
    click.option("--height", type=int, default=None, help="Multiple of 16 (default: the model's)."),
    click.option("--width", type=int, default=None, help="Multiple of 16 (default: the model's)."),
    click.option("--steps", type=int, default=50, show_default=True, help="Denoising steps."),
    click.option("--guidance", type=float, default=6.0, show_default=True, help="Classifier-free guidance scale."),
    click.option("--dynamic-cfg", is_flag=True, help="Dynamic guidance over t (as the checkpoints were tuned)."),
    click.option("--scheduler", type=click.Choice(["ddim", "dpm"]), default="ddim", show_default=True),
    click.option("--seed", type=int, default=42, show_default=True),
    click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="float32", show_default=True,
                 help="bfloat16 for the 5B and 1.5 models, float16 works for the 2B."),
    click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True),
]


def _with_options(options):
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


@main.command()
@click.option("--model", default="toy", show_default=True, help="Checkpoint folder (diffusers layout) or 'toy'.")
@click.option("--prompt", required=True, help="What the video shows.")
@_with_options(_GENERATE_OPTIONS)
@click.option("--out", required=True, help="Output .mp4, .gif, or a folder for PNG frames.")
def generate(**options) -> None:
    """Generate a video from a prompt (and an image, for I2V models)."""
    _generate(**options)


@main.command()
@click.option("--prompt", default="a red square moving right", show_default=True)
@click.option("--steps", type=int, default=50, show_default=True)
@click.option("--out", default="demo.mp4", show_default=True)
def demo(prompt: str, steps: int, out: str) -> None:
    """The main job on the built-in default model (toy): prompt -> mp4."""
    _generate(model="toy", prompt=prompt, negative_prompt="", image=None, frames=None, height=None, width=None,
              steps=steps, guidance=6.0, dynamic_cfg=False, scheduler="ddim", seed=42, dtype="float32",
              device="cpu", out=out)


@main.command()
def presets() -> None:
    """List the model presets and their shapes."""
    from cogvx.modeling.configs import PRESETS

    for name, preset in PRESETS.items():
        t = preset.transformer
        click.echo(f"{name:<22} {t.num_layers:>2} layers  {t.num_attention_heads}x{t.attention_head_dim}  "
                   f"{t.positions:<12} {preset.num_frames}x{preset.height}x{preset.width} @ {preset.fps} fps  "
                   f"{'I2V' if preset.image_to_video else 'T2V'}  {preset.recommended_dtype}")


if __name__ == "__main__":
    main()
