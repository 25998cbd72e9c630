"""Explicit uniform timestep sampling and the resumable per-rank data order."""

from __future__ import annotations

import pytest
import torch

from cogvx.errors import CogvxError
from cogvx.training.config import TrainConfigError
from cogvx.training.sampling import ShardedBatchSampler, TimestepSampler


def test_explicit_uniform_ranks_draw_in_disjoint_intervals_covering_the_range():
    samplers = [TimestepSampler(1000, rank, 4, explicit_uniform=True, seed=0) for rank in range(4)]
    assert [s.interval() for s in samplers] == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    draws = [s.sample(4000) for s in samplers]
    for (low, high), t in zip((s.interval() for s in samplers), draws):
        assert t.dtype == torch.int64 and low <= t.min().item() and t.max().item() < high
        assert t.unique().numel() == 250  # 4000 draws hit every integer of the interval
    # an uneven split still covers [0, 1000) without overlap
    intervals = [TimestepSampler(1000, r, 3).interval() for r in range(3)]
    assert intervals == [(0, 333), (333, 666), (666, 1000)]


def test_switched_off_every_rank_draws_from_the_whole_range():
    for rank in range(2):
        t = TimestepSampler(1000, rank, 2, explicit_uniform=False, seed=0).sample(4000)
        assert t.min().item() < 10 and t.max().item() > 990
    a = TimestepSampler(1000, 0, 2, explicit_uniform=False).sample(50)
    b = TimestepSampler(1000, 1, 2, explicit_uniform=False).sample(50)
    assert not torch.equal(a, b)  # ranks do not draw the same numbers


def test_timestep_sampler_resumes_exactly():
    sampler = TimestepSampler(1000, 1, 2, seed=5)
    sampler.sample(7)
    state = sampler.state_dict()
    expected = sampler.sample(9)
    resumed = TimestepSampler(1000, 1, 2, seed=5)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.sample(9), expected)


def test_timestep_sampler_refuses_bad_ranks():
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size=2\)") as internal:
        TimestepSampler(1000, 2, 2)
    assert not isinstance(internal.value, CogvxError)  # the trainer computes the rank: a bug, not the user's
    with pytest.raises(TrainConfigError, match="switch explicit_uniform off"):
        TimestepSampler(10, 0, 20)


def test_batches_are_disjoint_across_ranks_and_resume_at_the_position():
    ranks = [ShardedBatchSampler(10, 2, rank, 2, seed=1) for rank in range(2)]
    assert ranks[0].batches_per_epoch == 2  # 10 clips, 2 ranks x batch 2: 8 used per epoch
    epoch = [[ranks[r].next_batch() for _ in range(2)] for r in range(2)]
    seen = [i for rank_batches in epoch for batch in rank_batches for i in batch]
    assert len(seen) == 8 and len(set(seen)) == 8

    sampler = ShardedBatchSampler(10, 2, 0, 2, seed=1)
    sampler.next_batch()
    state = sampler.state_dict()
    expected = [sampler.next_batch() for _ in range(5)]  # crosses into epochs 1 and 2
    resumed = ShardedBatchSampler(10, 2, 0, 2, seed=1)
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(5)] == expected
    assert sampler.state_dict() == {"epoch": 2, "position": 2}


def test_batch_sampler_needs_one_full_batch_per_rank():
    with pytest.raises(TrainConfigError, match="cannot fill one batch of 4 on each of 2 ranks"):
        ShardedBatchSampler(7, 4, 0, 2)
