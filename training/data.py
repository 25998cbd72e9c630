"""Training data: a folder of videos with captions, and a cache of precomputed latents.

Folder layout: video files (mp4, webm, mov, gif) and `captions.jsonl`, one
`{"file": "00000.mp4", "caption": "..."}` per line. Items are `{"video": (3, F, H, W) in [-1, 1],
"caption": str}`: the first F frames, the shorter side resized to fit, centre-cropped to H x W.

Every file is probed once when the dataset is built by decoding the F frames an item needs (a
header's frame count says nothing about a damaged payload or a truncated download): unreadable or
corrupt videos and clips shorter than F frames are skipped with one warning naming them and a
count (`dataset.skipped`). A file that breaks after that is skipped when read (warning, count
"failed when read", the next usable clip instead), so an epoch never crashes halfway. A caption
file that does not match the folder is an error naming the files.

Cache layout (`cache_latents`): one safetensors file per clip with `latents` (F, C, h, w), already
multiplied by the VAE's scaling factor (the transformer's layout), and `text_embeddings` (L, Dt);
the caption in the file's metadata.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from cogvx.errors import CogvxError
from cogvx.progress import Progress, or_silent

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif"}


class DataError(CogvxError):
    """A data set that cannot be used as given; the message says what to fix."""


def read_captions(folder: Path) -> dict[str, str]:
    path = folder / "captions.jsonl"
    if not path.is_file():
        raise DataError(f"{folder} has no captions.jsonl; write one line {{\"file\": ..., \"caption\": ...}} per video")
    captions = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            captions[str(entry["file"])] = str(entry["caption"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path} line {number} is not {{\"file\": ..., \"caption\": ...}}: {line[:80]!r}") from None
    return captions


def _resize_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 (F, h, w, 3) -> float (3, F, H, W) in [-1, 1]: shorter side to fit, centre crop."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (F, 3, h, w)
    scale = max(height / video.shape[2], width / video.shape[3])
    if scale != 1.0:
        size = (max(height, round(video.shape[2] * scale)), max(width, round(video.shape[3] * scale)))
        video = torch.nn.functional.interpolate(video, size=size, mode="bilinear", antialias=True,
                                                align_corners=False)
    top, left = (video.shape[2] - height) // 2, (video.shape[3] - width) // 2
    video = video[:, :, top:top + height, left:left + width]  # (F, 3, H, W)
    return (video / 127.5 - 1).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()  # (3, F, H, W)


def read_first_frames(path: Path, count: int) -> np.ndarray:
    """uint8 (n, h, w, 3), n <= count: the first frames only, so a long source video is never held whole."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    if not frames:
        raise DataError(f"{path} has no decodable frame; re-encode it or remove it from the folder")
    return np.stack(frames)


