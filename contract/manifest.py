"""The engine directory's `manifest.json`: what was built, from what, and how.

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
Plain json and hashlib only: the runtime reads manifests without importing the exporters. Every
file name a manifest lists is resolved inside its directory (`resolve_inside`): a manifest written
by someone else cannot make cogvx read, hash or delete a file elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cogvx.errors import CogvxError
from cogvx.modeling.configs import (
    ModelConfig, SchedulerConfig, TextEncoderConfig, TransformerConfig, VAEConfig, model_config,
)

from cogvx.modeling.precision import Precision

from .components import ATTENTION_FORMS, COMPONENTS

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 2  # 2: every checkpoint folder fingerprinted, tokenizer files hashed, graphs without metadata


class EngineDirectoryError(CogvxError):
    """An engine directory that cannot be used as asked; the message says what to do."""


class UnsafeManifestError(EngineDirectoryError):
    """A manifest that names a file outside its directory: written by someone else, never obeyed."""


def resolve_inside(directory: Path, name: str) -> Path:
    """`directory / name`, refused unless it stays inside `directory` (no `..`, no absolute path, no
    link that leads out)."""
    root = Path(directory).resolve()
    try:
        path = (root / name).resolve() if isinstance(name, str) and name and "\0" not in name else root
    except (OSError, ValueError, RuntimeError):  # a name the file system cannot hold; a link loop
        path = root
    if path == root or root not in path.parents:
        raise UnsafeManifestError(f"{Path(directory) / MANIFEST} names {name!r}, which is not a file inside "
                                  f"{directory}: the manifest was altered, and nothing it lists was touched; "
                                  "delete the folder yourself if you trust it, or export into an empty folder")
    return path


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


SHA256_HEX = 64

# key -> (type, required) of a manifest and of a stage record; anything else is refused
MANIFEST_SCHEMA = {"model": (str, True), "configs": (dict, True), "sources": (dict, True), "tools": (dict, True),
                   "opset": (int, True), "stages": (dict, True), "source_path": (str, False),
                   "calibration": ((str, type(None)), False), "format": (int, True), "builds": (dict, False)}
RECORD_SCHEMA = {"component": (str, True), "key": (str, True), "dtype": (str, True), "profile": (dict, True),
                 "files": (dict, True), "graphs": (dict, True), "inputs": (dict, False), "outputs": (dict, False),
                 "attention": ((str, type(None)), False)}
CONFIG_PARTS = ("transformer", "vae", "scheduler", "text_encoder")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number a manifest may hold")


def _checked(data: dict, schema: dict, where: str) -> dict:
    """`data` with every key of `schema` of its type, and no other key."""
    if not isinstance(data, dict):
        raise EngineDirectoryError(f"{where} must be an object (got {type(data).__name__})")
    unknown = sorted(set(data) - set(schema))
    if unknown:
        raise EngineDirectoryError(f"{where} has unknown keys {unknown}")
    for key, (kind, required) in schema.items():
        if key not in data:
            if required:
                raise EngineDirectoryError(f"{where} has no {key!r}")
            continue
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise EngineDirectoryError(f"{where}.{key} has the wrong type ({type(data[key]).__name__})")
    if where == "manifest":
        missing = [part for part in CONFIG_PARTS if not isinstance(data["configs"].get(part), dict)]
        if missing:
            raise EngineDirectoryError(f"manifest.configs has no {', '.join(missing)} config")
        for name, record in data["stages"].items():
            _checked(record, RECORD_SCHEMA, f"stages.{name}")
        for name, build in data.get("builds", {}).items():
            _checked(build, BUILD_SCHEMA, f"builds.{name}")
    return data


def _check_files(where: str, files: dict, directory: Path) -> None:
    """Every listed file inside the directory, with a sha256 to check it by."""
    for file_name, digest in files.items():
        resolve_inside(directory, file_name)
        if not (isinstance(digest, str) and len(digest) == SHA256_HEX and all(c in "0123456789abcdef" for c in digest)):
            raise EngineDirectoryError(f"{where}.files[{file_name!r}] is not a sha256")


def _check_record(name: str, record: StageRecord, directory: Path) -> None:
    from .shapes import ShapeProfile

    where = f"stages.{name}"
    if record.component != name or name not in COMPONENTS:
        raise EngineDirectoryError(f"{where} names component {record.component!r}; components are "
                                   f"{', '.join(COMPONENTS)}")
    Precision.parse(record.dtype)
    if record.attention is not None and record.attention not in ATTENTION_FORMS:
        raise EngineDirectoryError(f"{where}.attention {record.attention!r} is not one of {', '.join(ATTENTION_FORMS)}")
    try:
        ShapeProfile.from_dict(record.profile)
    except (KeyError, TypeError) as error:
        raise EngineDirectoryError(f"{where}.profile is not a shape profile ({error})") from None
    for key, expected in (("graphs", "a file name"), ("inputs", "a list of names"), ("outputs", "a list of names")):
        for role, value in getattr(record, key).items():
            names = [value] if key == "graphs" else value
            if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise EngineDirectoryError(f"{where}.{key}[{role!r}] must be {expected}")
    _check_files(where, record.files, directory)
    for role, file_name in record.graphs.items():
        if file_name not in record.files:  # every graph the runtime loads is hashed
            raise EngineDirectoryError(f"{where}.graphs[{role!r}] names {file_name!r}, which has no sha256 in files")


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
    attention: str | None = None  # the attention form of a component with attention (ATTENTION_FORMS)

    @property
    def stage(self) -> str:
        return COMPONENTS[self.component].stage


# -- TensorRT builds (written by engines/tensorrt_build.py, read by engines/tensorrt_runtime.py) ---------

BUILD_SCHEMA = {"component": (str, True), "key": (str, True), "tensorrt": (str, True), "gpu": (str, True),
                "compute_capability": (str, True), "hardware_compat": (str, True), "plans": (dict, True),
                "files": (dict, True), "plugins": (dict, False), "options": (dict, False)}


@dataclass
class BuildRecord:
    """The TensorRT plans of one exported component: what they were built with and from.

    A plan runs only on the TensorRT version that built it and (without hardware compatibility) on
    GPUs of the compute capability it was built on; `key` is the stage record's key the plans were
    built from, so a re-exported stage makes its plans stale."""

    component: str
    key: str  # the stage record's key at build time
    tensorrt: str  # tensorrt.__version__
    gpu: str  # the device name, for messages
    compute_capability: str  # "9.0"
    hardware_compat: str  # "none" or "ampere+"
    plans: dict[str, str]  # role -> plan file
    files: dict[str, str]  # plan file -> sha256
    plugins: dict[str, dict] = field(default_factory=dict)  # plugin node -> the attributes baked into its plan
    options: dict = field(default_factory=dict)  # the build options the plans depend on (opt level, plugin)


def _check_build(name: str, build: BuildRecord, stages: dict[str, StageRecord], directory: Path) -> None:
    where = f"builds.{name}"
    if build.component != name or name not in stages:
        raise EngineDirectoryError(f"{where} is a build of {build.component!r}, which has no stage record")
    _check_files(where, build.files, directory)
    for role, file_name in build.plans.items():
        if role not in stages[name].graphs or file_name not in build.files:
            raise EngineDirectoryError(f"{where}.plans[{role!r}] names {file_name!r}: no such graph role or no sha256")

# -- end of TensorRT builds ----------------------------------------------------------------------------


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
    builds: dict[str, BuildRecord] = field(default_factory=dict)  # component -> its TensorRT plans

    def to_dict(self) -> dict:
        return asdict(self)

    def model_config(self) -> ModelConfig:
        """The model the engines were exported from, as the checkpoint's own configs describe it."""
        c = self.configs
        return model_config(TransformerConfig.from_dict(c["transformer"]), VAEConfig.from_dict(c["vae"]),
                            SchedulerConfig.from_dict(c["scheduler"]), TextEncoderConfig.from_dict(c["text_encoder"]))

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        stages = {name: StageRecord(**record) for name, record in data["stages"].items()}
        builds = {name: BuildRecord(**build) for name, build in data.get("builds", {}).items()}
        return cls(**{k: v for k, v in data.items() if k not in ("stages", "builds")}, stages=stages, builds=builds)

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        """Read and check a manifest: every key and type, every listed path inside `directory`."""
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise EngineDirectoryError(f"{directory} has no {MANIFEST}: not an engine directory; "
                                       "create one with `cogvx export --model DIR --out ENGINES`")
        try:
            data = json.loads(path.read_text(), parse_constant=_refuse_constant)
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
            raise EngineDirectoryError(f"{path} is unreadable ({error}); export again with --force") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise EngineDirectoryError(f"{path} has manifest format {found}, this cogvx reads {FORMAT}; "
                                       "export again with --force")
        try:
            manifest = cls.from_dict(_checked(data, MANIFEST_SCHEMA, "manifest"))
            for name, record in manifest.stages.items():
                _check_record(name, record, Path(directory))
            for name, build in manifest.builds.items():
                _check_build(name, build, manifest.stages, Path(directory))
            manifest.model_config()
        except UnsafeManifestError:
            raise
        except CogvxError as error:
            raise EngineDirectoryError(f"{path}: {error}; export again with --force") from None
        return manifest

    def save(self, directory: str | Path) -> None:
        from cogvx.modeling.checkpoint import write_json

        write_json(Path(directory) / MANIFEST, self.to_dict())

    def verify(self, directory: str | Path, components: list[str] | None = None) -> None:
        """Every file of the named stages exists and hashes as recorded."""
        directory = Path(directory)
        for name in components or list(self.stages):
            record = self.stage_record(name)
            for file_name, expected in record.files.items():
                path = resolve_inside(directory, file_name)
                if not path.is_file():
                    raise EngineDirectoryError(f"{path} is missing (listed in the manifest for {name}); "
                                               f"export {name} again")
                if file_sha256(path) != expected:
                    raise EngineDirectoryError(
                        f"{path} does not match the manifest (sha256 differs: corrupt, truncated or replaced "
                        f"since export); run `cogvx export` again for {name}")

    def check_source(self, model_dir: str | Path, folders: list[str] | None = None) -> None:
        """The checkpoint at `model_dir` is the one these engines were exported from: each of its
        `folders` (default: every one the manifest recorded) hashes as recorded."""
        model_dir = Path(model_dir)
        for folder in folders or sorted(self.sources):
            recorded = self.sources.get(folder)
            if recorded is None or not (model_dir / folder).is_dir():
                continue
            if folder_fingerprint(model_dir / folder) != recorded:
                raise EngineDirectoryError(
                    f"{model_dir / folder} is not the {folder} these engines were exported from "
                    f"({self.source_path or 'another checkpoint'}); pass that checkpoint, or export again from this one")

    def stage_record(self, component: str) -> StageRecord:
        if component not in self.stages:
            raise EngineDirectoryError(f"this engine directory has no {component} (it has "
                                       f"{', '.join(self.stages) or 'nothing'}); export it with "
                                       f"`cogvx export --components {component}`")
        return self.stages[component]
