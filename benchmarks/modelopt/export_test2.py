"""modelopt-quantized transformer to ONNX: (A) dynamo + a translation for tensorrt::quantize_op,
(B) TorchScript (dynamo=False, modelopt's symbolic functions) with and without a symbolic for cogvx::rope_attention."""
import tempfile  # noqa: F401
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "modelopt"
import collections, contextlib, json, os, shutil, sys, traceback
from pathlib import Path
from common import *
import onnx, onnxruntime as ort
from onnx import TensorProto, helper
from cogvx.contract.shapes import ShapeProfile
from cogvx.export.onnx_export import export_graph, OPSET, TRANSLATIONS
from cogvx.export import attention_op
from cogvx.export.graph_check import check_graph
import modelopt.torch.quantization.tensor_quant as tq

OUT = Path(tempfile.gettempdir()) / "cogvx-modelopt-onnx2"; shutil.rmtree(OUT, ignore_errors=True); OUT.mkdir()
pipe = load_pipe(); fp32 = pipe.modules["transformer"]
desc = descriptor_for("transformer", pipe.config)
profile = ShapeProfile.static(SPEC)
models = {"modelopt int8 sq0.8": mo_calibrate(pipe, mo_config("INT8_SMOOTHQUANT_CFG", alpha=0.8))[0],
          "modelopt fp8": mo_calibrate(pipe, mo_config("FP8_DEFAULT_CFG"))[0]}
inputs = desc.sample_inputs(SPEC)
inputs = dict(inputs, timestep=torch.full_like(inputs["timestep"], 500))
with torch.no_grad():
    ref = desc.wrap(fp32)(**inputs)

# --- (A) the shim: tensorrt::quantize_op -> QuantizeLinear + DequantizeLinear (opset 20) -------------
def translate_quantize_op(x, amax, num_bits: int, exponent_bits: int, unsigned: bool, narrow_range: bool):
    from onnxscript import opset20 as op
    if exponent_bits == 4:
        maxbound, zp_type = 448.0, TensorProto.FLOAT8E4M3FN
    else:
        maxbound, zp_type = 127.0, TensorProto.INT8
    scale = op.Div(amax, op.Constant(value_float=maxbound))
    # per-channel amax arrives as (out, 1): flatten to 1-D for axis=0
    zero = op.Constant(value=helper.make_tensor("zp", zp_type, [], [0]))
    return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero), scale, zero)

def translate_quantize_op_axis(x, amax, num_bits: int, exponent_bits: int, unsigned: bool, narrow_range: bool):
    """per-tensor amax -> per-tensor Q/DQ; (out, 1) amax -> per-channel axis 0 (1-D scale, 1-D zero point)."""
    from onnxscript import opset20 as op
    if exponent_bits == 4:
        maxbound, zp_type = 448.0, TensorProto.FLOAT8E4M3FN
    else:
        maxbound, zp_type = 127.0, TensorProto.INT8
    scale = op.Div(op.Reshape(amax, op.Constant(value_ints=[-1])), op.Constant(value_float=maxbound))
    zero = op.Cast(op.Mul(scale, op.Constant(value_float=0.0)), to=zp_type)
    return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero, axis=0), scale, zero, axis=0)

orig_forward = tq.FakeTensorQuantFunction.forward
@staticmethod
def forward_through_op(ctx, inputs, amax, bias=None, num_bits=8, unsigned=False, narrow_range=True,
                       trt_high_precision_dtype=None, pass_through_bwd=False, block_size=None, axis=None):
    """What modelopt does on CUDA (int8 through torch.ops.tensorrt.quantize_op), forced on CPU for tracing."""
    return tq.quantize_op(inputs, amax, num_bits=num_bits, exponent_bits=0, unsigned=unsigned, narrow_range=narrow_range)

def summarize(path, model_torch, fp8):
    m = onnx.load(path)
    ops = collections.Counter((n.domain + "::" if n.domain else "") + n.op_type for n in m.graph.node)
    info = {"bytes": os.path.getsize(path), "ops": dict(ops),
            "initializer_types": dict(collections.Counter(TensorProto.DataType.Name(i.data_type) for i in m.graph.initializer)),
            "trt_check_problems": check_graph(m).problems[:4]}
    with torch.no_grad():
        expected = desc.wrap(model_torch)(**inputs)
    return info | ort_variants(path, inputs, expected, ref)

