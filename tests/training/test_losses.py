"""Loss sanity: closed-form values of KL, L1, hinge and v-prediction; LPIPS-style distance; text dropout."""

from __future__ import annotations

import pytest
import torch

from cogvx.modeling.configs import SchedulerConfig
from cogvx.runtime.schedulers import DDIMScheduler
from cogvx.training.config import TrainConfigError
from cogvx.training.discriminator import PatchDiscriminator3D, hinge_discriminator_loss, hinge_generator_loss
from cogvx.training.losses import (PerceptualLoss, VAELoss, VGG16Features, drop_text, kl_divergence, l1_loss,
                                   transformer_loss, v_prediction_loss, v_prediction_pair)


def test_kl_of_standard_normal_is_zero_and_known_otherwise():
    mean, logvar = torch.zeros(2, 4, 3, 5, 5), torch.zeros(2, 4, 3, 5, 5)
    assert kl_divergence(mean, logvar).abs().max().item() == 0.0
    # KL(N(1, e^1) || N(0, 1)) = 0.5 (1 + e - 1 - 1) per element
    expected = 0.5 * (1 + torch.e - 2)
    assert kl_divergence(mean + 1, logvar + 1).sub(expected).abs().max().item() <= 1e-6 * expected


def test_l1_per_sample():
    video = torch.zeros(2, 3, 5, 8, 8)
    reconstruction = video.clone()
    reconstruction[1] += 0.25
    assert l1_loss(video, reconstruction).tolist() == [0.0, 0.25]


def test_v_prediction_loss_is_zero_at_the_exact_velocity_and_matches_weighted_x0_mse():
    schedule = DDIMScheduler(SchedulerConfig(snr_shift_scale=3.0))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, 4, generator=g), torch.randn(3, 2, 4, 4, 4, generator=g)
    t = torch.tensor([0, 499, 998])
    noisy, velocity = v_prediction_pair(schedule, x0, noise, t)

    oracle = lambda latents, text, timesteps: velocity.clone()
    assert transformer_loss(oracle, schedule, x0, torch.zeros(3, 1, 1), t, noise).abs().max().item() == 0.0

    prediction = velocity + 0.1 * torch.randn(velocity.shape, generator=g)
    v_mse = v_prediction_loss(prediction, velocity)
    abar = schedule.alphas_cumprod[t].float()
    x0_of = lambda v: abar.sqrt().reshape(-1, 1, 1, 1, 1) * noisy - (1 - abar).sqrt().reshape(-1, 1, 1, 1, 1) * v
    x0_mse = (x0_of(prediction) - x0_of(velocity)).square().flatten(1).mean(1)
    assert torch.allclose(v_mse, x0_mse / (1 - abar), rtol=1e-4)


def test_text_dropout_rate_and_replacement():
    text = torch.randn(4000, 3, 2)
    empty = torch.full((3, 2), 7.0)
    mixed, dropped = drop_text(text, empty, 0.1, torch.Generator().manual_seed(1))
    assert abs(dropped.float().mean().item() - 0.1) < 0.015
    assert torch.equal(mixed[dropped], empty.expand(int(dropped.sum()), 3, 2))
    assert torch.equal(mixed[~dropped], text[~dropped])
    assert drop_text(text, empty, 0.0)[1].sum().item() == 0
    with pytest.raises(ValueError, match=r"probability in \[0, 1\]"):
        drop_text(text, empty, 1.5)


def test_hinge_losses_closed_form():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # relu(1 - real) = [0, 0.5] -> 0.25; relu(1 + fake) = [0, 1] -> 0.5
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.75)
    assert hinge_generator_loss(fake).item() == pytest.approx(1.0)


def test_patch_discriminator_logit_grid():
    discriminator = PatchDiscriminator3D(channels=4, num_layers=3)
    logits = discriminator(torch.randn(2, 3, 5, 32, 32))
    assert logits.shape == (2, 1, 2, 4, 4)  # time 5 -> 5 -> 3 -> 2; space /8


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    state = VGG16Features().state_dict()
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files carry the classifier too
    torch.save(state, path)
    return path


