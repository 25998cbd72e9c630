"""A stage over the graphs of an engine directory, whatever backend runs them.

`GraphStage` does everything that is the same for every backend, driven by the stage record
(contract/manifest.py) and the component's row (contract/components.py): it picks the graph for the
inputs (first-chunk graph by length, next-chunk graph once a cache exists), reshapes (V, D)
position tables to the graph's (T', H', W', D), casts inputs to the dtypes the graph declares,
and renames cache outputs so they go back in as the next chunk's inputs. It carries the stage's
`ShapeProfile`, which the pipeline checks before any work.

A backend supplies only a `Runner` per graph (runtime/stages.py): `open_graph_stages(directory,
make_runner)` opens the directory once (manifest checked, every file hashed) and asks
`make_runner(path, component, precision)` for each graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from cogvx.contract.components import COMPONENTS, Component, position_grid
from cogvx.contract.manifest import EngineDirectoryError, Manifest, StageRecord, resolve_inside
from cogvx.contract.shapes import ShapeProfile
from cogvx.modeling.precision import Precision

from .stages import Runner, Stage

logger = logging.getLogger(__name__)

RunnerFactory = Callable[[Path, Component, Precision], Runner]


class GraphStage:
    """One stage of an engine directory: a runner per graph role."""

    def __init__(self, record: StageRecord, runners: dict[str, Runner], patch_size: int,
                 patch_size_t: int | None = None):
        self.component = COMPONENTS[record.component]
        self.name = self.component.stage
        self.record = record
        self.precision = Precision.parse(record.dtype)
        self.profile = ShapeProfile.from_dict(record.profile)
        self.runners = runners
        self.patch_size, self.patch_size_t = patch_size, patch_size_t

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        role = self.component.role(inputs)
        runner = self.runners.get(role)
        if runner is None:
            raise EngineDirectoryError(
                f"{self.name} has no graph for this input ({role}; it has {', '.join(sorted(self.runners))}): "
                "the request is outside the profile it was exported for; export it again with one that covers it")
        feeds = {name: value for name, value in inputs.items() if value is not None}
        grid_inputs = [name for name in self.component.grid_inputs if name in feeds]
        if grid_inputs:
            _, frames, _, h, w = feeds["latents"].shape
            grid = position_grid(frames, h, w, self.patch_size, self.patch_size_t)
            feeds |= {name: feeds[name].reshape(grid) for name in grid_inputs}  # (V, D) -> (T', H', W', D)
        missing = [name for name in runner.input_dtypes if name not in feeds]
        if missing:
            raise TypeError(f"stage {self.name} ({role}) was not given graph inputs {missing} (got {sorted(feeds)})")
        device = feeds[next(iter(runner.input_dtypes))].device
        feeds = {name: feeds[name].to(dtype).contiguous() for name, dtype in runner.input_dtypes.items()}
        return {name: value.to(device) for name, value in self.component.stage_outputs(runner(feeds)).items()}


def open_graph_stages(directory: str | Path, make_runner: RunnerFactory,
                      verify: bool = True) -> tuple[dict[str, Stage], Manifest]:
    """Every stage of an engine directory over runners from `make_runner` (files checked against the manifest)."""
    directory = Path(directory)
    manifest = Manifest.load(directory)
    if verify:
        manifest.verify(directory)
    transformer = manifest.model_config().transformer
    stages: dict[str, Stage] = {}
    for record in manifest.stages.values():
        component = COMPONENTS[record.component]
        precision = Precision.parse(record.dtype)
        runners = {role: make_runner(resolve_inside(directory, file_name), component, precision)
                   for role, file_name in record.graphs.items()}
        stages[component.stage] = GraphStage(record, runners, transformer.patch_size, transformer.patch_size_t)
    return stages, manifest
