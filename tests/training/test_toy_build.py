"""`cogvx train toy` end to end on a micro recipe, the evaluation harness, and `cogvx judge`."""

from __future__ import annotations

import json
import tomllib
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cogvx.cli import main
from cogvx.modeling.checkpoint import read_state_dict
from cogvx.modeling.configs import PRESETS
from cogvx.modeling.vae import CogVideoXVAE
from cogvx.progress import Progress
from cogvx.runtime.pipeline import CogVideoXPipeline
from cogvx.training.checkpoints import list_checkpoints
from cogvx.training.config import TrainConfigError, load_config
from cogvx.training.data import LatentCache
from cogvx.training.toy.build import DATA_SEED, ToyRecipe, build_toy, measure_scaling_factor
from cogvx.training.toy.captions import all_captions
from cogvx.training.toy.evaluate import (EVAL_SEED_BASE, ToyModelError, eval_pairs, evaluate_generation, evaluate_vae,
                                         psnr_uint8, write_report)
from cogvx.training.toy.judge import judge
from cogvx.training.toy.world import ClipSpec, ToyClips, render, sample_spec

MICRO = ToyRecipe(train_clips=6, vae_steps=2, vae_final_steps=1, vae_batch=1, vae_warmup=0, transformer_steps=3,
                  transformer_final_steps=0, transformer_batch=2, transformer_warmup=0, scale_clips=2, eval_clips=2,
                  eval_pairs=2, eval_steps=2)


@pytest.fixture(scope="module")
def micro_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy-build")
    messages: list[str] = []
    progress = mock.create_autospec(Progress, instance=True)  # records what the build reports
    out = build_toy(root / "work", root / "model", MICRO, progress=progress, say=messages.append)
    return SimpleNamespace(root=root, work=root / "work", out=out, messages=messages, progress=progress)


def test_build_reports_every_counted_step_to_its_progress(micro_build):
    started = [(c.args, c.kwargs.get("done", 0)) for c in micro_build.progress.start.call_args_list]
    assert started == [(("train vae", MICRO.vae_steps + MICRO.vae_final_steps), 0),
                       (("cache latents", MICRO.train_clips), 0),
                       (("train transformer", MICRO.transformer_steps), 0),
                       (("vae eval", MICRO.eval_clips), 0),
                       (("generate + judge", MICRO.eval_pairs), 0)]
    updates = sum(c.args[0] if c.args else 1 for c in micro_build.progress.update.call_args_list)
    assert updates == sum(total for (_, total), _ in started)  # every unit counted once
    assert micro_build.progress.close.call_count >= len(started)
    assert any("loss=" in c.args[1] for c in micro_build.progress.update.call_args_list if len(c.args) > 1)


def test_build_writes_a_loadable_model_from_its_own_runs(micro_build):
    work, out = micro_build.work, micro_build.out
    assert [m[:5] for m in micro_build.messages] == ["[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"]
    pipe = CogVideoXPipeline.from_pretrained(out)
    assert pipe.config.name == "toy" and (pipe.config.num_frames, pipe.config.height, pipe.config.width) == (17, 64, 64)

    # the shipped transformer is the transformer run's last checkpoint, the VAE the VAE run's
    transformer_run = list_checkpoints(work / "transformer")
    assert transformer_run[-1].name == "checkpoint-3"  # one stage: final_steps=0
    mine, theirs = read_state_dict(out / "transformer"), read_state_dict(transformer_run[-1] / "transformer")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    vae_weights = read_state_dict(list_checkpoints(work / "vae")[-1] / "vae")
    assert all(torch.equal(v, vae_weights[k]) for k, v in read_state_dict(out / "vae").items())

    # scaling factor = 1 / std of the posterior means of the first clips, written into vae/config.json
    vae = CogVideoXVAE.from_pretrained(out / "vae")
    clips = ToyClips(MICRO.scale_clips, DATA_SEED, 17, 64, 64)
    assert vae.config.scaling_factor == pytest.approx(measure_scaling_factor(vae, clips, MICRO.scale_clips), rel=1e-5)
    assert vae.config.scaling_factor != PRESETS["toy"].vae.scaling_factor

    # the latent cache holds every clip at 17 frames (5 latent frames), scaled, with the T5 embeddings
    cache = LatentCache(work / "latents")
    assert len(cache) == MICRO.train_clips
    item = cache[0]
    assert item["latents"].shape == (5, 16, 8, 8) and item["text_embeddings"].shape == (32, 64)
    with torch.no_grad():
        mean = vae.encode(ToyClips(1, DATA_SEED)[0]["video"][None]).mean[0].permute(1, 0, 2, 3)
    # a posterior sample: within a few posterior std of the scaled mean
    assert float((item["latents"] / vae.config.scaling_factor - mean).abs().mean()) < 3.0

    # the run configs on disk are the ones that ran, readable by `cogvx train --config`
    vae_config = load_config(work / "vae.toml")
    assert vae_config.stages[0].steps == MICRO.vae_steps and vae_config.vae_loss.reconstruction == "mse"
    assert tomllib.loads((work / "transformer.toml").read_text())["batch_size"] == MICRO.transformer_batch


