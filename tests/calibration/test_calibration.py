"""Calibration and int8 / fp8 Q/DQ engines: every family runs on ONNX Runtime CPU close to fp32 torch,
the same inputs give the same calibration file, and a bad calibration fails validation by name."""

from __future__ import annotations

import json
import math

import onnx
import pytest
import torch
from click.testing import CliRunner
from tiny_models import TINY_FAMILIES

from cogvx.calibration.artifact import Calibration
from cogvx.calibration.calibrate import CalibrationError, QuantConfig, calibrate
from cogvx.calibration.prompts import TOY_PROMPTS, read_prompts
from cogvx.calibration.qdq import fake_quant
from cogvx.calibration.quantize import quantized_layers
from cogvx.cli import main
from cogvx.contract.manifest import EngineDirectoryError, Manifest
from cogvx.contract.shapes import ShapeProfile, ShapeSpec
from cogvx.engines.export_dir import calibrate_engines, export_engines
from cogvx.errors import NonFiniteError
from cogvx.modeling.precision import Precision
from cogvx.runtime.onnxruntime_backend import fuses_qdq_correctly
from cogvx.runtime.pipeline import CogVideoXPipeline

PROMPTS = list(TOY_PROMPTS[:2])
STEPS = 3


def spec_for(family: str) -> ShapeSpec:
    _, _, _, frames, height, width = TINY_FAMILIES[family]
    return ShapeSpec(batch=1, frames=frames, height=height, width=width, text_len=7)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.mark.parametrize("precision", [Precision.INT8, Precision.FP8])
@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_quantized_transformer_runs_on_onnxruntime_close_to_fp32(family, precision, tiny_checkpoint, tmp_path):
    """Calibrate, export the Q/DQ transformer, and run every denoising step of a reference trajectory
    through it on ORT with the reference's own inputs: cosine >= 0.99 at every step."""
    checkpoint, out = tiny_checkpoint(family), tmp_path / "engines"
    calibrate_engines(checkpoint, out, QuantConfig(precision), PROMPTS, steps=STEPS)
    export_engines(checkpoint, out, ["transformer"], ShapeProfile.static(spec_for(family)), precision)
    graph = onnx.load(out / "transformer.onnx")
    weights = {i.name: i.data_type for i in graph.graph.initializer}
    expected_type = onnx.TensorProto.INT8 if precision == Precision.INT8 else onnx.TensorProto.FLOAT8E4M3FN
    producer = {output: node for node in graph.graph.node for output in node.output}
    dequantized = {n.output[0]: n for n in graph.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights}
    matmuls = [n for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in dequantized]
    reference = CogVideoXPipeline.from_pretrained(checkpoint)
    layers = quantized_layers(reference.modules["transformer"])
    assert len(matmuls) == len(layers)  # every quantized layer: MatMul(DQ(Q(x)), DQ(constant weight))
    for matmul in matmuls:  # (q, k and v share one input, so they may share its Q/DQ pair)
        activation = producer[matmul.input[0]]
        assert activation.op_type == "DequantizeLinear" and producer[activation.input[0]].op_type == "QuantizeLinear"
    assert {weights[n.input[0]] for n in dequantized.values()} == {expected_type}
    engine = CogVideoXPipeline.from_engines(out, checkpoint)  # the transformer on ORT, the rest in torch
    assert engine.stages["denoiser"].precision == precision
    figures = []

    def paired(**inputs):
        expected = reference_denoiser(**inputs)
        figures.append(cosine(expected["velocity"], engine.stages["denoiser"](**inputs)["velocity"]))
        return expected

    from cogvx.runtime.stages import TorchStage

    reference_denoiser = reference.stages["denoiser"]
    reference.stages["denoiser"] = TorchStage("denoiser", paired, ())
    spec = spec_for(family)
    image = torch.zeros(3, spec.height, spec.width) if reference.config.image_to_video else None
    reference("a blue circle moving left", image=image, num_frames=spec.frames, height=spec.height,
              width=spec.width, num_inference_steps=4, seed=3, output_type="latent")
    assert len(figures) == 4 and min(figures) >= 0.99, figures


