"""How much memory a device has free, and a refusal before allocating what will not fit.

Sizes a machine cannot hold (a config with a million layers, a 100000-pixel-high video) must be
refused with the estimate before anything is allocated, not found by the kernel's OOM killer.
Estimates here are lower bounds (the allocations that certainly happen), so a request that is
refused could never have run, and nothing that could run is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cogvx.errors import CogvxError

GiB = 2**30


class InsufficientMemoryError(CogvxError):
    """A request or a model larger than the device can hold; the message gives both figures."""


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Free memory of `device` now (host: MemAvailable; CUDA: free device memory); None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(needed_bytes: int, what: str, device: torch.device | str = "cpu", advice: str = "") -> None:
    """Refuse `what` when it needs more than `device` has free."""
    free = available_bytes(device)
    if free is not None and needed_bytes > free:
        raise InsufficientMemoryError(
            f"{what} needs at least {needed_bytes / GiB:,.1f} GiB, and {torch.device(device).type} memory has "
            f"{free / GiB:,.1f} GiB free{'; ' + advice if advice else ''}")
