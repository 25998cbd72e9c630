"""The fused forward of the attention seam for NVIDIA GPUs: a Triton flash attention with 3D RoPE.

`triton_rope_attention(q, k, v, cos, sin, num_text_tokens)` computes what
`cogvx.modeling.attention.reference_rope_attention` computes, without materializing the rotated q / k
or the (S, S) score matrix:

- every program owns BLOCK_M query rows of one (batch, head); it loads them once and rotates the
  vision rows (row >= num_text_tokens, table row = row - num_text_tokens) by the interleaved-pair
  RoPE in fp32, (a, b) -> (a cos - b sin, b cos + a sin), then rounds back to the input dtype, as
  the reference does before its SDPA; text rows pass through unrotated;
- it walks the keys in blocks of BLOCK_N, rotating each key block the same way on the fly, with an
  online softmax in fp32 (exp2 with the scale folded in) and an fp32 accumulator;
- tails (S not a multiple of a block, head dims below the power-of-two block) are masked: padded
  key columns get -inf scores, padded head-dim columns are zeros and never stored.

Inputs fp16 / bf16 / fp32 (q, k, v of one dtype), head dims up to 256 (64 and 128 are CogVideoX's),
RoPE tables (V, Dh) fp32. fp16 / bf16 dots run on tensor cores with fp32 accumulation; fp32 dots in
IEEE fp32 (no TF32), as torch's fp32 SDPA does by default.

Under Triton's CPU interpreter (TRITON_INTERPRET=1, how the tests run it without a GPU) every dot
is done in fp32: the interpreter's `tl.dot` on bf16 tiles is wrong.

This is an implementation of the seam, not a model change: `register()` makes it the default for
CUDA tensors (modeling/attention.py `register_implementation(..., device_type="cuda")`); the
backward of the op still recomputes the reference. Block sizes are untuned, after Triton's
flash-attention tutorial (no GPU was available where this was written): the torch path times each
of `GPU_TACTICS` once per shape class and keeps the fastest (`TacticCache`); the TensorRT plugin
offers all of them and TensorRT keeps the fastest at build time.
"""

from __future__ import annotations

import logging
import os

import torch
import triton
import triton.language as tl

logger = logging.getLogger(__name__)

