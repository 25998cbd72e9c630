"""The ONNX Runtime backend against torch at real CogVideoX widths, side by side in one run, on CPU.

    python benchmarks/onnxruntime_real_sizes.py transformer   # 2B and 5B widths, 2 layers, CFG batch 2
    python benchmarks/onnxruntime_real_sizes.py decode        # streaming VAE decode, real VAE config

Random weights, fp32. The transformer: one forward per call, both backends alternating after a
warm-up, medians. The decode: each backend (and each ONNX Runtime session setting compared) in a
fresh child process, which decodes the whole video twice through the streaming graphs (conv caches
as graph I/O) or the torch module's own chunk loop: peak memory is the resident-set growth during
the first decode (VmHWM reset after loading), time is the second decode. Writes
benchmarks/results/onnxruntime_real_<what>.json with the CPU model and flags.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from attention_forms import alternate
from onnxruntime_backend import _reset_peak, _status

RESULTS = Path(__file__).parent / "results"
TRANSFORMER_SHAPES = [(9, 160, 240), (13, 240, 320)]
DECODE_FRAMES = [9, 17]


def cpu() -> dict:
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"model": model, "threads": torch.get_num_threads(),
            "simd": sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))}


def relative(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))


# -- transformer ---------------------------------------------------------------------------------

def _transformer_row(descriptor, module, spec, repeats: int) -> dict:
    """torch vs the ORT backend on the plugin-form graph (the default export) and the standard-op graph."""
    from cogvx.contract.components import COMPONENTS
    from cogvx.contract.shapes import ShapeProfile
    from cogvx.export.onnx_export import export_component
    from cogvx.runtime.onnxruntime_backend import OnnxRuntimeRunner, settings_for

    feeds = descriptor.sample_inputs(spec)  # CFG batch 2
    wrapped = descriptor.wrap(module)

    def run_torch():
        with torch.no_grad():
            return wrapped(**feeds).numpy()

    fns, extra = {"torch": run_torch}, {}
    with tempfile.TemporaryDirectory(prefix="cogvx-real-") as folder:
        for form in ("plugin", "standard"):
            started = time.perf_counter()
            (graph,) = export_component(descriptor, module, ShapeProfile.static(spec), torch.float32,
                                        Path(folder) / form, form)
            extra[f"export_{form}_s"] = round(time.perf_counter() - started, 1)
            started = time.perf_counter()
            runner = OnnxRuntimeRunner(Path(folder) / form / graph.file_name, ["CPUExecutionProvider"],
                                       settings_for(COMPONENTS["transformer"]))
            extra[f"session_load_{form}_s"] = round(time.perf_counter() - started, 1)
            fns[form] = lambda runner=runner: next(iter(runner(dict(feeds)).values())).numpy()
        expected = run_torch()
        errors = {f"error_vs_torch_{form}": relative(fns[form](), expected) for form in ("plugin", "standard")}
        ms = alternate(fns, repeats)
    return {"torch_ms": round(ms["torch"]), "onnxruntime_ms": round(ms["plugin"]),
            "onnxruntime_standard_attention_ms": round(ms["standard"]),
            "ratio_torch_over_onnxruntime": round(ms["torch"] / ms["plugin"], 2),
            "ratio_torch_over_onnxruntime_standard": round(ms["torch"] / ms["standard"], 2), **errors, **extra}


def transformer(repeats: int) -> dict:
    from cogvx.contract.shapes import ShapeSpec
    from cogvx.export.descriptors import TransformerDescriptor
    from cogvx.modeling.configs import get_preset, model_config
    from cogvx.modeling.transformer import CogVideoXTransformer

    rows = []
    for name in ("cogvideox-2b", "cogvideox-5b"):
        preset = get_preset(name)
        module = CogVideoXTransformer.from_preset(name, dtype=torch.float32, num_layers=2).eval()
        descriptor = TransformerDescriptor(model_config(module.config, preset.vae, preset.scheduler,
                                                        preset.text_encoder))
        for frames, height, width in TRANSFORMER_SHAPES:
            spec = ShapeSpec(batch=1, frames=frames, height=height, width=width,
                             text_len=module.config.max_text_seq_length)
            rows.append({"width": name, "shape": f"{frames}x{height}x{width}",
                         **_transformer_row(descriptor, module, spec, repeats)})
            print(json.dumps(rows[-1]), flush=True)
    return {"config": "2 transformer layers at the real width, CFG batch 2, fp32, random weights; ORT CPU with the "
                      "stage's cogvx session settings, on the default export (attention as the plugin node's "
                      "function body) and on `--attention standard` (opset-23 RotaryEmbedding + Attention)",
            "repeats": repeats, "rows": rows}


# -- streaming VAE decode ------------------------------------------------------------------------

# name -> (SessionSettings fields, graph optimization level override); "cogvx" is what the backend uses
ORT_VARIANTS = {
    "onnxruntime (ORT defaults)": {"arena": True},
    "onnxruntime (arena off, default order)": {"arena": False},
    "onnxruntime (cogvx: program order, arena off)": {"program_order": True, "arena": False},
}


def _decode_child(backend: str, folder: Path, frames: int, height: int, width: int) -> None:
    from cogvx.contract.components import DECODER_CACHE
    from cogvx.modeling.vae import DECODE_CHUNK, CogVideoXVAE, chunk_bounds

    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    latent_frames = (frames - 1) // 4 + 1
    latents = torch.randn(1, 16, latent_frames, height // 8, width // 8, generator=generator)
    if backend == "torch":
        vae = CogVideoXVAE.from_preset("cogvideox-5b").eval()

        def decode() -> np.ndarray:
            with torch.no_grad():
                return vae._decode_frames(latents).numpy()
    else:
        from cogvx.runtime.onnxruntime_backend import OnnxRuntimeRunner, SessionSettings

        settings = SessionSettings(**ORT_VARIANTS[backend])
        runners = {path.stem: OnnxRuntimeRunner(path, ["CPUExecutionProvider"], settings)
                   for path in folder.glob("vae_decoder_*.onnx")}

        def decode() -> np.ndarray:
            cache: dict[str, torch.Tensor] = {}
            chunks = []
            for index, (begin, end) in enumerate(chunk_bounds(latent_frames, DECODE_CHUNK)):
                runner = runners[f"vae_decoder_first_{end - begin}" if index == 0 else "vae_decoder_next"]
                out = runner({"latents": latents[:, :, begin:end], **cache})
                cache = {DECODER_CACHE.as_input(n): t for n, t in out.items()
                         if n.startswith(DECODER_CACHE.output_prefix)}
                chunks.append(out["frames"])
            return torch.cat(chunks, dim=2).numpy()
    before = _reset_peak()
    video = decode()
    peak = _status("VmHWM") - before
    started = time.perf_counter()
    decode()
    seconds = time.perf_counter() - started
    np.save(folder / f"{backend.split()[0]}_{abs(hash(backend))}.npy", video)
    print(json.dumps({"backend": backend, "seconds": round(seconds, 2), "peak_growth_mib": round(peak / 2**20),
                      "video": str(folder / f"{backend.split()[0]}_{abs(hash(backend))}.npy")}))


def decode(frames_list: list[int], height: int, width: int) -> dict:
    from cogvx.contract.shapes import ShapeProfile, ShapeSpec
    from cogvx.export.descriptors import VAEDecoderDescriptor
    from cogvx.export.onnx_export import export_graph
    from cogvx.modeling.configs import PRESETS
    from cogvx.modeling.vae import CogVideoXVAE

    vae = CogVideoXVAE.from_preset("cogvideox-5b").eval()
    rows = []
    for frames in frames_list:
        with tempfile.TemporaryDirectory(prefix="cogvx-decode-") as name:
            folder = Path(name)
            profile = ShapeProfile.static(ShapeSpec(1, frames, height, width, 226))
            for graph in VAEDecoderDescriptor(PRESETS["cogvideox-5b"]).graphs(vae, profile, torch.float32):
                export_graph(graph, folder / graph.file_name)
            variants = ["torch", *ORT_VARIANTS]
            results = {}
            for backend in variants:
                command = [sys.executable, __file__, "decode-child", "--backend", backend, "--folder", str(folder),
                           "--frames", str(frames), "--height", str(height), "--width", str(width)]
                out = subprocess.run(command, capture_output=True, text=True, check=False)
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                results[backend] = json.loads(out.stdout.strip().splitlines()[-1])
                print(json.dumps({"frames": frames, **results[backend]}), flush=True)
            reference = np.load(results["torch"].pop("video"))
            torch_s, torch_mib = results["torch"]["seconds"], results["torch"]["peak_growth_mib"]
            for backend in ORT_VARIANTS:
                row = results[backend]
                row["ratio_torch_over_onnxruntime"] = round(torch_s / row["seconds"], 2)
                row["peak_over_torch"] = round(row["peak_growth_mib"] / torch_mib, 2)
                row["error_vs_torch"] = relative(np.load(row.pop("video")), reference)
            rows.append({"video": f"{frames}x{height}x{width}", "results": list(results.values())})
    return {"config": "cogvideox-5b VAE config (the 2B's is the same but for the scaling factor), random weights, "
                      "fp32, streaming decode (2 latent frames per call after the first chunk)", "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["transformer", "decode", "decode-child"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, nargs="*", default=None)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--backend")
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.what == "decode-child":
        return _decode_child(args.backend, args.folder, args.frames[0], args.height, args.width)
    import onnxruntime

    header = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "cpu": cpu()}
    if args.what == "transformer":
        body = transformer(args.repeats)
    else:
        body = decode(args.frames or DECODE_FRAMES, args.height, args.width)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"onnxruntime_real_{args.what}.json"
    path.write_text(json.dumps(header | body, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
