"""The Triton RoPE flash-attention kernel against the reference op.

Without a GPU the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1, set here before
triton is imported), at tiny sequence lengths that still span several 16 x 16 blocks and end in
masked tails. Errors are relative to the output scale (max(1, max |reference|)); the reference is
the fp32 op on the same (rounded) inputs. The kernel is also compiled, without a GPU, for sm_80 and
sm_90 with Triton's own ptxas (in a subprocess: the interpreter cannot compile), to check that its
launch configurations fit a GPU's shared memory and that the PTX TensorRT's AOT plugin gets still
assembles. On a GPU, the `gpu` tests run it at CogVideoX sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the kernel runs on the CPU

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from cogvx.engines import triton_attention  # noqa: E402
from cogvx.engines.attention import select_attention  # noqa: E402
from cogvx.engines.triton_attention import triton_rope_attention  # noqa: E402
from cogvx.modeling import attention  # noqa: E402
from cogvx.modeling.attention import reference_rope_attention, rope_attention, use_implementation  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3}
# Triton's interpreter converts fp32 -> bf16 by truncation, not round-to-nearest (measured here: the
# mean rounding error is twice torch's), so in the interpreter the kernel's rotated bf16 q / k and
# its bf16 output carry about twice bf16's rounding; on a GPU the conversion rounds to nearest.
BF16_TOLERANCE = 3e-2


def tables(vision: int, head_dim: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, Dh) fp32 cos / sin with one angle per pair, as modeling/positions.py makes them."""
    angles = torch.rand(vision, head_dim // 2, generator=generator) * 6.3 - 3.15
    return angles.cos().repeat_interleave(2, dim=1), angles.sin().repeat_interleave(2, dim=1)


def case(batch: int, heads: int, text: int, vision: int, head_dim: int, dtype: torch.dtype, rope: bool = True,
         seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, text + vision, head_dim, generator=generator).to(dtype) for _ in range(3))
    cos, sin = tables(vision, head_dim, generator) if rope else (None, None)
    return q, k, v, cos, sin, text


def error(q, k, v, cos, sin, text) -> float:
    device_args = [t.to(DEVICE) if t is not None else None for t in (q, k, v, cos, sin)]
    got = triton_rope_attention(*device_args, text).cpu()
    assert got.dtype == q.dtype and got.shape == q.shape
    expected = reference_rope_attention(q.float(), k.float(), v.float(), cos, sin, text)
    return (got.float() - expected).abs().max().item() / max(1.0, expected.abs().max().item())


