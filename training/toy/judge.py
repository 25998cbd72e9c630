"""The judge: what colour, shape and motion does a (generated) toy video show?

Frames are first smoothed with a 3x3 box (pixel noise drops threefold; the halfway outline of a
straight edge does not move). Background = the per-channel median of the border pixels;
foreground = pixels far from it. Colour = nearest palette colour to the mean foreground pixel; the
outline is where a pixel is halfway from the background to that colour (the true edge of a blurred
one); shape = the outline's overlap (IoU) with a square, a circle and a triangle of the same area
at its centroid; motion = the track of the foreground centroid (first frames to last frames; below
a few pixels it stands still). Thresholds leave room for blurry, noisy generated video. This is
the quality metric of every later issue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .captions import COLOURS, MOTIONS, SHAPES
from .world import PALETTE, shape_mask

FOREGROUND_DISTANCE = 60.0  # RGB distance from the background
STILL_FRACTION = 0.06  # centroid travel below this fraction of the frame side is "standing still"


@dataclass(frozen=True)
class Verdict:
    colour: str
    shape: str
    motion: str
    displacement: tuple[float, float]  # centroid (dx, dy) in pixels, first to last frames
    overlap: float  # intersection over union with the best shape template
    foreground: float  # fraction of pixels that are foreground (0: nothing found)

    @property
    def words(self) -> str:
        """'red square moving right': the caption's three parts, as `parse_caption` splits them."""
        return f"{self.colour} {self.shape} {self.motion}"


def parse_caption(text: str) -> tuple[str, str, str]:
    """'a red square moving right' -> ('red', 'square', 'moving right')."""
    words = text.strip().split()
    if len(words) < 4 or words[0] != "a" or words[1] not in COLOURS or words[2] not in SHAPES \
            or " ".join(words[3:]) not in MOTIONS:
        raise ValueError(f"{text!r} is not a toy caption ('a COLOUR SHAPE MOTION', e.g. 'a red square moving right')")
    return words[1], words[2], " ".join(words[3:])


def _frames(video) -> np.ndarray:
    if isinstance(video, (str, Path)):
        from cogvx.runtime.video_io import read_video

        video, _ = read_video(video)
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"the judge reads (F, H, W, 3) uint8 video (got {video.shape})")
    return video.astype(np.float32)


def box_blur(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) -> the same, each pixel the mean of its 3x3 neighbourhood: a generator's pixel noise
    drops threefold, so the foreground threshold below stays far above it (sigma 50 / 255 still judges right)."""
    H, W = frames.shape[1:3]
    padded = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")  # (F, H+2, W+2, 3)
    return sum(padded[:, i:i + H, j:j + W] for i in range(3) for j in range(3)) / 9


def majority_filter(masks: np.ndarray) -> np.ndarray:
    """(F, H, W) bool -> a pixel stays foreground when 5 of its 3x3 neighbourhood are: noise speckles go,
    the shape stays."""
    padded = np.pad(masks.astype(np.int8), ((0, 0), (1, 1), (1, 1)))
    H, W = masks.shape[1:]
    votes = sum(padded[:, i:i + H, j:j + W] for i in range(3) for j in range(3))
    return votes >= 5


def judge(video) -> Verdict:
    """A uint8 (F, H, W, 3) array / tensor, or a path to an mp4 / gif."""
    frames = box_blur(_frames(video))  # (F, H, W, 3)
    F, H, W, _ = frames.shape
    border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1)
    background = np.median(border.reshape(-1, 3), axis=0)  # (3,)
    distance = np.linalg.norm(frames - background, axis=-1)  # (F, H, W)
    core = majority_filter(distance > FOREGROUND_DISTANCE)
    if core.sum() < 4:
        return Verdict("none", "none", "none", (0.0, 0.0), 0.0, 0.0)
    mean_colour = frames[core].mean(axis=0)  # (3,)
    colour = min(PALETTE, key=lambda name: np.linalg.norm(mean_colour - np.array(PALETTE[name])))
    # the shape's outline is where a (blurred) edge is halfway between background and colour
    masks = majority_filter(distance > 0.5 * np.linalg.norm(mean_colour - background))  # (F, H, W)
    counts = masks.sum(axis=(1, 2))  # (F,)
    present = counts >= 4
    if not present.any():
        return Verdict(colour, "none", "none", (0.0, 0.0), 0.0, 0.0)

    y, x = np.mgrid[0:H, 0:W] + 0.5
    scores: dict[str, list[float]] = {name: [] for name in SHAPES}
    centroids = []
    for mask in masks[present]:
        area = mask.sum()
        cx, cy = (x * mask).sum() / area, (y * mask).sum() / area
        centroids.append((cx, cy))
        # each candidate drawn with the mask's area at its centroid; the best overlap names the shape
        templates = {"square": (cx, cy, np.sqrt(area) / 2), "circle": (cx, cy, np.sqrt(area / np.pi)),
                     "triangle": (cx, cy - np.sqrt(area / 2) / 3, np.sqrt(area / 2))}
        for name, (tx, ty, size) in templates.items():
            template = shape_mask(name, tx, ty, size, H, W)
            scores[name].append((mask & template).sum() / (mask | template).sum())
    overlap = {name: float(np.mean(values)) for name, values in scores.items()}
    shape = max(overlap, key=overlap.get)

    centroids = np.array(centroids)  # (F', 2)
    k = max(1, len(centroids) // 4)
    dx, dy = centroids[-k:].mean(axis=0) - centroids[:k].mean(axis=0)
    if np.hypot(dx, dy) < STILL_FRACTION * min(H, W):
        motion = "standing still"
    elif abs(dx) >= abs(dy):
        motion = "moving right" if dx > 0 else "moving left"
    else:
        motion = "moving down" if dy > 0 else "moving up"
    return Verdict(colour, shape, motion, (float(dx), float(dy)), overlap[shape], float(counts.mean() / (H * W)))


def score(verdicts: list[Verdict], captions: list[str]) -> dict[str, float]:
    """Per-attribute accuracy of verdicts against the captions they were asked for."""
    if len(verdicts) != len(captions) or not verdicts:
        raise ValueError(f"need as many verdicts as captions, at least one (got {len(verdicts)} and {len(captions)})")
    truth = [parse_caption(c) for c in captions]
    hits = {name: [getattr(v, name) == t[k] for v, t in zip(verdicts, truth)]
            for k, name in enumerate(("colour", "shape", "motion"))}
    result = {name: float(np.mean(h)) for name, h in hits.items()}
    result["all"] = float(np.mean([all(parts) for parts in zip(*hits.values())]))
    result["n"] = len(verdicts)
    return result
