"""Calibration prompts: the built-in set for the toy world, or one prompt per line of a file.

The built-in prompts cover the toy world's grammar (every colour, shape and motion at least once)
in a fixed order; real models need prompts like the ones they will serve (`--prompts FILE`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .calibrate import CalibrationError

logger = logging.getLogger(__name__)

# colour x shape x motion, interleaved so that any prefix spreads over the grammar
TOY_PROMPTS = (
    "a red square moving right", "a green circle moving left", "a blue triangle moving up",
    "a yellow square moving down", "a red circle standing still", "a green triangle moving right",
    "a blue square moving left", "a yellow circle moving up", "a red triangle moving down",
    "a green square standing still", "a blue circle moving right", "a yellow triangle moving left",
    "a red square moving up", "a green circle moving down", "a blue triangle standing still",
    "a yellow square moving right",
)


def read_prompts(path: str | Path | None, count: int) -> list[str]:
    """`count` prompts from the file (one per line, blank lines skipped), or from the built-in set.

    Fewer than asked is a warning, with the number used; none at all is an error."""
    if count < 1:
        raise CalibrationError(f"--num-prompts must be at least 1 (got {count})")
    if path is None:
        prompts = list(TOY_PROMPTS)
        source = "the built-in toy-world prompts"
    else:
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"prompts file {path} does not exist; give a text file with one prompt per line")
        try:
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise CalibrationError(f"prompts file {path} is not UTF-8 text; give one prompt per line") from None
        source = str(path)
        if not prompts:
            raise CalibrationError(f"prompts file {path} holds no prompt; give one prompt per line")
    if len(prompts) < count:
        logger.warning("asked for %d calibration prompts, %s has %d: using %d", count, source, len(prompts),
                       len(prompts))
    return prompts[:count]