# text-only, vision-only, both with tails (S = 7 + 30 = 37: two full 16-blocks and a tail of 5),
# several heads and batches, head dims 16 / 32 (tiny), 64 and 128 (CogVideoX's), no-RoPE (the 2B).
CASES = {
    "text only": (1, 2, 21, 0, 32),
    "vision only": (1, 2, 0, 23, 32),
    "text and vision, tails": (2, 3, 7, 30, 16),
    "head dim 64": (1, 2, 5, 20, 64),
    "head dim 128": (1, 2, 5, 20, 128),
    "head dim 24 (masked columns)": (1, 1, 3, 14, 24),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_the_reference(name, dtype):
    assert error(*case(*CASES[name], dtype)) <= TOLERANCE[dtype]


def test_bf16_matches_the_reference():
    assert error(*case(2, 2, 7, 30, 32, torch.bfloat16)) <= (BF16_TOLERANCE if DEVICE == "cpu" else 1e-2)


def test_without_rope_tables():
    assert error(*case(1, 2, 7, 30, 64, torch.float32, rope=False)) <= 1e-5


def test_strided_inputs():
    """q, k, v as the transformer makes them: a transposed (B, S, N, Dh) view, not contiguous."""
    q, k, v, cos, sin, text = case(2, 3, 5, 20, 32, torch.float32)
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not views[0].is_contiguous()
    assert error(*views, cos, sin, text) <= 1e-5


def test_the_rotation_is_not_trivially_identity():
    """A kernel that skipped RoPE would fail the comparison: the tables change the answer."""
    q, k, v, cos, sin, text = case(1, 2, 5, 20, 32, torch.float32)
    rotated = reference_rope_attention(q, k, v, cos, sin, text)
    plain = reference_rope_attention(q, k, v, None, None, text)
    assert (rotated - plain).abs().max() > 0.05
    assert error(q, k, v, cos, sin, text) <= 1e-5


def test_inputs_the_kernel_cannot_take_are_refused():
    q, k, v, cos, sin, text = case(1, 1, 2, 5, 16, torch.float32)
    with pytest.raises(ValueError, match="one shape"):
        triton_rope_attention(q, k[:, :, :-1], v, cos, sin, text)
    with pytest.raises(ValueError, match="share one of"):
        triton_rope_attention(q, k.half(), v, cos, sin, text)
    with pytest.raises(ValueError, match="RoPE tables must be"):
        triton_rope_attention(q, k, v, cos[:-1], sin[:-1], text)


def test_seam_dispatch_cuda_default_and_reference_switch():
    """register() makes the kernel the seam's CUDA default; CPU tensors keep the reference;
    `select_attention("reference")` (cogvx generate --attention reference) turns it off."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    try:
        triton_attention.register()
        assert attention.implementation_for(cuda) == "triton"
        assert attention.implementation_for(cpu) == "torch"
        with use_implementation("torch"):
            assert attention.implementation_for(cuda) == "torch"
        assert select_attention("reference") == "torch"
        assert attention.implementation_for(cuda) == "torch"
    finally:
        attention.set_device_default("cuda", None)


def test_the_op_runs_the_kernel_when_selected():
    """Through torch.ops.cogvx.rope_attention (what the transformer calls), forced onto the kernel."""
    q, k, v, cos, sin, text = case(1, 2, 5, 20, 32, torch.float32, seed=3)
    triton_attention.register()
    try:
        calls = []
        kernel = attention._IMPLEMENTATIONS["triton"]
        attention._IMPLEMENTATIONS["triton"] = lambda *args: calls.append(1) or kernel(*args)
        with use_implementation("triton"):
            got = rope_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), cos.to(DEVICE), sin.to(DEVICE), text).cpu()
        assert calls == [1]
        expected = reference_rope_attention(q, k, v, cos, sin, text)
        assert (got - expected).abs().max().item() / max(1.0, expected.abs().max().item()) <= 1e-5
    finally:
        attention._IMPLEMENTATIONS["triton"] = kernel
        attention.set_device_default("cuda", None)


def test_the_fastest_tactic_is_timed_once_per_shape_class():
    """The torch path's tuning (`TacticCache`): every tactic timed once per class, the least time
    kept, a class = device, dtype, head dim, RoPE, tokens and batch x heads up to a power of two."""
    cache = triton_attention.TacticCache()
    timed = []
    times = {0: 3.0, 1: 1.5, 2: 2.0}

    def milliseconds(tactic):
        timed.append(tactic)
        return times[tactic]

    key = triton_attention.TacticCache.key(torch.device("cuda", 0), torch.bfloat16, 64, True, 17776, 96)
    assert cache.choose(key, milliseconds) == 1 and timed == list(range(triton_attention.TACTICS))
    same = triton_attention.TacticCache.key(torch.device("cuda", 0), torch.bfloat16, 64, True, 17000, 70)
    assert same == key and cache.choose(same, milliseconds) == 1 and len(timed) == triton_attention.TACTICS
    times[1] = 9.0
    other = triton_attention.TacticCache.key(torch.device("cuda", 0), torch.bfloat16, 64, True, 4096, 96)
    assert cache.choose(other, milliseconds) == 2 and len(timed) == 2 * triton_attention.TACTICS
    assert triton_attention.TacticCache.key(torch.device("cuda", 0), torch.float16, 64, True, 17776, 96) != key


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the interpreter's path")
def test_the_interpreter_runs_the_default_tactic_untimed():
    before = dict(triton_attention.TACTIC_CACHE.chosen)
    q, k, v, cos, sin, text = case(1, 2, 3, 6, 16, torch.float32)
    out = triton_rope_attention(q, k, v, cos, sin, text)
    assert triton_attention.TACTIC_CACHE.chosen == before
    assert torch.equal(out, triton_rope_attention(q, k, v, cos, sin, text, tactic=0))


_COMPILE = r"""
import hashlib, itertools, json, re, subprocess, sys, tempfile, os
import torch
import triton.backends.nvidia.compiler as nvidia
from cogvx.engines.triton_attention import INT_ARGUMENTS, TACTICS, compile_kernel
from cogvx.engines.plugin import ptx_parameters, tensorrt_ptx
results = []
for capability, dtype, head_dim, tactic in itertools.product((80, 90), (torch.float16, torch.bfloat16, torch.float32),
                                                             (64, 128, 256), range(TACTICS)):
    kernel = compile_kernel(dtype, head_dim, True, capability, tactic)
    ptx = tensorrt_ptx(kernel.asm["ptx"], 5 + INT_ARGUMENTS + 1)
    target = re.search(r"\.target\s+(\w+)", ptx).group(1)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        open(path, "w").write(ptx)
        assembled = subprocess.run([nvidia.get_ptxas(capability).path, f"-arch={target}", path, "-o",
                                    os.path.join(folder, "kernel.cubin")], capture_output=True, text=True)
    results.append({"capability": capability, "dtype": str(dtype), "head_dim": head_dim, "tactic": tactic,
                    "shared": kernel.metadata.shared, "params": len(ptx_parameters(kernel.asm["ptx"])),
                    "tensorrt_params": len(ptx_parameters(ptx)), "ptxas": assembled.returncode,
                    "ptx": hashlib.sha256(ptx.encode()).hexdigest(),
                    "ptxas_error": assembled.stderr[-300:]})
print(json.dumps(results))
"""


@pytest.mark.slow
def test_kernel_compiles_for_sm80_and_sm90_within_shared_memory():
    """triton.compile for sm_80 / sm_90 (no GPU needed): every launch configuration (every tactic the
    plugin advertises) fits the 99 KiB an sm_86 / sm_89 block may use, and the PTX with TensorRT's
    argument list still assembles."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 2 * 3 * 3 * triton_attention.TACTICS
    kernels: dict[tuple, set] = {}
    for result in results:
        kernels.setdefault((result["capability"], result["dtype"], result["head_dim"]), set()).add(result["ptx"])
    assert all(len(ptx) == triton_attention.TACTICS for ptx in kernels.values())  # each tactic its own kernel
    for result in results:
        assert 0 < result["shared"] <= triton_attention.SHARED_MEMORY_LIMIT, result
        assert result["tensorrt_params"] == 5 + triton_attention.INT_ARGUMENTS + 1 <= result["params"], result
        assert result["ptxas"] == 0, result


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_kernel_at_cogvideox_sizes_on_the_gpu(dtype, head_dim):
    """226 text tokens and 13 x 30 x 45 vision tokens (49 frames at 480 x 720), 2 x 4 heads."""
    q, k, v, cos, sin, text = case(2, 4, 226, 13 * 30 * 45, head_dim, dtype, seed=1)
    device = [t.cuda() for t in (q, k, v, cos, sin)]
    got = triton_rope_attention(*device, text)
    expected = reference_rope_attention(*(t.float() for t in device[:3]), device[3], device[4], text)
    scale = max(1.0, expected.abs().max().item())
    assert (got.float() - expected).abs().max().item() / scale <= {torch.float32: 1e-5, torch.float16: 1e-3}.get(dtype, 8e-3)
