"""`quantize(transformer, calibration)`: a copy of the transformer with Q/DQ linear layers.

Which layers: every `nn.Linear` whose name matches no skip pattern. The default skip list keeps in
float what ModelOpt and vLLM keep in high precision for video DiTs: the patch and text
embeddings, the time / ofs embedding, every AdaLN modulation linear, the final norm and `proj_out`.
What is left per block: q, k, v, the attention output, and the two feed-forward linears.

SmoothQuant (INT8): activation outliers sit in a few channels, so each quantized input is divided
per channel by s = max|X_j|^alpha / max|W_j|^(1 - alpha) and the weight's columns multiplied by s:
the product is unchanged and the activation becomes easier to quantize. The division is folded
exactly into whatever produces the input:

- q, k, v (one input, one s): the block's expert AdaLN: the LayerNorm's weight and bias and the
  shift rows of the modulation linear (vision and text) divided by s;
- the attention output: `to_v`'s rows (attention is linear in v, channel for channel);
- the first feed-forward linear: the second AdaLN, as for q, k, v;
- the second feed-forward linear (after GELU, which nothing can absorb): an explicit
  `x * (1 / s)` in the graph (ModelOpt's pre-quant scale).
"""

from __future__ import annotations

import copy
import fnmatch

import torch
from torch import nn

from .qdq import QuantLinear

DEFAULT_SKIP = ("patch_embed.*", "time_embedding.*", "ofs_embedding.*", "*.norm1.linear", "*.norm2.linear",
                "norm_out.*", "proj_out")


def quantized_layers(model: nn.Module, skip: tuple[str, ...] = DEFAULT_SKIP) -> list[str]:
    """The names of the linears `quantize` replaces, in module order."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not any(fnmatch.fnmatchcase(name, p) for p in skip)]


def smoothing_groups(model: nn.Module, layers: list[str]) -> list[tuple[list[str], str]]:
    """Layers that share one input (hence one s), with where 1/s goes: 'adaln:<norm>', 'rows:<linear>'
    or 'pre_scale'. Layers of a block that do not follow the CogVideoX layout get 'pre_scale'."""
    chosen = set(layers)
    groups, done = [], set()
    for name in layers:
        if name in done:
            continue
        block, _, leaf = name.rpartition(".attn1.") if ".attn1." in name else name.rpartition(".ff.")
        if leaf in ("to_q", "to_k", "to_v"):
            members = [f"{block}.attn1.{n}" for n in ("to_q", "to_k", "to_v") if f"{block}.attn1.{n}" in chosen]
            groups.append((members, f"adaln:{block}.norm1"))
        elif leaf == "to_out.0":
            groups.append(([name], f"rows:{block}.attn1.to_v"))
        elif leaf == "net.0.proj":
            groups.append(([name], f"adaln:{block}.norm2"))
        else:
            groups.append(([name], "pre_scale"))
        done.update(groups[-1][0])
    return groups


def smoothing_scales(activation_amax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) over the group's weights (out, in)."""
    weight_amax = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)  # (in,)
    s = activation_amax.clamp(min=1e-5) ** alpha / weight_amax.clamp(min=1e-5) ** (1 - alpha)
    return s.clamp(min=1e-5)


def _fold_into_adaln(norm: nn.Module, s: torch.Tensor) -> None:
    """Divide an expert AdaLN's outputs by s: LayerNorm affine and the (vision, text) shift rows."""
    d = s.numel()
    with torch.no_grad():
        norm.norm.weight.div_(s)
        norm.norm.bias.div_(s)
        for chunk in (0, 3):  # shift (vision) and text_shift: chunk(6) of the modulation
            norm.linear.weight[chunk * d:(chunk + 1) * d].div_(s[:, None])
            norm.linear.bias[chunk * d:(chunk + 1) * d].div_(s)


def _fold_into_rows(linear: nn.Linear, s: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight.div_(s[:, None])
        if linear.bias is not None:
            linear.bias.div_(s)


def smooth(transformer: nn.Module, calibration, fold: bool = True) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A float copy with SmoothQuant applied: weight columns times s, 1/s folded into the producers
    (or, `fold=False`, everywhere an explicit pre-scale). Returns the copy and the pre-scales, which
    the layers' inputs must be multiplied by; with them the copy computes what the original does."""
    model = copy.deepcopy(transformer).float()
    modules = dict(model.named_modules())
    layers = calibration.layers
    missing = [name for name in layers if not isinstance(modules.get(name), nn.Linear)]
    if missing:
        raise ValueError(f"the calibration names layers this transformer does not have: {missing[:3]}")
    pre_scales: dict[str, torch.Tensor] = {}
    for members, target in smoothing_groups(model, list(layers)):
        smoothing = layers[members[0]].smooth
        if smoothing is None:
            continue
        s = torch.tensor(smoothing, dtype=torch.float32)
        for name in members:
            with torch.no_grad():
                modules[name].weight.mul_(s)  # columns: W' = W diag(s)
        kind, _, producer = target.partition(":") if fold else ("pre_scale", "", "")
        if kind == "adaln":
            _fold_into_adaln(modules[producer], s)
        elif kind == "rows":
            _fold_into_rows(modules[producer], s)
        else:
            for name in members:
                pre_scales[name] = 1.0 / s
    return model, pre_scales


def quantize(transformer: nn.Module, calibration, fold: bool = True) -> nn.Module:
    """A copy of `transformer` with every calibrated layer a `QuantLinear` (the original is untouched).

    `fold=False` applies every smoothing as an explicit pre-scale: each quantized layer then takes
    exactly the float model's input, which is how per-layer errors are measured (sensitivity.py)."""
    model, pre_scales = smooth(transformer, calibration, fold)
    modules = dict(model.named_modules())
    for name, layer in calibration.layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        quantized = QuantLinear(modules[name], calibration.kind, layer.amax, pre_scales.get(name))
        if isinstance(parent, nn.ModuleList):
            parent[int(child)] = quantized
        else:
            setattr(parent, child, quantized)
    return model.eval().requires_grad_(False)
