"""The loss log of a run: one JSON object per logged step in `output_dir/loss.jsonl`, and its plot.

On resume the log is cut back to the resumed step, so it always reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cogvx.modeling.checkpoint import atomic_write

logger = logging.getLogger(__name__)

LOG_FILE = "loss.jsonl"
CURVE_FILE = "loss.png"


class LossLog:
    """Append-only JSON lines: {"step": 1-based completed steps, "stage": k, "loss": ..., ...}."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOG_FILE

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, step: int) -> None:
        """Drop records after `step` (they belong to the interrupted tail that the resume replays)."""
        kept = [r for r in self.records() if r["step"] <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def plot_loss_curve(log_path: str | Path, png_path: str | Path, title: str = "training loss") -> Path | None:
    """Loss against step, stage boundaries dashed; None (and a log line) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no loss curve (pip install matplotlib)")
        return None
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    if not records:
        return None
    steps = [r["step"] for r in records]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, [r["loss"] for r in records], linewidth=1)
    for before, after in zip(records, records[1:]):
        if after.get("stage") != before.get("stage"):
            axis.axvline(before["step"], color="grey", linestyle="--", linewidth=0.8)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_yscale("log" if min(r["loss"] for r in records) > 0 else "linear")
    axis.set_title(title)
    figure.tight_layout()
    png_path = Path(png_path)
    atomic_write(png_path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
    return png_path
