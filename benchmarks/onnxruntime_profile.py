"""Where one graph's time and memory go on ONNX Runtime: per op type, the costliest (op, shape)
groups with their GFLOP/s, and the activations alive at once in ORT's order against the graph's own.

    python benchmarks/onnxruntime_profile.py ENGINES/vae_decoder_first_3.onnx --component vae_decoder
    python benchmarks/onnxruntime_profile.py ENGINES/transformer.onnx --settings onnxruntime-defaults

Graphs exported for a static profile (inputs are random, of the graph's own shapes). `--settings
cogvx` (default) uses the session settings the ORT backend gives that component;
`onnxruntime-defaults` a plain SessionOptions. Findings for the real widths:
docs/onnxruntime-performance.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx

from cogvx.contract.components import COMPONENTS
from cogvx.runtime.onnxruntime_backend import session_options, settings_for
from cogvx.runtime.onnxruntime_profile import flops, live_peak, profile_graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graph", type=Path)
    parser.add_argument("--component", choices=sorted(COMPONENTS), default="transformer")
    parser.add_argument("--settings", choices=["cogvx", "onnxruntime-defaults"], default="cogvx")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                        help="size of a dynamic axis, e.g. --dim batch=2")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    try:
        dims = {name: int(size) for name, size in (item.split("=", 1) for item in args.dim)}
    except ValueError:
        parser.error("--dim takes NAME=N, e.g. --dim batch=2")
    import onnxruntime as ort

    options = (session_options(settings_for(COMPONENTS[args.component])) if args.settings == "cogvx"
               else ort.SessionOptions())
    profile = profile_graph(args.graph, options, args.runs, dims)
    total = sum(profile.op_seconds.values())
    print(f"{args.graph.name}: {total:.3f} s of kernels per run ({args.settings} settings, {args.runs} runs)")
    for op, seconds in profile.op_seconds.items():
        if seconds >= 0.001 * total:
            print(f"  {op:28s} {seconds:9.3f} s  {100 * seconds / total:5.1f} %")
    groups = []
    for key, seconds in sorted(profile.node_seconds.items(), key=lambda kv: -kv[1])[: args.top]:
        op, inputs, outputs = key
        count = profile.node_counts[key]
        work = count * flops(op, json.loads(inputs), json.loads(outputs))
        groups.append({"op": op, "inputs": json.loads(inputs), "outputs": json.loads(outputs), "nodes": count,
                       "seconds": round(seconds, 4), "gflop_per_s": round(work / seconds / 1e9, 1) if work else None})
        rate = f"{groups[-1]['gflop_per_s']:7.1f} GFLOP/s" if work else " " * 15
        print(f"  {seconds:8.3f} s {rate}  {count:3d} x {op} {inputs} -> {outputs}")
    model = onnx.load(args.graph, load_external_data=False)
    program = [node.name for node in model.graph.node]
    memory = {}
    if dims:
        print("activations alive at once: not computed (dynamic axes; export a static profile for it)")
    elif sorted(profile.order) != sorted(program):
        print("activations alive at once: not computed (ORT fused or replaced nodes at this optimization level)")
    else:
        memory = {"program_order_peak_mib": round(live_peak(model, program) / 2**20),
                  "executed_order_peak_mib": round(live_peak(model, profile.order) / 2**20)}
        print(f"activations alive at once: {memory['executed_order_peak_mib']} MiB in the order ORT ran the nodes, "
              f"{memory['program_order_peak_mib']} MiB in the graph's own order")
    if args.json:
        args.json.write_text(json.dumps({"graph": args.graph.name, "settings": args.settings, "dims": dims,
                                         "op_seconds": profile.op_seconds, "groups": groups, **memory}, indent=1))


if __name__ == "__main__":
    main()
