"""Run files: TOML and YAML read the same, unknown keys and bad values are refused by name."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import tomllib

import pytest
import torch
from click.testing import CliRunner

from cogvx.errors import CogvxError
from cogvx.modeling.precision import Precision
from cogvx.training.cli import train
from cogvx.training.config import Stage, TrainConfigError, config_from_dict, load_config

TOML = """
output_dir = "runs/x"
batch_size = 2
explicit_uniform = false

[model]
preset = "toy"
overrides = { num_layers = 2 }

[[stages]]
height = 32
width = 48
frames = 9
steps = 10
lr = 1e-4

[[stages]]
height = 64
width = 64
frames = 17
steps = 5
lr = 5e-5
warmup_steps = 2
"""

YAML = """
output_dir: runs/x
batch_size: 2
explicit_uniform: false
model:
  preset: toy
  overrides: {num_layers: 2}
stages:
  - {height: 32, width: 48, frames: 9, steps: 10, lr: 1e-4}
  - {height: 64, width: 64, frames: 17, steps: 5, lr: 5.0e-5, warmup_steps: 2}
"""


def test_toml_and_yaml_give_the_same_config(tmp_path):
    (tmp_path / "run.toml").write_text(TOML)
    (tmp_path / "run.yaml").write_text(YAML)
    from_toml, from_yaml = load_config(tmp_path / "run.toml"), load_config(tmp_path / "run.yaml")
    assert from_toml == from_yaml
    assert from_toml.stages[1] == Stage(height=64, width=64, frames=17, steps=5, lr=5e-5, warmup_steps=2)
    assert from_toml.total_steps == 15 and from_toml.model.overrides == {"num_layers": 2}
    assert (from_toml.strategy, from_toml.precision, from_toml.text_dropout) == ("ddp", "fp32", 0.1)
    assert load_config(tmp_path / "run.toml", batch_size=8, seed=None).batch_size == 8


def base(**changes) -> dict:
    data = {"output_dir": "o", "model": {"preset": "toy"},
            "stages": [{"height": 32, "width": 32, "frames": 9, "steps": 1, "lr": 1e-4}]}
    data.update(changes)
    return data


@pytest.mark.parametrize("data, message", [
    (base(learning_rate=1e-4), r"unknown key 'learning_rate' in the top level; allowed keys: batch_size, data, "
                               r"device, explicit_uniform, gradient_checkpointing"),
    (base(stages=[{"height": 32, "width": 32, "frames": 9, "steps": 1, "lr": 1e-4, "fps": 8}]),
     r"unknown key 'fps' in stages\[0\]; allowed keys: frames, height, lr, name, steps, warmup_steps, width"),
    (base(model={"preset": "toy", "weights": "x"}), r"unknown key 'weights' in model; allowed keys: checkpoint, overrides, preset"),
])
def test_unknown_keys_are_refused_with_the_allowed_keys(data, message):
    with pytest.raises(TrainConfigError, match=message):
        config_from_dict(data)


@pytest.mark.parametrize("changes, message", [
    (dict(stages=[{"height": 32, "width": 32, "frames": 8, "steps": 1, "lr": 1e-4}]), r"frames must be 4k\+1 \(got 8\); try 5 or 9"),
    (dict(stages=[{"height": 40, "width": 32, "frames": 9, "steps": 1, "lr": 1e-4}]), r"height must be a positive multiple of 16 \(got 40\)"),
    (dict(stages=[]), "stages is empty"),
    (dict(strategy="zero3"), r"strategy must be one of 'ddp', 'fsdp2' \(got 'zero3'\)"),
    (dict(precision="fp16"), r"precision must be one of fp32, bf16 \(got 'fp16'\); float16 overflows in CogVideoX 5B "
                             r"training, use bf16"),
    (dict(precision="fp64"), r"precision must be one of fp32, bf16 \(got 'fp64'\)"),
    (dict(precision=16), r"precision must be one of fp32, bf16 \(got 16\)"),
    (dict(batch_size="2"), r"batch_size must be a whole number >= 1 \(got '2'\)"),
    (dict(model={}), "needs checkpoint"),
    (dict(stages=[{"height": 32, "width": 32, "frames": 9, "steps": 1}]), r"stages\[0\] is missing lr"),
    (dict(strategy="fsdp2", vae_loss={"gan_start_step": 10}), "adaptive_gan_weight = false"),
    (dict(vae_loss={"reconstruction": "l2"}), r"vae_loss.reconstruction must be one of 'l1', 'mse' \(got 'l2'\)"),
    (dict(vae_loss={"discriminator_layers": 0}), r"vae_loss.discriminator_layers must be a whole number >= 1 "
                                                 r"\(got 0\); 3 is usual"),
])
def test_bad_values_say_what_to_change(changes, message):
    with pytest.raises(TrainConfigError, match=message):
        config_from_dict(base(**changes))


def test_training_errors_are_cogvx_errors():
    from cogvx.training.checkpoints import ResumeError
    from cogvx.training.data import DataError
    from cogvx.training.toy.evaluate import ToyModelError

    assert all(issubclass(error, CogvxError) for error in (TrainConfigError, DataError, ResumeError, ToyModelError))


def test_precision_is_the_enum_and_run_files_keep_the_string(tmp_path):
    config = config_from_dict(base(precision="bf16"))
    assert config.precision is Precision.BF16 and config.precision.torch_dtype == torch.bfloat16
    assert config_from_dict(base()).precision is Precision.FP32
    assert config_from_dict(base(precision="bfloat16")).precision is Precision.BF16  # torch's spelling reads too
    data = config.to_dict()
    assert data["precision"] == "bf16" and type(data["precision"]) is str
    assert config_from_dict(json.loads(json.dumps(data))) == config
    # the toy build's TOML writer: a run file written from the plain dict reads back as the same config
    from cogvx.training.toy.build import _toml

    path = tmp_path / "run.toml"
    path.write_text(_toml(json.loads(json.dumps(data))))
    assert 'precision = "bf16"' in path.read_text()
    assert load_config(path) == config
    assert tomllib.loads(path.read_text())["precision"] == "bf16"


def test_the_cli_reports_a_bad_key_as_a_usage_error(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("batchsize = 3\n" + textwrap.dedent(TOML))
    result = CliRunner().invoke(train, ["transformer", "--config", str(path)])
    assert result.exit_code == 2
    assert "unknown key 'batchsize' in the top level; allowed keys: batch_size" in result.output
    path.write_text("x = [")
    result = CliRunner().invoke(train, ["vae", "--config", str(path)])
    assert result.exit_code == 2 and "is not valid TOML" in result.output


def stage(**changes) -> dict:
    return {"height": 32, "width": 32, "frames": 9, "steps": 1, "lr": 1e-4, **changes}


BIG = 10**400  # YAML reads integers of any length; float() of it overflows

# every number and choice a run file holds, each refused with the key, the value and what is allowed
@pytest.mark.parametrize("changes, message", [
    (dict(stages=[stage(lr=float("inf"))]), "stages[0].lr must be a finite number > 0 (got inf); 1e-4 is usual"),
    (dict(stages=[stage(lr=float("nan"))]), "stages[0].lr must be a finite number > 0 (got nan); 1e-4 is usual"),
    (dict(stages=[stage(lr="-inf")]), "stages[0].lr must be a finite number > 0 (got -inf); 1e-4 is usual"),
    (dict(stages=[stage(lr=0)]), "stages[0].lr must be a finite number > 0 (got 0.0); 1e-4 is usual"),
    (dict(stages=[stage(), stage(lr=-1e-4)]), "stages[1].lr must be a finite number > 0 (got -0.0001); 1e-4 is usual"),
    (dict(stages=[stage(lr=BIG)]), "stages[0].lr must be a finite number > 0 (got "
                                   "1000000000000000000000000000000000000000... (401 characters)); 1e-4 is usual"),
    (dict(stages=[stage(lr="fast")]), "stages[0].lr must be a finite number > 0 (got 'fast'); 1e-4 is usual"),
    (dict(stages=[stage(lr=True)]), "stages[0].lr must be a finite number > 0 (got True); 1e-4 is usual"),
    (dict(stages=[stage(steps=0)]), "stages[0].steps must be a whole number >= 1 (got 0)"),
    (dict(stages=[stage(steps=2.5)]), "stages[0].steps must be a whole number >= 1 (got 2.5)"),
    (dict(stages=[stage(steps=True)]), "stages[0].steps must be a whole number >= 1 (got True)"),
    (dict(stages=[stage(warmup_steps=-1)]), "stages[0].warmup_steps must be a whole number >= 0 (got -1)"),
    (dict(stages=[stage(frames=-3)]), "stages[0].frames must be a whole number >= 1 (got -3); 49 is usual"),
    (dict(stages=[stage(height=0)]), "stages[0].height must be a whole number >= 16 (got 0); 480 is usual"),
    (dict(stages=[stage(width="32")]), "stages[0].width must be a whole number >= 16 (got '32'); 720 is usual"),
    (dict(stages=[stage(name=3)]), "stages[0].name must be a string (got 3)"),
    (dict(batch_size=0), "batch_size must be a whole number >= 1 (got 0)"),
    (dict(batch_size=False), "batch_size must be a whole number >= 1 (got False)"),
    (dict(seed=-1), "seed must be a whole number in [0, 4294967295] (got -1)"),
    (dict(seed=2**64), "seed must be a whole number in [0, 4294967295] (got 18446744073709551616)"),
    (dict(text_dropout=1.5), "text_dropout must be a number in [0, 1] (got 1.5); 0.1 is usual"),
    (dict(text_dropout=float("nan")), "text_dropout must be a number in [0, 1] (got nan); 0.1 is usual"),
    (dict(pack_tokens=0), "pack_tokens must be a whole number >= 1, or left out to stack clips (got 0)"),
    (dict(log_every=0), "log_every must be a whole number >= 1 (got 0)"),
    (dict(save_every=-5), "save_every must be a whole number >= 1 (got -5)"),
    (dict(stop_at_step=0), "stop_at_step must be a whole number >= 1, or left out to run every stage (got 0)"),
    (dict(explicit_uniform="yes"), "explicit_uniform must be true or false (got 'yes')"),
    (dict(gradient_checkpointing=1), "gradient_checkpointing must be true or false (got 1)"),
    (dict(output_dir=""), "output_dir must be a non-empty string (got '')"),
    (dict(device=""), "device must be a non-empty string (got '')"),
    (dict(model={"preset": "tiny"}), "model.preset must be one of 'cogvideox-2b', 'cogvideox-5b', 'cogvideox-5b-i2v', "
                                     "'cogvideox1.5-5b', 'cogvideox1.5-5b-i2v', 'toy', or left out (got 'tiny')"),
    (dict(data={"folder": 3}), "data.folder must be a non-empty string, or left out (got 3)"),
    (dict(optimizer={"betas": [0.9, 1.0]}), "optimizer.betas[1] must be a number in [0, 1) (got 1.0); "
                                            "[0.9, 0.999] is usual"),
    (dict(optimizer={"betas": [-0.1, 0.999]}), "optimizer.betas[0] must be a number in [0, 1) (got -0.1); "
                                               "[0.9, 0.999] is usual"),
    (dict(optimizer={"betas": [0.9]}), "optimizer.betas must be a list of 2 entries, each a number in [0, 1) "
                                       "(got [0.9]); [0.9, 0.999] is usual"),
    (dict(optimizer={"betas": 0.9}), "optimizer.betas must be a list of 2 entries, each a number in [0, 1) "
                                     "(got 0.9); [0.9, 0.999] is usual"),
    (dict(optimizer={"weight_decay": -0.01}), "optimizer.weight_decay must be a finite number >= 0 (got -0.01); "
                                              "0.0 or 1e-4 is usual"),
    (dict(optimizer={"eps": 0}), "optimizer.eps must be a finite number > 0 (got 0.0); 1e-8 is usual"),
    (dict(optimizer={"grad_clip": float("inf")}), "optimizer.grad_clip must be a finite number > 0, or null for no "
                                                  "clipping (got inf); 1.0 is usual"),
    (dict(optimizer={"grad_clip": 0}), "optimizer.grad_clip must be a finite number > 0, or null for no clipping "
                                       "(got 0.0); 1.0 is usual"),
    (dict(vae_loss={"kl_weight": -1e-6}), "vae_loss.kl_weight must be a finite number >= 0 (got -1e-06); 1e-6 is usual"),
    (dict(vae_loss={"perceptual_weight": float("inf")}), "vae_loss.perceptual_weight must be a finite number >= 0 "
                                                         "(got inf); 0.1 is usual"),
    (dict(vae_loss={"gan_weight": "nan"}), "vae_loss.gan_weight must be a finite number >= 0 (got nan); 0.1 is usual"),
    (dict(vae_loss={"gan_start_step": -1}), "vae_loss.gan_start_step must be a whole number >= 0, or left out for no "
                                            "discriminator (got -1)"),
    (dict(vae_loss={"discriminator_lr": 0.0}), "vae_loss.discriminator_lr must be a finite number > 0 (got 0.0); "
                                               "1e-4 is usual"),
    (dict(vae_loss={"discriminator_channels": 2.0}), "vae_loss.discriminator_channels must be a whole number >= 1 "
                                                     "(got 2.0); 64 is usual"),
    (dict(vae_loss={"adaptive_gan_weight": "false"}), "vae_loss.adaptive_gan_weight must be true or false (got 'false')"),
])
def test_every_number_is_checked_where_it_enters(changes, message):
    with pytest.raises(TrainConfigError) as caught:
        config_from_dict(base(**changes))
    assert str(caught.value) == message


def test_every_field_has_a_rule():
    """A field added without a rule would let any value in: the table must cover every value field."""
    from cogvx.training import config as config_module

    sections = {config_module.ModelSection, config_module.DataSection, config_module.OptimizerSection,
                config_module.VAELossSection}
    for cls, rules in config_module.RULES.items():
        values = {f.name for f in dataclasses.fields(cls)} - {"stages", "precision", "model", "data", "optimizer",
                                                              "vae_loss"}
        assert set(rules) == values, cls
    assert set(config_module.RULES) == sections | {config_module.TrainConfig, config_module.Stage}


def test_the_python_api_is_checked_too():
    config = config_from_dict(base())
    with pytest.raises(TrainConfigError) as caught:
        config.replace(batch_size=0)
    assert str(caught.value) == "batch_size must be a whole number >= 1 (got 0)"
    with pytest.raises(TrainConfigError) as caught:
        config.replace(stages=(Stage(height=32, width=32, frames=9, steps=1, lr=float("inf")),))
    assert str(caught.value) == "stages[0].lr must be a finite number > 0 (got inf); 1e-4 is usual"
    from cogvx.training.config import OptimizerSection

    with pytest.raises(TrainConfigError) as caught:
        config.replace(optimizer=OptimizerSection(betas=(0.9, float("nan"))))
    assert str(caught.value) == "optimizer.betas[1] must be a number in [0, 1) (got nan); [0.9, 0.999] is usual"


def test_edge_values_that_are_allowed_still_read():
    config = config_from_dict(base(
        seed=0, text_dropout=0, stop_at_step=1, pack_tokens=1, batch_size=1,
        optimizer={"betas": [0, 0.5], "weight_decay": 0, "grad_clip": None},
        vae_loss={"kl_weight": 0, "perceptual_weight": 0, "gan_weight": 0, "gan_start_step": 0},
        stages=[stage(warmup_steps=0, frames=1, height=16, width=16, lr=1e30)],
    ))
    assert config.optimizer.betas == (0.0, 0.5) and config.optimizer.grad_clip is None
    assert config.text_dropout == 0.0 and type(config.text_dropout) is float
    assert config.stages[0].lr == 1e30 and config.vae_loss.gan_start_step == 0
    assert config_from_dict(base(seed=2**32 - 1)).seed == 4294967295


def test_toml_and_yaml_non_finite_numbers_are_refused(tmp_path):
    (tmp_path / "run.toml").write_text(TOML.replace("lr = 5e-5", "lr = inf"))
    with pytest.raises(TrainConfigError) as caught:
        load_config(tmp_path / "run.toml")
    assert str(caught.value) == "stages[1].lr must be a finite number > 0 (got inf); 1e-4 is usual"
    (tmp_path / "run.yaml").write_text(YAML.replace("lr: 5.0e-5", "lr: .nan"))
    with pytest.raises(TrainConfigError) as caught:
        load_config(tmp_path / "run.yaml")
    assert str(caught.value) == "stages[1].lr must be a finite number > 0 (got nan); 1e-4 is usual"
    (tmp_path / "run.yaml").write_text(YAML + "optimizer: {weight_decay: -.inf}\n")
    with pytest.raises(TrainConfigError) as caught:
        load_config(tmp_path / "run.yaml")
    assert str(caught.value) == "optimizer.weight_decay must be a finite number >= 0 (got -inf); 0.0 or 1e-4 is usual"


def test_the_toy_builds_run_files_still_read(tmp_path):
    from cogvx.training.toy.build import ToyRecipe, _toml, transformer_run_config, vae_run_config

    for make in (vae_run_config, transformer_run_config):
        data = make(tmp_path, ToyRecipe())
        path = tmp_path / f"{make.__name__}.toml"
        path.write_text(_toml(data))
        assert load_config(path) == config_from_dict(data)
    assert load_config(tmp_path / "vae_run_config.toml").stages[0].lr == 1e-3


def test_the_cli_refuses_an_infinite_lr_in_one_line_before_training(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(textwrap.dedent(TOML).replace("lr = 1e-4", "lr = inf"))
    out = tmp_path / "out"
    result = CliRunner().invoke(train, ["transformer", "--config", str(path), "--output-dir", str(out),
                                        "--device", "cpu", "--no-progress"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {path}: stages[0].lr must be a finite number > 0 (got inf); "
                                          "1e-4 is usual"]
    assert not out.exists()
    path.write_text(textwrap.dedent(TOML))
    result = CliRunner().invoke(train, ["vae", "--config", str(path), "--output-dir", str(out), "--batch-size", "0"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {path}: batch_size must be a whole number >= 1 (got 0)"]
    assert not out.exists()
