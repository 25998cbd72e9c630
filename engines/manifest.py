"""The engine directory's `manifest.json` (DESIGN.md seam 5): what was built, from what, and how.

```
ENGINES/
  manifest.json           format, model name, configs, source fingerprints, per-stage records
  tokenizer/              copied from the checkpoint: an engine directory runs without it
  text_encoder.onnx       one file per graph (+ .onnx.data past 2 GB)
  transformer.onnx
  vae_decoder_first_2.onnx, vae_decoder_next.onnx, ...
```

Each stage record holds a content key (hash of the source weights, profile, dtype, opset and tool
versions): an export with the same key reuses the files. Every file is listed with its sha256, so
a corrupt or truncated graph is caught on load with a clear error instead of an ONNX parse crash.
Plain json and hashlib only: the runtime reads manifests without importing the exporters.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
COMPONENTS = ("text_encoder", "transformer", "vae_decoder", "vae_encoder")
STAGE_OF = {"text_encoder": "text_encoder", "transformer": "denoiser", "vae_decoder": "vae_decoder",
            "vae_encoder": "vae_encoder"}
SOURCE_FOLDERS = {"text_encoder": "text_encoder", "transformer": "transformer", "vae_decoder": "vae",
                  "vae_encoder": "vae"}


class EngineDirectoryError(ValueError):
    """An engine directory that cannot be used as asked; the message says what to do."""


def file_sha256(path: Path, block: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the names and contents of a checkpoint component folder (config + weights)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


def content_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class StageRecord:
    """One exported component: its graphs (file -> sha256), I/O and the shapes it accepts."""

    component: str
    key: str
    dtype: str
    profile: dict
    files: dict[str, str]
    graphs: dict[str, str]  # role -> file, e.g. {"first_2": "vae_decoder_first_2.onnx", "next": ...}
    inputs: dict[str, list[str]] = field(default_factory=dict)  # role -> input names
    outputs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return STAGE_OF[self.component]


@dataclass
class Manifest:
    model: str
    configs: dict[str, dict]  # transformer / vae / scheduler / text_encoder config dicts
    sources: dict[str, str]  # checkpoint folder -> fingerprint
    tools: dict[str, str]
    opset: int
    stages: dict[str, StageRecord] = field(default_factory=dict)
    source_path: str = ""
    calibration: str | None = None
    format: int = FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        stages = {name: StageRecord(**record) for name, record in data.pop("stages").items()}
        return cls(**data, stages=stages)

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise EngineDirectoryError(f"{directory} has no {MANIFEST}: not an engine directory; "
                                       "create one with `cogvx export --model DIR --out ENGINES`")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise EngineDirectoryError(f"{path} is unreadable ({error}); export again with --force") from None
        if data.get("format") != FORMAT:
            raise EngineDirectoryError(f"{path} has manifest format {data.get('format')}, this cogvx reads "
                                       f"{FORMAT}; export again with --force")
        return cls.from_dict(data)

    def save(self, directory: str | Path) -> None:
        from cogvx.modeling.checkpoint import write_json

        write_json(Path(directory) / MANIFEST, self.to_dict())

    def verify(self, directory: str | Path, components: list[str] | None = None) -> None:
        """Every file of the named stages exists and hashes as recorded."""
        directory = Path(directory)
        for name in components or list(self.stages):
            record = self.stage_record(name)
            for file_name, expected in record.files.items():
                path = directory / file_name
                if not path.is_file():
                    raise EngineDirectoryError(f"{path} is missing (listed in the manifest for {name}); "
                                               f"export {name} again")
                if file_sha256(path) != expected:
                    raise EngineDirectoryError(
                        f"{path} does not match the manifest (sha256 differs: corrupt, truncated or replaced "
                        f"since export); run `cogvx export` again for {name}")

    def stage_record(self, component: str) -> StageRecord:
        if component not in self.stages:
            raise EngineDirectoryError(f"this engine directory has no {component} (it has "
                                       f"{', '.join(self.stages) or 'nothing'}); export it with "
                                       f"`cogvx export --components {component}`")
        return self.stages[component]
