"""Video files: frames -> mp4 (H.264) / gif / PNG frames, and back.

Frames are uint8 (T, H, W, 3). Every file is written under a temporary name in the target folder
and renamed when complete, so a crash never leaves a partial video that looks finished. The
output path is checked before any generation work starts (`check_output_path`).
"""

from __future__ import annotations

import os
import re
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from cogvx.errors import CogvxError
from cogvx.modeling.checkpoint import atomic_write, staged_directory

VIDEO_SUFFIXES = (".mp4", ".gif")
FRAME_NAME = re.compile(r"frame_\d{4,}\.png")


class VideoIOError(CogvxError):
    """An output path or a video file that cannot be used; the message says what to give instead."""


def check_output_path(path: str | Path) -> Path:
    """An .mp4 / .gif file, or a folder for PNG frames, whose parent exists and is writable."""
    path = Path(path).expanduser()
    is_folder = path.suffix == "" or str(path).endswith(os.sep)
    if not is_folder and path.suffix.lower() not in VIDEO_SUFFIXES:
        raise VideoIOError(f"output {path}: use a .mp4 or .gif file, or a folder for PNG frames")
    parent = path.parent
    if not parent.is_dir():
        raise VideoIOError(f"output folder {parent} does not exist; create it first")
    if path.is_dir() and not is_folder:
        raise VideoIOError(f"output {path} is a folder; give a file name such as {path / 'video.mp4'}")
    if is_folder and path.exists():
        if not path.is_dir():
            raise VideoIOError(f"output {path} is a file; give a folder for PNG frames, or a .mp4 / .gif name")
        others = sorted(p.name for p in path.iterdir() if not FRAME_NAME.fullmatch(p.name))
        if others:
            raise VideoIOError(f"output folder {path} holds other files ({', '.join(others[:3])}); PNG frames "
                               "replace the whole folder, so give an empty or new folder")
    _probe_writable(parent)
    return path


def _probe_writable(folder: Path) -> None:
    """Write and remove a file: os.access says yes to root on a read-only file system."""
    try:
        with tempfile.NamedTemporaryFile(prefix=".cogvx-probe-", dir=folder):
            pass
    except OSError as error:
        raise VideoIOError(f"cannot write in {folder} ({error.strerror or error}); choose another output") from None


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) (got {frames.dtype} {frames.shape})")
    return frames


def _write_mp4(frames: np.ndarray, file: str, fps: int) -> None:
    import av

    # H.264 with 4:2:0 chroma needs even sizes: pad the last row / column by replication.
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(file, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "17"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_gif(frames: np.ndarray, file: str, fps: int) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(file, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def write_video(frames: np.ndarray, path: str | Path, fps: int) -> Path:
    """Write (T, H, W, 3) uint8 frames by suffix: .mp4 (H.264), .gif, or a folder of PNG frames."""
    frames = _check_frames(frames)
    path = check_output_path(path)
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        atomic_write(path, lambda file: (_write_mp4 if suffix == ".mp4" else _write_gif)(frames, file, fps))
        return path
    from PIL import Image

    # a whole folder or none: written beside, then swapped in, so frames of an earlier video never
    # mix with these, and a full disk leaves the earlier folder as it was
    with staged_directory(path) as staging:
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(staging / f"frame_{index:04d}.png", format="PNG")
    return path


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """(T, H, W, 3) uint8 frames and the frame rate of a video file."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
            rate = stream.average_rate or stream.guessed_rate
    except (av.error.InvalidDataError, IndexError, ValueError) as error:
        raise VideoIOError(f"cannot decode video {path} ({error})") from None
    return frames, float(rate) if rate else 0.0
