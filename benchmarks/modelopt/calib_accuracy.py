import tempfile  # noqa: F401
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "modelopt"
import json, sys, time
from common import *

pipe = load_pipe()
fp32 = pipe.modules["transformer"]
REPEAT = 1
results = {"prompts": PROMPTS, "steps": STEPS, "guidance": GUIDANCE, "threads": torch.get_num_threads(), "timing": {}, "layers": {}}

# baseline: the forward loop alone
times = []
for _ in range(REPEAT):
    t0 = time.perf_counter(); run_prompts(pipe); times.append(time.perf_counter() - t0)
results["timing"]["forward_loop_only"] = min(times)

models = {}
# cogvx
for label, prec, alpha in (("cogvx int8 SQ a=0.8", Precision.INT8, 0.8), ("cogvx int8 SQ a=1.0", Precision.INT8, 1.0), ("cogvx int8 max (no SQ)", Precision.INT8, 0.0),
                           ("cogvx fp8", Precision.FP8, 0.8)):
    cal_t, q_t = [], []
    for _ in range(REPEAT):
        model, cal, tc, tq = cogvx_calibrate(pipe, prec, alpha)
        cal_t.append(tc); q_t.append(tq)
    results["timing"][label] = {"calibrate_s": min(cal_t), "quantize_s": min(q_t)}
    results["layers"][label] = len(cal.layers)
    models[label] = model

# modelopt
for label, name, kw in (("modelopt INT8_SMOOTHQUANT a=0.8 +LN", "INT8_SMOOTHQUANT_CFG", {"alpha": 0.8, "linears_only": False}),
                        ("modelopt FP8_DEFAULT +LN", "FP8_DEFAULT_CFG", {"linears_only": False}),
                        ("modelopt INT8_SMOOTHQUANT a=0.8", "INT8_SMOOTHQUANT_CFG", {"alpha": 0.8}),
                        ("modelopt INT8_SMOOTHQUANT (default a=1.0)", "INT8_SMOOTHQUANT_CFG", {}),
                        ("modelopt INT8_DEFAULT (max)", "INT8_DEFAULT_CFG", {}),
                        ("modelopt FP8_DEFAULT", "FP8_DEFAULT_CFG", {}),
                        ("modelopt FP8 per-channel weights", "FP8_DEFAULT_CFG", {"fp8_weight_axis": 0})):
    ts = []
    for _ in range(REPEAT):
        model, s = mo_calibrate(pipe, mo_config(name, **kw))
        ts.append(s)
    results["timing"][label] = {"quantize_with_calibration_s": min(ts)}
    q = enabled_quantizers(model)
    results["layers"][label] = {"modules_with_enabled_quantizers": len(q),
                                "same_as_cogvx": sorted(q) == sorted(quantized_layers(fp32)),
                                "kinds": sorted({tuple(v) for v in q.values()})}
    models[label] = model
    if label == "modelopt INT8_SMOOTHQUANT a=0.8":
        from io import StringIO
        import contextlib
        buf = StringIO()
        with contextlib.redirect_stdout(buf):
            mtq.print_quant_summary(model)
        open(str(RESULTS / "quant_summary_int8sq.txt"), "w").write(buf.getvalue())

# accuracy (a): one denoiser call at fixed timesteps, descriptor sample inputs
desc = descriptor_for("transformer", pipe.config)
inputs = desc.sample_inputs(SPEC)
ref_wrap = desc.wrap(fp32)
acc = {}
with torch.no_grad():
    for ts in (999, 750, 500, 250, 50):
        x = dict(inputs, timestep=torch.full_like(inputs["timestep"], ts))
        ref = ref_wrap(**x)
        for label, model in models.items():
            y = desc.wrap(model)(**x)
            acc.setdefault(label, {})[ts] = (cosine(ref, y), sqnr_db(ref, y))
results["single_call"] = acc

# accuracy (b): held-out prompts, every step of the fp32 trajectory fed to each model (paired), and end to end
held_out = list(TOY_PROMPTS[8:10])
from cogvx.runtime.stages import TorchStage
paired = {label: [] for label in models}
ref_stage = pipe.stages["denoiser"]
q_stages = {label: torch_stages(transformer=m)["denoiser"] for label, m in models.items()}
def pair(**kw):
    expected = ref_stage(**kw)
    for label, st in q_stages.items():
        got = st(**kw)["velocity"]
        paired[label].append((cosine(expected["velocity"], got), sqnr_db(expected["velocity"], got)))
    return expected
pipe.stages = pipe.stages | {"denoiser": TorchStage("denoiser", pair, ())}
with torch.no_grad():
    for i, p in enumerate(held_out):
        pipe(prompt=p, num_inference_steps=STEPS, guidance_scale=GUIDANCE, seed=100 + i, output_type="latent")
pipe.stages = pipe.stages | {"denoiser": ref_stage}
results["trajectory_paired"] = {l: {"min_cos": min(c for c, _ in v), "min_sqnr": min(s for _, s in v),
                                    "mean_sqnr": sum(s for _, s in v) / len(v), "calls": len(v)} for l, v in paired.items()}
# end to end: final latents of the held-out prompts
e2e = {}
with torch.no_grad():
    refs = [pipe(prompt=p, num_inference_steps=STEPS, guidance_scale=GUIDANCE, seed=100 + i, output_type="latent").frames
            for i, p in enumerate(held_out)]
    for label, model in models.items():
        old = with_denoiser(pipe, model)
        outs = [pipe(prompt=p, num_inference_steps=STEPS, guidance_scale=GUIDANCE, seed=100 + i, output_type="latent").frames
                for i, p in enumerate(held_out)]
        pipe.stages = pipe.stages | {"denoiser": old}
        e2e[label] = {"min_cos": min(cosine(r, o) for r, o in zip(refs, outs)), "min_sqnr": min(sqnr_db(r, o) for r, o in zip(refs, outs))}
results["end_to_end_latents"] = e2e
json.dump(results, open(str(RESULTS / "calib_accuracy.json"), "w"), indent=1, default=str)
print(json.dumps(results, indent=1, default=str))
