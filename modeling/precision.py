"""Precision: one enum for every room (export, runtime, validation, training, the CLI).

`Precision.parse` takes the spellings people type (`fp16`, `float16`, `half`, a `torch.dtype`, a
`Precision`) and refuses anything else with the allowed values in the message. The integer and
fp8 precisions are weight/activation formats of quantized graphs: their float parts run in
`torch_dtype`.
"""

from __future__ import annotations

import enum

import torch

from cogvx.errors import CogvxError


class PrecisionError(CogvxError):
    """A precision that cogvx does not know, or one a command cannot run."""


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"  # int8 weights (per channel) and activations (per tensor) through Q/DQ; the rest fp32
    FP8 = "fp8"  # float8 e4m3 weights and activations through Q/DQ; the rest fp32

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype of the float parts (for int8 / fp8: everything between the Q/DQ pairs)."""
        return _TORCH[self]

    @property
    def is_quantized(self) -> bool:
        return self in (Precision.INT8, Precision.FP8)

    @property
    def long_name(self) -> str:
        """torch's name of the type: float32, float16, bfloat16 (int8, fp8 as they are)."""
        return self.value if self.is_quantized else str(self.torch_dtype).removeprefix("torch.")

    @classmethod
    def parse(cls, value: str | torch.dtype | Precision, allowed: tuple[Precision, ...] | None = None) -> Precision:
        """A precision from what a user or a file wrote; `allowed` narrows the choice for one command."""
        if isinstance(value, cls):
            precision = value
        elif isinstance(value, torch.dtype):
            precision = next((p for p in FLOAT_PRECISIONS if _TORCH[p] == value), None)
        else:
            precision = _ALIASES.get(str(value).strip().lower()) if isinstance(value, str) else None
        choices = allowed or tuple(cls)
        if precision is None or precision not in choices:
            raise PrecisionError(f"precision {value!r} is not one of {', '.join(p.value for p in choices)}")
        return precision

    def __str__(self) -> str:
        return self.value


_TORCH = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16,
          Precision.INT8: torch.float32, Precision.FP8: torch.float32}
FLOAT_PRECISIONS = (Precision.FP32, Precision.FP16, Precision.BF16)
_ALIASES = {alias: precision for precision in FLOAT_PRECISIONS
            for alias in (precision.value, precision.long_name)} | {
    "float": Precision.FP32, "half": Precision.FP16, "int8": Precision.INT8, "fp8": Precision.FP8,
    "float8": Precision.FP8, "float8_e4m3fn": Precision.FP8}
