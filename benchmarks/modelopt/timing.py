import tempfile  # noqa: F401
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "modelopt"
import json, statistics, time
from common import *
pipe = load_pipe()
ROUNDS = 5
fns = {
    "forward loop only (4 prompts x 10 steps, CFG)": lambda: run_prompts(pipe),
    "cogvx INT8 calibrate (SQ 0.8) + quantize": lambda: cogvx_calibrate(pipe, Precision.INT8),
    "cogvx FP8 calibrate + quantize": lambda: cogvx_calibrate(pipe, Precision.FP8),
    "modelopt INT8_SMOOTHQUANT a=0.8 mtq.quantize": lambda: mo_calibrate(pipe, mo_config("INT8_SMOOTHQUANT_CFG", alpha=0.8)),
    "modelopt FP8_DEFAULT mtq.quantize": lambda: mo_calibrate(pipe, mo_config("FP8_DEFAULT_CFG")),
}
times = {k: [] for k in fns}
for _ in range(ROUNDS):
    for k, f in fns.items():
        t0 = time.perf_counter(); f(); times[k].append(time.perf_counter() - t0)
out = {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)} for k, v in times.items()}
json.dump(out, open(str(RESULTS / "timing.json"), "w"), indent=1)
print(json.dumps(out, indent=1))