def test_build_report_matches_a_fresh_evaluation(micro_build):
    report = json.loads((micro_build.work / "report" / "report.json").read_text())
    vae = CogVideoXVAE.from_pretrained(micro_build.out / "vae")
    assert report["vae_psnr"]["per_clip"] == pytest.approx(evaluate_vae(vae, MICRO.eval_clips), abs=1e-3)
    pairs = report["generation"]["pairs"]
    assert len(pairs) == MICRO.eval_pairs and report["generation"]["scores"]["n"] == MICRO.eval_pairs
    pipe = CogVideoXPipeline.from_pretrained(micro_build.out)
    video = pipe(prompt=pairs[0]["prompt"], num_inference_steps=MICRO.eval_steps, seed=pairs[0]["seed"]).frames[0]
    verdict = judge(video)
    assert pairs[0]["verdict"]["colour"] == verdict.colour
    assert pairs[0]["verdict"]["displacement"] == pytest.approx(list(verdict.displacement), abs=1e-4)
    assert (micro_build.work / "report" / "contact_sheet.png").stat().st_size > 1000
    assert "| 0 | " + pairs[0]["prompt"] in (micro_build.work / "report" / "report.md").read_text()


def test_rebuild_reuses_every_step_and_refuses_another_recipe(micro_build, tmp_path):
    work = micro_build.work
    before = {p.name: p.stat().st_mtime_ns for p in (work / "transformer").iterdir()}
    out = build_toy(work, tmp_path / "again", MICRO, evaluate=False)
    assert {p.name: p.stat().st_mtime_ns for p in (work / "transformer").iterdir()} == before
    a, b = read_state_dict(out / "transformer"), read_state_dict(micro_build.out / "transformer")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainConfigError, match="another recipe"):
        build_toy(work, tmp_path / "other", MICRO.replace(seed=1))
    with pytest.raises(FileExistsError, match="not empty"):
        build_toy(tmp_path / "w2", micro_build.out, MICRO)
    assert not (tmp_path / "w2").exists()  # refused before anything is written
    result = CliRunner().invoke(main, ["train", "toy", "--work", str(tmp_path / "w3"), "--out", str(micro_build.out)])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and "not empty" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_eval_pairs_cover_the_grammar_with_fresh_seeds():
    pairs = eval_pairs(60)
    assert sorted(p for p, _ in pairs) == sorted(all_captions())  # 60 pairs: every caption once
    assert eval_pairs(60) == pairs and eval_pairs(60, seed=1) != pairs
    assert min(s for _, s in pairs) >= EVAL_SEED_BASE and len({s for _, s in pairs}) == 60
    assert psnr_uint8(np.zeros((2, 2), np.uint8), np.full((2, 2), 255 // 10, np.uint8)) == pytest.approx(
        20 * np.log10(255 / 25), abs=1e-9)


class RenderingPipe:
    """A generator whose answer is known: it renders the toy world's clip for the prompt (or a wrong colour)."""

    def __init__(self, swap_colour: bool = False):
        self.swap_colour = swap_colour

    def __call__(self, prompt, num_frames, height, width, num_inference_steps, guidance_scale, seed):
        colour, shape, motion = prompt.removeprefix("a ").split(" ", 2)
        if self.swap_colour:
            colour = {"red": "blue", "blue": "red", "green": "yellow", "yellow": "green"}[colour]
        base = sample_spec(np.random.default_rng(seed))
        spec = ClipSpec(colour, shape, motion, 32.0, 32.0, base.size, 20.0 if motion != "standing still" else 0.0)
        return SimpleNamespace(frames=render(spec, num_frames, height, width)[None])


def test_generation_scores_are_judge_accuracies(tmp_path):
    pairs = eval_pairs(12)
    right = evaluate_generation(RenderingPipe(), pairs, steps=1)
    assert right.scores == {"colour": 1.0, "shape": 1.0, "motion": 1.0, "all": 1.0, "n": 12}
    wrong = evaluate_generation(RenderingPipe(swap_colour=True), pairs, steps=1)
    assert wrong.scores["colour"] == 0.0 and wrong.scores["motion"] == 1.0 and wrong.scores["all"] == 0.0
    report = write_report(tmp_path / "r", "rendered", [30.0, 32.0], wrong)
    text = report.read_text()
    assert "colour 0%" in text and "direction 100%" in text and "mean 31.00 dB" in text
    assert json.loads((tmp_path / "r" / "report.json").read_text())["generation"]["scores"]["colour"] == 0.0


def test_judge_cli_scores_the_model(micro_build, tmp_path, tiny_checkpoint):
    result = CliRunner().invoke(main, ["judge", "--model", str(micro_build.out), "--pairs", "2", "--steps", "2",
                                       "--vae-clips", "1", "--report", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["generation"]["scores"]["n"] == 2 and len(data["vae_psnr"]["per_clip"]) == 1
    assert f"{data['generation']['scores']['colour']:.0%}" in result.output
    bad = CliRunner().invoke(main, ["judge", "--model", str(micro_build.out), "--pairs", "0", "--report",
                                    str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "--pairs" in bad.output and not (tmp_path / "r2").exists()
    other = CliRunner().invoke(main, ["judge", "--model", str(tiny_checkpoint("2b")), "--pairs", "1", "--report",
                                      str(tmp_path / "r3")])
    assert other.exit_code == 2 and "the judge reads the toy world's 17x64x64" in other.output, other.output
    assert not (tmp_path / "r3").exists()


def test_judge_on_engines_matches_torch(micro_build, tmp_path):
    from cogvx.engines.export_dir import export_engines
    from cogvx.contract.shapes import ShapeProfile, ShapeSpec
    from cogvx.training.toy.evaluate import evaluate_model

    engines = tmp_path / "engines"
    export_engines(micro_build.out, engines, ["text_encoder", "transformer", "vae_decoder"],
                   ShapeProfile.static(ShapeSpec(1, 17, 64, 64, 32)))
    _, _, on_engines = evaluate_model(micro_build.out, tmp_path / "ort", vae_clips=0, pairs=2, steps=3,
                                      engines=engines)
    _, _, on_torch = evaluate_model(micro_build.out, tmp_path / "torch", vae_clips=0, pairs=2, steps=3)
    for a, b in zip(on_engines.verdicts, on_torch.verdicts):  # fp32 ORT vs torch: the same videos, judged alike
        assert (a.colour, a.shape, a.motion) == (b.colour, b.shape, b.motion)
        assert np.allclose(a.displacement, b.displacement, atol=0.05)
    assert max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(on_engines.videos, on_torch.videos)) <= 1
    nine = tmp_path / "engines-9"
    export_engines(micro_build.out, nine, ["transformer"], ShapeProfile.static(ShapeSpec(1, 9, 64, 64, 32)))
    with pytest.raises(ToyModelError, match=r"the judge generates 17x64x64 video and .* cannot \(frames 17 is outside .*\); export with --profile 17x64x64"):
        evaluate_model(micro_build.out, tmp_path / "never", pairs=1, engines=nine)
    assert not (tmp_path / "never").exists()
