"""modelopt's own ONNX path (needs the [onnx] extra): get_onnx_bytes_and_metadata on the toy transformer."""
import tempfile  # noqa: F401
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "modelopt"
import json, os, traceback, collections
from pathlib import Path
from common import *
import onnx, onnxruntime as ort
from onnx import TensorProto
from cogvx.export import attention_op
from cogvx.export.graph_check import check_graph
from modelopt.torch._deploy.utils import get_onnx_bytes_and_metadata
print("onnx", onnx.__version__, "onnxruntime", ort.__version__)
OUT = Path(tempfile.gettempdir()) / "cogvx-modelopt-onnx3"; OUT.mkdir(exist_ok=True)
pipe = load_pipe(); fp32 = pipe.modules["transformer"]
desc = descriptor_for("transformer", pipe.config)
inputs = desc.sample_inputs(SPEC); inputs = dict(inputs, timestep=torch.full_like(inputs["timestep"], 500))
with torch.no_grad():
    ref = desc.wrap(fp32)(**inputs)
def rope_symbolic(g, q, k, v, cos, sin, num_text_tokens):
    from torch.onnx import symbolic_helper as sh
    out = g.op("cogvx::RoPEAttention3D", q, k, v, cos, sin, num_text_tokens_i=int(sh._maybe_get_const(num_text_tokens, "i")),
               plugin_namespace_s="cogvx", plugin_version_s="1")
    return out.setType(q.type())
results = {}
for label, cfg in (("modelopt int8 sq0.8", mo_config("INT8_SMOOTHQUANT_CFG", alpha=0.8)), ("modelopt fp8", mo_config("FP8_DEFAULT_CFG"))):
    model, _ = mo_calibrate(pipe, cfg)
    wrapped = desc.wrap(model)
    dummy = (inputs["latents"], inputs["text_embeddings"], inputs["timestep"], {"rope_cos": inputs["rope_cos"], "rope_sin": inputs["rope_sin"]})
    for variant in ("no symbolic", "with symbolic", "dynamo_export=True"):
        key = f"{label} | get_onnx_bytes_and_metadata ({variant})"
        print("==", key, flush=True)
        try:
            if variant == "with symbolic":
                torch.onnx.register_custom_op_symbolic("cogvx::rope_attention", rope_symbolic, 17)
            onnx_bytes, meta = get_onnx_bytes_and_metadata(wrapped, dummy, model_name=label.replace(" ", "_"), onnx_opset=20,
                                                           dynamo_export=variant.startswith("dynamo"))
            # the bytes are a serialized OnnxBytes bundle; pick the model file out of it
            from modelopt.torch._deploy.utils.torch_onnx import OnnxBytes
            ob = OnnxBytes.from_bytes(onnx_bytes)
            name = [k for k in ob.onnx_model if k.endswith(".onnx")][0]
            proto = onnx.load_from_string(ob.onnx_model[name])
            proto = attention_op.attach_function(proto)
            path = OUT / f"{key.split(' |')[0].replace(' ', '_')}_{variant.replace(' ', '_')}.onnx"
            onnx.save(proto, path)
            ops = collections.Counter((n.domain + "::" if n.domain else "") + n.op_type for n in proto.graph.node)
            info = {"bytes": os.path.getsize(path), "ops": {k: v for k, v in ops.items() if "uant" in k or "::" in k or k in ("MatMul", "Transpose", "Gemm", "Mul")},
                    "initializer_types": dict(collections.Counter(TensorProto.DataType.Name(i.data_type) for i in proto.graph.initializer)),
                    "opset": [(o.domain, o.version) for o in proto.opset_import], "ir_version": proto.ir_version,
                    "trt_check_problems": check_graph(proto).problems[:3]}
            with torch.no_grad():
                expected = wrapped(**inputs)
            info |= ort_variants(path, inputs, expected, ref, with_inputs=True)
        except Exception as e:
            open(OUT / f"{label.replace(' ', '_')}_{variant.replace(' ', '_')}.err", "w").write(traceback.format_exc())
            msg = str(e); msg = msg[msg.index("Exception summary"):] if "Exception summary" in msg else msg
            info = {"error": f"{type(e).__name__}: {msg[:900]}"}
        results[key] = info
        print(json.dumps(info, default=str)[:1500], flush=True)
    try:
        torch.onnx.unregister_custom_op_symbolic("cogvx::rope_attention", 17)
    except Exception:
        pass
json.dump(results, open(str(RESULTS / "export_modelopt_path.json"), "w"), indent=1, default=str)
