"""Shared helpers: the toy pipeline, cogvx and modelopt calibration with the same forward loop."""
import copy, math, time, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)  # 2 shared cores: keep to one

from cogvx.models import resolve_model
from cogvx.runtime.pipeline import CogVideoXPipeline
from cogvx.runtime.stages import torch_stages
from cogvx.calibration.calibrate import QuantConfig, calibrate
from cogvx.calibration.quantize import DEFAULT_SKIP, quantize, quantized_layers
from cogvx.calibration.prompts import TOY_PROMPTS
from cogvx.modeling.precision import Precision
from cogvx.export.descriptors import descriptor_for
from cogvx.contract.shapes import ShapeSpec

import modelopt.torch.quantization as mtq
from modelopt.torch.quantization.nn import TensorQuantizer

PROMPTS = list(TOY_PROMPTS[:4])
STEPS = 10
GUIDANCE = 6.0


def load_pipe():
    return CogVideoXPipeline.from_pretrained(resolve_model("toy"))


def with_denoiser(pipe, model):
    """Point the pipeline's denoiser stage at `model`; returns the previous stage."""
    old = pipe.stages["denoiser"]
    pipe.stages = pipe.stages | {"denoiser": torch_stages(transformer=model)["denoiser"]}
    return old


def run_prompts(pipe, prompts=PROMPTS, steps=STEPS, seed=0):
    for i, p in enumerate(prompts):
        pipe(prompt=p, num_inference_steps=steps, guidance_scale=GUIDANCE, seed=seed + i, output_type="latent")


def skip_entries(skip=DEFAULT_SKIP):
    """cogvx's skip patterns as modelopt quant_cfg entries (quantizer names are <module>.<x>_quantizer)."""
    return [{"quantizer_name": f"{p}.*", "enable": False} for p in skip]


LINEARS_ONLY = [{"quantizer_name": "*", "parent_class": "nn.LayerNorm", "enable": False}]


def mo_config(name, alpha=None, fp8_weight_axis=None, linears_only=True):
    """A shipped config + cogvx's skip list (+ LayerNorm quantizers off). Later entries win, so
    overrides of the shipped entries go first and the disables last."""
    cfg = copy.deepcopy(getattr(mtq, name))
    entries = list(cfg["quant_cfg"])
    if fp8_weight_axis is not None:
        entries.append({"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": (4, 3), "axis": fp8_weight_axis}})
    entries += skip_entries() + (LINEARS_ONLY if linears_only else [])
    cfg["quant_cfg"] = entries
    if alpha is not None:
        cfg["algorithm"] = {"method": "smoothquant", "alpha": alpha}
    return cfg


def mo_calibrate(pipe, cfg, prompts=PROMPTS, steps=STEPS):
    """modelopt: a copy of the transformer, quantizers inserted and calibrated by the real pipeline."""
    model = copy.deepcopy(pipe.modules["transformer"])
    old = with_denoiser(pipe, model)
    try:
        t0 = time.perf_counter()
        model = mtq.quantize(model, cfg, forward_loop=lambda m: run_prompts(pipe, prompts, steps))
        seconds = time.perf_counter() - t0
    finally:
        pipe.stages = pipe.stages | {"denoiser": old}
    return model.eval(), seconds


def cogvx_calibrate(pipe, precision, alpha=0.8, prompts=PROMPTS, steps=STEPS):
    t0 = time.perf_counter()
    cal = calibrate(pipe, prompts, QuantConfig(precision, alpha=alpha), steps=steps, guidance=GUIDANCE)
    t1 = time.perf_counter()
    model = quantize(pipe.modules["transformer"], cal)
    t2 = time.perf_counter()
    return model, cal, t1 - t0, t2 - t1


def enabled_quantizers(model):
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, TensorQuantizer) and m.is_enabled:
            parent, _, leaf = name.rpartition(".")
            out.setdefault(parent, []).append(leaf)
    return out


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def sqnr_db(ref, x):
    noise = (ref.double() - x.double()).pow(2).sum().item()
    signal = ref.double().pow(2).sum().item()
    return 150.0 if noise == 0 else 10 * math.log10(signal / noise)


def ort_variants(path, inputs, expected, ref, with_inputs=False):
    """The graph at `path` on ONNX Runtime CPU, with its default Q/DQ handling and with
    session.disable_quant_qdq: cosine / SQNR of its output against the quantized torch module's
    (`expected`) and fp32's (`ref`), or the error that stopped the session."""
    import onnxruntime as ort

    info = {}
    for label, disable in (("ort_default", False), ("ort_disable_quant_qdq", True)):
        try:
            so = ort.SessionOptions()
            if disable:
                so.add_session_config_entry("session.disable_quant_qdq", "1")
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            feeds = {i.name: inputs[i.name].numpy() for i in sess.get_inputs()}
            got = torch.from_numpy(sess.run(None, feeds)[0])
            info[label] = {"cos_vs_torch_quant": cosine(expected, got), "sqnr_vs_torch_quant": sqnr_db(expected, got),
                           "cos_vs_fp32": cosine(ref, got), "sqnr_vs_fp32": sqnr_db(ref, got)}
            if with_inputs:
                info[label]["inputs"] = [i.name for i in sess.get_inputs()]
        except Exception as e:
            info[label] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:400]}"}
    return info


SPEC = ShapeSpec(1, 17, 64, 64, 32)
