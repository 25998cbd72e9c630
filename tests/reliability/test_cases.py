"""Every attack and fault of cases.py, run for real: exit code, one clear line, nothing lost."""

from __future__ import annotations

import pytest

from .cases import CASES, expect, run
from .world import make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case(case, world, tmp_path):
    expect(case, run(case, world, tmp_path / "case"), world, tmp_path / "case")
