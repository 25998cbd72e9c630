"""The quantized linear layer and the two torch ops that become ONNX Q/DQ nodes.

`QuantLinear` is what `quantize()` puts in place of an `nn.Linear` (calibration/quantize.py):

    y = fake_quant(x * pre_scale, act_scale) @ dequantize(weight_q, weight_scale, axis=1) + bias

- `cogvx::fake_quant(x, scale, kind)` -> ONNX `QuantizeLinear` -> `DequantizeLinear` (per tensor,
  symmetric: zero point 0 of type int8 or float8e4m3fn);
- `cogvx::dequantize(q, scale, axis)` -> ONNX `DequantizeLinear` on an int8 / float8e4m3fn
  initializer, per output channel. The weight is stored transposed, (in, out), so the
  dequantized weight feeds `MatMul` directly: the pattern TensorRT fuses into an int8 / fp8 GEMM
  (Q/DQ on the activation, DQ on a constant weight), with no Transpose between.

Both ops have torch bodies that compute exactly what ONNX specifies (round half to even and
saturate for int8; saturate to +-448 for e4m3), so the torch module is a faithful simulation of the
quantized graph: validation and per-layer SQNR run it on the reference's own inputs.
"""

from __future__ import annotations

import torch
from torch import nn

KINDS = {"int8": 127.0, "fp8": 448.0}  # the largest representable magnitude of each format


@torch.library.custom_op("cogvx::fake_quant", mutates_args=())
def fake_quant(x: torch.Tensor, scale: torch.Tensor, kind: str) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear, per tensor, zero point 0."""
    scale = scale.to(x.dtype)
    if kind == "int8":
        return torch.clamp(torch.round(x / scale), -128, 127) * scale
    return (x / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).to(x.dtype) * scale


@fake_quant.register_fake
def _(x, scale, kind):
    return torch.empty_like(x)


@torch.library.custom_op("cogvx::dequantize", mutates_args=())
def dequantize(q: torch.Tensor, scale: torch.Tensor, axis: int) -> torch.Tensor:
    """DequantizeLinear with a per-channel scale along `axis`, zero point 0, to float32."""
    shape = [1] * q.ndim
    shape[axis] = -1
    return q.to(torch.float32) * scale.reshape(shape)


@dequantize.register_fake
def _(q, scale, axis):
    return torch.empty(q.shape, dtype=torch.float32, device=q.device)


def quantize_weight(weight: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> ((in, out) int8 / float8 weight, (out,) per-channel scale)."""
    amax = weight.abs().amax(dim=1).clamp(min=1e-12)  # (out,)
    scale = (amax / KINDS[kind]).float()
    scaled = weight.float() / scale[:, None]  # (out, in)
    if kind == "int8":
        quantized = torch.clamp(torch.round(scaled), -128, 127).to(torch.int8)
    else:
        quantized = scaled.clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return quantized.t().contiguous(), scale  # (in, out), (out,)


class QuantLinear(nn.Module):
    """An `nn.Linear` with quantized weights and a quantized input (see the module docstring)."""

    def __init__(self, linear: nn.Linear, kind: str, act_amax: float, pre_scale: torch.Tensor | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)} (got {kind!r})")
        self.kind = kind
        weight_q, weight_scale = quantize_weight(linear.weight.detach(), kind)
        self.register_buffer("weight_q", weight_q)  # (in, out)
        self.register_buffer("weight_scale", weight_scale)  # (out,)
        self.register_buffer("act_scale", torch.tensor(max(act_amax, 1e-12) / KINDS[kind], dtype=torch.float32))
        self.register_buffer("pre_scale", pre_scale.float() if pre_scale is not None else None)  # (in,)
        self.bias = nn.Parameter(linear.bias.detach().float(), requires_grad=False) if linear.bias is not None else None
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out), in float32."""
        x = x.float()
        if self.pre_scale is not None:
            x = x * self.pre_scale  # SmoothQuant's 1/s where no producer can absorb it
        x = fake_quant(x, self.act_scale, self.kind)
        y = x @ dequantize(self.weight_q, self.weight_scale, 1)  # (..., out)
        return y + self.bias if self.bias is not None else y


def _translate_fake_quant(x, scale, kind: str):
    from onnx import TensorProto, helper
    from onnxscript import opset20 as op

    zero_type = TensorProto.INT8 if kind == "int8" else TensorProto.FLOAT8E4M3FN
    zero = op.Constant(value=helper.make_tensor("zero_point", zero_type, [], [0]))
    return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero), scale, zero)


def _translate_dequantize(q, scale, axis: int):
    from onnxscript import opset20 as op

    return op.DequantizeLinear(q, scale, axis=axis)


def register_translations() -> None:
    """Teach the exporter the two ops (idempotent)."""
    from cogvx.export.onnx_export import TRANSLATIONS

    TRANSLATIONS[torch.ops.cogvx.fake_quant.default] = _translate_fake_quant
    TRANSLATIONS[torch.ops.cogvx.dequantize.default] = _translate_dequantize
