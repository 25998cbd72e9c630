"""The TensorRT runner's bookkeeping, on CPU (engines/tensorrt_runtime.py): the shared device-memory
pool, which stages are captured as CUDA graphs, and when a capture may be replayed. The runner itself
needs TensorRT and a GPU (tests/engines/test_tensorrt_build.py runs it there, skipped here)."""

from __future__ import annotations

import pytest
import torch

from cogvx.engines.tensorrt_runtime import ALIGNMENT, Capture, CapturedCalls, DeviceMemoryPool, signature


def test_pool_is_the_largest_need_not_the_sum():
    pool = DeviceMemoryPool("cpu")
    assert pool.size == 0 and pool.generation == 0
    needs = {"transformer.plan": 3 * 2**20 + 5, "vae_decoder_first_2.plan": 7 * 2**20, "text_encoder.plan": 2**20}
    addresses = {}
    for name, need in needs.items():
        address, size = pool.reserve(need)
        assert size >= need and size % ALIGNMENT == 0 and address % ALIGNMENT == 0
        addresses[name] = address
    assert pool.size == -(-max(needs.values()) // ALIGNMENT) * ALIGNMENT < sum(needs.values())
    assert pool.generation == 2  # grew twice (3 MiB, then 7 MiB); the 1 MiB plan took the 7 MiB block
    assert addresses["text_encoder.plan"] == addresses["vae_decoder_first_2.plan"]
    assert pool.reserve(0) == pool.reserve(max(needs.values())) and pool.generation == 2  # never shrinks
    with pytest.raises(ValueError):
        pool.reserve(-1)


def test_pool_of_nothing_is_still_a_valid_address():
    address, size = DeviceMemoryPool("cpu").reserve(0)
    assert size == ALIGNMENT and address != 0


def _capture(generation: int, value: float = 0.0) -> Capture:
    class Replay:  # stands in for torch.cuda.CUDAGraph: what replaying the recorded enqueue does
        def replay(self):
            capture.outputs["velocity"].copy_(capture.inputs["latents"] * 2 + value)

    capture = Capture(Replay(), {"latents": torch.zeros(2, 3)}, {"velocity": torch.zeros(2, 3)}, generation)
    return capture


def test_replay_copies_in_and_out():
    capture = _capture(1, value=1.0)
    first = capture.run({"latents": torch.ones(2, 3)})["velocity"]
    second = capture.run({"latents": torch.full((2, 3), 3.0)})["velocity"]
    assert torch.equal(first, torch.full((2, 3), 3.0))  # kept by the caller, not overwritten by the next replay
    assert torch.equal(second, torch.full((2, 3), 7.0))


def test_captures_by_signature_dropped_when_the_pool_moves():
    calls = CapturedCalls(limit=2)
    cfg = signature({"latents": torch.zeros(2, 13, 16, 60, 90), "timestep": torch.zeros(2, dtype=torch.int64)})
    plain = signature({"latents": torch.zeros(1, 13, 16, 60, 90), "timestep": torch.zeros(1, dtype=torch.int64)})
    half = signature({"latents": torch.zeros(2, 13, 16, 60, 90, dtype=torch.float16),
                      "timestep": torch.zeros(2, dtype=torch.int64)})
    assert len({cfg, plain, half}) == 3  # batch and dtype both tell captures apart
    assert signature({"b": torch.zeros(1), "a": torch.zeros(2)}) == signature({"a": torch.zeros(2), "b": torch.zeros(1)})
    calls.add(cfg, _capture(1))
    calls.add(plain, _capture(1))
    assert calls.get(cfg, 1) is not None  # cfg is now the most recent
    calls.add(half, _capture(1))  # over the limit: the least recent (plain) goes
    assert calls.get(plain, 1) is None and calls.get(cfg, 1) is not None and calls.get(half, 1) is not None
    assert calls.get(cfg, 2) is None  # the pool grew: the graph holds a freed address
    assert list(calls.captures) == [half]

