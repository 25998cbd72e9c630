"""Our 3D causal VAE against diffusers' AutoencoderKLCogVideoX, fp32, identical weights."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY_VAE, randomize_, scaled_error

from cogvx.modeling.checkpoint import CheckpointError
from cogvx.modeling.vae import CogVideoXVAE, chunk_bounds

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def vae_pair(tmp_path_factory):
    from diffusers import AutoencoderKLCogVideoX

    reference = randomize_(AutoencoderKLCogVideoX(**TINY_VAE), seed=2).eval()
    folder = tmp_path_factory.mktemp("vae")
    reference.save_pretrained(folder)
    return folder, reference, CogVideoXVAE.from_pretrained(folder)


@pytest.mark.parametrize("frames,height,width", [(1, 32, 48), (9, 32, 48), (17, 32, 32), (49, 16, 16)])
def test_encode_decode_match_diffusers(vae_pair, frames, height, width):
    _, reference, ours = vae_pair
    generator = torch.Generator().manual_seed(frames)
    video = torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1
    latents = torch.randn(1, 4, (frames - 1) // 4 + 1, height // 8, width // 8, generator=generator)
    with torch.no_grad():
        expected, got = reference.encode(video).latent_dist, ours.encode(video)
        assert scaled_error(got.mean, expected.mean) <= TOLERANCE
        assert scaled_error(got.logvar, expected.logvar) <= TOLERANCE
        decoded, expected_video = ours.decode(latents), reference.decode(latents).sample
    assert decoded.shape == (1, 3, frames, height, width)
    assert scaled_error(decoded, expected_video) <= TOLERANCE


def test_tiled_encode_decode_match_diffusers(vae_pair):
    _, reference, ours = vae_pair
    tiles = dict(tile_sample_min_height=32, tile_sample_min_width=32, tile_overlap_factor_height=1 / 4,
                 tile_overlap_factor_width=1 / 4)
    reference.enable_tiling(**tiles)
    ours.enable_tiling(**tiles)
    try:
        generator = torch.Generator().manual_seed(0)
        video = torch.rand(1, 3, 9, 64, 80, generator=generator) * 2 - 1
        latents = torch.randn(1, 4, 3, 8, 10, generator=generator)
        with torch.no_grad():
            got, expected = ours.encode(video), reference.encode(video).latent_dist
            assert ours.last_tile_count > 1  # the tiled path ran, with seams to blend
            assert scaled_error(got.mean, expected.mean) <= TOLERANCE
            decoded, expected_video = ours.decode(latents), reference.decode(latents).sample
            assert ours.last_tile_count > 1
            assert scaled_error(decoded, expected_video) <= TOLERANCE
            # tiling really changes the numbers (GroupNorm per tile), so the check above is not vacuous
            assert scaled_error(ours.decode(latents, tiled=False), decoded) > 1e-4
    finally:
        reference.disable_tiling()
        ours.disable_tiling()


def test_streaming_chunks_equal_frame_batched_decode(vae_pair):
    _, _, ours = vae_pair
    latents = torch.randn(2, 4, 13, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = ours.decode(latents)
        cache, parts = None, []
        for start, end in chunk_bounds(13, 2):
            part, cache = ours.decode_chunk(latents[:, :, start:end], cache)
            parts.append(part)
    assert [end - start for start, end in chunk_bounds(13, 2)] == [3, 2, 2, 2, 2, 2]
    assert parts[0].shape[2] == 9 and all(p.shape[2] == 8 for p in parts[1:])
    assert scaled_error(torch.cat(parts, dim=2), whole) <= TOLERANCE
    assert list(cache) == sorted(cache, key=list(cache).index)  # a stable, named set of cache entries
    assert all(name.startswith("decoder.") for name in cache)


def test_posterior_sample_draws_like_diffusers(vae_pair):
    _, reference, ours = vae_pair
    video = torch.rand(1, 3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        a = reference.encode(video).latent_dist.sample(torch.Generator().manual_seed(9))
        b = ours.encode(video).sample(torch.Generator().manual_seed(9))
    assert scaled_error(b, a) <= TOLERANCE


def test_sharded_and_bf16_loading(vae_pair, tmp_path):
    _, reference, ours = vae_pair
    reference.save_pretrained(tmp_path, max_shard_size="10KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    sharded = CogVideoXVAE.from_pretrained(tmp_path)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, sharded.state_dict()[name]), name
    low = CogVideoXVAE.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}
    latents = torch.randn(1, 4, 3, 4, 4)
    with torch.no_grad():
        assert scaled_error(low.decode(latents.bfloat16()), ours.decode(latents)) <= 0.1


def test_bad_weights_and_inputs(vae_pair, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _, ours = vae_pair
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    state["decoder.conv_out.conv.bias"] = torch.zeros(5)
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match=r"mis-shaped 1: decoder\.conv_out\.conv\.bias \(5,\)"):
        CogVideoXVAE.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="frames must be 4k\\+1 \\(got 8\\)"):
        ours.encode(torch.zeros(1, 3, 8, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8 \\(got 20x16\\)"):
        ours.encode(torch.zeros(1, 3, 9, 20, 16))
    with pytest.raises(ValueError, match="latents must be \\(B, 4, t, h, w\\)"):
        ours.decode(torch.zeros(1, 16, 3, 4, 4))