NAME = "triton"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
LOG2_E = 1.4426950408889634  # exp(x) = exp2(x log2(e))


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (read by triton when it is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _load_rotated(base, rows, offs_d, mask_d, stride_s, stride_d, COS, SIN, stride_ts, stride_td, S, L,
                  HAS_ROPE: tl.constexpr):
    """Rows `rows` of one (S, Dh) head, (ROWS, BLOCK_D) in the input dtype, zeros past S and Dh; with
    HAS_ROPE its vision rows (L <= row < S) rotated by RoPE in fp32 and rounded back, as the reference
    does. The pair partner x[d ^ 1] is a second load of the same rows (cached), not a shuffle: no
    layout conversion through shared memory."""
    in_rows = rows < S
    mask = in_rows[:, None] & mask_d[None, :]
    x = tl.load(base + rows[:, None] * stride_s + offs_d[None, :] * stride_d, mask=mask, other=0.0)
    if HAS_ROPE:
        partner = tl.load(base + rows[:, None] * stride_s + (offs_d ^ 1)[None, :] * stride_d, mask=mask, other=0.0)
        vision = (rows >= L) & in_rows
        table_rows = tl.where(vision, rows - L, 0)
        table_mask = vision[:, None] & mask_d[None, :]
        offsets = table_rows[:, None] * stride_ts + offs_d[None, :] * stride_td
        cos = tl.load(COS + offsets, mask=table_mask, other=1.0)  # text rows: cos 1, sin 0, exact identity
        sin = tl.load(SIN + offsets, mask=table_mask, other=0.0)
        sign = tl.where(offs_d % 2 == 0, -1.0, 1.0)  # rotate_pairs: (a, b) -> (-b, a)
        rotated = partner.to(tl.float32) * sign[None, :]
        x = (x.to(tl.float32) * cos + rotated * sin).to(x.dtype)
    return x


@triton.jit
def _rope_attention_forward(
    Q, K, V, COS, SIN,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_ts, stride_td,
    HEADS, S, L,
    OUT,
    HEAD_DIM: tl.constexpr, QK_SCALE: tl.constexpr, HAS_ROPE: tl.constexpr, DOT_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch, head) against every key. Grid (cdiv(S, BLOCK_M), B * N).

    The argument order is TensorRT's for an ahead-of-time plugin kernel (engines/plugin.py): the
    plugin's inputs, then int32 scalars, then its output; everything else is a compile-time constant
    (QK_SCALE = log2(e) / sqrt(head dim), folded into exp2)."""
    start_m = tl.program_id(0)
    batch_head = tl.program_id(1)
    b = batch_head // HEADS
    h = batch_head % HEADS
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    q = _load_rotated(q_base, offs_m, offs_d, mask_d, stride_qs, stride_qd, COS, SIN, stride_ts, stride_td, S, L,
                      HAS_ROPE)  # (BLOCK_M, BLOCK_D)
    if DOT_FP32:
        q = q.to(tl.float32)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max of the scaled scores (log2)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of exp2(score - max)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(0, S, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rotated(k_base, cols, offs_d, mask_d, stride_ks, stride_kd, COS, SIN, stride_ts, stride_td, S, L,
                          HAS_ROPE)  # (BLOCK_N, BLOCK_D)
        v = tl.load(v_base + cols[:, None] * stride_vs + offs_d[None, :] * stride_vd,
                    mask=(cols[:, None] < S) & mask_d[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * QK_SCALE  # (BLOCK_M, BLOCK_N)
        scores = tl.where(cols[None, :] < S, scores, float("-inf"))  # padded keys take no weight
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        p = tl.math.exp2(scores - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)  # 0 on the first block (m_i = -inf)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_D)
        m_i = m_new
    out = acc / l_i[:, None]
    o_base = OUT + b * stride_ob + h * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_os + offs_d[None, :] * stride_od, out.to(OUT.dtype.element_ty),
             mask=(offs_m[:, None] < S) & mask_d[None, :])


# (16-bit?, largest head dim) -> the launch configurations (BLOCK_M, BLOCK_N, num_warps, num_stages)
# the kernel may use: its tactics. The first is the default; the torch path times them all once per
# shape class (`TacticCache`), the TensorRT plugin advertises them all and TensorRT times each at
# build time on the build GPU (engines/plugin.py); both keep the fastest. None was tuned here (no GPU where this was written); each is chosen so
# that the kernel, compiled for sm_80 / sm_90 with Triton's ptxas, needs at most 80 KiB of shared
# memory: under the 99 KiB an sm_86 / sm_89 block may have (tests/engines/test_triton_attention.py
# compiles every one).
GPU_TACTICS = {
    (True, 64): ((128, 64, 4, 2), (64, 64, 4, 2), (128, 32, 4, 3)),
    (True, 128): ((128, 32, 8, 2), (64, 32, 4, 2), (128, 32, 4, 2)),
    (True, 256): ((64, 32, 4, 1), (32, 32, 4, 1), (64, 16, 4, 1)),
    (False, 64): ((64, 32, 4, 2), (32, 32, 4, 2), (64, 16, 4, 3)),
    (False, 128): ((64, 32, 4, 1), (64, 16, 4, 2), (32, 16, 4, 2)),
    (False, 256): ((32, 16, 4, 1), (16, 16, 4, 1), (32, 16, 8, 1)),
}
TACTICS = len(GPU_TACTICS[True, 64])  # every key has as many: the plugin advertises 1..TACTICS
SHARED_MEMORY_LIMIT = 99 * 1024


def launch_config(head_dim: int, dtype: torch.dtype, interpreted: bool | None = None, tactic: int = 0
                  ) -> dict[str, int]:
    """Block sizes and launch parameters for a head dim, dtype and tactic (0: the default); 16 x 16
    blocks in the interpreter, so tiny test sequences still span several blocks and tails."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if not 0 <= tactic < TACTICS:
        raise ValueError(f"tactic {tactic}: the kernel has tactics 0 to {TACTICS - 1}")
    if interpreted if interpreted is not None else interpreting():
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_D": block_d, "num_warps": 1, "num_stages": 1}
    sixteen_bit = dtype != torch.float32
    bound = next(limit for limit in (64, 128, 256) if block_d <= limit)
    block_m, block_n, warps, stages = GPU_TACTICS[sixteen_bit, bound][tactic]
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "num_warps": warps, "num_stages": stages}


