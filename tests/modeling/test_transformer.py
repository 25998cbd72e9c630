"""Our expert transformer against diffusers' CogVideoXTransformer3DModel, every variant, fp32."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch
from tiny_models import TINY_TRANSFORMERS, make_diffusers_transformer, scaled_error

from cogvx.modeling.checkpoint import CheckpointError
from cogvx.modeling.configs import ConfigError, TransformerConfig
from cogvx.modeling.positions import position_tables
from cogvx.modeling.transformer import CogVideoXTransformer

TOLERANCE = 1e-5


def diffusers_rotary(config: dict, frames: int, height: int, width: int):
    """The rotary tables exactly as diffusers' pipelines build them (their code, not ours)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    if not config.get("use_rotary_positional_embeddings"):
        return None
    p, p_t = 2, config.get("patch_size_t")
    grid_h, grid_w = height // p, width // p
    base_w, base_h = config["sample_width"] // p, config["sample_height"] // p
    if p_t is None:
        crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
        return get_3d_rotary_pos_embed(config["attention_head_dim"], crops, (grid_h, grid_w), frames)
    return get_3d_rotary_pos_embed(
        config["attention_head_dim"], None, (grid_h, grid_w), (frames + p_t - 1) // p_t,
        grid_type="slice", max_size=(base_h, base_w),
    )


def run_both(variant, folder, reference, batch, frames, height, width, text_len=None, seed=0):
    config = TINY_TRANSFORMERS[variant]
    ours = CogVideoXTransformer.from_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, frames, config["in_channels"], height, width, generator=generator)
    text = torch.randn(batch, text_len or config["max_text_seq_length"], config["text_embed_dim"], generator=generator)
    timestep = torch.randint(0, 1000, (batch,), generator=generator)
    ofs = torch.full((1,), 2.0) if config.get("ofs_embed_dim") else None
    with torch.no_grad():
        expected = reference(
            latents, text, timestep, ofs=ofs,
            image_rotary_emb=diffusers_rotary(config, frames, height, width), return_dict=False,
        )[0]
        got = ours(latents, text, timestep, ofs=ofs)
    return got, expected


# (batch, latent frames, latent height, latent width): the training shape, then others; latent
# 6x10 on an 8x8 base grid gives fractional RoPE positions (the 1.0 resize-and-crop grid).
SHAPES = {
    "2b": [(1, 3, 8, 8), (2, 2, 6, 10), (1, 5, 12, 8)],
    "5b": [(1, 3, 8, 8), (2, 2, 6, 10), (1, 5, 12, 8)],
    "5b-i2v": [(1, 3, 8, 8), (2, 3, 8, 8)],
    # 1.5: 2, 4, 6 latent frames -> odd and even counts of temporal patches (1, 2, 3)
    "1.5": [(1, 4, 8, 8), (2, 2, 6, 10), (1, 6, 16, 12)],
    "1.5-i2v": [(1, 4, 8, 8), (2, 6, 6, 10), (1, 2, 16, 16)],
}


@pytest.mark.parametrize("variant,shape", [(v, s) for v, shapes in SHAPES.items() for s in shapes])
def test_matches_diffusers(variant, shape, tiny_transformer_dir):
    folder, reference = tiny_transformer_dir(variant)
    got, expected = run_both(variant, folder, reference, *shape)
    assert got.shape == expected.shape
    assert scaled_error(got, expected) <= TOLERANCE


def test_rope_text_length_is_free(tiny_transformer_dir):
    """RoPE models place no table on text rows, so other prompt lengths work like diffusers."""
    folder, reference = tiny_transformer_dir("5b")
    got, expected = run_both("5b", folder, reference, 1, 3, 8, 8, text_len=11)
    assert scaled_error(got, expected) <= TOLERANCE


def test_learned_positions_fewer_frames_are_a_prefix(tmp_path):
    """5B-I2V with fewer latent frames uses the first rows of the learned table (SAT's slicing).

    diffusers swaps in a sincos table there instead; the reference for this case is a diffusers
    model trained at the shorter length, holding the prefix of our table.
    """
    full = make_diffusers_transformer("5b-i2v", seed=7)
    full.save_pretrained(tmp_path)
    short = make_diffusers_transformer("5b-i2v", seed=7, sample_frames=5)  # 2 latent frames
    state = full.state_dict()
    rows = TINY_TRANSFORMERS["5b-i2v"]["max_text_seq_length"] + 2 * 4 * 4
    state["patch_embed.pos_embedding"] = state["patch_embed.pos_embedding"][:, :rows]
    short.load_state_dict(state)
    got, expected = run_both("5b-i2v", tmp_path, short, 1, 2, 8, 8)
    assert scaled_error(got, expected) <= TOLERANCE


def test_position_tables_match_diffusers_at_real_sizes():
    """The public tables at 49x480x720 (2B sincos, 5B crop grid) and 81x768x1360 (1.5 slice grid)."""
    from diffusers.models.embeddings import get_3d_sincos_pos_embed

    from cogvx.modeling.configs import PRESETS

    sincos = position_tables(PRESETS["cogvideox-2b"].transformer, 13, 60, 90).sincos
    expected = get_3d_sincos_pos_embed(1920, (45, 30), 13, 1.875, 1.0, output_type="pt").flatten(0, 1).float()
    assert (sincos - expected).abs().max().item() == 0.0
    for preset, frames, height, width in [("cogvideox-5b", 13, 60, 90), ("cogvideox-5b", 13, 96, 170),
                                          ("cogvideox1.5-5b", 22, 96, 170)]:
        config = PRESETS[preset].transformer
        tables = position_tables(config, frames, height, width)
        expected_cos, expected_sin = diffusers_rotary(config.to_dict(), frames, height, width)
        assert tables.rope_cos.shape == expected_cos.shape
        assert (tables.rope_cos - expected_cos).abs().max().item() <= TOLERANCE * expected_cos.abs().max().item()
        assert (tables.rope_sin - expected_sin).abs().max().item() <= TOLERANCE * expected_sin.abs().max().item()


