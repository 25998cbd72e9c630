"""cogvx: a compiled deployment and export toolchain for CogVideoX."""

__version__ = "0.1.0"
