"""Our pipeline against diffusers' CogVideoXPipeline / CogVideoXImageToVideoPipeline, every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import TINY_FAMILIES, make_diffusers_pipeline

from cogvx.modeling.checkpoint import CheckpointError
from cogvx.runtime.pipeline import CogVideoXPipeline, PipelineInputError

STEPS = 4


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """family -> (folder, diffusers pipeline); built on first use."""
    made = {}

    def get(family):
        if family not in made:
            folder = tmp_path_factory.mktemp(f"pipe-{family}")
            made[family] = (folder, make_diffusers_pipeline(family, folder, seed=3))
        return made[family]

    return get


def reference_frames(reference, family, scheduler, dynamic_cfg, embeds, negative, image, frames, height, width, seed):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    cls = CogVideoXDPMScheduler if scheduler == "dpm" else CogVideoXDDIMScheduler
    reference.scheduler = cls.from_config(reference.scheduler.config)
    kwargs = dict(image=image) if image is not None else {}
    with torch.no_grad():
        video = reference(
            prompt_embeds=embeds, negative_prompt_embeds=negative, num_frames=frames, height=height, width=width,
            num_inference_steps=STEPS, guidance_scale=6.0, use_dynamic_cfg=dynamic_cfg,
            generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs,
        ).frames  # float (B, T, H, W, 3) in [0, 1]
    return np.round(np.asarray(video) * 255).astype(np.int16)


CASES = [(family, scheduler, dynamic) for family in TINY_FAMILIES for scheduler in ("ddim", "dpm")
         for dynamic in (False, True)]


@pytest.mark.parametrize("family,scheduler,dynamic_cfg", CASES)
def test_frames_match_diffusers(family, scheduler, dynamic_cfg, pipelines):
    folder, reference = pipelines(family)
    _, _, _, frames, height, width = TINY_FAMILIES[family]
    ours = CogVideoXPipeline.from_pretrained(folder)
    generator = torch.Generator().manual_seed(11)
    length, width_text = ours.config.max_text_len, ours.config.transformer.text_embed_dim
    embeds = torch.randn(1, length, width_text, generator=generator)
    negative = torch.randn(1, length, width_text, generator=generator)
    image = None
    if family.endswith("i2v"):
        from PIL import Image

        pixels = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8).numpy()
        image = Image.fromarray(pixels)
    got = ours(prompt_embeds=embeds, negative_prompt_embeds=negative, image=image, num_frames=frames, height=height,
               width=width, num_inference_steps=STEPS, guidance_scale=6.0, use_dynamic_cfg=dynamic_cfg,
               scheduler=scheduler, seed=5).frames
    expected = reference_frames(reference, family, scheduler, dynamic_cfg, embeds, negative, image, frames, height,
                                width, seed=5)
    assert got.dtype == np.uint8 and got.shape == expected.shape == (1, frames, height, width, 3)
    assert np.abs(got.astype(np.int16) - expected).max() <= 1
    assert got.std() > 1.0  # a real picture, not a constant


def test_prompt_strings_end_to_end(pipelines):
    """Prompts through our tokenizer + T5 stage give diffusers' frames."""
    folder, reference = pipelines("5b")
    ours = CogVideoXPipeline.from_pretrained(folder)
    got = ours(prompt="a red square moving right", negative_prompt="a blue circle", num_frames=9, height=64,
               width=64, num_inference_steps=STEPS, seed=2).frames
    from diffusers import CogVideoXDDIMScheduler

    reference.scheduler = CogVideoXDDIMScheduler.from_config(reference.scheduler.config)  # earlier cases swap it
    with torch.no_grad():
        expected = reference(prompt="a red square moving right", negative_prompt="a blue circle", num_frames=9,
                             height=64, width=64, num_inference_steps=STEPS, guidance_scale=6.0,
                             max_sequence_length=ours.config.max_text_len,
                             generator=torch.Generator().manual_seed(2), output_type="np").frames
    expected = np.round(np.asarray(expected) * 255).astype(np.int16)
    assert np.abs(got.astype(np.int16) - expected).max() <= 1


def test_bad_requests(pipelines):
    folder, _ = pipelines("5b")
    ours = CogVideoXPipeline.from_pretrained(folder)
    embeds = torch.zeros(1, ours.config.max_text_len, ours.config.transformer.text_embed_dim)
    cases = [
        (dict(num_frames=8), "frames must be 4k\\+1 \\(got 8\\); try 5 or 9"),
        (dict(height=60), "height must be a positive multiple of 16 \\(got 60\\); try 64"),
        (dict(num_inference_steps=0), "steps must be between 1 and 1000 \\(got 0\\)"),
        (dict(guidance_scale=-1.0), "guidance must be a finite number >= 0 \\(got -1.0\\)"),
        (dict(guidance_scale=float("nan")), "guidance must be a finite number >= 0 \\(got nan\\)"),
        (dict(guidance_scale=float("inf")), "guidance must be a finite number >= 0 \\(got inf\\)"),
        (dict(num_frames=0), "frames must be 4k\\+1 \\(got 0\\)"),
        (dict(height=0), "height must be a positive multiple of 16 \\(got 0\\)"),
        (dict(image=torch.zeros(3, 64, 64)), "text-to-video model and takes no image"),
        (dict(scheduler="euler"), "scheduler must be 'ddim' or 'dpm'"),
    ]
    for overrides, message in cases:
        request = dict(prompt_embeds=embeds, negative_prompt_embeds=embeds, num_frames=9, height=64, width=64,
                       num_inference_steps=2) | overrides
        with pytest.raises(PipelineInputError, match=message):
            ours(**request)
    folder, _ = pipelines("5b-i2v")
    with pytest.raises(PipelineInputError, match="image-to-video model: give an image"):
        CogVideoXPipeline.from_pretrained(folder)(prompt_embeds=embeds, negative_prompt_embeds=embeds)


def test_missing_component_is_named(tmp_path, pipelines):
    import shutil

    folder, _ = pipelines("2b")
    copy = tmp_path / "ckpt"
    shutil.copytree(folder, copy)
    shutil.rmtree(copy / "vae")
    with pytest.raises(CheckpointError, match="missing component folder\\(s\\) vae/"):
        CogVideoXPipeline.from_pretrained(copy)
