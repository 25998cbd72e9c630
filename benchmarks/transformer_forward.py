"""One transformer forward of the real 2B / 5B configs: ours vs diffusers, same weights and inputs.

On CPU the configs keep their real widths but run fewer layers on a small video so they fit;
with a GPU they also run 49x480x720 in bf16 with every layer and report TFLOP/s.
Both models are timed alternately in one run; the ratio is reference_time / our_time
(>= 1 means ours is faster). Results go to benchmarks/results/transformer_forward_<device>.json.

    python benchmarks/transformer_forward.py [--layers 2] [--frames 9 --height 160 --width 240] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from cogvx.modeling.configs import get_preset
from cogvx.modeling.transformer import CogVideoXTransformer

RESULTS = Path(__file__).parent / "results"


def reference_model(ours: CogVideoXTransformer):
    from diffusers import CogVideoXTransformer3DModel

    config = {k: v for k, v in ours.config.to_dict().items() if not k.startswith("_")}
    model = CogVideoXTransformer3DModel(**config)  # not on meta: the 2B's sincos buffer is computed in __init__
    model.load_state_dict(ours.state_dict())
    return model.to(next(ours.parameters()).dtype).eval().requires_grad_(False)


def flops(config, tokens: int, text: int) -> float:
    """Matmul FLOPs of one forward: 24 S D^2 per layer for the linears, 4 S^2 D for attention."""
    s, d = tokens + text, config.hidden_size
    return config.num_layers * (24 * s * d * d + 4 * s * s * d)


def measure(preset: str, layers: int | None, frames: int, height: int, width: int, dtype, device, repeats: int) -> dict:
    overrides = {"num_layers": layers} if layers else {}
    ours = CogVideoXTransformer.from_preset(preset, dtype=dtype, **overrides).to(device)
    reference = reference_model(ours).to(device)
    config = ours.config
    latent_frames, latent_h, latent_w = (frames - 1) // 4 + 1, height // 8, width // 8
    generator = torch.Generator(device="cpu").manual_seed(0)
    latents = torch.randn(1, latent_frames, config.in_channels, latent_h, latent_w, generator=generator).to(device, dtype)
    text = torch.randn(1, config.max_text_seq_length, config.text_embed_dim, generator=generator).to(device, dtype)
    timestep = torch.tensor([500], device=device)
    rotary = None
    if config.use_rotary_positional_embeddings:
        tables = ours.position_tables(latent_frames, latent_h, latent_w, device)
        rotary = (tables.rope_cos, tables.rope_sin)

    def run_ours():
        return ours(latents, text, timestep)

    def run_reference():
        return reference(latents, text, timestep, image_rotary_emb=rotary, return_dict=False)[0]

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    times = {"ours": [], "diffusers": []}
    with torch.no_grad():
        _, a = timed(run_ours)  # warm-up, and the outputs must agree
        _, b = timed(run_reference)
        max_error = (a.float() - b.float()).abs().max().item()
        for _ in range(repeats):
            for name, fn in (("ours", run_ours), ("diffusers", run_reference)):
                times[name].append(timed(fn)[0])
    ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    tokens = latent_frames // (config.patch_size_t or 1) * (latent_h // 2) * (latent_w // 2)
    return {
        "preset": preset, "layers": config.num_layers, "video": f"{frames}x{height}x{width}",
        "dtype": str(dtype).removeprefix("torch."), "vision_tokens": tokens,
        "ours_s": round(ours_s, 4), "diffusers_s": round(ref_s, 4),
        "ratio_diffusers_over_ours": round(ref_s / ours_s, 3),
        "ours_tflops": round(flops(config, tokens, config.max_text_seq_length) / ours_s / 1e12, 3),
        "max_abs_diff_vs_diffusers": max_error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = []
    for preset in ("cogvideox-2b", "cogvideox-5b"):
        runs.append(measure(preset, args.layers, args.frames, args.height, args.width, torch.float32,
                            torch.device("cpu") if device.type == "cpu" else device, args.repeats))
        print(json.dumps(runs[-1]))
        if device.type == "cuda":
            runs.append(measure(preset, None, 49, 480, 720, torch.bfloat16, device, 3))
            print(json.dumps(runs[-1]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"transformer_forward_{device.type}.json"
    out.write_text(json.dumps({
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "runs": runs,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
