"""What each rank draws: diffusion timesteps (explicit uniform sampling) and the order of the data.

Explicit uniform sampling (see docs/reference.md, 'Training recipes'): with R data-parallel
ranks, [0, T) is split into R equal intervals and rank r draws its integer timesteps only from
[r*T/R, (r+1)*T/R), so every global batch covers the whole range and the loss is smoother.
Switched off, every rank draws uniformly from [0, T).

Both samplers are pure functions of their own state (a seeded generator, an epoch and a batch
position), so `state_dict()` / `load_state_dict()` resume them exactly.
"""

from __future__ import annotations

import logging

import torch

from .config import TrainConfigError

logger = logging.getLogger(__name__)


class TimestepSampler:
    """Integer timesteps for one rank, from its own seeded generator.

    explicit_uniform: rank r of R draws from [r*T//R, (r+1)*T//R); otherwise from [0, T).
    """

    def __init__(self, num_train_timesteps: int = 1000, rank: int = 0, world_size: int = 1,
                 explicit_uniform: bool = True, seed: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}) (got {rank})")
        if explicit_uniform and world_size > num_train_timesteps:
            raise TrainConfigError(
                f"explicit uniform sampling gives each of {world_size} ranks an interval of "
                f"{num_train_timesteps} timesteps, which is too few; switch explicit_uniform off"
            )
        self.num_train_timesteps = num_train_timesteps
        self.rank, self.world_size = rank, world_size
        self.explicit_uniform = explicit_uniform
        # Seeded by (seed, rank) so that ranks draw different numbers even when off.
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)

    def interval(self) -> tuple[int, int]:
        """[low, high) this rank draws from."""
        T, R, r = self.num_train_timesteps, self.world_size, self.rank
        if not self.explicit_uniform:
            return 0, T
        return r * T // R, (r + 1) * T // R

    def sample(self, batch_size: int) -> torch.Tensor:
        """(batch_size,) int64 timesteps in this rank's interval."""
        low, high = self.interval()
        return torch.randint(low, high, (batch_size,), generator=self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "explicit_uniform": self.explicit_uniform,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if (state["explicit_uniform"], state["world_size"]) != (self.explicit_uniform, self.world_size):
            logger.warning(
                "timestep sampler resumed with explicit_uniform=%s over %d ranks; the checkpoint drew "
                "with explicit_uniform=%s over %d ranks", self.explicit_uniform, self.world_size,
                state["explicit_uniform"], state["world_size"],
            )
        self.generator.set_state(state["generator"])


class ShardedBatchSampler:
    """Batches of dataset indices for one rank: a seeded permutation per epoch, dealt out by rank.

    Every rank gets the same number of batches per epoch (the tail that does not fill a batch on
    every rank is dropped), so the ranks step together. `next_batch` hands them out one at a time
    (no prefetch runs ahead of the saved position), so a resumed run sees exactly the batches the
    uninterrupted run would have seen.
    """

    def __init__(self, dataset_size: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.batches_per_epoch = dataset_size // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise TrainConfigError(
                f"{dataset_size} clips cannot fill one batch of {batch_size} on each of {world_size} ranks; "
                "use more data or a smaller batch_size"
            )
        self.dataset_size, self.batch_size = dataset_size, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.position = 0, 0  # position = batches of this epoch already handed out
        self._cached_epoch, self._cached_batches = -1, []

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of one epoch."""
        if self._cached_epoch == epoch:
            return self._cached_batches
        order = torch.randperm(self.dataset_size, generator=torch.Generator().manual_seed(self.seed + epoch))
        used = order[: self.batches_per_epoch * self.batch_size * self.world_size]
        mine = used[self.rank::self.world_size]  # (batches_per_epoch * batch_size,)
        self._cached_epoch, self._cached_batches = epoch, mine.reshape(self.batches_per_epoch, self.batch_size).tolist()
        return self._cached_batches

    def next_batch(self) -> list[int]:
        """The next batch of this rank (crossing into the next epoch when this one is used up)."""
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        batch = self.epoch_batches(self.epoch)[self.position]
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
