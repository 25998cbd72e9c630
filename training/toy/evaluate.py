"""How good is a toy model: VAE reconstruction PSNR on held-out clips, and the judge on generated video.

`evaluate_vae` encodes and decodes clips the VAE never saw (their own seed) and reports PSNR on
uint8 frames, as a viewer sees them. `evaluate_generation` draws prompt/seed pairs from the caption
grammar (seeds far from any the trainers used), generates each with the pipeline, and asks the
judge what it sees. `write_report` writes both as report.md + report.json and a contact sheet
(first, middle and last frame of every generated clip, captioned with prompt and verdict).

Progress goes to a `cogvx.progress.Progress` the caller passes (the CLI's bars), or nowhere.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cogvx.errors import CogvxError
from cogvx.progress import Progress, or_silent

from .captions import all_captions
from .judge import Verdict, judge, parse_caption, score
from .world import ToyClips

logger = logging.getLogger(__name__)

TOY_SHAPE = (17, 64, 64)  # frames, height, width of every toy-world clip: what the judge reads
HELD_OUT_SEED = 9_000  # toy data seed of the held-out clips (training sets use small seeds)
EVAL_SEED_BASE = 1_000_000  # generation seeds: far from every seed a trainer draws from


class ToyModelError(CogvxError):
    """A model or engine directory the toy-world judge cannot score; the message says what to use instead."""


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 videos (capped at 100 dB when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@torch.no_grad()
def evaluate_vae(vae, num_clips: int = 64, seed: int = HELD_OUT_SEED, frames: int = 17, height: int = 64,
                 width: int = 64, progress: Progress | None = None) -> list[float]:
    """Per-clip PSNR of decode(encode(clip).mean) on `num_clips` held-out toy clips."""
    from cogvx.runtime.pipeline import to_uint8

    clips = ToyClips(num_clips, seed, frames, height, width)
    vae = vae.eval()
    out = []
    progress = or_silent(progress)
    progress.start("vae eval", num_clips, unit="clip")
    try:
        for index in range(num_clips):
            video = clips[index]["video"][None]  # (1, 3, F, H, W) in [-1, 1]
            reconstruction = vae.decode(vae.encode(video).mean)
            out.append(psnr_uint8(to_uint8(reconstruction)[0], to_uint8(video)[0]))
            progress.update(1)
    finally:
        progress.close()
    return out


def eval_pairs(count: int = 40, seed: int = 0) -> list[tuple[str, int]]:
    """`count` (prompt, seed) pairs: prompts uniform over the grammar (with repeats if needed), fresh seeds."""
    rng = np.random.default_rng([seed, 7])
    captions = all_captions()
    order = rng.permutation(len(captions))
    prompts = [captions[order[k % len(captions)]] for k in range(count)]
    return [(prompt, EVAL_SEED_BASE + seed * 10_000 + k) for k, prompt in enumerate(prompts)]


@dataclass
class GenerationEval:
    pairs: list[tuple[str, int]]
    verdicts: list[Verdict]
    videos: list[np.ndarray] = field(repr=False)  # uint8 (F, H, W, 3) each
    steps: int = 50
    guidance: float = 6.0

    @property
    def scores(self) -> dict[str, float]:
        return score(self.verdicts, [prompt for prompt, _ in self.pairs])


def evaluate_generation(pipe, pairs: list[tuple[str, int]], steps: int = 50, guidance: float = 6.0,
                        progress: Progress | None = None) -> GenerationEval:
    """Generate every (prompt, seed) pair with `pipe` and judge it."""
    verdicts, videos = [], []
    progress = or_silent(progress)
    progress.start("generate + judge", len(pairs), unit="clip")
    try:
        for prompt, seed in pairs:
            frames, height, width = TOY_SHAPE
            video = pipe(prompt=prompt, num_frames=frames, height=height, width=width, num_inference_steps=steps,
                         guidance_scale=guidance, seed=seed).frames[0]
            videos.append(video)
            verdicts.append(judge(video))
            progress.update(1)
    finally:
        progress.close()
    return GenerationEval(pairs, verdicts, videos, steps, guidance)


def contact_sheet(result: GenerationEval, path: Path, columns: int = 4) -> Path:
    """First / middle / last frame of every clip, titled with the prompt and the judge's verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cogvx.modeling.checkpoint import atomic_write

    n = len(result.videos)
    rows = -(-n // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 1.45 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        video, verdict, (prompt, seed) = result.videos[k], result.verdicts[k], result.pairs[k]
        picks = [0, len(video) // 2, len(video) - 1]
        gap = np.full((video.shape[1], 2, 3), 255, np.uint8)
        strip = np.concatenate(sum(([video[i], gap] for i in picks), [])[:-1], axis=1)
        ax.imshow(strip)
        wanted, seen = " ".join(parse_caption(prompt)), verdict.words
        right = seen == wanted
        ax.set_title(f"{wanted}\n{'=' if right else '->'} {seen}", fontsize=6.5, color="black" if right else "firebrick")
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))
    plt.close(figure)
    return path


