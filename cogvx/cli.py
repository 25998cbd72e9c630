"""The `cogvx` command line. The CLI talks (progress bars, tables); the rooms only log."""

from __future__ import annotations

import logging
import resource
import sys
import time
import warnings
from contextlib import contextmanager
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


@contextmanager
def quiet_exporter():
    """torch.export / torch.onnx warn about internals a user cannot act on; keep them for --verbose."""
    if logging.getLogger().isEnabledFor(logging.INFO):
        yield
        return
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        exporter_log.setLevel(level)


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


def _generate(model: str | None, prompt: str, negative_prompt: str, image: str | None, frames: int | None,
              height: int | None, width: int | None, steps: int, guidance: float, dynamic_cfg: bool,
              scheduler: str, seed: int, dtype: str, device: str, out: str, backend: str = "torch",
              engines: str | None = None, judge_video: bool = False) -> None:
    from tqdm import tqdm

    from cogvx.models import resolve_model
    from cogvx.modeling.checkpoint import CheckpointError
    from cogvx.modeling.configs import ConfigError
    from cogvx.runtime.pipeline import CogVideoXPipeline, PipelineInputError
    from cogvx.runtime.video_io import check_output_path, write_video

    try:
        out_path = check_output_path(out)
        started = time.perf_counter()
        if backend == "onnxruntime":
            if engines is None:
                raise UserError("--backend onnxruntime needs --engines ENGINES (made by `cogvx export`)")
            directory = Path(engines)
            pipe = CogVideoXPipeline.from_engines(engines, resolve_model(model) if model else None, device=device)
        else:
            if engines is not None:
                raise UserError("--engines needs --backend onnxruntime")
            directory = resolve_model(model or "toy")
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
            PermissionError, ValueError) as error:  # EngineDirectoryError and ProfileError are ValueErrors
        raise UserError(str(error)) from None
    video = result.frames[0]
    rows = [("model", f"{directory} ({pipe.config.name})"),
            ("video", f"{video.shape[0]} frames {video.shape[2]}x{video.shape[1]} @ {result.fps} fps"),
            ("load", f"{load_seconds:8.2f} s")]
    rows += [(stage, f"{seconds:8.2f} s") for stage, seconds in result.seconds.items()]
    rows += [("write", f"{write_seconds:8.2f} s"),
             ("peak memory", f"{peak_memory_bytes(torch.device(device)) / 2**20:8.0f} MiB"),
             ("output", str(out_path))]
    if judge_video:
        rows.append(("judge", _judge_line(prompt, video)))
    print_table(rows)


def _judge_line(prompt: str, video) -> str:
    """What the toy world's judge sees in the video, against what the prompt asked for."""
    from cogvx.training.toy.judge import judge, parse_caption

    seen = judge(video).words
    try:
        asked = " ".join(parse_caption(prompt))
    except ValueError:
        return f"{seen} (the prompt is not a toy caption)"
    return f"{seen} ({'as asked' if seen == asked else 'asked for ' + asked})"


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
@click.option("--model", default=None, help="Checkpoint folder (diffusers layout) or 'toy' [default: toy; with "
              "--engines, only stages the engine directory lacks run from it].")
@click.option("--prompt", required=True, help="What the video shows.")
@_with_options(_GENERATE_OPTIONS)
@click.option("--backend", type=click.Choice(["torch", "onnxruntime"]), default="torch", show_default=True,
              help="Run the stages as torch modules or as ONNX Runtime sessions of --engines.")
@click.option("--engines", type=click.Path(file_okay=False), default=None, help="Engine directory (cogvx export).")
@click.option("--out", required=True, help="Output .mp4, .gif, or a folder for PNG frames.")
def generate(**options) -> None:
    """Generate a video from a prompt (and an image, for I2V models)."""
    _generate(**options)


_PROFILE_OPTIONS = [
    click.option("--profile", default=None, help="FRAMESxHEIGHTxWIDTH (static, e.g. 49x480x720) or 'dynamic' with "
                 "--frames/--height/--width MIN:OPT:MAX [default: the model's video, static]."),
    click.option("--frames", default=None, help="MIN:OPT:MAX video frames (4k+1) for --profile dynamic."),
    click.option("--height", default=None, help="MIN:OPT:MAX for --profile dynamic."),
    click.option("--width", default=None, help="MIN:OPT:MAX for --profile dynamic."),
    click.option("--batch", default=None, help="MIN:OPT:MAX videos per request [default: 1]."),
    click.option("--text-len", default=None, help="MIN:OPT:MAX text tokens [default: the model's]."),
]


