"""`cogvx build`: TensorRT plans for an engine directory made by `cogvx export` (the CLI talks,
engines/tensorrt_build.py logs).

On a machine without TensorRT it prints one line saying what to install and exits 2, like every
error a user can fix; it needs an NVIDIA GPU as well.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from cogvx.progress import BarProgress


def user_errors(progress=None):
    from cogvx.cli import user_errors  # cogvx.cli imports this module: import it when a command runs

    return user_errors(progress)


@click.command()
@click.option("--engines", required=True, type=click.Path(file_okay=False, exists=True),
              help="Engine directory (cogvx export); the plans and their record go into it.")
@click.option("--components", default=None, help="Comma-separated components to build [default: every exported one].")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT timing cache file: read if it exists, written after the build (faster rebuilds).")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="TensorRT builder optimization level (higher: longer build, maybe faster plan).")
@click.option("--hardware-compat", type=click.Choice(["none", "ampere+"]), default="none", show_default=True,
              help="ampere+: plans that run on any Ampere or newer GPU (slower than GPU-specific ones).")
@click.option("--plugin", type=click.Choice(["aot", "jit"]), default="aot", show_default=True,
              help="The attention plugin in the plan: aot (compiled in, no Python at run time) or jit (Python).")
@click.option("--compare", is_flag=True, help="Then run every plan and its graph (ONNX Runtime CPU) at the min, opt "
              "and max of its profile with polygraphy; exit 1 if an output's error is above its precision's bar.")
def build(engines: str, components: str | None, timing_cache: str | None, opt_level: int, hardware_compat: str,
          plugin: str, compare: bool) -> None:
    """Build TensorRT plans from the ONNX graphs of --engines (recorded in its manifest.json)."""
    from cogvx.contract.manifest import Manifest
    from cogvx.engines.tensorrt_build import BuildOptions, build_engines, require_tensorrt

    options = BuildOptions(opt_level=opt_level, timing_cache=Path(timing_cache) if timing_cache else None,
                           hardware_compat=hardware_compat, plugin=plugin)
    with user_errors():
        require_tensorrt()  # first: without TensorRT nothing else matters
        options.check()
        names = ([c.strip() for c in components.split(",") if c.strip()] if components
                 else list(Manifest.load(engines).stages))
    bar = BarProgress()

    def progress(component: str, state: str) -> None:
        if bar.idle:
            bar.start("build", len(names), unit="component")
        bar.update(0 if state == "building" else 1, f"{component}: {state}")

    started = time.perf_counter()
    with user_errors(bar):
        records = build_engines(engines, names, options, progress)
    width = max(len(r.component) for r in records) if records else 0
    for record in records:
        click.echo(f"{record.component:<{width}}  {', '.join(record.plans.values())}  (TensorRT {record.tensorrt}, "
                   f"{record.gpu})")
    click.echo(f"built in {time.perf_counter() - started:.1f} s into {engines}")
    if compare:
        _compare(engines, [record.component for record in records])


def _compare(engines: str, components: list[str]) -> None:
    """Every plan against its graph at the profile's corners: a line per output, exit 1 on a miss."""
    import sys

    from cogvx.contract.manifest import Manifest
    from cogvx.engines.compare import compare_plans

    bar = BarProgress()
    with user_errors(bar):
        manifest = Manifest.load(engines)
        graphs = sum(len(manifest.stage_record(name).graphs) for name in components)
        bar.start("compare", graphs, unit="graph")
        comparisons = compare_plans(engines, components, progress=lambda name: bar.update(1, name))
        bar.close()
    for c in comparisons:
        click.echo(f"{c.component}:{c.role:<8} {c.corner:<3} {c.output:<20} {str(c.shape):<24} error {c.error:.2e}  "
                   f"(bar {c.tolerance:.0e})  {'ok' if c.passed else 'ABOVE THE BAR'}")
    failed = [c for c in comparisons if not c.passed]
    if failed:
        click.echo(f"compare: {len(failed)} of {len(comparisons)} outputs above their bar; the plans disagree with "
                   "their graphs there (rebuild at another --opt-level, or report the graph)", err=True)
        sys.exit(1)
