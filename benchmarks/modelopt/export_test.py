import tempfile  # noqa: F401
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "modelopt"
import collections, contextlib, json, os, shutil, sys, traceback
from pathlib import Path
from common import *
import onnx, onnxruntime as ort
from cogvx.contract.shapes import ShapeProfile
from cogvx.export.onnx_export import export_graph, OPSET
from cogvx.export.graph_check import check_graph
from cogvx.calibration.qdq import register_translations
from modelopt.torch.quantization.utils import export_torch_mode

OUT = Path(tempfile.gettempdir()) / "cogvx-modelopt-onnx"; shutil.rmtree(OUT, ignore_errors=True); OUT.mkdir()
pipe = load_pipe(); fp32 = pipe.modules["transformer"]
desc = descriptor_for("transformer", pipe.config)
profile = ShapeProfile.static(SPEC)
register_translations()

models = {}
models["cogvx int8"] = cogvx_calibrate(pipe, Precision.INT8)[0]
models["cogvx fp8"] = cogvx_calibrate(pipe, Precision.FP8)[0]
models["modelopt int8 sq0.8"] = mo_calibrate(pipe, mo_config("INT8_SMOOTHQUANT_CFG", alpha=0.8))[0]
models["modelopt fp8"] = mo_calibrate(pipe, mo_config("FP8_DEFAULT_CFG"))[0]

inputs = desc.sample_inputs(SPEC)
inputs = dict(inputs, timestep=torch.full_like(inputs["timestep"], 500))
names = desc.input_names
with torch.no_grad():
    ref = desc.wrap(fp32)(**inputs)

def summarize(path, model_torch):
    m = onnx.load(path)
    ops = collections.Counter((n.domain + "::" if n.domain else "") + n.op_type for n in m.graph.node)
    init_types = collections.Counter(onnx.TensorProto.DataType.Name(i.data_type) for i in m.graph.initializer)
    rep = check_graph(m)
    info = {"bytes": os.path.getsize(path), "ops": dict(ops), "initializer_types": dict(init_types),
            "trt_check_problems": rep.problems[:5]}
    with torch.no_grad():
        expected = desc.wrap(model_torch)(**inputs)
    return info | ort_variants(path, inputs, expected, ref)

def attempt(label, fn):
    print("==", label, flush=True)
    try:
        path = fn()
        res = summarize(path, CURRENT)
    except Exception as e:
        tb = traceback.format_exc()
        open(OUT / (label.replace(" ", "_") + ".err"), "w").write(tb)
        res = {"error": f"{type(e).__name__}: {str(e)[:1500]}"}
    print(json.dumps(res, indent=1, default=str), flush=True)
    return res

results = {}
def cogvx_dynamo(model, name, ctx=contextlib.nullcontext):
    def fn():
        graph = desc.graphs(model, profile, torch.float32)[0]
        with ctx():
            return export_graph(graph, OUT / f"{name}.onnx")
    return fn

for label, model in models.items():
    CURRENT = model
    key = label.replace(" ", "_")
    results[f"{label} | cogvx export_graph (dynamo, opset {OPSET})"] = attempt(f"{key}_dynamo", cogvx_dynamo(model, f"{key}_dynamo"))
    if label.startswith("modelopt"):
        results[f"{label} | cogvx export_graph under modelopt export_torch_mode()"] = attempt(
            f"{key}_dynamo_exportmode", cogvx_dynamo(model, f"{key}_dynamo_exportmode", export_torch_mode))

json.dump(results, open(str(RESULTS / "export_dynamo.json"), "w"), indent=1, default=str)