@main.command(name="export")
@click.option("--model", default="toy", show_default=True, help="Checkpoint folder (diffusers layout) or 'toy'.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Engine directory to write.")
@click.option("--components", default="text_encoder,transformer,vae_decoder", show_default=True,
              help="Comma-separated: text_encoder, transformer, vae_decoder, vae_encoder (I2V).")
@_with_options(_PROFILE_OPTIONS)
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Graph precision (the text encoder is always fp32).")
@click.option("--force", is_flag=True, help="Replace another model's engines in --out.")
def export_command(model: str, out: str, components: str, profile: str | None, frames, height, width, batch,
                   text_len, dtype: str, force: bool) -> None:
    """Export a checkpoint to ONNX graphs + manifest.json (reuses stages already exported)."""
    from tqdm import tqdm

    from cogvx.engines.export_dir import export_engines, read_model_config
    from cogvx.export.profiles import ShapeSpec, parse_profile
    from cogvx.models import resolve_model
    from cogvx.modeling.configs import ConfigError

    try:
        directory = resolve_model(model)
        config = read_model_config(directory)
        default = ShapeSpec(1, config.num_frames, config.height, config.width, config.max_text_len)
        shape = parse_profile(profile or f"{default.frames}x{default.height}x{default.width}", default,
                              frames=frames, height=height, width=width, batch=batch, text_len=text_len)
        names = [c.strip() for c in components.split(",") if c.strip()]
        bar = tqdm(total=len(names), desc="export", unit="component", file=sys.stderr)

        def progress(component: str, state: str) -> None:
            bar.set_postfix_str(f"{component}: {state}")
            if state in ("reused", "done"):
                bar.update(1)

        started = time.perf_counter()
        with quiet_exporter():
            results = export_engines(directory, out, names, shape, DTYPES[dtype], force, progress)
        bar.close()
    except (ConfigError, FileNotFoundError, ValueError) as error:  # EngineDirectoryError, ProfileError
        raise UserError(str(error)) from None
    rows = [("model", f"{directory} ({config.name})"), ("profile", str(shape)), ("dtype", dtype)]
    rows += [(r.component, ("reused " if r.reused else f"{r.seconds:6.1f} s  ") + ", ".join(r.files)) for r in results]
    rows += [("total", f"{time.perf_counter() - started:6.1f} s"),
             ("peak memory", f"{peak_memory_bytes(torch.device('cpu')) / 2**20:6.0f} MiB"),
             ("engines", str(Path(out) / "manifest.json"))]
    print_table(rows)