def constants(head_dim: int, dtype: torch.dtype, has_rope: bool, interpreted: bool | None = None,
              tactic: int = 0) -> dict:
    """The kernel's compile-time arguments for a head dim, dtype, table presence and tactic."""
    interpreted = interpreting() if interpreted is None else interpreted
    config = launch_config(head_dim, dtype, interpreted, tactic)
    dot_fp32 = interpreted or dtype == torch.float32
    return {"HEAD_DIM": head_dim, "QK_SCALE": LOG2_E / head_dim**0.5, "HAS_ROPE": has_rope, "DOT_FP32": dot_fp32,
            "DOT_PRECISION": "ieee" if dot_fp32 else "tf32",
            **{name: value for name, value in config.items() if name.startswith("BLOCK_")}}


TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
INT_ARGUMENTS = 21  # the int32 scalars between the inputs and the output: 18 strides, HEADS, S, L


def compile_kernel(dtype: torch.dtype, head_dim: int, has_rope: bool = True, capability: int | None = None,
                   tactic: int = 0):
    """The kernel compiled ahead of time (Triton's `triton.compile`, no launch): for the current GPU,
    or for `capability` (80 for sm_80, 90 for sm_90) with Triton's own ptxas, which needs no GPU.
    The result's `asm["ptx"]`, `metadata.name`, `metadata.shared` and `metadata.num_warps` are what
    a TensorRT ahead-of-time plugin needs."""
    from triton.compiler import ASTSource

    kind = TRITON_TYPES[dtype]
    signature = {name: f"*{kind}" for name in ("Q", "K", "V")}
    signature |= {"COS": "*fp32", "SIN": "*fp32"}
    parameters = list(_rope_attention_forward.arg_names)
    first_int, output = parameters.index("stride_qb"), parameters.index("OUT")
    assert output - first_int == INT_ARGUMENTS, "the kernel's int32 arguments changed: update INT_ARGUMENTS"
    signature |= {name: "i32" for name in parameters[first_int:output]}
    signature["OUT"] = f"*{kind}"
    consts = constants(head_dim, dtype, has_rope, interpreted=False, tactic=tactic)
    signature |= {name: "constexpr" for name in consts}
    config = launch_config(head_dim, dtype, interpreted=False, tactic=tactic)
    options = {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
    if capability is None:
        return triton.compile(ASTSource(_rope_attention_forward, signature, constexprs=consts), options=options)
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", capability, 32)
    return triton.compile(ASTSource(_rope_attention_forward, signature, constexprs=consts), target=target,
                          options=options)


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor | None,
                 sin: torch.Tensor | None, num_text_tokens: int) -> None:
    """What the kernel needs beyond what the seam already checks; ValueError naming the input."""
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must be (B, N, S, Dh) of one shape (got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)})")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one of {DTYPES} (got {q.dtype}, {k.dtype}, {v.dtype})")
    head_dim = q.shape[3]
    if q.numel() >= 2**31:  # offsets are int32 in the kernel (and in TensorRT's plugin arguments)
        raise ValueError(f"q has {q.numel()} elements, more than the kernel's int32 offsets reach; split the batch")
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head dim {head_dim} is above the kernel's {MAX_HEAD_DIM}; use the reference")
    if not 0 <= num_text_tokens <= q.shape[2]:
        raise ValueError(f"num_text_tokens {num_text_tokens} is outside 0..{q.shape[2]}")
    if cos is not None:
        if head_dim % 2:
            raise ValueError(f"RoPE rotates pairs: head dim {head_dim} must be even")
        expected = (q.shape[2] - num_text_tokens, head_dim)
        if tuple(cos.shape) != expected or sin is None or tuple(sin.shape) != expected:
            raise ValueError(f"RoPE tables must be {expected} (got {tuple(cos.shape)}, "
                             f"{None if sin is None else tuple(sin.shape)})")