def test_same_inputs_give_a_byte_identical_calibration(tiny_checkpoint, tmp_path):
    names = []
    for attempt in ("a", "b"):
        name, _ = calibrate_engines(tiny_checkpoint("5b"), tmp_path / attempt, QuantConfig(Precision.INT8),
                                    PROMPTS, steps=STEPS)
        names.append(name)
    assert names[0] == names[1]
    assert (tmp_path / "a" / names[0]).read_bytes() == (tmp_path / "b" / names[1]).read_bytes()
    calibration = Calibration.load(tmp_path / "a", names[0])
    layer = next(iter(calibration.layers.values()))
    assert len(layer.per_step_amax) == STEPS and layer.amax == max(layer.per_step_amax)  # method max
    assert calibration.prompts_sha256 and calibration.num_prompts == 2 and calibration.alpha == 0.8


@pytest.mark.parametrize("method", ["percentile", "mse", "early-steps"])
def test_methods_clip_at_most_the_maximum(tiny_checkpoint, method):
    pipe = CogVideoXPipeline.from_pretrained(tiny_checkpoint("5b"))
    reduced = calibrate(pipe, PROMPTS, QuantConfig(Precision.INT8, method=method, fraction=0.34), steps=STEPS)
    maxima = calibrate(pipe, PROMPTS, QuantConfig(Precision.INT8), steps=STEPS)
    for name, layer in reduced.layers.items():
        assert 0 < layer.amax <= maxima.layers[name].amax * (1 + 1e-6)
        if method == "early-steps":  # the first ceil(0.34 * 3) = 2 steps count
            assert layer.amax == max(layer.per_step_amax[:2])
    if method != "early-steps":  # a clip below the maximum somewhere, or the method does nothing
        assert any(layer.amax < maxima.layers[name].amax for name, layer in reduced.layers.items())


@pytest.mark.parametrize("fold", [True, False])
def test_smoothing_is_exact(tiny_checkpoint, fold):
    """SmoothQuant moves scale from activations to weights: before any rounding, the smoothed float
    model (folds into the AdaLNs and to_v, explicit pre-scales elsewhere) equals the original."""
    from cogvx.calibration.quantize import smooth
    from cogvx.export.descriptors import descriptor_for

    pipe = CogVideoXPipeline.from_pretrained(tiny_checkpoint("5b"))
    calibration = calibrate(pipe, PROMPTS, QuantConfig(Precision.INT8, alpha=0.8), steps=STEPS)
    model = pipe.modules["transformer"]
    smoothed, pre_scales = smooth(model, calibration, fold)
    modules = dict(smoothed.named_modules())
    for name, scale in pre_scales.items():
        modules[name].register_forward_pre_hook(lambda m, inputs, scale=scale: (inputs[0] * scale,))
    assert (len(pre_scales) == len(calibration.layers)) == (not fold)  # folded: only ff.net.2 keeps one
    assert fold == all(name.endswith("ff.net.2") for name in pre_scales)
    s = torch.tensor(next(iter(calibration.layers.values())).smooth)
    assert s.std() > 0.01 * s.mean()  # the scales are not all one: the test can see a wrong fold
    descriptor = descriptor_for("transformer", pipe.config)
    inputs = descriptor.sample_inputs(spec_for("5b"))
    with torch.no_grad():
        expected = descriptor.wrap(model)(**inputs)
        got = descriptor.wrap(smoothed)(**inputs)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_fake_quant_matches_onnx_semantics():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 300.0, -300.0])
    assert fake_quant(x, torch.tensor(1.0), "int8").tolist() == [0.0, 2.0, 2.0, -0.0, 127.0, -128.0]  # half to even
    assert fake_quant(torch.tensor([1000.0, -1000.0]), torch.tensor(1.0), "fp8").tolist() == [448.0, -448.0]


def test_onnxruntime_fusion_choice():
    assert not fuses_qdq_correctly(Precision.FP8)  # ORT's fusion makes an invalid graph from float8 DQ
    assert fuses_qdq_correctly(Precision.FP32)


