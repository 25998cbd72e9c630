"""ONNX Runtime engines vs torch eager, side by side in one run; export cost of the real 2B.

    python benchmarks/onnxruntime_backend.py components      # per stage, toy config, CPU
    python benchmarks/onnxruntime_backend.py decode-memory   # streaming vs whole-video decode graphs on ORT
    python benchmarks/onnxruntime_backend.py export-2b       # real cogvideox-2b transformer, fp16, random weights

Each writes benchmarks/results/onnxruntime_<name>.json. Memory is measured in a fresh child
process per mode: the peak resident set (VmHWM, reset with /proc/self/clear_refs after loading)
minus the resident set before the measured work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    return _status("VmRSS")


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- per component -------------------------------------------------------------------------------

def components(repeats: int) -> dict:
    from cogvx.contract.shapes import ShapeProfile, ShapeSpec
    from cogvx.engines.export_dir import export_engines
    from cogvx.models import resolve_model
    from cogvx.modeling.positions import position_tables
    from cogvx.modeling.text_encoder import tokenize_prompts
    from cogvx.runtime.pipeline import CogVideoXPipeline

    torch.set_num_threads(2)
    checkpoint = resolve_model("toy")
    spec = ShapeSpec(batch=1, frames=17, height=64, width=64, text_len=32)
    engines_dir = Path(tempfile.mkdtemp(prefix="cogvx-bench-"))
    export_engines(checkpoint, engines_dir, ["text_encoder", "transformer", "vae_decoder", "vae_encoder"],
                   ShapeProfile.static(spec))
    reference = CogVideoXPipeline.from_pretrained(checkpoint)
    engines = CogVideoXPipeline.from_engines(engines_dir)
    config = reference.config
    generator = torch.Generator().manual_seed(0)
    ids = tokenize_prompts(reference.tokenizer, ["a red square moving right", ""], spec.text_len)  # (2, L)
    frames = spec.latent_frames()
    latents = torch.randn(2, frames, config.vae.latent_channels, 8, 8, generator=generator)
    denoiser_inputs = {"latents": latents, "text_embeddings": torch.randn(2, spec.text_len, 64, generator=generator),
                       "timestep": torch.tensor([500, 500]),
                       **{k: v for k, v in position_tables(config.transformer, frames, 8, 8)._asdict().items()
                          if v is not None}}
    video = torch.rand(1, 3, 1, spec.height, spec.width, generator=generator) * 2 - 1
    decode_latents = latents[:1]

    cases = {
        "text_encoder (2x32 tokens)": lambda pipe: pipe.stages["text_encoder"](input_ids=ids),
        "denoiser (CFG batch 2, 5x8x8 latents)": lambda pipe: pipe.stages["denoiser"](**denoiser_inputs),
        "vae_decoder (streaming, 17x64x64)": lambda pipe: list(pipe.decode_stream(decode_latents)),
        "vae_encoder (1 frame 64x64)": lambda pipe: pipe.stages["vae_encoder"](video=video),
    }
    rows = []
    for name, case in cases.items():
        torch_s = _median_seconds(lambda: case(reference), repeats)
        ort_s = _median_seconds(lambda: case(engines), repeats)
        rows.append({"stage": name, "torch_ms": round(1000 * torch_s, 2), "onnxruntime_ms": round(1000 * ort_s, 2),
                     "ratio_torch_over_onnxruntime": round(torch_s / ort_s, 2)})
        print(json.dumps(rows[-1]))
    return {"model": "toy (random weights)", "device": "CPU", "threads": 2, "repeats": repeats, "rows": rows}


# -- streaming vs whole decode on ORT -----------------------------------------------------------

def _decode_child(mode: str, folder: Path, frames: int, arena: bool) -> None:
    import numpy as np
    import onnxruntime as ort

    from cogvx.contract.components import DECODER_CACHE
    from cogvx.modeling.vae import DECODE_CHUNK, chunk_bounds

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.enable_cpu_mem_arena = options.enable_mem_pattern = arena
    sessions = {path.stem: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for path in folder.glob(f"{mode}*.onnx")}
    meta = json.loads((folder / "shape.json").read_text())
    latents = np.random.default_rng(0).standard_normal(meta["latents"]).astype(np.float32)
    before = _reset_peak()
    start = time.perf_counter()
    if mode == "whole":
        sessions["whole"].run(None, {"latents": latents})
    else:
        cache = {}
        for index, (begin, end) in enumerate(chunk_bounds(frames, DECODE_CHUNK)):
            session = sessions[f"stream_first_{end - begin}" if index == 0 else "stream_next"]
            names = [o.name for o in session.get_outputs()]
            outputs = dict(zip(names, session.run(None, {"latents": latents[:, :, begin:end], **cache})))
            cache = {DECODER_CACHE.as_input(name): value for name, value in outputs.items()
                     if name.startswith(DECODER_CACHE.output_prefix)}
    seconds = time.perf_counter() - start
    print(json.dumps({"mode": mode, "peak_growth_bytes": _status("VmHWM") - before, "seconds": round(seconds, 2)}))


def decode_memory(frames: int, height: int, width: int) -> dict:
    from torch import nn

    from cogvx.contract.shapes import ShapeProfile, ShapeSpec
    from cogvx.export.descriptors import Graph, VAEDecoderDescriptor
    from cogvx.export.onnx_export import export_graph
    from cogvx.modeling.configs import PRESETS
    from cogvx.modeling.vae import CogVideoXVAE

    model = PRESETS["cogvideox-5b"]
    vae = CogVideoXVAE.from_preset("cogvideox-5b").eval()
    profile = ShapeProfile.static(ShapeSpec(1, frames, height, width, 226))
    folder = Path(tempfile.mkdtemp(prefix="cogvx-decode-"))
    for graph in VAEDecoderDescriptor(model).graphs(vae, profile, torch.float32):
        export_graph(graph, folder / f"stream_{graph.role}.onnx")  # stream_first_N, stream_next

    class WholeDecode(nn.Module):  # the naive export: one graph, every frame at once (no cache I/O)
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, latents):
            return self.vae.decode_chunk(latents, None)[0]  # every latent frame in one pass

    latent_frames = profile.opt.latent_frames()
    shape = [1, model.vae.latent_channels, latent_frames, height // 8, width // 8]

    whole = Graph("whole", "whole.onnx", WholeDecode().eval(), args=(torch.randn(shape),), input_names=["latents"],
                  output_names=["frames"])
    export_graph(whole, folder / "whole.onnx")
    (folder / "shape.json").write_text(json.dumps({"latents": shape}))
    del vae
    result = {"video": f"{frames}x{height}x{width}", "vae": "cogvideox-5b config, random weights, fp32, ORT CPU",
              "whole": "one graph decoding every latent frame at once", "streaming": "first-chunk + next-chunk "
              "graphs, 2 latent frames per call, conv caches as graph I/O"}
    for arena in (True, False):
        rows = {}
        for mode in ("stream", "whole"):
            command = [sys.executable, __file__, "decode-child", "--mode", mode, "--folder", str(folder),
                       "--frames", str(latent_frames)] + ([] if arena else ["--no-arena"])
            rows[mode] = json.loads(subprocess.run(command, capture_output=True, text=True,
                                                   check=True).stdout.strip().splitlines()[-1])
            print(json.dumps({"arena": arena, **rows[mode]}))
        result["cpu_arena_on" if arena else "cpu_arena_off"] = {
            "streaming_peak_mib": round(rows["stream"]["peak_growth_bytes"] / 2**20),
            "whole_peak_mib": round(rows["whole"]["peak_growth_bytes"] / 2**20),
            "ratio_whole_over_streaming": round(rows["whole"]["peak_growth_bytes"]
                                                / max(1, rows["stream"]["peak_growth_bytes"]), 2),
            "streaming_s": rows["stream"]["seconds"], "whole_s": rows["whole"]["seconds"]}
    return result


# -- export cost of the real 2B -----------------------------------------------------------------

def _export_2b_child(folder: Path, frames: int, height: int, width: int) -> None:
    from cogvx.contract.shapes import ShapeProfile, ShapeSpec
    from cogvx.export.descriptors import TransformerDescriptor
    from cogvx.export.onnx_export import export_component
    from cogvx.modeling.configs import PRESETS
    from cogvx.modeling.transformer import CogVideoXTransformer

    start = time.perf_counter()
    transformer = CogVideoXTransformer.from_preset("cogvideox-2b", dtype=torch.float16)
    loaded_s = time.perf_counter() - start
    before = _reset_peak()
    profile = ShapeProfile.static(ShapeSpec(1, frames, height, width, 226))
    start = time.perf_counter()
    (graph,) = export_component(TransformerDescriptor(PRESETS["cogvideox-2b"]), transformer, profile, torch.float16,
                                folder)
    path = folder / graph.file_name
    seconds = time.perf_counter() - start
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    print(json.dumps({"params": sum(p.numel() for p in transformer.parameters()),
                      "export_s": round(seconds, 1), "build_random_weights_s": round(loaded_s, 1),
                      "rss_before_export_mib": round(before / 2**20),
                      "peak_rss_mib": round(_status("VmHWM") / 2**20),
                      "peak_growth_mib": round((_status("VmHWM") - before) / 2**20),
                      "files_mib": {k: round(v / 2**20) for k, v in sizes.items()}, "path": str(path)}))


def export_2b(frames: int, height: int, width: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="cogvx-2b-") as folder:
        out = subprocess.run([sys.executable, __file__, "export-2b-child", "--folder", folder, "--frames", str(frames),
                              "--height", str(height), "--width", str(width)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        row = json.loads(out.stdout.strip().splitlines()[-1])
    row.pop("path")
    print(json.dumps(row))
    return {"model": "cogvideox-2b transformer, random weights, fp16, static profile "
                     f"{frames}x{height}x{width}, CPU", **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["components", "decode-memory", "export-2b", "decode-child", "export-2b-child"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--mode")
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--no-arena", action="store_true", help="decode-child: ORT CPU memory arena off")
    args = parser.parse_args()
    if args.what == "decode-child":
        return _decode_child(args.mode, args.folder, args.frames, not args.no_arena)
    if args.what == "export-2b-child":
        return _export_2b_child(args.folder, args.frames, args.height, args.width)
    if args.what == "components":
        result = components(args.repeats)
    elif args.what == "decode-memory":
        result = decode_memory(args.frames or 17, args.height or 128, args.width or 192)
    else:
        result = export_2b(args.frames or 49, args.height or 480, args.width or 720)
    result = {"torch": torch.__version__, **result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"onnxruntime_{args.what.replace('-', '_')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