def test_perceptual_distance_zero_on_identical_videos_positive_otherwise(vgg_weights):
    perceptual = PerceptualLoss(vgg_weights)
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 2, 32, 32, generator=g) * 2 - 1
    other = video.clone()
    other[1] = torch.rand(3, 2, 32, 32, generator=g) * 2 - 1
    distance = perceptual(video, other)
    assert distance[1].item() > 1e-3  # unrelated clips: the scale of a real distance (about 0.02 here)
    # identical clips: zero up to rounding, measured against that scale
    assert perceptual(video, video).abs().max().item() <= 1e-5 * distance[1].item()
    assert distance[0].item() <= 1e-5 * distance[1].item()


def test_perceptual_refuses_a_file_that_is_not_vgg16(tmp_path):
    path = tmp_path / "not_vgg.pth"
    torch.save({"weight": torch.zeros(1)}, path)
    # the weights files come from the run file (vae_loss.vgg16_weights): user errors, one line in the CLI
    with pytest.raises(TrainConfigError, match=r"not a torchvision VGG16 state dict: missing \['features.0.bias'"):
        PerceptualLoss(path)
    with pytest.raises(TrainConfigError, match="does not exist; .*vgg16-397923af.pth"):
        PerceptualLoss(tmp_path / "absent.pth")


def test_vae_loss_turns_the_gan_on_at_its_start_step():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator3D(channels=4, num_layers=2)
    loss = VAELoss(kl_weight=0.5, discriminator=discriminator, gan_weight=0.3, gan_start_step=2, adaptive_gan_weight=False)
    video = torch.zeros(1, 3, 5, 16, 16)
    reconstruction = video + 0.5
    mean, logvar = torch.ones(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2)
    before, parts = loss.generator_loss(video, reconstruction, mean, logvar, step=1)
    assert before.item() == pytest.approx(0.5 + 0.5 * 0.5) and "gan" not in parts  # L1 0.5 + 0.5 * KL 0.5
    after, parts = loss.generator_loss(video, reconstruction, mean, logvar, step=2)
    assert after.item() == pytest.approx(0.75 + 0.3 * parts["gan"], rel=1e-5)
    assert all(p.grad is None for p in discriminator.parameters())


def test_adaptive_gan_weight_balances_the_gradients():
    torch.manual_seed(0)
    last = torch.nn.Parameter(torch.randn(4))
    discriminator = PatchDiscriminator3D(channels=4, num_layers=1)
    loss = VAELoss(kl_weight=0.0, discriminator=discriminator, gan_weight=1.0, adaptive_gan_weight=True)
    video = torch.zeros(1, 3, 1, 8, 8)
    reconstruction = video + last.sum()  # the "decoder's last layer" feeds every pixel
    _, parts = loss.generator_loss(video, reconstruction, torch.zeros(1, 1), torch.zeros(1, 1), 0, last)
    gan = hinge_generator_loss(discriminator(reconstruction))
    rec_grad = torch.autograd.grad(l1_loss(video, reconstruction).mean(), last, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan, last)[0]
    assert parts["gan_weight"] == pytest.approx((rec_grad.norm() / (gan_grad.norm() + 1e-4)).item(), rel=1e-5)


def test_vae_loss_mse_reconstruction():
    video = torch.zeros(1, 3, 5, 16, 16)
    reconstruction = video + 0.5
    mean, logvar = torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2)  # KL 0
    loss, parts = VAELoss(reconstruction="mse").generator_loss(video, reconstruction, mean, logvar, step=0)
    assert loss.item() == pytest.approx(0.25) and parts["mse"] == pytest.approx(0.25) and "l1" not in parts
    l1, parts = VAELoss().generator_loss(video, reconstruction, mean, logvar, step=0)
    assert l1.item() == pytest.approx(0.5) and parts["l1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"reconstruction must be one of \['l1', 'mse'\]"):
        VAELoss(reconstruction="huber")