class VideoFolder(torch.utils.data.Dataset):
    """Clips of `frames` frames at `height` x `width` from a folder of videos with captions.jsonl."""

    def __init__(self, folder: str | Path, frames: int, height: int, width: int):
        if frames < 1 or (frames - 1) % 4:
            raise DataError(f"frames must be 4k+1 (got {frames}); try {max(1, frames - (frames - 1) % 4)}")
        self.folder, self.frames, self.height, self.width = Path(folder), frames, height, width
        if not self.folder.is_dir():
            raise DataError(f"data folder {self.folder} does not exist")
        captions = read_captions(self.folder)
        videos = sorted(p.name for p in self.folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        missing = sorted(set(captions) - set(videos))
        uncaptioned = sorted(set(videos) - set(captions))
        if missing or uncaptioned:
            problems = ([f"captions name {len(missing)} missing file(s) ({', '.join(missing[:5])})"] if missing else []) \
                + ([f"{len(uncaptioned)} video(s) have no caption ({', '.join(uncaptioned[:5])})"] if uncaptioned else [])
            raise DataError(f"{self.folder}/captions.jsonl does not match the videos: {'; '.join(problems)}; "
                            "give every video exactly one caption line")
        self.items: list[tuple[str, str]] = []
        self.skipped = {"unreadable": 0, "too short": 0, "failed when read": 0}
        skipped_names: list[str] = []
        for name in videos:
            try:
                count = len(read_first_frames(self.folder / name, frames))
            except Exception as error:  # PyAV raises many types for broken files
                logger.debug("skipping %s: %s", name, error)
                self.skipped["unreadable"] += 1
                skipped_names.append(name)
                continue
            if count < frames:
                self.skipped["too short"] += 1
                skipped_names.append(f"{name} ({count} frames)")
                continue
            self.items.append((name, captions[name]))
        if skipped_names:
            logger.warning("%s: skipped %d unreadable and %d too-short (< %d frames) videos of %d: %s%s",
                           self.folder, self.skipped["unreadable"], self.skipped["too short"], frames, len(videos),
                           ", ".join(skipped_names[:5]), " ..." if len(skipped_names) > 5 else "")
        if not self.items:
            raise DataError(f"no usable video in {self.folder} ({len(videos)} found, {self.skipped['unreadable']} "
                            f"unreadable, {self.skipped['too short']} shorter than {frames} frames)")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        # a file that broke after the probe: count it and serve the next clip rather than end the epoch
        # (with DataLoader workers the count lives in each worker's copy; the warning reaches the log)
        for attempt in range(len(self.items)):
            name, caption = self.items[(index + attempt) % len(self.items)]
            try:
                frames = read_first_frames(self.folder / name, self.frames)  # (F, h, w, 3)
            except Exception as error:  # PyAV raises many types for broken files
                frames, reason = None, str(error)
            else:
                reason = f"only {len(frames)} frames" if len(frames) < self.frames else ""
            if not reason:
                return {"video": _resize_crop(frames, self.height, self.width), "caption": caption}
            self.skipped["failed when read"] += 1
            logger.warning("%s: skipping %s, which no longer reads (%s); serving the next clip", self.folder, name,
                           reason)
        raise DataError(f"no video in {self.folder} reads any more ({len(self.items)} passed the check when the "
                        "dataset was built); check the disk and rebuild the dataset")


def cache_latents(dataset, vae, text_encoder, folder: str | Path, generator: torch.Generator | None = None,
                  progress: Progress | None = None) -> Path:
    """Encode every item once (a posterior sample, scaled) with its caption's text embedding.

    The folder is filled under a temporary name and renamed when every clip is in, so an interrupted
    run never leaves a cache that looks complete (LatentCache reads whatever *.safetensors it finds).
    """
    from safetensors.torch import save_file

    from cogvx.modeling.checkpoint import staged_directory

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; choose a new folder for the latent cache or delete the old one")
    scale = vae.config.scaling_factor
    progress = or_silent(progress)
    progress.start("cache latents", len(dataset), unit="clip")
    try:
        with staged_directory(folder) as staging:
            for index in range(len(dataset)):
                item = dataset[index]
                with torch.no_grad():
                    latents = vae.encode(item["video"][None]).sample(generator)[0] * scale  # (C, F, h, w)
                    text = text_encoder.encode_prompt([item["caption"]])[0]  # (L, Dt)
                tensors = {"latents": latents.permute(1, 0, 2, 3).contiguous(),  # (F, C, h, w)
                           "text_embeddings": text.contiguous()}
                save_file(tensors, str(staging / f"{index:06d}.safetensors"), {"caption": item["caption"]})
                progress.update(1)
    finally:
        progress.close()
    logger.info("cached %d clips' latents and text embeddings in %s", len(dataset), folder)
    return folder


class LatentCache(torch.utils.data.Dataset):
    """Items `{"latents": (F, C, h, w), "text_embeddings": (L, Dt), "caption"}` from `cache_latents`."""

    def __init__(self, folder: str | Path):
        self.files = sorted(Path(folder).glob("*.safetensors"))
        if not self.files:
            raise DataError(f"no latent cache files (*.safetensors) in {folder}; build one with cache_latents()")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        from safetensors import safe_open

        with safe_open(str(self.files[index]), framework="pt") as handle:
            item = {name: handle.get_tensor(name) for name in ("latents", "text_embeddings")}
            item["caption"] = (handle.metadata() or {}).get("caption", "")
        return item
