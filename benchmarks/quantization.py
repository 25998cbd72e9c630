"""INT8 and FP8 engines against fp32: quality on the trained toy model, speed at the real 2B width.

    python benchmarks/quantization.py quality   # toy: 40 held-out pairs, 50 DDIM steps, ORT CPU
    python benchmarks/quantization.py speed     # transformer, 2B width, 2 layers, ORT CPU: int8 / fp8 vs fp32

quality: for each of the toy world's 40 evaluation prompt/seed pairs, the fp32 torch reference video
and the same request through fp32, int8 and fp8 ONNX Runtime engines (text encoder and decoder
fp32 in every engine directory; only the transformer is quantized): video PSNR against the torch
reference (mean over the pairs) and the judge's colour / shape / direction accuracy. Also the
calibration wall time per prompt and the size of each engine directory's transformer.

speed: the transformer alone, real 2B width (30 heads x 64), 2 layers, random weights, CFG batch 2
at 9x160x240, medians of ORT runs side by side in one process, with the CPU's VNNI flag.

Each writes benchmarks/results/quantization_<what>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
PRECISIONS = ("fp32", "int8", "fp8")


def quality(pairs: int, steps: int, calibration_prompts: int) -> dict:
    from cogvx.calibration.calibrate import QuantConfig
    from cogvx.calibration.prompts import read_prompts
    from cogvx.contract.shapes import ShapeProfile, ShapeSpec
    from cogvx.engines.export_dir import calibrate_engines, export_engines
    from cogvx.models import resolve_model
    from cogvx.modeling.precision import Precision
    from cogvx.runtime.pipeline import CogVideoXPipeline
    from cogvx.runtime.validate import video_psnr
    from cogvx.training.toy.evaluate import eval_pairs, evaluate_generation

    torch.set_num_threads(2)
    model = resolve_model("toy")
    profile = ShapeProfile.static(ShapeSpec(1, 17, 64, 64, 32))
    root = Path(tempfile.mkdtemp(prefix="cogvx-quant-"))
    chosen = eval_pairs(pairs)
    reference = evaluate_generation(CogVideoXPipeline.from_pretrained(model), chosen, steps)
    result = {"model": "toy (cogvx/assets/toy)", "pairs": pairs, "steps": steps, "guidance": 6.0,
              "calibration_prompts": calibration_prompts, "rows": {}}
    result["rows"]["torch fp32"] = {"scores": reference.scores}
    for name in PRECISIONS:
        out = root / name
        precision = Precision.parse(name)
        row = {}
        if precision.is_quantized:
            started = time.perf_counter()
            prompts = read_prompts(None, calibration_prompts)
            calibrate_engines(model, out, QuantConfig(precision), prompts, steps=steps)
            row["calibration_s_per_prompt"] = round((time.perf_counter() - started) / len(prompts), 2)
        export_engines(model, out, ["text_encoder", "transformer", "vae_decoder"], profile, precision)
        engine = evaluate_generation(CogVideoXPipeline.from_engines(out), chosen, steps)
        psnr = []
        for expected, got in zip(reference.videos, engine.videos):
            as_float = [torch.from_numpy(v).permute(0, 3, 1, 2)[None].float() / 255 for v in (expected, got)]
            frames = video_psnr(*as_float)
            psnr.append(sum(frames) / len(frames))
        row |= {"psnr_vs_torch_fp32_db_mean": round(sum(psnr) / len(psnr), 2),
                "psnr_vs_torch_fp32_db_min": round(min(psnr), 2), "scores": engine.scores,
                "transformer_bytes": (out / "transformer.onnx").stat().st_size}
        result["rows"][f"onnxruntime {name}"] = row
        print(json.dumps({name: result["rows"][f"onnxruntime {name}"]}), flush=True)
    return result


def speed(repeats: int) -> dict:
    import onnxruntime as ort

    from cogvx.calibration.calibrate import QuantConfig, observe, reduce
    from cogvx.calibration.qdq import register_translations
    from cogvx.calibration.quantize import quantize
    from cogvx.contract.shapes import ShapeProfile, ShapeSpec
    from cogvx.export.descriptors import descriptor_for
    from cogvx.export.onnx_export import export_component
    from cogvx.modeling.configs import PRESETS
    from cogvx.modeling.precision import Precision
    from cogvx.modeling.transformer import CogVideoXTransformer
    from cogvx.runtime.onnxruntime_backend import cpu_has_vnni, fuses_qdq_correctly

    torch.set_num_threads(2)
    register_translations()
    config = PRESETS["cogvideox-2b"]
    transformer = CogVideoXTransformer.from_preset("cogvideox-2b", num_layers=2)
    descriptor = descriptor_for("transformer", config)
    spec = ShapeSpec(1, 9, 160, 240, 226)
    inputs = descriptor.sample_inputs(spec)
    # ranges from the sample inputs themselves (random weights: a calibration of what is timed)
    observers, handles, state = observe(transformer, QuantConfig(Precision.INT8).skip, 1)
    with torch.no_grad():
        descriptor.wrap(transformer)(**inputs)
    for handle in handles:
        handle.remove()
    root = Path(tempfile.mkdtemp(prefix="cogvx-quant-speed-"))
    seconds, sizes = {}, {}
    for name in PRECISIONS:
        precision = Precision.parse(name)
        module = transformer
        if precision.is_quantized:
            module = quantize(transformer, reduce(transformer, observers, QuantConfig(precision), ["speed"], 1, 6.0, 0))
        folder = root / name
        export_component(descriptor, module, ShapeProfile.static(spec), torch.float32, folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        if not fuses_qdq_correctly(precision):
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        session = ort.InferenceSession(str(folder / "transformer.onnx"), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
        session.run(None, feeds)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times)
        sizes[name] = (folder / "transformer.onnx").stat().st_size
        print(json.dumps({name: round(seconds[name] * 1000, 1)}), flush=True)
    return {"shape": f"CFG batch 2, {spec.frames}x{spec.height}x{spec.width}, text {spec.text_len}",
            "transformer": "cogvideox-2b width, 2 layers, random weights", "repeats": repeats,
            "cpu_vnni": cpu_has_vnni(), "threads": 2,
            "ms": {k: round(v * 1000, 1) for k, v in seconds.items()},
            "speedup_over_fp32": {k: round(seconds["fp32"] / v, 2) for k, v in seconds.items()},
            "graph_bytes": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["quality", "speed"])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--calibration-prompts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = quality(args.pairs, args.steps, args.calibration_prompts) if args.what == "quality" else speed(args.repeats)
    result = {"torch": torch.__version__, "python": sys.version.split()[0], **result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"quantization_{args.what}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