def attempt(label, fn, model, fp8):
    print("==", label, flush=True)
    try:
        res = summarize(fn(), model, fp8)
    except Exception as e:
        open(OUT / (label.replace(" ", "_") + ".err"), "w").write(traceback.format_exc())
        msg = str(e)
        if "Exception summary" in msg:
            msg = msg[msg.index("Exception summary"):]
        res = {"error": f"{type(e).__name__}: {msg[:1200]}"}
    print(json.dumps(res, indent=1, default=str), flush=True)
    return res

results = {}
for per_channel in (False, True):
    TRANSLATIONS[torch.ops.tensorrt.quantize_op.default] = translate_quantize_op_axis if per_channel else translate_quantize_op
    for label, model in models.items():
        fp8 = "fp8" in label
        name = f"A_{'axis' if per_channel else 'plain'}_{label.replace(' ', '_')}"
        def fn(model=model, name=name):
            graph = desc.graphs(model, profile, torch.float32)[0]
            from modelopt.torch.quantization.utils import export_torch_mode
            with export_torch_mode():
                return export_graph(graph, OUT / f"{name}.onnx")
        if fp8:
            results[f"{label} | dynamo + quantize_op translation ({'per-channel aware' if per_channel else 'per-tensor only'})"] = attempt(name, fn, model, fp8)
        else:
            def fn(model=model, name=name, inner=fn):
                # as on CUDA: int8 goes through torch.ops.tensorrt.quantize_op; its eager body (cuda_ext
                # on GPU) replaced by modelopt's own torch fallback so eager calls work on CPU
                orig_impl = tq.fake_quant_impl
                tq.FakeTensorQuantFunction.forward = forward_through_op
                tq.fake_quant_impl = lambda inputs, amax, num_bits=8, unsigned=False, narrow_range=True: tq._tensor_quant(inputs, amax, num_bits, unsigned, narrow_range)
                try:
                    return inner()
                finally:
                    tq.FakeTensorQuantFunction.forward = orig_forward
                    tq.fake_quant_impl = orig_impl
            if True:
                results[f"{label} | dynamo + quantize_op translation, int8 routed through tensorrt::quantize_op as on CUDA ({'per-channel aware' if per_channel else 'per-tensor only'})"] = attempt(name, fn, model, fp8)
TRANSLATIONS.pop(torch.ops.tensorrt.quantize_op.default)

# --- (B) TorchScript exporter (modelopt's symbolic functions) -------------------------------------
names = desc.input_names
args = (inputs["latents"], inputs["text_embeddings"], inputs["timestep"],
        {"rope_cos": inputs["rope_cos"], "rope_sin": inputs["rope_sin"]})
def ts_export(model, path, opset):
    with torch.no_grad():
        torch.onnx.export(desc.wrap(model), args, str(path), dynamo=False, opset_version=opset,
                          input_names=names, output_names=["velocity"])
    return path
for label, model in models.items():
    name = f"B_ts_{label.replace(' ', '_')}"
    results[f"{label} | TorchScript export (dynamo=False), opset 20, no symbolic for cogvx::rope_attention"] = attempt(
        name, lambda model=model, name=name: ts_export(model, OUT / f"{name}.onnx", 20), model, "fp8" in label)

def rope_symbolic(g, q, k, v, cos, sin, num_text_tokens):
    from torch.onnx import symbolic_helper as sh
    n = sh._maybe_get_const(num_text_tokens, "i")
    out = g.op("cogvx::RoPEAttention3D", q, k, v, cos, sin, num_text_tokens_i=int(n),
               plugin_namespace_s="cogvx", plugin_version_s="1")
    return out.setType(q.type())
torch.onnx.register_custom_op_symbolic("cogvx::rope_attention", rope_symbolic, 17)
for label, model in models.items():
    name = f"B_ts_sym_{label.replace(' ', '_')}"
    def fn(model=model, name=name):
        path = ts_export(model, OUT / f"{name}.onnx", 20)
        proto = attention_op.attach_function(onnx.load(path))
        onnx.save(proto, path)
        return path
    results[f"{label} | TorchScript export (dynamo=False), opset 20, + a TorchScript symbolic for cogvx::rope_attention and cogvx's function body"] = attempt(name, fn, model, "fp8" in label)
json.dump(results, open(str(RESULTS / "export_more.json"), "w"), indent=1, default=str)
