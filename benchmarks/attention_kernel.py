"""The Triton RoPE attention kernel vs torch SDPA (flash) plus a separate RoPE, at CogVideoX's real shapes.

49 x 480 x 720: 226 text rows + 13 x 30 x 45 = 17550 vision rows (17776), batch 2 (guidance), bf16:
- 2B: 30 heads x 64, no RoPE (its positions are added before the blocks);
- 5B: 48 heads x 64, 3D RoPE (real tables) on the vision rows of q and k.
For every tactic of the kernel (engines/triton_attention.py GPU_TACTICS) and for the reference path
(`reference_rope_attention`: RoPE in fp32 on the vision rows, then SDPA restricted to the flash
backend), side by side: median time, TFLOP/s (4 S^2 Dh heads batch / time), the share of the GPU's
dense bf16 peak, and the error of each against an fp32 reference on the first heads (memory-
efficient SDPA, fp32), relative to the output's scale. The goal: never slower than flash + RoPE,
>= 50 % of peak. Results: benchmarks/results/attention_kernel_<gpu>.json.

    python benchmarks/attention_kernel.py [--batch 2] [--repeats 20]
    python benchmarks/attention_kernel.py --tiny   # the same code in Triton's CPU interpreter, tiny
                                                   # shapes: checks the script; its times mean nothing
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# dense bf16 tensor-core peak, TFLOP/s, by a part of the device name
PEAK_BF16 = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0,
             "A10": 125.0, "RTX 4090": 165.2}
MODELS = {"2b": (30, 64, False), "5b": (48, 64, True)}  # heads, head dim, RoPE


def peak(name: str) -> float | None:
    return next((value for key, value in PEAK_BF16.items() if key in name), None)


def inputs(model: str, batch: int, text: int, grid: tuple[int, int, int], dtype, device, seed: int = 0):
    import torch

    from cogvx.modeling.configs import get_preset
    from cogvx.modeling.positions import position_tables

    heads, head_dim, rope = MODELS[model]
    frames, h, w = grid
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, text + frames * h * w, head_dim, generator=generator).to(device, dtype)
               for _ in range(3))
    cos = sin = None
    if rope:  # the 5B's own tables for this grid (latent frames x latent height x width = grid x patch)
        config = get_preset("cogvideox-5b").transformer
        tables = position_tables(config, frames, h * config.patch_size, w * config.patch_size, device)
        cos, sin = tables.rope_cos, tables.rope_sin  # (V, Dh) fp32
    return q, k, v, cos, sin, text


def timer(device):
    """A callable timing fn() in ms: CUDA events on a GPU, perf_counter on the CPU."""
    import torch

    def cuda(fn) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def cpu(fn) -> float:
        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) * 1e3

    return cuda if device.type == "cuda" else cpu


def measure(model: str, batch: int, text: int, grid, repeats: int, device, dtype) -> dict:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from cogvx.engines.triton_attention import TACTICS, launch_config, triton_rope_attention
    from cogvx.modeling.attention import reference_rope_attention

    q, k, v, cos, sin, text = inputs(model, batch, text, grid, dtype, device)
    B, N, S, Dh = q.shape
    flop = 4 * S * S * Dh * N * B
    on_gpu = device.type == "cuda"
    flash = sdpa_kernel(SDPBackend.FLASH_ATTENTION) if on_gpu else contextlib.nullcontext()
    heads = min(N, 4)  # the fp32 reference on the first heads (its memory)
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION) if on_gpu else contextlib.nullcontext():
        expected = reference_rope_attention(*(t[:, :heads].float() for t in (q, k, v)), cos, sin, text)
    scale = max(1.0, expected.abs().max().item())

    def error(out) -> float:
        return (out[:, :heads].float() - expected).abs().max().item() / scale

    candidates = {f"triton tactic {t}": (lambda t=t: triton_rope_attention(q, k, v, cos, sin, text, t))
                  for t in range(TACTICS)}

    def reference():
        with flash:
            return reference_rope_attention(q, k, v, cos, sin, text)

    candidates["sdpa flash + rope"] = reference
    time_of = timer(device)
    rows = {}
    for name, fn in candidates.items():
        out = fn()  # warm-up: compiles the kernel
        rows[name] = {"error": error(out)}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):  # alternating, so drift hits every candidate alike
        for name, fn in candidates.items():
            times[name].append(time_of(fn))
    gpu_peak = peak(torch.cuda.get_device_name(device)) if on_gpu else None
    for name, values in times.items():
        ms = statistics.median(values)
        tflops = flop / ms / 1e9
        rows[name] |= {"ms": round(ms, 3), "tflops": round(tflops, 1),
                       "peak_share": round(tflops / gpu_peak, 3) if gpu_peak else None}
        if name.startswith("triton"):
            rows[name]["config"] = launch_config(Dh, dtype, interpreted=not on_gpu, tactic=int(name.split()[-1]))
    best = min((name for name in rows if name.startswith("triton")), key=lambda name: rows[name]["ms"])
    return {"model": model, "shape": [B, N, S, Dh], "text": text, "rope": cos is not None, "dtype": str(dtype),
            "flop": flop, "rows": rows, "best_tactic": best,
            "flash_over_best": round(rows["sdpa flash + rope"]["ms"] / rows[best]["ms"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="Triton's CPU interpreter at a tiny shape (no file)")
    args = parser.parse_args()
    if args.tiny:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch

    if not args.tiny and not torch.cuda.is_available():
        sys.exit("attention_kernel.py needs a CUDA GPU (or --tiny to check the script in Triton's interpreter)")
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    text, grid, repeats = (5, (2, 2, 3), 2) if args.tiny else (226, (13, 30, 45), args.repeats)
    results = {"device": "Triton interpreter (CPU)" if args.tiny else torch.cuda.get_device_name(device),
               "torch": torch.__version__, "python": platform.python_version(), "models": []}
    for model in MODELS:
        result = measure(model, args.batch, text, grid, repeats, device, dtype)
        results["models"].append(result)
        for name, row in result["rows"].items():
            share = f"{row['peak_share']:.0%} of peak" if row["peak_share"] else ""
            print(f"{model} {tuple(result['shape'])}  {name:<18} {row['ms']:9.3f} ms  {row['tflops']:7.1f} TFLOP/s  "
                  f"{share:<12} error {row['error']:.1e}")
        print(f"{model}: flash + rope / best tactic = {result['flash_over_best']}")
    if args.tiny:
        return
    name = results["device"].replace(" ", "_").replace("/", "_")
    path = RESULTS / f"attention_kernel_{name}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
