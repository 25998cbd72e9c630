"""`cogvx validate`: the same inputs through the reference and through the engines, measured.

Per stage (cosine, SQNR dB, max abs / rel error):
- text_encoder on the same token ids;
- denoiser at every step of the reference trajectory, both stages fed the identical inputs
  (the single-step error), plus the drift of the free-running engine trajectory from the
  reference one (the latents after each step);
- vae_decoder: the engine's streaming decode against the reference's frame-batched decode of
  the same latents; vae_encoder (I2V engines) on the same image.
End to end: both pipelines with the same seed, video PSNR per frame.

The report (report.json, report.md, drift.png, psnr.png) goes to a folder; `passed` is False
when any metric misses its threshold. Thresholds depend on the engines' precision.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cogvx.errors import NonFiniteError
from cogvx.modeling.precision import Precision

from .stages import TorchStage

logger = logging.getLogger(__name__)

PSNR_CAP = 150.0
NAN_METRICS = {"cosine": math.nan, "sqnr": math.nan, "max_abs": math.nan, "max_rel": math.nan}  # dB; identical tensors report the cap instead of infinity

# minimum cosine, minimum SQNR (dB) per stage, minimum video PSNR (dB) end to end
THRESHOLDS = {
    Precision.FP32: {"cosine": 0.99999, "sqnr": 60.0, "psnr": 50.0},
    Precision.FP16: {"cosine": 0.999, "sqnr": 30.0, "psnr": 30.0},
    Precision.BF16: {"cosine": 0.99, "sqnr": 20.0, "psnr": 25.0},
    Precision.FP8: {"cosine": 0.99, "sqnr": 20.0, "psnr": 30.0},
    Precision.INT8: {"cosine": 0.99, "sqnr": 20.0, "psnr": 28.0},
}


def compare(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """cosine, SQNR (dB), max abs error, max error relative to the reference's max magnitude."""
    ref, cand = reference.detach().double().flatten().cpu(), candidate.detach().double().flatten().cpu()
    noise = (ref - cand).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    max_abs = (ref - cand).abs().max().item()
    return {
        "cosine": torch.nn.functional.cosine_similarity(ref, cand, dim=0, eps=1e-30).item(),
        "sqnr": PSNR_CAP if noise == 0 else _capped(10 * math.log10(max(signal, 1e-30) / noise)),
        "max_abs": max_abs,
        "max_rel": max_abs / max(ref.abs().max().item(), 1e-12),
    }


def video_psnr(reference: torch.Tensor, candidate: torch.Tensor) -> list[float]:
    """Per-frame PSNR (dB) of (B, T, 3, H, W) videos in [0, 1], capped at PSNR_CAP."""
    mse = (reference.double() - candidate.double()).pow(2).mean(dim=(0, 2, 3, 4))  # (T,)
    return [PSNR_CAP if m == 0 else _capped(-10 * math.log10(m)) for m in mse.tolist()]


def _capped(decibels: float) -> float:
    """At most PSNR_CAP; a NaN stays NaN (`min(cap, nan)` would return the cap and pass a NaN output)."""
    return PSNR_CAP if decibels > PSNR_CAP else decibels


def _worst(values: list[float]) -> int:
    """The index of the lowest value, a NaN first."""
    return min(range(len(values)), key=lambda i: (not math.isnan(values[i]), values[i]))


@dataclass
class Report:
    precision: str
    thresholds: dict[str, float]
    request: dict
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    denoiser_steps: list[dict[str, float]] = field(default_factory=list)
    drift: list[dict[str, float]] = field(default_factory=list)
    frame_psnr: list[float] = field(default_factory=list)
    layers: dict[str, float] = field(default_factory=dict)  # quantized engines: per-layer SQNR (dB)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def judge(self) -> None:
        t = self.thresholds
        # written as `not value >= bar` so that a NaN metric (a NaN in either output) fails
        for stage, metrics in self.stages.items():
            if not metrics["cosine"] >= t["cosine"]:
                self.failures.append(f"{stage}: cosine {metrics['cosine']:.6f} < {t['cosine']}")
            if not metrics["sqnr"] >= t["sqnr"]:
                self.failures.append(f"{stage}: SQNR {metrics['sqnr']:.1f} dB < {t['sqnr']} dB")
        if any(not psnr >= t["psnr"] for psnr in self.frame_psnr):
            worst = _worst(self.frame_psnr)
            self.failures.append(f"video: frame {worst} PSNR {self.frame_psnr[worst]:.1f} dB < {t['psnr']} dB")
        if self.failures and self.layers:
            names = list(self.layers)
            worst_layer = names[_worst([self.layers[n] for n in names])]
            self.failures.append(f"worst quantized layer: {worst_layer} (SQNR {self.layers[worst_layer]:.1f} dB "
                                 "on its own inputs; see the per-layer table)")