def triton_rope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor | None,
                          sin: torch.Tensor | None, num_text_tokens: int, tactic: int | None = None) -> torch.Tensor:
    """The seam's forward as one kernel launch. q, k, v (B, N, S, Dh) -> (B, N, S, Dh) in q's dtype.

    `tactic` picks the launch configuration (GPU_TACTICS); None: on a GPU, the fastest for this
    shape class, timed once per class (`TacticCache`; inside a CUDA-graph capture the one already
    chosen, else 0); in the interpreter, 0."""
    check_inputs(q, k, v, cos, sin, num_text_tokens)
    B, N, S, head_dim = q.shape
    out = torch.empty((B, N, S, head_dim), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    has_rope = cos is not None and cos.shape[0] > 0
    if has_rope:
        cos = cos.to(device=q.device, dtype=torch.float32).contiguous()  # (V, Dh)
        sin = sin.to(device=q.device, dtype=torch.float32).contiguous()  # (V, Dh)
    else:
        cos = sin = q.new_empty((1, 1), dtype=torch.float32)  # never read (HAS_ROPE false)
    interpreted = interpreting()

    def launch(chosen: int) -> None:
        config = launch_config(head_dim, q.dtype, interpreted, chosen)
        grid = (triton.cdiv(S, config["BLOCK_M"]), B * N)
        _rope_attention_forward[grid](
            q, k, v, cos, sin,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *cos.stride(),
            N, S, num_text_tokens,
            out,
            **constants(head_dim, q.dtype, has_rope, interpreted, chosen), num_warps=config["num_warps"],
            num_stages=config["num_stages"],
        )

    if tactic is None:
        key = TacticCache.key(q.device, q.dtype, head_dim, has_rope, S, B * N)
        if interpreted or not q.is_cuda:
            tactic = 0
        elif torch.cuda.is_current_stream_capturing():  # no timing inside a CUDA-graph capture
            tactic = TACTIC_CACHE.chosen.get(key, 0)
        else:
            tactic = TACTIC_CACHE.choose(key, lambda chosen: _milliseconds(lambda: launch(chosen)))
    launch(tactic)
    return out


def _milliseconds(fn, repeats: int = 3) -> float:
    """Median CUDA time of fn() after one warm-up run (which also compiles it)."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


class TacticCache:
    """The fastest tactic per shape class, timed once: what TensorRT does for the plugin at build
    time, done by the torch path at its first call of a class. A class is the device, dtype, head
    dim, RoPE or not, and the sequence length and batch x heads rounded up to powers of two (the
    denoiser calls one class every step)."""

    def __init__(self) -> None:
        self.chosen: dict[tuple, int] = {}

    @staticmethod
    def key(device: torch.device, dtype: torch.dtype, head_dim: int, has_rope: bool, tokens: int, rows: int) -> tuple:
        return (str(device), dtype, head_dim, has_rope, triton.next_power_of_2(tokens), triton.next_power_of_2(rows))

    def choose(self, key: tuple, milliseconds) -> int:
        """The cached tactic of `key`, or the one of 0..TACTICS-1 with the least `milliseconds(tactic)`."""
        if key not in self.chosen:
            times = [milliseconds(tactic) for tactic in range(TACTICS)]
            self.chosen[key] = min(range(TACTICS), key=times.__getitem__)
            logger.info("attention: tactic %d for %s (%s ms)", self.chosen[key], key,
                        ", ".join(f"{t:.3f}" for t in times))
        return self.chosen[key]


TACTIC_CACHE = TacticCache()


def register() -> None:
    """Make the kernel the seam's default for CUDA tensors (the torch backend then uses it unasked)."""
    from cogvx.modeling.attention import register_implementation

    register_implementation(NAME, triton_rope_attention, device_type="cuda")
    logger.info("attention: the Triton RoPE flash-attention kernel serves CUDA tensors")
