"""The toy world and its judge: deterministic clips, and a judge that recovers what was drawn."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cogvx.training.toy.captions import COLOURS, MOTIONS, SHAPES
from cogvx.training.toy.judge import judge, parse_caption, score
from cogvx.training.toy.world import ClipSpec, ToyClips, render, write_dataset


def test_clips_are_a_function_of_seed_and_index():
    a, b, c = ToyClips(8, seed=3), ToyClips(8, seed=3), ToyClips(8, seed=4)
    assert all(torch.equal(a[i]["video"], b[i]["video"]) and a[i]["caption"] == b[i]["caption"] for i in range(8))
    assert any(not torch.equal(a[i]["video"], c[i]["video"]) for i in range(8))
    video = a[0]["video"]
    assert video.shape == (3, 17, 64, 64) and video.min() >= -1 and video.max() <= 1
    with pytest.raises(ValueError, match="frames must be 4k\\+1 \\(got 16\\); try 13"):
        ToyClips(1, frames=16)


@pytest.mark.parametrize("colour", COLOURS)
def test_every_grammar_combination_is_judged_right(colour):
    for shape in SHAPES:
        for motion in MOTIONS:
            spec = ClipSpec(colour, shape, motion, 32.0, 32.0, 10.0, 0.0 if motion == "standing still" else 20.0)
            start = {"moving left": (42, 32), "moving right": (22, 32), "moving up": (32, 42),
                     "moving down": (32, 22)}.get(motion, (32, 32))
            spec = ClipSpec(colour, shape, motion, *start, 10.0, spec.distance)
            verdict = judge(render(spec))
            assert (verdict.colour, verdict.shape, verdict.motion) == (colour, shape, motion), spec


def degrade(video: np.ndarray, rng: np.random.Generator, sigma: float, blur: int = 3) -> np.ndarray:
    """A blur x blur box blur and gaussian noise: what a generator's output roughly looks like."""
    x = video.astype(np.float32)
    r = blur // 2
    padded = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    blurred = sum(padded[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(blur) for j in range(blur)) / blur**2
    return np.clip(blurred + rng.normal(0, sigma, x.shape), 0, 255).astype(np.uint8)


def test_judge_accuracy_on_random_clips_clean_and_degraded():
    clips = ToyClips(60, seed=11)
    specs = [clips.spec(i) for i in range(60)]
    captions = [s.caption for s in specs]
    clean = score([judge(render(s)) for s in specs], captions)
    assert clean["all"] == 1.0
    rng = np.random.default_rng(0)
    noisy = score([judge(degrade(render(s), rng, sigma=20.0)) for s in specs], captions)
    assert noisy["colour"] >= 0.9 and noisy["shape"] >= 0.9 and noisy["motion"] >= 0.9, noisy
    # margin: twice the noise and a wider blur (the judge's own 3x3 smoothing is what holds this)
    worse = score([judge(degrade(render(s), rng, sigma=40.0, blur=5)) for s in specs], captions)
    assert worse["colour"] >= 0.9 and worse["shape"] >= 0.9 and worse["motion"] >= 0.9, worse


def test_dataset_on_disk_round_trips_through_mp4(tmp_path):
    from cogvx.runtime.video_io import read_video

    folder = write_dataset(tmp_path / "toy", num_clips=12, seed=5)
    lines = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    assert [line["file"] for line in lines] == [f"{i:05d}.mp4" for i in range(12)]
    clips = ToyClips(12, seed=5)
    verdicts, psnrs = [], []
    for index, line in enumerate(lines):
        frames, fps = read_video(folder / line["file"])
        truth = render(clips.spec(index))
        mse = np.mean((frames.astype(np.float64) - truth) ** 2)
        psnrs.append(10 * np.log10(255**2 / mse))
        verdicts.append(judge(folder / line["file"]))
        assert fps == 8 and line["caption"] == clips.spec(index).caption
    assert min(psnrs) >= 30.0  # H.264 is lossy; sharp edges cost a little
    assert score(verdicts, [line["caption"] for line in lines])["all"] == 1.0
    with pytest.raises(FileExistsError):
        write_dataset(folder, num_clips=1)


def test_caption_parsing_and_score_errors():
    assert parse_caption("a yellow triangle standing still") == ("yellow", "triangle", "standing still")
    with pytest.raises(ValueError, match="not a toy caption"):
        parse_caption("a purple square moving right")
    with pytest.raises(ValueError, match="as many verdicts as captions"):
        score([], ["a red square moving up"])
    blank = np.zeros((17, 64, 64, 3), dtype=np.uint8) + 48
    assert judge(blank).colour == "none"
