"""The pipeline, measured: wall time vs diffusers, and peak memory of streaming vs whole decode.

1. Wall time of our pipeline vs diffusers' `CogVideoXPipeline` on the same tiny random checkpoint,
   same embeddings, seed and settings, alternated in one run (ratio = diffusers / ours; >= 1 means
   ours is faster).
2. Peak memory of the streaming decode (chunks of 2 latent frames, conv cache carried) against
   decoding every latent frame in one chunk, with the real CogVideoX VAE config (random weights)
   at the largest size that fits this machine comfortably. Each decode runs in a fresh process and
   reports its peak RSS above the RSS after loading.

    python benchmarks/pipeline.py [--frames 17 --height 128 --width 192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
RESULTS = Path(__file__).parent / "results"


def wall_time(repeats: int) -> dict:
    from tiny_models import TINY_FAMILIES, make_diffusers_pipeline

    from cogvx.runtime.pipeline import CogVideoXPipeline

    rows = []
    for family in ("2b", "5b"):
        with tempfile.TemporaryDirectory() as folder:
            reference = make_diffusers_pipeline(family, Path(folder), seed=0)
            ours = CogVideoXPipeline.from_pretrained(folder)
            _, _, _, frames, height, width = TINY_FAMILIES[family]
            shape = (1, ours.config.max_text_len, ours.config.transformer.text_embed_dim)
            embeds, negative = torch.randn(shape), torch.randn(shape)
            settings = dict(prompt_embeds=embeds, negative_prompt_embeds=negative, num_frames=frames, height=height,
                            width=width, num_inference_steps=20, guidance_scale=6.0)

            def run_ours():
                return ours(**settings, seed=0).frames

            def run_reference():
                with torch.no_grad():
                    return reference(**settings, generator=torch.Generator().manual_seed(0), output_type="np").frames

            times = {"ours": [], "diffusers": []}
            run_ours(), run_reference()  # warm-up
            for _ in range(repeats):
                for name, fn in (("ours", run_ours), ("diffusers", run_reference)):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
            ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["diffusers"])
            rows.append({"family": family, "steps": 20, "video": f"{frames}x{height}x{width}",
                         "ours_s": round(ours_s, 4), "diffusers_s": round(ref_s, 4),
                         "ratio_diffusers_over_ours": round(ref_s / ours_s, 3)})
            print(json.dumps(rows[-1]))
    return {"wall_time": rows}


def _decode_child(mode: str, frames: int, height: int, width: int) -> None:
    """Runs in a fresh process: load the real VAE config, decode, print peak RSS growth in bytes."""
    from cogvx.modeling.vae import CogVideoXVAE
    from cogvx.modeling.vae import DECODE_CHUNK, chunk_bounds

    torch.set_num_threads(2)
    vae = CogVideoXVAE.from_preset("cogvideox-5b")
    latents = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.inference_mode():
        if mode == "streaming":
            cache = None
            for begin, end in chunk_bounds(latents.shape[2], DECODE_CHUNK):
                chunk, cache = vae.decode_chunk(latents[:, :, begin:end], cache)
                del chunk
        else:
            vae.decode_chunk(latents, None)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "peak_growth_bytes": (peak - before) * 1024, "seconds": round(seconds, 2)}))


def decode_memory(frames: int, height: int, width: int) -> dict:
    rows = {}
    for mode in ("streaming", "whole"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--frames", str(frames), "--height",
                              str(height), "--width", str(width)], capture_output=True, text=True, check=True)
        rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(rows[mode]))
    return {"decode_memory": {
        "video": f"{frames}x{height}x{width}", "vae": "cogvideox-5b config, random weights, fp32, CPU",
        "streaming_peak_mib": round(rows["streaming"]["peak_growth_bytes"] / 2**20),
        "whole_peak_mib": round(rows["whole"]["peak_growth_bytes"] / 2**20),
        "ratio_whole_over_streaming": round(rows["whole"]["peak_growth_bytes"] / rows["streaming"]["peak_growth_bytes"], 2),
        "streaming_s": rows["streaming"]["seconds"], "whole_s": rows["whole"]["seconds"],
    }}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["streaming", "whole"])
    args = parser.parse_args()
    if args.child:
        return _decode_child(args.child, args.frames, args.height, args.width)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    results |= wall_time(args.repeats)
    results |= decode_memory(args.frames, args.height, args.width)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"pipeline_cpu_{args.frames}x{args.height}x{args.width}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