@main.command()
@click.option("--model", default="toy", show_default=True, help="The reference checkpoint folder or 'toy'.")
@click.option("--engines", required=True, type=click.Path(file_okay=False), help="Engine directory (cogvx export).")
@click.option("--prompt", default="a red square moving right", show_default=True)
@click.option("--frames", type=int, default=None, help="Video frames [default: the engines' profile opt].")
@click.option("--height", type=int, default=None)
@click.option("--width", type=int, default=None)
@click.option("--steps", type=int, default=10, show_default=True)
@click.option("--guidance", type=float, default=6.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threshold", "overrides", multiple=True, help="Override a threshold: cosine=0.999, sqnr=40, psnr=35.")
@click.option("--report", default="validation", show_default=True, help="Folder for report.md/.json and plots.")
def validate(model: str, engines: str, prompt: str, frames, height, width, steps: int, guidance: float, seed: int,
             overrides: tuple[str, ...], report: str) -> None:
    """Run the reference and the engines on the same inputs; report per stage and end to end.

    Exits 1 when a metric misses its threshold."""
    from tqdm import tqdm

    from cogvx.models import resolve_model
    from cogvx.runtime.pipeline import CogVideoXPipeline, PipelineInputError
    from cogvx.runtime.validate import THRESHOLDS, validate as run_validation, write_report

    thresholds = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in THRESHOLDS["fp32"] or not value:
            raise UserError(f"--threshold {item!r}: give NAME=VALUE with NAME one of {', '.join(THRESHOLDS['fp32'])}")
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise UserError(f"--threshold {item!r}: {value!r} is not a number") from None
    try:
        engine_pipe = CogVideoXPipeline.from_engines(engines, resolve_model(model))
        reference = CogVideoXPipeline.from_pretrained(resolve_model(model))
        if reference.config.transformer != engine_pipe.config.transformer:
            raise UserError(f"{engines} was exported from another model than {model}")
        opt = next(s.profile.opt for s in engine_pipe.stages.values() if getattr(s, "profile", None))
        precision = engine_pipe.stages["denoiser"].record.dtype if hasattr(engine_pipe.stages["denoiser"], "record") \
            else "fp32"
        bar = tqdm(total=2, desc="validate", unit="run", file=sys.stderr)
        result = run_validation(reference, engine_pipe, prompt, frames or opt.frames, height or opt.height,
                                width or opt.width, steps, guidance, seed, precision, thresholds,
                                progress=lambda name: bar.update(1))
        bar.close()
        files = write_report(result, report)
    except (PipelineInputError, FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from None
    rows = [(stage, f"cosine {m['cosine']:.7f}  SQNR {m['sqnr']:6.1f} dB  max abs {m['max_abs']:.2e}")
            for stage, m in result.stages.items()]
    rows += [("video PSNR", f"min {min(result.frame_psnr):.1f} dB over {len(result.frame_psnr)} frames"),
             ("result", "PASSED" if result.passed else "FAILED: " + "; ".join(result.failures)),
             ("report", ", ".join(str(f) for f in files))]
    print_table(rows)
    if not result.passed:
        sys.exit(1)


@main.command()
@click.option("--prompt", default="a red circle moving right", show_default=True)
@click.option("--steps", type=int, default=50, show_default=True)
@click.option("--out", default="demo.mp4", show_default=True)
def demo(prompt: str, steps: int, out: str) -> None:
    """The main job on the built-in default model (toy): prompt -> mp4."""
    _generate(model="toy", prompt=prompt, negative_prompt="", image=None, frames=None, height=None, width=None,
              steps=steps, guidance=6.0, dynamic_cfg=False, scheduler="ddim", seed=42, dtype="float32",
              device="cpu", out=out, judge_video=True)


@main.command()
@click.option("--model", default="toy", show_default=True, help="A toy-world model folder (or 'toy', the built-in one).")
@click.option("--engines", type=click.Path(file_okay=False), default=None,
              help="Judge an engine directory on ONNX Runtime instead (stages it lacks run from --model).")
@click.option("--pairs", type=int, default=40, show_default=True, help="Prompt/seed pairs to generate and judge.")
@click.option("--vae-clips", type=int, default=64, show_default=True,
              help="Held-out clips for the VAE reconstruction PSNR (0: skip).")
@click.option("--steps", type=int, default=50, show_default=True, help="DDIM steps per generation.")
@click.option("--guidance", type=float, default=6.0, show_default=True)
@click.option("--report", required=True, type=click.Path(file_okay=False),
              help="Folder for report.md, report.json and contact_sheet.png.")
def judge(model: str, engines: str | None, pairs: int, vae_clips: int, steps: int, guidance: float, report: str) -> None:
    """Score a toy-world model: generate prompt/seed pairs from the caption grammar and judge colour, shape, motion."""
    from cogvx.models import resolve_model
    from cogvx.training.toy.evaluate import evaluate_model

    if pairs < 1 or vae_clips < 0 or steps < 1:
        raise UserError(f"--pairs and --steps must be >= 1 and --vae-clips >= 0 (got {pairs}, {steps}, {vae_clips})")
    try:
        directory = resolve_model(model)
        path, psnr, result = evaluate_model(directory, report, vae_clips=vae_clips, pairs=pairs, steps=steps,
                                            guidance=guidance, engines=engines, name=str(engines or model),
                                            progress=True)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from None
    s = result.scores
    rows = [("model", str(engines or directory))]
    if psnr is not None:
        rows.append(("VAE PSNR", f"{sum(psnr) / len(psnr):.2f} dB mean, {min(psnr):.2f} dB min ({len(psnr)} clips)"))
    rows += [("colour", f"{s['colour']:.0%}"), ("shape", f"{s['shape']:.0%}"), ("direction", f"{s['motion']:.0%}"),
             ("all three", f"{s['all']:.0%} of {len(result.pairs)}"), ("report", str(path))]
    print_table(rows)


@main.command()
def presets() -> None:
    """List the model presets and their shapes."""
    from cogvx.modeling.configs import PRESETS

    for name, preset in PRESETS.items():
        t = preset.transformer
        click.echo(f"{name:<22} {t.num_layers:>2} layers  {t.num_attention_heads}x{t.attention_head_dim}  "
                   f"{t.positions:<12} {preset.num_frames}x{preset.height}x{preset.width} @ {preset.fps} fps  "
                   f"{'I2V' if preset.image_to_video else 'T2V'}  {preset.recommended_dtype}")


def _register_train() -> None:
    from cogvx.training.cli import train

    main.add_command(train)


_register_train()

if __name__ == "__main__":
    main()
