"""Our DDIM / DPM samplers step by step against diffusers' CogVideoX schedulers."""

from __future__ import annotations

import pytest
import torch

from cogvx.modeling.configs import SchedulerConfig
from cogvx.runtime.schedulers import alphas_cumprod, make_scheduler


def diffusers_scheduler(name: str, config: SchedulerConfig):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    cls = CogVideoXDPMScheduler if name == "dpm" else CogVideoXDDIMScheduler
    return cls(**{k: v for k, v in config.to_dict().items() if k != "_class_name"})


def fake_velocity(latents: torch.Tensor, t) -> torch.Tensor:
    """A deterministic stand-in for the model: depends on the latents and on t."""
    return torch.tanh(latents * 0.7 + int(t) / 1000.0) - 0.1 * latents


def test_alphas_cumprod_check_values():
    abar = alphas_cumprod(SchedulerConfig(snr_shift_scale=3.0))
    # the published check values carry 6 significant digits
    assert abar[0].item() == pytest.approx(0.997454, rel=1e-6)
    assert abar[499].item() == pytest.approx(0.0959696, rel=1e-6)
    assert abar[899].item() == pytest.approx(9.68788e-4, rel=1e-6)
    assert abar[999].item() == 0.0


def test_trailing_timesteps():
    sampler = make_scheduler("ddim", SchedulerConfig())
    sampler.set_timesteps(50)
    assert sampler.timesteps.tolist() == list(range(999, 0, -20))


@pytest.mark.parametrize("name", ["ddim", "dpm"])
@pytest.mark.parametrize("steps", [50, 20, 7])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_loop_matches_diffusers(name, steps, shift):
    config = SchedulerConfig(snr_shift_scale=shift)
    ours, reference = make_scheduler(name, config), diffusers_scheduler(name, config)
    ours.set_timesteps(steps)
    reference.set_timesteps(steps)
    assert torch.equal(ours.timesteps, reference.timesteps)
    start = torch.randn(1, 3, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    ours_latents, reference_latents = start.clone(), start.clone()
    ours_generator, reference_generator = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ours_x0 = reference_x0 = None
    worst = 0.0
    for i, t in enumerate(ours.timesteps):
        back = ours.timesteps[i - 1] if i > 0 else None
        ours_latents, ours_x0 = ours.step(fake_velocity(ours_latents, t), ours_x0, t, back, ours_latents,
                                          generator=ours_generator)
        velocity = fake_velocity(reference_latents, t)
        if name == "dpm":
            reference_latents, reference_x0 = reference.step(velocity, reference_x0, t, back, reference_latents,
                                                             generator=reference_generator, return_dict=False)
        else:
            reference_latents = reference.step(velocity, t, reference_latents, generator=reference_generator,
                                               return_dict=False)[0]
        # relative to the latents' scale: the same float64 schedule and fp32 formulas, so only rounding differs
        worst = max(worst, (ours_latents - reference_latents).abs().max().item() / reference_latents.abs().max().item())
    assert worst <= 1e-6
    assert ours_latents.abs().max().item() > 0.05  # the loop did move the sample somewhere non-trivial


def test_training_helpers_match_diffusers():
    config = SchedulerConfig(snr_shift_scale=3.0)
    ours, reference = make_scheduler("ddim", config), diffusers_scheduler("ddim", config)
    generator = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(3, 2, 4, 5, 5, generator=generator), torch.randn(3, 2, 4, 5, 5, generator=generator)
    t = torch.tensor([0, 500, 999])
    for ours_value, reference_value in [(ours.add_noise(x0, noise, t), reference.add_noise(x0, noise, t)),
                                        (ours.get_velocity(x0, noise, t), reference.get_velocity(x0, noise, t))]:
        assert (ours_value - reference_value).abs().max().item() <= 1e-6 * reference_value.abs().max().item()


def test_bad_arguments():
    with pytest.raises(ValueError, match="scheduler must be one of \\['ddim', 'dpm'\\]"):
        make_scheduler("euler", SchedulerConfig())
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        make_scheduler("ddim", SchedulerConfig()).set_timesteps(0)
