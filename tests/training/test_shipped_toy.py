"""The toy model that ships in cogvx/assets/toy: its layout, its size, and that it still does what its report says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cogvx.models import SHIPPED, resolve_model
from cogvx.modeling.configs import PRESETS, TransformerConfig, VAEConfig
from cogvx.modeling.vae import CogVideoXVAE
from cogvx.runtime.pipeline import CogVideoXPipeline
from cogvx.training.toy.build import ToyRecipe
from cogvx.training.toy.evaluate import eval_pairs, evaluate_generation, evaluate_vae

REPORT = Path(__file__).parents[2] / "benchmarks" / "results" / "toy" / "report.json"
TOY = SHIPPED / "toy"


def test_toy_resolves_to_the_shipped_checkpoint():
    assert resolve_model("toy") == TOY
    names = sorted(p.name for p in TOY.iterdir())
    assert names == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "transformer", "vae"]
    size = sum(p.stat().st_size for p in TOY.rglob("*") if p.is_file())
    assert size < 20 * 2**20, f"the shipped toy model is {size / 2**20:.1f} MiB; keep it under 20 MiB"
    assert TransformerConfig.from_file(TOY / "transformer") == PRESETS["toy"].transformer
    vae = VAEConfig.from_file(TOY / "vae")
    assert vae.replace(scaling_factor=1.0) == PRESETS["toy"].vae  # only the measured scaling factor differs
    assert 0.1 < vae.scaling_factor < 10


def test_shipped_vae_reconstructs_held_out_clips():
    report = json.loads(REPORT.read_text())["vae_psnr"]
    assert report["clips"] == 64 and report["mean"] >= 28.0  # the acceptance bar, as measured on all 64
    psnr = evaluate_vae(CogVideoXVAE.from_pretrained(TOY / "vae"), 8)
    # the first 8 clips reproduce the committed per-clip figures
    assert psnr == pytest.approx(report["per_clip"][:8], abs=0.01)


def test_shipped_model_generates_what_its_report_says():
    report = json.loads(REPORT.read_text())["generation"]
    recipe = ToyRecipe()
    assert (report["steps"], report["guidance"]) == (recipe.eval_steps, recipe.eval_guidance)
    scores = report["scores"]
    assert scores["n"] == 40 and scores["colour"] >= 0.9 and scores["motion"] >= 0.8  # the acceptance bar
    pairs = eval_pairs(40)
    assert [(p["prompt"], p["seed"]) for p in report["pairs"]] == pairs
    result = evaluate_generation(CogVideoXPipeline.from_pretrained(TOY), pairs[:6], report["steps"],
                                 report["guidance"])
    for verdict, recorded in zip(result.verdicts, report["pairs"]):
        assert (verdict.colour, verdict.shape, verdict.motion) == (recorded["verdict"]["colour"],
                                                                   recorded["verdict"]["shape"],
                                                                   recorded["verdict"]["motion"])
        assert np.allclose(verdict.displacement, recorded["verdict"]["displacement"], atol=0.05)