def test_sharded_checkpoint_loads(tmp_path, tiny_transformer_dir):
    folder, reference = tiny_transformer_dir("5b")
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    got, expected = run_both("5b", tmp_path, reference, 1, 3, 8, 8)
    assert scaled_error(got, expected) <= TOLERANCE


def test_bf16_loading(tiny_transformer_dir):
    folder, reference = tiny_transformer_dir("1.5")
    model = CogVideoXTransformer.from_pretrained(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    fp32 = CogVideoXTransformer.from_pretrained(folder)
    latents, text = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 7, 12)
    timestep = torch.tensor([500])
    with torch.no_grad():
        low = model(latents.bfloat16(), text.bfloat16(), timestep)
        high = fp32(latents, text, timestep)
    assert low.dtype == torch.bfloat16
    # bf16 keeps ~8 bits of mantissa; two layers keep the error at the percent level
    assert scaled_error(low, high) <= 5e-2


def test_our_checkpoint_roundtrip(tmp_path):
    model = CogVideoXTransformer.from_preset("toy", num_layers=1)
    model.save_pretrained(tmp_path, max_shard_bytes=50_000)
    again = CogVideoXTransformer.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_bad_checkpoints(tmp_path, tiny_transformer_dir):
    from safetensors.torch import load_file, save_file

    folder, reference = tiny_transformer_dir("5b")
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    config = (folder / "config.json").read_text()

    def write(name, tensors):
        target = tmp_path / name
        target.mkdir()
        (target / "config.json").write_text(config)
        save_file(tensors, target / "diffusion_pytorch_model.safetensors")
        return target

    missing = write("missing", {k: v for k, v in state.items() if "norm_k" not in k})
    with pytest.raises(CheckpointError, match=r"missing 4: transformer_blocks\.0\.attn1\.norm_k\.bias"):
        CogVideoXTransformer.from_pretrained(missing)
    unexpected = write("unexpected", {**state, "extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected 1: extra\.weight"):
        CogVideoXTransformer.from_pretrained(unexpected)
    shaped = write("shaped", {**state, "proj_out.bias": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"mis-shaped 1: proj_out\.bias \(3,\) \(model wants \(16,\)\)"):
        CogVideoXTransformer.from_pretrained(shaped)

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text(config)
    data = (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    (truncated / "diffusion_pytorch_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        CogVideoXTransformer.from_pretrained(truncated)


def test_pickle_checkpoint_loads_weights_only(tmp_path, tiny_transformer_dir):
    folder, reference = tiny_transformer_dir("2b")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    torch.save(reference.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    got, expected = run_both("2b", tmp_path, reference, 1, 3, 8, 8)
    assert scaled_error(got, expected) <= TOLERANCE

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((folder / "config.json").read_text())
    # any arbitrary Python object: weights_only refuses to unpickle it
    torch.save({"proj_out.bias": argparse.Namespace(payload=1)}, evil / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        CogVideoXTransformer.from_pretrained(evil)


def test_bad_inputs(tiny_transformer_dir):
    folder, _ = tiny_transformer_dir("2b")
    model = CogVideoXTransformer.from_pretrained(folder)
    text, t = torch.randn(1, 7, 12), torch.tensor([10])
    with pytest.raises(ValueError, match="exactly 7 text tokens"):
        model(torch.randn(1, 3, 4, 8, 8), torch.randn(1, 9, 12), t)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 3, 4, 7, 8), text, t)
    with pytest.raises(ValueError, match=r"latents must be \(B, F, 4, H, W\)"):
        model(torch.randn(1, 3, 5, 8, 8), text, t)
    folder, _ = tiny_transformer_dir("1.5")
    with pytest.raises(ValueError, match="pad one latent frame"):
        CogVideoXTransformer.from_pretrained(folder)(torch.randn(1, 3, 4, 8, 8), text, t)
    folder, _ = tiny_transformer_dir("5b-i2v")
    with pytest.raises(ValueError, match="learned positions"):
        CogVideoXTransformer.from_pretrained(folder)(torch.randn(1, 3, 8, 8, 10), text, t)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="learned positional embeddings without 3D RoPE"):
        TransformerConfig(use_learned_positional_embeddings=True)
    with pytest.raises(ConfigError, match=r"unknown config keys \['use_magic'\]"):
        TransformerConfig.from_dict({"use_magic": True})
    with pytest.raises(ConfigError, match="unknown preset 'cogvideox-7b'"):
        CogVideoXTransformer.from_preset("cogvideox-7b")
    # head dim 8 splits 2/3/3 for RoPE: odd parts used to pass the config and fail in forward
    with pytest.raises(ConfigError, match="multiple of 16"):
        TransformerConfig(attention_head_dim=8, use_rotary_positional_embeddings=True)
    assert TransformerConfig(attention_head_dim=16, use_rotary_positional_embeddings=True).hidden_size == 30 * 16


def test_fp16_on_5b_warns(caplog):
    with caplog.at_level(logging.WARNING):
        CogVideoXTransformer.from_preset("cogvideox-5b", dtype=torch.float16, num_layers=0)
    assert "bfloat16" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        CogVideoXTransformer.from_preset("cogvideox-2b", dtype=torch.float16, num_layers=0)
    assert caplog.text == ""