def validate(reference, engines, prompt: str, num_frames: int, height: int, width: int, steps: int,
             guidance: float, seed: int, precision: Precision | str, thresholds: dict[str, float] | None = None,
             progress=None, layers=None) -> Report:
    """`reference` and `engines` are CogVideoXPipelines over the same model (torch / engine stages).
    `layers`, for quantized engines, returns each quantized layer's SQNR (calibration/sensitivity.py)."""
    precision = Precision.parse(precision)
    limits = dict(THRESHOLDS[precision]) | (thresholds or {})
    request = {"prompt": prompt, "frames": num_frames, "height": height, "width": width, "steps": steps,
               "guidance": guidance, "seed": seed}
    report = Report(precision.value, limits, request)
    engines.check_profiles(1, num_frames, height, width)

    if "text_encoder" in engines.stages and reference.tokenizer is not None:
        from cogvx.modeling.text_encoder import tokenize_prompts

        ids = tokenize_prompts(reference.tokenizer, [prompt, ""], reference.config.max_text_len)
        report.stages["text_encoder"] = compare(reference.stages["text_encoder"](input_ids=ids)["text_embeddings"],
                                                engines.stages["text_encoder"](input_ids=ids)["text_embeddings"])

    # the reference run; its denoiser also feeds each step's exact inputs to the engine's denoiser
    reference_denoiser, engine_denoiser = reference.stages["denoiser"], engines.stages["denoiser"]

    def compare_step(**inputs):
        out = reference_denoiser(**inputs)
        report.denoiser_steps.append(compare(out["velocity"], engine_denoiser(**inputs)["velocity"]))
        return out

    paired = TorchStage("denoiser", compare_step, ())

    image = None
    if reference.config.image_to_video:  # a fixed, smooth conditioning image
        y, x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        image = torch.stack([x, y, x * y])  # (3, H, W) in [-1, 1]
    trajectories: dict[str, list[torch.Tensor]] = {"reference": [], "engines": []}
    runs = {}
    def engine_side(what: str, run):
        """The engines' result, or None with the failure recorded: an engine that makes NaN or inf
        fails the validation (exit 1) instead of stopping it."""
        try:
            return run()
        except NonFiniteError as error:
            report.failures.append(f"{what}: {error}")
            return None

    for name, pipe in (("reference", reference), ("engines", engines)):
        record = trajectories[name]
        if name == "reference":
            pipe.stages = pipe.stages | {"denoiser": paired}

        def generate(pipe=pipe, record=record):
            return pipe(prompt=prompt, image=image, num_frames=num_frames, height=height, width=width,
                        num_inference_steps=steps, guidance_scale=guidance, seed=seed, output_type="pt",
                        on_step=lambda step, t, latents: record.append(latents.clone()))
        try:
            runs[name] = generate() if name == "reference" else engine_side("engines, free-running", generate)
        finally:
            if name == "reference":
                pipe.stages = pipe.stages | {"denoiser": reference_denoiser}
        if progress:
            progress(name)
    report.stages["denoiser"] = report.denoiser_steps[_worst([m["sqnr"] for m in report.denoiser_steps])]
    report.drift = [compare(a, b) for a, b in zip(trajectories["reference"], trajectories["engines"])]

    latents = trajectories["reference"][-1]  # the reference's final latents, one input for both decoders
    frames = (num_frames - 1) // reference.config.vae.temporal_compression + 1
    latents = latents[:, latents.shape[1] - frames:]  # 1.5 drops its padding frames
    expected = torch.cat(list(reference.decode_stream(latents)), dim=2)
    decoded = engine_side("vae_decoder", lambda: torch.cat(list(engines.decode_stream(latents)), dim=2))
    report.stages["vae_decoder"] = compare(expected, decoded) if decoded is not None else dict(NAN_METRICS)

    if "vae_encoder" in engines.stages:
        generator = torch.Generator().manual_seed(seed)
        image = torch.rand(1, 3, 1, height, width, generator=generator) * 2 - 1
        out = {name: pipe.stages["vae_encoder"](video=image)["latent_mean"] for name, pipe in
               (("reference", reference), ("engines", engines))}
        report.stages["vae_encoder"] = compare(out["reference"], out["engines"])

    if runs["engines"] is not None:
        report.frame_psnr = video_psnr(runs["reference"].frames, runs["engines"].frames)
    if layers is not None:  # quantized engines: `layers()` measures each quantized layer (the caller's room)
        report.layers = layers()
    report.judge()
    return report


