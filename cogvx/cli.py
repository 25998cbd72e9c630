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

from cogvx.errors import CogvxError
from cogvx.modeling.precision import FLOAT_PRECISIONS, Precision
from cogvx.progress import BarProgress

# what --dtype accepts: the short and the torch names of each precision
DTYPE_CHOICES = sorted({name for p in FLOAT_PRECISIONS for name in (p.value, p.long_name)})
# errors about the user's own files and folders (missing, not writable, disk full) are theirs to fix too
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError, IsADirectoryError)


class UserError(click.ClickException):
    """One clear line on stderr, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@contextmanager
def user_errors(progress=None):
    """A `CogvxError` (or an OSError about the user's own files: missing, not writable, disk full)
    becomes one line `error: ...` and exit 2; anything else is a bug in cogvx and keeps its
    traceback. A progress bar handed in is closed either way, so the line stands on its own."""
    try:
        yield
    except OSError as error:
        if not isinstance(error, USER_OS_ERRORS) and error.errno is None:
            raise
        raise UserError(" ".join(str(error).split())) from None
    except CogvxError as error:
        raise UserError(" ".join(str(error).split())) from None  # one line, whatever the message held
    finally:
        if progress is not None:
            progress.close()


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


def _engine_opener(backend: str):
    """`open_stages` for `CogVideoXPipeline.from_engines`: None (ONNX Runtime) or TensorRT's, which
    first says what to install where tensorrt is missing (one line, before anything loads)."""
    if backend != "tensorrt":
        return None
    from cogvx.engines.tensorrt_build import require_tensorrt
    from cogvx.engines.tensorrt_runtime import tensorrt_stages

    require_tensorrt()
    return tensorrt_stages


def _attention_line(pipe, device: torch.device, cuda_attention: str) -> str:
    """What ran the denoiser's attention: the engine graph's form, or torch's implementation."""
    record = getattr(pipe.stages.get("denoiser"), "record", None)  # a GraphStage over an engine directory
    if record is not None:
        form = record.attention or "plugin"
        return f"engine graph, {form} form" + (" (cogvx::RoPEAttention3D)" if form == "plugin" else
                                               " (RotaryEmbedding + Attention)")
    if device.type == "cuda" and cuda_attention == "triton":
        return "Triton RoPE flash attention (--attention reference: torch SDPA)"
    return "torch SDPA (reference)" + ("; the Triton kernel serves CUDA GPUs" if device.type != "cuda" else "")


def _generate(model: str | None, prompt: str, negative_prompt: str, image: str | None, frames: int | None,
              height: int | None, width: int | None, steps: int, guidance: float, dynamic_cfg: bool,
              scheduler: str, seed: int, dtype: str, device: str, out: str, backend: str = "torch",
              engines: str | None = None, judge_video: bool = False, attention: str = "auto") -> None:
    from cogvx.contract.manifest import Manifest
    from cogvx.contract.shapes import ShapeProfile, ShapeSpec
    from cogvx.engines.attention import select_attention
    from cogvx.models import resolve_model
    from cogvx.modeling.model_dir import load_model_config
    from cogvx.runtime.pipeline import (
        CogVideoXPipeline, check_profiles, check_request, engines_model_config, request_size,
    )
    from cogvx.runtime.video_io import check_output_path, write_video

    bar = BarProgress()
    with user_errors(bar):
        # every check that needs no weights runs first: a bad request is refused in a moment, not
        # after the model has loaded (or the whole video has been generated)
        out_path = check_output_path(out)
        if backend != "torch" and engines is None:
            raise UserError(f"--backend {backend} needs --engines ENGINES (made by `cogvx export`"
                            f"{' and `cogvx build`' if backend == 'tensorrt' else ''})")
        if backend == "torch" and engines is not None:
            raise UserError("--engines needs --backend onnxruntime or tensorrt")
        open_stages = _engine_opener(backend)
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")
        if image is not None and not Path(image).is_file():
            raise UserError(f"--image {image}: no such file")
        precision = Precision.parse(dtype)
        if engines is not None:
            manifest = Manifest.load(engines)
            config = engines_model_config(manifest)
            profiles = [ShapeProfile.from_dict(record.profile) for record in manifest.stages.values()]
        else:
            config, profiles = load_model_config(resolve_model(model or "toy")), []
        frames, height, width = request_size(config, frames, height, width)
        check_request(config, batch=1, num_frames=frames, height=height, width=width, steps=steps, guidance=guidance,
                      scheduler=scheduler, image=image is not None, device=device, dtype=precision.torch_dtype,
                      seed=seed)
        check_profiles(profiles, ShapeSpec(1, frames, height, width, config.max_text_len))
        cuda_attention = select_attention(attention)  # auto: the Triton kernel where triton is installed

        started = time.perf_counter()
        if engines is not None:
            directory = Path(engines)
            pipe = CogVideoXPipeline.from_engines(engines, resolve_model(model) if model else None, device=device,
                                                  open_stages=open_stages)
        else:
            directory = resolve_model(model or "toy")
            pipe = CogVideoXPipeline.from_pretrained(directory, dtype=precision.torch_dtype, device=device)
        load_seconds = time.perf_counter() - started
        bar.start("denoising", steps, unit="step")

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
    video = result.frames[0]
    rows = [("model", f"{directory} ({pipe.config.name})"),
            ("video", f"{video.shape[0]} frames {video.shape[2]}x{video.shape[1]} @ {result.fps} fps"),
            ("attention", _attention_line(pipe, torch.device(device), cuda_attention)),
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
    click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="float32", show_default=True,
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
@click.option("--backend", type=click.Choice(["torch", "onnxruntime", "tensorrt"]), default="torch",
              show_default=True, help="Run the stages as torch modules, as ONNX Runtime sessions of --engines, or as "
              "the TensorRT plans `cogvx build` made in --engines (needs tensorrt and a GPU).")
@click.option("--engines", type=click.Path(file_okay=False), default=None, help="Engine directory (cogvx export).")
@click.option("--attention", type=click.Choice(["auto", "reference"]), default="auto", show_default=True,
              help="Torch attention: auto (the Triton kernel on CUDA GPUs where triton is installed) or reference.")
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
@click.option("--precision", "--dtype", "dtype", type=click.Choice([p.value for p in Precision]), default="fp32",
              show_default=True, help="Graph precision: fp32, fp16, bf16, or int8 / fp8 Q/DQ transformer graphs "
              "from the directory's calibration (`cogvx calibrate` first). The text encoder is always fp32.")
@click.option("--force", is_flag=True, help="Replace another model's engines in --out.")
@click.option("--attention", type=click.Choice(["plugin", "standard"]), default="plugin", show_default=True,
              help="plugin: one cogvx::RoPEAttention3D node per attention (TensorRT plugin); standard: opset-23 "
              "RotaryEmbedding + Attention, no custom node (TensorRT 10.15+).")
def export_command(model: str, out: str, components: str, profile: str | None, frames, height, width, batch,
                   text_len, dtype: str, force: bool, attention: str) -> None:
    """Export a checkpoint to ONNX graphs + manifest.json (reuses stages already exported)."""
    from cogvx.contract.shapes import ShapeSpec, parse_profile
    from cogvx.engines.export_dir import export_engines
    from cogvx.models import resolve_model
    from cogvx.modeling.model_dir import load_model_config

    with user_errors():
        directory = resolve_model(model)
        config = load_model_config(directory)
        default = ShapeSpec(1, config.num_frames, config.height, config.width, config.max_text_len)
        shape = parse_profile(profile or f"{default.frames}x{default.height}x{default.width}", default,
                              frames=frames, height=height, width=width, batch=batch, text_len=text_len)
        names = [c.strip() for c in components.split(",") if c.strip()]
    bar = BarProgress()

    def progress(component: str, state: str) -> None:
        if state == "exporting" or state == "reused":
            if bar.idle:  # the first report: every check on the request and the folder has passed
                bar.start("export", len(names), unit="component")
            bar.update(1 if state == "reused" else 0, f"{component}: {state}")
        elif state == "done":
            bar.update(1, f"{component}: done")

    with user_errors(bar):
        started = time.perf_counter()
        with quiet_exporter():
            results = export_engines(directory, out, names, shape, dtype, force, progress, attention=attention)
    rows = [("model", f"{directory} ({config.name})"), ("profile", str(shape)), ("dtype", dtype)]
    rows += [(r.component, ("reused " if r.reused else f"{r.seconds:6.1f} s  ") + ", ".join(r.files)) for r in results]
    rows += [("total", f"{time.perf_counter() - started:6.1f} s"),
             ("peak memory", f"{peak_memory_bytes(torch.device('cpu')) / 2**20:6.0f} MiB"),
             ("engines", str(Path(out) / "manifest.json"))]
    print_table(rows)


@main.command()
@click.option("--model", default="toy", show_default=True, help="Checkpoint folder (diffusers layout) or 'toy'.")
@click.option("--engines", required=True, type=click.Path(file_okay=False),
              help="Engine directory to record the calibration in (made if new; must hold this checkpoint's engines).")
@click.option("--precision", required=True, type=click.Choice(["int8", "fp8"]),
              help="int8 (SmoothQuant, per-channel weights, per-tensor activations) or fp8 (e4m3).")
@click.option("--method", type=click.Choice(["max", "percentile", "mse", "early-steps"]), default="max",
              show_default=True, help="How the per-step activation ranges become one range per layer.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="Text file, one prompt per line [default: the built-in toy-world prompts].")
@click.option("--num-prompts", type=int, default=8, show_default=True)
@click.option("--steps", type=int, default=50, show_default=True, help="DDIM steps of each calibration run.")
@click.option("--alpha", type=float, default=0.8, show_default=True, help="SmoothQuant strength (int8; 0: off).")
@click.option("--percentile", type=float, default=99.99, show_default=True, help="For --method percentile.")
@click.option("--fraction", type=float, default=0.5, show_default=True,
              help="For --method early-steps: the share of the first steps whose ranges count.")
def calibrate(model: str, engines: str, precision: str, method: str, prompts_file: str | None, num_prompts: int,
              steps: int, alpha: float, percentile: float, fraction: float) -> None:
    """Record activation ranges over real denoising for int8 / fp8 engines (then `cogvx export --precision`)."""
    from cogvx.calibration.calibrate import QuantConfig
    from cogvx.calibration.prompts import read_prompts
    from cogvx.engines.export_dir import calibrate_engines
    from cogvx.models import resolve_model

    bar = BarProgress()
    with user_errors(bar):
        config = QuantConfig(Precision.parse(precision), method=method, alpha=alpha, percentile=percentile,
                             fraction=fraction)
        if not 1 <= steps <= 1000:
            raise UserError(f"--steps must be between 1 and 1000 (got {steps})")
        prompts = read_prompts(prompts_file, num_prompts)  # fewer than asked: a warning with the number used
        directory = resolve_model(model)
        started = time.perf_counter()

        def advance(done: int, total: int) -> None:
            if bar.idle:
                bar.start("calibrate", total, unit="prompt")
            bar.update(1)

        name, calibration = calibrate_engines(directory, engines, config, prompts, steps=steps, progress=advance)
        bar.close()
    worst = max(calibration.layers.items(), key=lambda item: item[1].amax)
    rows = [("model", str(directory)), ("precision", precision), ("method", method),
            ("prompts", f"{len(prompts)} x {steps} steps ({(time.perf_counter() - started) / len(prompts):.1f} s each)"),
            ("layers", f"{len(calibration.layers)} quantized; widest range {worst[0]} (amax {worst[1].amax:.3g})"),
            ("calibration", str(Path(engines) / name)),
            ("next", f"cogvx export --model {model} --out {engines} --precision {precision}")]
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
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True,
              help="Run the engines as ONNX Runtime sessions or as the TensorRT plans `cogvx build` made.")
def validate(model: str, engines: str, prompt: str, frames, height, width, steps: int, guidance: float, seed: int,
             overrides: tuple[str, ...], report: str, backend: str) -> None:
    """Run the reference and the engines on the same inputs; report per stage and end to end.

    Exits 1 when a metric misses its threshold."""
    import math

    from cogvx.contract.manifest import Manifest
    from cogvx.models import resolve_model
    from cogvx.runtime.pipeline import CogVideoXPipeline, check_request, engines_model_config, request_size
    from cogvx.runtime.validate import THRESHOLDS, validate as run_validation, write_report

    thresholds = {}
    names = THRESHOLDS[Precision.FP32]
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in names or not value:
            raise UserError(f"--threshold {item!r}: give NAME=VALUE with NAME one of {', '.join(names)}")
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise UserError(f"--threshold {item!r}: {value!r} is not a number") from None
        if not math.isfinite(thresholds[name]):
            raise UserError(f"--threshold {item!r}: give a finite number (a NaN or infinite bar checks nothing)")
        if name == "cosine" and not -1 <= thresholds[name] <= 1:
            raise UserError(f"--threshold {item!r}: a cosine lies in [-1, 1]; 0.999 is a strict bar")
    bar = BarProgress()
    with user_errors(bar):
        open_stages = _engine_opener(backend)
        model_dir = resolve_model(model)
        manifest = Manifest.load(engines)
        manifest.check_source(model_dir)  # validating against another checkpoint proves nothing
        config = engines_model_config(manifest)
        frames, height, width = request_size(config, frames, height, width)
        check_request(config, batch=1, num_frames=frames, height=height, width=width, steps=steps, guidance=guidance,
                      scheduler="ddim", image=config.image_to_video, seed=seed)
        engine_pipe = CogVideoXPipeline.from_engines(engines, model_dir, open_stages=open_stages)
        reference = CogVideoXPipeline.from_pretrained(model_dir)
        precision = engine_pipe.stages["denoiser"].precision or Precision.FP32
        bar.start("validate", 2, unit="run")
        result = run_validation(reference, engine_pipe, prompt, frames, height, width, steps, guidance, seed,
                                precision, thresholds, progress=lambda name: bar.update(1),
                                layers=_layer_report(reference, manifest, engines, precision, prompt, steps,
                                                     guidance, seed))
        bar.close()
        files = write_report(result, report)
    rows = [(stage, f"cosine {m['cosine']:.7f}  SQNR {m['sqnr']:6.1f} dB  max abs {m['max_abs']:.2e}")
            for stage, m in result.stages.items()]
    rows += [("video PSNR", f"min {min(result.frame_psnr):.1f} dB over {len(result.frame_psnr)} frames"
              if result.frame_psnr else "none: the engines' own generation stopped"),
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
    with user_errors():
        directory = resolve_model(model)
        path, psnr, result = evaluate_model(directory, report, vae_clips=vae_clips, pairs=pairs, steps=steps,
                                            guidance=guidance, engines=engines, name=str(engines or model),
                                            progress=BarProgress())
    s = result.scores
    rows = [("model", str(engines or directory))]
    if psnr is not None:
        rows.append(("VAE PSNR", f"{sum(psnr) / len(psnr):.2f} dB mean, {min(psnr):.2f} dB min ({len(psnr)} clips)"))
    rows += [("colour", f"{s['colour']:.0%}"), ("shape", f"{s['shape']:.0%}"), ("direction", f"{s['motion']:.0%}"),
             ("all three", f"{s['all']:.0%} of {len(result.pairs)}"), ("report", str(path))]
    print_table(rows)


def _layer_report(reference, manifest, engines: str, precision: Precision, prompt: str, steps: int, guidance: float,
                  seed: int):
    """For int8 / fp8 engines: a callable giving each quantized layer's SQNR (else None)."""
    if not precision.is_quantized or manifest.calibration is None:
        return None
    from cogvx.calibration.artifact import Calibration
    from cogvx.calibration.sensitivity import layer_sqnr

    calibration = Calibration.load(engines, manifest.calibration)
    return lambda: layer_sqnr(reference, calibration, prompt, steps, guidance, seed)


@main.command()
def presets() -> None:
    """List the model presets and their shapes."""
    from cogvx.modeling.configs import PRESETS

    for name, preset in PRESETS.items():
        t = preset.transformer
        click.echo(f"{name:<22} {t.num_layers:>2} layers  {t.num_attention_heads}x{t.attention_head_dim}  "
                   f"{t.positions:<12} {preset.num_frames}x{preset.height}x{preset.width} @ {preset.fps} fps  "
                   f"{'I2V' if preset.image_to_video else 'T2V'}  {preset.recommended_precision}")


def _register_train() -> None:
    from cogvx.training.cli import train

    main.add_command(train)


_register_train()


def _register_build() -> None:
    from cogvx.engines.cli import build

    main.add_command(build)


_register_build()

if __name__ == "__main__":
    main()
