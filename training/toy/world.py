"""The toy world: one coloured shape moving in a straight line (or standing still) on a plain background.

Every clip is a pure function of (seed, index), so a data set is reproducible from two numbers and
the judge (judge.py) can be tested against the truth. Letters: F frames, H, W pixels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .captions import COLOURS, MOTIONS, SHAPES, caption

PALETTE = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (235, 210, 40)}
BACKGROUND = (48, 48, 48)  # dark grey: far from every palette colour
DIRECTIONS = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1),
              "standing still": (0, 0)}  # image y grows downward


@dataclass(frozen=True)
class ClipSpec:
    """What a clip shows: the caption's three words plus where the shape starts and how far it goes."""

    colour: str
    shape: str
    motion: str
    x0: float  # centre at frame 0, pixels
    y0: float
    size: float  # half the side of the square / radius of the circle / half the triangle's base
    distance: float  # pixels travelled from the first to the last frame (0 when still)

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.motion)


def sample_spec(rng: np.random.Generator, height: int = 64, width: int = 64) -> ClipSpec:
    """A random clip: uniform over the grammar, size 13-19 % of the frame, travel 30-45 % of it."""
    colour, shape, motion = (str(rng.choice(options)) for options in (COLOURS, SHAPES, MOTIONS))
    side = min(height, width)
    size = float(rng.uniform(0.13, 0.19) * side)
    dx, dy = DIRECTIONS[motion]
    distance = float(rng.uniform(0.30, 0.45) * side) if motion != "standing still" else 0.0
    margin = size + 1
    # the whole path stays inside the frame
    x_low, x_high = margin - min(0.0, dx * distance), width - margin - max(0.0, dx * distance)
    y_low, y_high = margin - min(0.0, dy * distance), height - margin - max(0.0, dy * distance)
    return ClipSpec(colour, shape, motion, float(rng.uniform(x_low, x_high)), float(rng.uniform(y_low, y_high)),
                    size, distance)


def shape_mask(shape: str, cx: float, cy: float, size: float, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the filled shape centred at (cx, cy), pixel centres at integer + 0.5."""
    y, x = np.mgrid[0:height, 0:width] + 0.5
    if shape == "square":
        return (np.abs(x - cx) <= size) & (np.abs(y - cy) <= size)
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= size**2
    if shape == "triangle":  # apex up, base 2 * size wide, 2 * size tall
        top, bottom = cy - size, cy + size
        half_width = (y - top) / (2 * size) * size
        return (y >= top) & (y <= bottom) & (np.abs(x - cx) <= half_width)
    raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


def render(spec: ClipSpec, frames: int = 17, height: int = 64, width: int = 64) -> np.ndarray:
    """The clip as uint8 (F, H, W, 3)."""
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    video[:] = BACKGROUND
    dx, dy = DIRECTIONS[spec.motion]
    for f in range(frames):
        travelled = spec.distance * f / max(1, frames - 1)
        mask = shape_mask(spec.shape, spec.x0 + dx * travelled, spec.y0 + dy * travelled, spec.size, height, width)
        video[f][mask] = PALETTE[spec.colour]
    return video


def to_model_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (3, F, H, W) in [-1, 1], the training datasets' layout."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


class ToyClips(torch.utils.data.Dataset):
    """`num_clips` clips fully determined by (seed, index): {"video": (3, F, H, W) in [-1, 1], "caption"}."""

    def __init__(self, num_clips: int, seed: int = 0, frames: int = 17, height: int = 64, width: int = 64):
        if (frames - 1) % 4:
            raise ValueError(f"frames must be 4k+1 (got {frames}); try {frames - (frames - 1) % 4}")
        self.num_clips, self.seed, self.frames, self.height, self.width = num_clips, seed, frames, height, width

    def __len__(self) -> int:
        return self.num_clips

    def spec(self, index: int) -> ClipSpec:
        if not 0 <= index < self.num_clips:
            raise IndexError(index)
        return sample_spec(np.random.default_rng([self.seed, index]), self.height, self.width)

    def __getitem__(self, index: int) -> dict:
        spec = self.spec(index)
        return {"video": to_model_video(render(spec, self.frames, self.height, self.width)), "caption": spec.caption}


def write_dataset(folder: str | Path, num_clips: int, seed: int = 0, frames: int = 17, height: int = 64,
                  width: int = 64, fps: int = 8) -> Path:
    """`folder/00000.mp4 ...` + `captions.jsonl` ({"file", "caption", "spec"} per line), built in a
    staging folder and renamed, so an interrupted write never leaves a data set that looks complete."""
    from cogvx.modeling.checkpoint import staged_directory
    from cogvx.runtime.video_io import write_video

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; choose a new folder for the data set")
    clips = ToyClips(num_clips, seed, frames, height, width)
    with staged_directory(folder) as staging:
        lines = []
        for index in range(num_clips):
            spec = clips.spec(index)
            name = f"{index:05d}.mp4"
            write_video(render(spec, frames, height, width), staging / name, fps=fps)
            lines.append(json.dumps({"file": name, "caption": spec.caption, "spec": asdict(spec)}))
        (staging / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder
