"""Video files written and decoded back for real (PyAV / Pillow)."""

from __future__ import annotations

import numpy as np
import pytest

from cogvx.runtime.video_io import check_output_path, read_video, write_video


def moving_square(frames=9, height=64, width=96) -> np.ndarray:
    video = np.full((frames, height, width, 3), 40, dtype=np.uint8)
    for t in range(frames):
        video[t, 20:40, 5 + 6 * t:25 + 6 * t] = (220, 30, 30)
    return video


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


def test_mp4_roundtrip(tmp_path):
    video = moving_square()
    path = write_video(video, tmp_path / "clip.mp4", fps=8)
    frames, fps = read_video(path)
    assert frames.shape == video.shape and fps == 8
    assert psnr(frames, video) > 30
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary file left


def test_odd_sizes_are_padded_for_h264(tmp_path):
    frames, _ = read_video(write_video(moving_square(5, 33, 47), tmp_path / "odd.mp4", fps=16))
    assert frames.shape == (5, 34, 48, 3)


def test_gif_and_png_frames(tmp_path):
    from PIL import Image

    video = moving_square(5)
    gif = Image.open(write_video(video, tmp_path / "clip.gif", fps=8))
    assert gif.n_frames == 5 and abs(gif.info["duration"] - 125) <= 10  # GIF stores centiseconds
    folder = write_video(video, tmp_path / "frames", fps=8)
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 5 and np.array_equal(np.asarray(Image.open(pngs[2])), video[2])


def test_bad_output_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist; create it first"):
        check_output_path(tmp_path / "missing" / "clip.mp4")
    with pytest.raises(ValueError, match="use a .mp4 or .gif file"):
        check_output_path(tmp_path / "clip.avi")
    with pytest.raises(ValueError, match="frames must be uint8"):
        write_video(np.zeros((2, 8, 8, 3), dtype=np.float32), tmp_path / "x.mp4", fps=8)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_video(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="cannot decode video"):
        read_video(broken)
