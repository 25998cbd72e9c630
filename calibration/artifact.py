"""`calibration.json`: what a calibration measured, content-keyed inside an engine directory.

The file holds the method and its settings, the hash of the prompts, the steps and guidance of
the trajectory, and per quantized layer: the amax used, the amax at every denoising step, and the
SmoothQuant scales (INT8). Its name is `calibration-<key>.json`, the key a hash of its own bytes,
so an export can name the calibration it used and nothing can change under that name. The same
inputs give the same bytes (floats written by `repr`, keys sorted).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cogvx.contract.manifest import EngineDirectoryError, resolve_inside

FORMAT = 1
PREFIX = "calibration-"


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number a calibration may hold")


@dataclass
class LayerCalibration:
    amax: float
    per_step_amax: list[float]
    smooth: list[float] | None = None


@dataclass
class Calibration:
    precision: str  # "int8" | "fp8"
    method: str
    alpha: float
    percentile: float
    fraction: float
    steps: int
    guidance: float
    seed: int
    num_prompts: int
    prompts_sha256: str
    skip: list[str]
    layers: dict[str, LayerCalibration] = field(default_factory=dict)
    format: int = FORMAT

    @property
    def kind(self) -> str:
        return self.precision

    def to_bytes(self) -> bytes:
        for name, layer in self.layers.items():
            values = [layer.amax, *layer.per_step_amax, *(layer.smooth or [])]
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"calibration of {name} is not finite")
        return (json.dumps(asdict(self), sort_keys=True, indent=1) + "\n").encode()

    @property
    def key(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()[:24]

    @property
    def file_name(self) -> str:
        return f"{PREFIX}{self.key}.json"

    def save(self, directory: str | Path) -> str:
        """Write into the engine directory (atomically); the file name."""
        from cogvx.modeling.checkpoint import atomic_write

        data = self.to_bytes()
        atomic_write(Path(directory) / self.file_name, lambda tmp: Path(tmp).write_bytes(data))
        return self.file_name

    @classmethod
    def load(cls, directory: str | Path, file_name: str) -> Calibration:
        """Read a calibration an engine directory names; its bytes must hash to its name."""
        path = resolve_inside(Path(directory), file_name)
        if not path.is_file():
            raise EngineDirectoryError(f"{path} is missing; run `cogvx calibrate` again")
        data = path.read_bytes()
        if not file_name.startswith(PREFIX) or hashlib.sha256(data).hexdigest()[:24] != file_name[len(PREFIX):-5]:
            raise EngineDirectoryError(f"{path} does not match its name (edited or corrupt); run `cogvx calibrate` again")
        try:
            raw = json.loads(data, parse_constant=_refuse_constant)
            layers = {name: LayerCalibration(**layer) for name, layer in raw.pop("layers").items()}
            calibration = cls(**raw, layers=layers)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise EngineDirectoryError(f"{path} is not a calibration ({error}); run `cogvx calibrate` again") from None
        if calibration.format != FORMAT:
            raise EngineDirectoryError(f"{path} has calibration format {calibration.format}; this cogvx reads {FORMAT}")
        return calibration