def report_markdown(vae_psnr: list[float] | None, result: GenerationEval | None, model: str) -> str:
    lines = [f"# Toy model evaluation: {model}", ""]
    if vae_psnr is not None:
        values = np.asarray(vae_psnr)
        lines += ["## VAE reconstruction (held-out clips)", "",
                  f"{len(values)} clips (toy data seed {HELD_OUT_SEED}), 17 frames 64x64, PSNR on uint8 frames: "
                  f"mean {values.mean():.2f} dB, min {values.min():.2f} dB, median {np.median(values):.2f} dB.", ""]
    if result is not None:
        s = result.scores
        lines += [f"## Generation ({len(result.pairs)} prompt/seed pairs, {result.steps} DDIM steps, "
                  f"guidance {result.guidance:g})", "",
                  f"judge-correct: colour {s['colour']:.0%}, shape {s['shape']:.0%}, direction {s['motion']:.0%}, "
                  f"all three {s['all']:.0%}", "",
                  "| # | prompt | seed | colour | shape | motion | centroid dx, dy (px) |",
                  "|---|---|---|---|---|---|---|"]
        for k, ((prompt, seed), v) in enumerate(zip(result.pairs, result.verdicts)):
            truth = parse_caption(prompt)

            def mark(seen: str, wanted: str) -> str:
                return seen if seen == wanted else f"**{seen}** (not {wanted})"

            lines.append(f"| {k} | {prompt} | {seed} | {mark(v.colour, truth[0])} | {mark(v.shape, truth[1])} | "
                         f"{mark(v.motion, truth[2])} | {v.displacement[0]:+.1f}, {v.displacement[1]:+.1f} |")
        lines.append("")
    return "\n".join(lines)


def write_report(folder: str | Path, model: str, vae_psnr: list[float] | None = None,
                 result: GenerationEval | None = None) -> Path:
    """folder/report.md, report.json and (with generation) contact_sheet.png; returns report.md."""
    from cogvx.modeling.checkpoint import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data: dict = {"model": model}
    if vae_psnr is not None:
        data["vae_psnr"] = {"clips": len(vae_psnr), "mean": float(np.mean(vae_psnr)), "min": float(np.min(vae_psnr)),
                            "per_clip": [round(v, 3) for v in vae_psnr]}
    if result is not None:
        data["generation"] = {"steps": result.steps, "guidance": result.guidance, "scores": result.scores,
                              "pairs": [{"prompt": p, "seed": s, "verdict": asdict(v)}
                                        for (p, s), v in zip(result.pairs, result.verdicts)]}
        contact_sheet(result, folder / "contact_sheet.png")
    for name, text in (("report.json", json.dumps(data, indent=2) + "\n"),
                       ("report.md", report_markdown(vae_psnr, result, model))):
        atomic_write(folder / name, lambda temporary, text=text: Path(temporary).write_text(text))
    return folder / "report.md"


def evaluate_model(model_dir: str | Path, report: str | Path, *, vae_clips: int = 64, pairs: int = 40,
                   steps: int = 50, guidance: float = 6.0, seed: int = 0, engines: str | Path | None = None,
                   name: str | None = None,
                   progress: Progress | None = None) -> tuple[Path, list[float] | None, GenerationEval]:
    """VAE PSNR on `vae_clips` held-out clips (0: skip) and the judge on `pairs` generations -> report/.

    With `engines`, generation runs on that engine directory (ONNX Runtime), stages it lacks and the
    VAE PSNR on `model_dir`'s torch modules. Returns (report.md, per-clip PSNR, generations).
    """
    from cogvx.modeling.vae import CogVideoXVAE
    from cogvx.runtime.pipeline import CogVideoXPipeline, PipelineInputError

    model_dir = Path(model_dir)
    toy = "x".join(map(str, TOY_SHAPE))
    if engines:
        pipe = CogVideoXPipeline.from_engines(engines, model_dir)
        try:
            pipe.check_profiles(1, *TOY_SHAPE)  # one video per request (the CFG pair is inside the profile)
        except PipelineInputError as error:
            reason = str(error).split(";")[0]
            raise ToyModelError(f"the judge generates {toy} video and {engines} cannot ({reason}); export with "
                             f"--profile {toy}") from None
    else:
        pipe = CogVideoXPipeline.from_pretrained(model_dir)
        shape = (pipe.config.num_frames, pipe.config.height, pipe.config.width)
        if shape != TOY_SHAPE:
            raise ToyModelError(f"{model_dir} makes {'x'.join(map(str, shape))} video; the judge reads the toy world's "
                             f"{toy} (train a toy-world model with `cogvx train toy`)")
    psnr = evaluate_vae(CogVideoXVAE.from_pretrained(model_dir / "vae"), vae_clips, progress=progress) \
        if vae_clips else None
    result = evaluate_generation(pipe, eval_pairs(pairs, seed), steps, guidance, progress)
    return write_report(report, name or str(engines or model_dir), psnr, result), psnr, result
