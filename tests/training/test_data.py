"""The video-folder dataset and the latent cache: real mp4 files, real bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from tiny_models import TINY_VAE, randomize_

from cogvx.runtime.video_io import write_video
from cogvx.training.data import DataError, LatentCache, VideoFolder, cache_latents
from cogvx.training.toy.judge import judge, score
from cogvx.training.toy.world import ToyClips, render, write_dataset


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "toy", num_clips=6, seed=2)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) / 2).pow(2).mean().item()  # [-1, 1] -> [0, 1] scale
    return 10 * np.log10(1 / mse)


def zero_the_payload(path):
    """Zero the middle half of an mp4's mdat box: the header still says 17 frames, decoding fails."""
    data = bytearray(path.read_bytes())
    start = data.find(b"mdat") - 4
    size = int.from_bytes(data[start:start + 4], "big")
    data[start + size // 4:start + 3 * size // 4] = bytes(size // 2)
    path.write_bytes(bytes(data))


def test_folder_items_equal_the_rendered_clips(toy_folder):
    dataset = VideoFolder(toy_folder, frames=9, height=64, width=64)
    truth = ToyClips(6, seed=2, frames=17)
    assert len(dataset) == 6 and dataset.skipped == {"unreadable": 0, "too short": 0, "failed when read": 0}
    verdicts = []
    for index in range(6):
        item = dataset[index]
        assert item["video"].shape == (3, 9, 64, 64) and item["caption"] == truth[index]["caption"]
        assert psnr(item["video"], truth[index]["video"][:, :9]) >= 30.0  # after H.264
        frames = ((item["video"].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8)  # (F, H, W, 3)
        verdicts.append(judge(frames.numpy()))
    assert score(verdicts, [dataset[i]["caption"] for i in range(6)])["all"] == 1.0


def test_resize_and_centre_crop(toy_folder):
    item = VideoFolder(toy_folder, frames=5, height=32, width=48)[0]
    assert item["video"].shape == (3, 5, 32, 48) and item["video"].abs().max() <= 1


def test_corrupt_and_short_videos_are_skipped_with_a_count(toy_folder, tmp_path, caplog):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(toy_folder, folder)
    (folder / "00001.mp4").write_bytes(b"not a video at all")
    (folder / "00002.mp4").write_bytes((toy_folder / "00002.mp4").read_bytes()[:300])  # truncated
    zero_the_payload(folder / "00003.mp4")  # a header that promises 17 frames over a broken payload
    write_video(render(ToyClips(1, seed=9).spec(0), frames=5), folder / "short.mp4", fps=8)
    with open(folder / "captions.jsonl", "a") as handle:
        handle.write(json.dumps({"file": "short.mp4", "caption": "a red square moving up"}) + "\n")
    with caplog.at_level(logging.WARNING):
        dataset = VideoFolder(folder, frames=9, height=64, width=64)
    assert dataset.skipped == {"unreadable": 3, "too short": 1, "failed when read": 0} and len(dataset) == 3
    assert "skipped 3 unreadable and 1 too-short (< 9 frames) videos of 7: 00001.mp4, 00002.mp4, 00003.mp4, " \
        "short.mp4 (5 frames)" in caplog.text
    assert all(dataset[i]["video"].shape == (3, 9, 64, 64) for i in range(3))  # a whole epoch reads
    with pytest.raises(DataError, match="no usable video.*shorter than 21 frames"):
        VideoFolder(folder, frames=21, height=64, width=64)


def test_a_video_that_breaks_after_the_check_is_skipped_when_read(toy_folder, tmp_path, caplog):
    import shutil

    folder = tmp_path / "breaks"
    shutil.copytree(toy_folder, folder)
    dataset = VideoFolder(folder, frames=9, height=64, width=64)
    zero_the_payload(folder / "00004.mp4")
    with caplog.at_level(logging.WARNING):
        item = dataset[4]
    assert item["caption"] == dataset[5]["caption"] and item["video"].shape == (3, 9, 64, 64)
    assert dataset.skipped["failed when read"] == 1 and "skipping 00004.mp4, which no longer reads" in caplog.text
    for name in ("00000.mp4", "00001.mp4", "00002.mp4", "00003.mp4", "00005.mp4"):
        (folder / name).write_bytes(b"gone")
    with pytest.raises(DataError, match="no video in .* reads any more"):
        dataset[0]


def test_captions_that_do_not_match_are_named(toy_folder, tmp_path):
    import shutil

    folder = tmp_path / "mismatch"
    shutil.copytree(toy_folder, folder)
    (folder / "00003.mp4").unlink()
    lines = (folder / "captions.jsonl").read_text().splitlines()
    (folder / "captions.jsonl").write_text("\n".join(lines[1:]) + "\n")  # 00000.mp4 loses its caption
    with pytest.raises(DataError, match="missing file\\(s\\) \\(00003.mp4\\).*no caption \\(00000.mp4\\)"):
        VideoFolder(folder, frames=9, height=64, width=64)
    (folder / "captions.jsonl").write_text("{oops\n")
    with pytest.raises(DataError, match="line 1 is not"):
        VideoFolder(folder, frames=9, height=64, width=64)
    with pytest.raises(DataError, match="frames must be 4k\\+1 \\(got 8\\); try 5"):
        VideoFolder(folder, frames=8, height=64, width=64)


def test_latent_cache_round_trip(tmp_path):
    from cogvx.modeling.configs import PRESETS, VAEConfig
    from cogvx.modeling.text_encoder import TextEncoder
    from cogvx.modeling.vae import CogVideoXVAE
    from cogvx.models import resolve_model

    vae = randomize_(CogVideoXVAE(VAEConfig(**TINY_VAE, scaling_factor=0.7)), seed=3).eval()
    checkpoint = resolve_model("toy")
    text = TextEncoder.from_pretrained(checkpoint / "text_encoder", checkpoint / "tokenizer",
                                       max_length=PRESETS["toy"].max_text_len)
    clips = ToyClips(3, seed=1, frames=9)
    cache_latents(clips, vae, text, tmp_path / "cache", generator=torch.Generator().manual_seed(0))
    cache = LatentCache(tmp_path / "cache")
    assert len(cache) == 3
    generator = torch.Generator().manual_seed(0)
    for index in range(3):
        item = cache[index]
        with torch.no_grad():
            expected = vae.encode(clips[index]["video"][None]).sample(generator)[0] * 0.7  # (C, F, h, w)
            embedding = text.encode_prompt([clips[index]["caption"]])[0]
        # the same encoders on the same clip and generator stream: equal up to rounding, relative to the scale
        torch.testing.assert_close(item["latents"], expected.permute(1, 0, 2, 3), rtol=0,
                                   atol=1e-6 * expected.abs().max().item())
        torch.testing.assert_close(item["text_embeddings"], embedding, rtol=0, atol=1e-6 * embedding.abs().max().item())
        assert item["caption"] == clips[index]["caption"]
    with pytest.raises(FileExistsError, match="choose a new folder"):
        cache_latents(clips, vae, text, tmp_path / "cache")
    with pytest.raises(DataError, match="no latent cache files"):
        LatentCache(tmp_path / "empty")
