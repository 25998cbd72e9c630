"""CogVideoX samplers: DDIM and DPM-Solver++(2M) on the v-prediction schedule.

The formulas are in docs/reference.md, 'Schedulers'. The schedule is computed in float64 and
indexed as 0-dim float64 tensors, exactly as diffusers' `CogVideoXDDIMScheduler` /
`CogVideoXDPMScheduler` do, so the latents match theirs to the last bit of fp32 (the tests check
1e-6 of the latents' scale). DPM draws its noise from the caller's generator in the reference
order: once every step, and a second time on every second-order step (from the second step on,
except a last step that lands before t = 0).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from cogvx.modeling.configs import ConfigError, SchedulerConfig

logger = logging.getLogger(__name__)


def alphas_cumprod(config: SchedulerConfig) -> torch.Tensor:
    """(1000,) float64 abar: scaled-linear betas, SNR shift, zero-terminal-SNR rescale."""
    betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, config.num_train_timesteps,
                           dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0)
    s = config.snr_shift_scale
    abar = abar / (s + (1 - s) * abar)
    if config.rescale_betas_zero_snr:
        root = abar.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * (first / (first - last))  # abar[-1] = 0, abar[0] unchanged
        abar = root**2
    return abar


def inference_timesteps(config: SchedulerConfig, num_inference_steps: int) -> torch.Tensor:
    """(N,) int64, descending: 'trailing' gives [999, 979, ..., 19] for N = 50."""
    total = config.num_train_timesteps
    if not 1 <= num_inference_steps <= total:
        raise ConfigError(f"steps must be between 1 and {total} (got {num_inference_steps}); 50 is the reference setting")
    if total % num_inference_steps:
        logger.warning("%d steps do not divide %d: the previous-timestep stride %d is inexact",
                       num_inference_steps, total, total // num_inference_steps)
    if config.timestep_spacing == "trailing":
        steps = np.round(np.arange(total, 0, -total / num_inference_steps)).astype(np.int64) - 1
    elif config.timestep_spacing == "leading":
        steps = (np.arange(num_inference_steps) * (total // num_inference_steps)).round()[::-1].astype(np.int64)
        steps = steps + config.steps_offset
    else:  # linspace
        steps = np.linspace(0, total - 1, num_inference_steps).round()[::-1].astype(np.int64)
    return torch.from_numpy(steps.copy())


class _Schedule:
    """Shared state: the abar table, the timesteps, and the training-side helpers."""

    init_noise_sigma = 1.0

    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.alphas_cumprod = alphas_cumprod(config)
        self.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if config.set_alpha_to_one \
            else self.alphas_cumprod[0]
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(config.num_train_timesteps - 1, -1, -1)

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        self.timesteps = inference_timesteps(self.config, num_inference_steps).to(device)
        self.num_inference_steps = num_inference_steps

    def _alphas(self, timestep) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before step()")
        timestep = int(timestep)
        previous = timestep - self.config.num_train_timesteps // self.num_inference_steps
        abar_prev = self.alphas_cumprod[previous] if previous >= 0 else self.final_alpha_cumprod
        return self.alphas_cumprod[timestep], abar_prev, previous

    def _gather(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)[timesteps.to(like.device)]
        shape = (-1,) + (1,) * (like.ndim - 1)
        return abar.sqrt().reshape(shape), (1 - abar).sqrt().reshape(shape)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar) x0 + sqrt(1 - abar) noise, per batch element."""
        root, root_complement = self._gather(timesteps, x0)
        return root * x0 + root_complement * noise

    def get_velocity(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v target: sqrt(abar) noise - sqrt(1 - abar) x0."""
        root, root_complement = self._gather(timesteps, x0)
        return root * noise - root_complement * x0


class DDIMScheduler(_Schedule):
    """Deterministic DDIM (eta = 0) on v-prediction."""

    def step(self, velocity, previous_x0, timestep, timestep_back, sample, generator=None):
        """-> (x at the previous timestep, predicted x0). previous_x0, timestep_back, generator: unused."""
        abar, abar_prev, _ = self._alphas(timestep)
        x0 = abar**0.5 * sample - (1 - abar) ** 0.5 * velocity
        a = ((1 - abar_prev) / (1 - abar)) ** 0.5
        b = abar_prev**0.5 - abar**0.5 * a
        return a * sample + b * x0, x0


class DPMScheduler(_Schedule):
    """Stochastic DPM-Solver++(2M), as CogVideoX's reference implements it."""

    def step(self, velocity, previous_x0, timestep, timestep_back, sample, generator=None):
        """-> (x at the previous timestep, predicted x0); `previous_x0` and `timestep_back` carry the 2nd order."""
        abar, abar_prev, previous = self._alphas(timestep)
        abar_back = self.alphas_cumprod[int(timestep_back)] if timestep_back is not None else None
        x0 = abar**0.5 * sample - (1 - abar) ** 0.5 * velocity

        log_snr = ((abar / (1 - abar)) ** 0.5).log()
        h = ((abar_prev / (1 - abar_prev)) ** 0.5).log() - log_snr
        keep = ((1 - abar_prev) / (1 - abar)) ** 0.5 * (-h).exp()
        toward_x0 = (-2 * h).expm1() * abar_prev**0.5
        noise_scale = (1 - abar_prev) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5

        noise = draw_noise(sample, generator)
        prev_sample = keep * sample - toward_x0 * x0 + noise_scale * noise
        if previous_x0 is None or previous < 0:
            return prev_sample, x0
        r = (log_snr - ((abar_back / (1 - abar_back)) ** 0.5).log()) / h
        denoised = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
        noise = draw_noise(sample, generator)
        return keep * sample - toward_x0 * denoised + noise_scale * noise, x0


def draw_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like `like`, drawn on the generator's device (diffusers' randn_tensor)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


SCHEDULERS = {"ddim": DDIMScheduler, "dpm": DPMScheduler}


def make_scheduler(name: str, config: SchedulerConfig) -> DDIMScheduler | DPMScheduler:
    try:
        return SCHEDULERS[name](config)
    except KeyError:
        raise ConfigError(f"scheduler must be one of {sorted(SCHEDULERS)} (got {name!r})") from None
