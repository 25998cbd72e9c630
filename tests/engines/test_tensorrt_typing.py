"""The TensorRT calls of engines/ type-checked with mypy against tensorrt-stubs.

TensorRT cannot run without an NVIDIA GPU, so the thin layer of TensorRT calls (builder, parser,
builder config, runtime, execution context) is checked against the API's type stubs instead:
`pip install mypy tensorrt-stubs` (the stubs' own dependency on the tensorrt wheel may fail to
install; `pip install --no-deps tensorrt-stubs` is enough). The stubs install `tensorrt/*.pyi`
without a py.typed marker and with a few generated lines Python cannot parse (a parameter named
`in`, a default before a non-default), so the test copies them into a folder on MYPYPATH with
those lines repaired, and uses pyproject.toml's [tool.mypy] settings. A second run on a snippet
with two wrong calls proves the stubs are really consulted.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def stub_folder(target: Path) -> Path:
    """tensorrt / tensorrt_bindings .pyi files, repaired so that they parse, under `target`."""
    for package in ("tensorrt", "tensorrt_bindings"):
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        stubs = [path for location in locations for path in Path(location).glob("*.pyi")]
        if not stubs:
            pytest.skip(f"{package} type stubs are not installed (pip install --no-deps tensorrt-stubs)")
        (target / package).mkdir(parents=True)
        for path in stubs:
            text = re.sub(r"([(,]\s*)in(\s*:)", r"\1in_\2", path.read_text())  # `in` is a keyword
            text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)")
            ast.parse(text)  # a stubs version with other broken lines fails here, by name
            (target / package / path.name).write_text(text)
    return target


def mypy(stubs: Path, *paths: str) -> subprocess.CompletedProcess:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    env = dict(os.environ, MYPYPATH=str(stubs))
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--cache-dir", str(stubs.parent / "mypy-cache"), *paths],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def test_tensorrt_calls_type_check_against_the_stubs(tmp_path):
    stubs = stub_folder(tmp_path / "stubs")
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def build() -> None:\n"
                     "    import tensorrt as trt\n"
                     "    config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()\n"
                     "    config.builder_optimization_level = 'high'\n"
                     "    config.set_timing_cache(b'')\n")
    refused = mypy(stubs, str(wrong))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert 'variable has type "int"' in refused.stdout and "set_timing_cache" in refused.stdout
    checked = mypy(stubs)  # the files pyproject.toml names: engines/tensorrt_build.py, tensorrt_runtime.py, ...
    files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"Success: no issues found in {len(files)} source files" in checked.stdout