def write_report(report: Report, folder: str | Path) -> list[Path]:
    """report.json, report.md, drift.png and psnr.png in `folder` (each written atomically)."""
    from cogvx.modeling.checkpoint import atomic_write, write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = {"passed": report.passed, **report.__dict__}
    write_json(folder / "report.json", data)
    lines = [f"# Engine validation: {'PASSED' if report.passed else 'FAILED'}", "",
             f"Precision {report.precision}; thresholds: cosine >= {report.thresholds['cosine']}, "
             f"SQNR >= {report.thresholds['sqnr']} dB per stage, video PSNR >= {report.thresholds['psnr']} dB.",
             f"Request: {json.dumps(report.request)}", "",
             "| stage | cosine | SQNR dB | max abs | max rel |", "|---|---|---|---|---|"]
    for stage, m in report.stages.items():
        label = f"{stage} (worst of {len(report.denoiser_steps)} steps)" if stage == "denoiser" else stage
        lines.append(f"| {label} | {m['cosine']:.7f} | {m['sqnr']:.1f} | {m['max_abs']:.3g} | {m['max_rel']:.3g} |")
    if report.frame_psnr:
        lines += ["", f"Video PSNR per frame: min {min(report.frame_psnr):.1f} dB, mean "
                      f"{sum(report.frame_psnr) / len(report.frame_psnr):.1f} dB (capped at {PSNR_CAP:.0f})"]
    if report.drift:
        lines += [f"Latent drift after the last step: SQNR {report.drift[-1]['sqnr']:.1f} dB"]
    if report.layers:
        lines += ["", "## Quantized layers (SQNR of each layer on the float model's own inputs, worst step)", "",
                  "| layer | SQNR dB |", "|---|---|", *(f"| {name} | {value:.1f} |" for name, value in
                                                       sorted(report.layers.items(), key=lambda kv: kv[1]))]
    lines += ["", "## Failures", *(f"- {f}" for f in report.failures)] if report.failures else []
    lines += ["", "![drift](drift.png)", "![psnr](psnr.png)", *(["![layers](layers.png)"] if report.layers else []), ""]
    atomic_write(folder / "report.md", lambda tmp: Path(tmp).write_text("\n".join(lines)))
    return [folder / "report.json", folder / "report.md", *_plots(report, folder)]


def _plots(report: Report, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cogvx.modeling.checkpoint import atomic_write

    plots = {
        "drift.png": ("Per-step drift", "denoising step", "SQNR vs reference (dB)", report.thresholds["sqnr"],
                      {"latents after step (free-running)": [m["sqnr"] for m in report.drift],
                       "denoiser output (same inputs)": [m["sqnr"] for m in report.denoiser_steps]}),
        "psnr.png": ("End-to-end video PSNR per frame", "frame", "PSNR vs reference (dB)", report.thresholds["psnr"],
                     {"engines vs reference": report.frame_psnr}),
    }
    if report.layers:  # x: the quantized layers in module order
        plots["layers.png"] = ("Per-layer quantization SQNR", "quantized layer (module order)", "SQNR (dB)",
                               report.thresholds["sqnr"], {"layer on its own inputs": list(report.layers.values())})
    for name, (title, xlabel, ylabel, threshold, series) in plots.items():
        figure, axis = plt.subplots(figsize=(6, 3.5))
        for label, values in series.items():
            axis.plot(values, marker="o", label=label)
        axis.axhline(threshold, color="red", linestyle="--", label="threshold")
        axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
        axis.legend(fontsize=8)
        figure.tight_layout()
        atomic_write(folder / name, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
        plt.close(figure)
    return [folder / name for name in plots]
