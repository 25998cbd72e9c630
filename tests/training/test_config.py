"""Run files: TOML and YAML read the same, unknown keys and bad values are refused by name."""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

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
    (dict(strategy="zero3"), r"strategy must be one of \('ddp', 'fsdp2'\) \(got 'zero3'\)"),
    (dict(precision="fp16"), "use bf16"),
    (dict(batch_size="2"), r"batch_size must be int \(got '2'\)"),
    (dict(model={}), "needs checkpoint"),
    (dict(stages=[{"height": 32, "width": 32, "frames": 9, "steps": 1}]), r"stages\[0\] is missing lr"),
    (dict(strategy="fsdp2", vae_loss={"gan_start_step": 10}), "adaptive_gan_weight = false"),
    (dict(vae_loss={"reconstruction": "l2"}), r"vae_loss.reconstruction must be 'l1' or 'mse' \(got 'l2'\)"),
])
def test_bad_values_say_what_to_change(changes, message):
    with pytest.raises(TrainConfigError, match=message):
        config_from_dict(base(**changes))


def test_the_cli_reports_a_bad_key_as_a_usage_error(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("batchsize = 3\n" + textwrap.dedent(TOML))
    result = CliRunner().invoke(train, ["transformer", "--config", str(path)])
    assert result.exit_code == 2
    assert "unknown key 'batchsize' in the top level; allowed keys: batch_size" in result.output
    path.write_text("x = [")
    result = CliRunner().invoke(train, ["vae", "--config", str(path)])
    assert result.exit_code == 2 and "is not valid TOML" in result.output
