"""Data-parallel launch and the state-dict plumbing that DDP and FSDP2 share.

`torchrun --nproc_per_node N cogvx train ...` sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; `init_distributed` then joins the process group from those variables (NCCL on
CUDA, gloo on CPU). Without WORLD_SIZE the run is one plain process.

Weights and optimizer state are always gathered as full, unsharded state dicts on the CPU
(`torch.distributed.checkpoint.state_dict`), so a checkpoint written under FSDP2 loads under DDP,
in a single process, and in every other cogvx command.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .config import TrainConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Who this process is: rank of world_size, on `device`; `owns_group` if it created the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int) -> torch.device:
    """'auto' -> cuda:local_rank when CUDA is there, else cpu; 'cuda' -> cuda:local_rank; else as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainConfigError("device 'cuda' asked for but CUDA is not available; use device = 'cpu' or 'auto'")
        return torch.device("cuda", local_rank)
    try:
        return torch.device(name)
    except RuntimeError:  # torch's message lists every device type; say what a run file takes
        raise TrainConfigError(f"device {name!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the torchrun process group when WORLD_SIZE is set (reusing one already joined); else single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = pick_device(device, local_rank)
    if world_size <= 1:
        return DistributedContext(device=chosen)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend=backend, init_method="env://")
        owns = True
        logger.info("joined the %s process group as rank %d of %d", backend, dist.get_rank(), world_size)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, chosen, owns)


def shutdown(context: DistributedContext) -> None:
    """Leave the process group if this run created it."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.distributed:
        dist.barrier()


def mean_across_ranks(value: float, context: DistributedContext) -> float:
    """The mean of a per-rank number over all ranks (what the log records)."""
    if not context.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return tensor.item() / context.world_size


def broadcast_object(value, context: DistributedContext):
    """Rank 0's `value` on every rank."""
    if not context.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def average_gradients(module: nn.Module, context: DistributedContext) -> None:
    """All-reduce the gradients of an unwrapped (replicated) module, e.g. the small discriminator."""
    if not context.distributed:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(context.world_size)


def wrap_model(model: nn.Module, strategy: str, context: DistributedContext,
               shard_units: list[nn.Module] | None = None) -> nn.Module:
    """DDP, or FSDP2 (`fully_shard` on each of `shard_units`, then on the root); as is in one process."""
    if not context.distributed:
        return model
    if strategy == "ddp":
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for unit in shard_units or []:
            fully_shard(unit)
        fully_shard(model)
        return model
    raise ValueError(f"strategy must be 'ddp' or 'fsdp2' (got {strategy!r})")


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights on the CPU (rank 0 only under FSDP2; other ranks get an empty dict)."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Unsharded optimizer state keyed by parameter names (rank 0 only under FSDP2)."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_state(model: nn.Module, weights: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer | None = None, optimizer_state: dict | None = None) -> None:
    """Put full (unsharded) weights and optimizer state into a possibly wrapped model, on every rank."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    if optimizer is not None and optimizer_state is not None:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