def test_a_bad_calibration_fails_validation_and_names_the_worst_layer(tiny_checkpoint, tmp_path):
    checkpoint, out = tiny_checkpoint("5b"), tmp_path / "engines"
    spec = spec_for("5b")
    name, calibration = calibrate_engines(checkpoint, out, QuantConfig(Precision.INT8), PROMPTS, steps=STEPS)
    export_engines(checkpoint, out, ["text_encoder", "transformer", "vae_decoder"], ShapeProfile.static(spec),
                   Precision.INT8)
    runner = CliRunner()
    arguments = ["validate", "--model", str(checkpoint), "--engines", str(out), "--steps", "3"]
    good = runner.invoke(main, arguments + ["--report", str(tmp_path / "good")])
    assert good.exit_code == 0, good.output
    for layer in calibration.layers.values():  # deliberately bad: every range a hundredth of the truth
        layer.amax /= 100
    manifest = Manifest.load(out)
    manifest.calibration = calibration.save(out)
    manifest.save(out)
    export_engines(checkpoint, out, ["transformer"], ShapeProfile.static(spec), Precision.INT8)
    bad = runner.invoke(main, arguments + ["--report", str(tmp_path / "bad")])
    assert bad.exit_code == 1, bad.output
    assert "worst quantized layer: transformer_blocks." in bad.output
    report = json.loads((tmp_path / "bad" / "report.json").read_text())
    assert report["layers"] and min(report["layers"].values()) < 20
    assert (tmp_path / "bad" / "layers.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_calibration_requests(tiny_checkpoint, tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt", 4)
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(CalibrationError, match="holds no prompt"):
        read_prompts(tmp_path / "empty.txt", 4)
    (tmp_path / "two.txt").write_text("a red square moving up\n\na blue circle moving left\n")
    assert read_prompts(tmp_path / "two.txt", 8) == ["a red square moving up", "a blue circle moving left"]
    with pytest.raises(CalibrationError, match="int8 or fp8"):
        QuantConfig(Precision.BF16)
    with pytest.raises(CalibrationError, match="alpha must be a number"):
        QuantConfig(Precision.INT8, alpha=math.nan)
    with pytest.raises(CalibrationError, match="method must be one of"):
        QuantConfig(Precision.INT8, method="entropy-ish")
    # engines of another checkpoint: the manifest catches it
    out = tmp_path / "engines"
    export_engines(tiny_checkpoint("5b"), out, ["transformer"], ShapeProfile.static(spec_for("5b")))
    with pytest.raises(EngineDirectoryError, match="holds engines of another model"):
        calibrate_engines(tiny_checkpoint("2b"), out, QuantConfig(Precision.INT8), PROMPTS, steps=STEPS)
    # an int8 export without a calibration says what to run
    with pytest.raises(EngineDirectoryError, match="run `cogvx calibrate"):
        export_engines(tiny_checkpoint("5b"), out, ["transformer"], ShapeProfile.static(spec_for("5b")),
                       Precision.INT8)


def test_nan_during_calibration_names_the_step(tiny_checkpoint):
    pipe = CogVideoXPipeline.from_pretrained(tiny_checkpoint("5b"))
    layer = dict(pipe.modules["transformer"].named_modules())["transformer_blocks.0.norm1.norm"]
    with torch.no_grad():
        layer.weight[0] = float("nan")
    with pytest.raises(NonFiniteError, match="denoising step 1"):
        calibrate(pipe, PROMPTS, QuantConfig(Precision.FP8), steps=STEPS)


def test_cli_calibrate_then_export(tiny_checkpoint, tmp_path):
    out = tmp_path / "engines"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving up\n")
    runner = CliRunner()
    result = runner.invoke(main, ["calibrate", "--model", str(tiny_checkpoint("5b")), "--engines", str(out),
                                  "--precision", "fp8", "--prompts", str(prompts), "--num-prompts", "3",
                                  "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "1 x 2 steps" in result.output
    name = Manifest.load(out).calibration
    assert name and (out / name).is_file() and json.loads((out / name).read_text())["num_prompts"] == 1
    result = runner.invoke(main, ["export", "--model", str(tiny_checkpoint("5b")), "--out", str(out), "--profile",
                                  "9x64x64", "--components", "transformer", "--precision", "fp8"])
    assert result.exit_code == 0, result.output
    assert Manifest.load(out).stages["transformer"].dtype == "fp8"
    bad = runner.invoke(main, ["calibrate", "--model", str(tiny_checkpoint("5b")), "--engines", str(out),
                               "--precision", "int8", "--prompts", str(tmp_path / "none.txt")])
    assert bad.exit_code == 2 and bad.stderr.strip().startswith("error: prompts file") and bad.stderr.count("\n") == 1
