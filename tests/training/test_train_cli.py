"""`cogvx train`: a user's error is one line `error: ...` and exit 2, a bug keeps its traceback, bars are the CLI's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from cogvx.cli import main
from cogvx.errors import CogvxError
from cogvx.progress import BarProgress
from cogvx.training import trainer as trainer_module
from cogvx.training.config import TrainConfigError

_spec = importlib.util.spec_from_file_location("ddp_worker", Path(__file__).with_name("ddp_worker.py"))
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

RUN = (
    'output_dir = "unused"\nbatch_size = 2\nseed = 3\n'
    '[model]\npreset = "toy"\noverrides = { num_layers = 1, num_attention_heads = 2, attention_head_dim = 16, '
    'in_channels = 4, out_channels = 4, text_embed_dim = 8, max_text_seq_length = 4, time_embed_dim = 16 }\n'
    '[[stages]]\nheight = 16\nwidth = 16\nframes = 5\nsteps = 3\nlr = 3e-3\n'
)


def invoke(*arguments: str):
    return CliRunner().invoke(main, ["train", *arguments])


def assert_user_error(result, *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line `error: ...` holding every fragment."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def run_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(RUN)
    return path


@pytest.mark.parametrize("command", ["transformer", "vae"])
def test_a_bad_run_file_is_one_error_line_and_exit_2(tmp_path, command):
    path = tmp_path / "run.toml"
    path.write_text("batchsize = 3\n" + RUN)
    assert_user_error(invoke(command, "--config", str(path)),
                      f"{path}: unknown key 'batchsize' in the top level; allowed keys: batch_size")
    path.write_text("x = [")
    assert_user_error(invoke(command, "--config", str(path)), f"{path} is not valid TOML")
    assert_user_error(invoke(command, "--config", str(tmp_path / "absent.toml")),
                      f"config file {tmp_path / 'absent.toml'} does not exist")


def test_a_multi_line_message_still_prints_one_line(tmp_path, run_file, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text("output_dir: [unclosed\nstages: 1\n")  # PyYAML's own message spans six lines
    assert_user_error(invoke("transformer", "--config", str(path)),
                      f"{path} is not valid YAML (expected ',' or ']', but got ':' at line 2, column 7)")

    def refuse(config, stage):
        raise TrainConfigError("first line\n  second line")

    monkeypatch.setattr(trainer_module, "default_dataset", refuse)
    assert_user_error(invoke("transformer", "--config", str(run_file), "--output-dir", str(tmp_path / "o"),
                             "--device", "cpu", "--no-progress"), "error: first line second line")


def test_run_time_refusals_are_one_error_line(tmp_path, run_file, monkeypatch):
    monkeypatch.setattr(trainer_module, "default_dataset", lambda config, stage: worker.SyntheticLatents(stage))
    out = str(tmp_path / "out")
    common = ["--config", str(run_file), "--output-dir", out, "--device", "cpu", "--no-progress"]
    assert_user_error(invoke("transformer", *common, "--checkpoint", str(tmp_path / "nowhere")),
                      "[model] checkpoint", "is not a folder; give a diffusers model folder")
    assert invoke("transformer", *common, "--stop-at-step", "1").exit_code == 0
    assert_user_error(invoke("transformer", *common), "already holds checkpoint-1; pass --resume latest")  # ResumeError
    assert_user_error(invoke("transformer", *common, "--resume", str(tmp_path)), "is not a training checkpoint")
    assert_user_error(invoke("vae", *common, "--output-dir", str(tmp_path / "vae")),
                      "stages[0]: VAE training needs frames 8k+1 (got 5)")  # TrainConfigError from the trainer
    assert_user_error(invoke("transformer", *common, "--output-dir", str(tmp_path / "tpu"), "--device", "tpu0"),
                      "device 'tpu0' is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def test_a_user_file_error_is_one_line_but_an_internal_error_keeps_its_traceback(tmp_path, run_file, monkeypatch):
    common = ["--config", str(run_file), "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--no-progress"]

    def missing_file(config, stage):
        raise FileNotFoundError(f"clip {tmp_path / 'x.mp4'} vanished")

    monkeypatch.setattr(trainer_module, "default_dataset", missing_file)
    assert_user_error(invoke("transformer", *common), "x.mp4 vanished")

    def bug(config, stage):
        raise ValueError("shapes (2, 3) and (4,) do not broadcast")  # a ValueError that is not a CogvxError

    monkeypatch.setattr(trainer_module, "default_dataset", bug)
    result = invoke("transformer", *common, "--output-dir", str(tmp_path / "other"))
    assert result.exit_code == 1 and "error:" not in result.stderr
    assert type(result.exception) is ValueError and "do not broadcast" in str(result.exception)
    assert result.exc_info[2] is not None  # the traceback is there for the user to report


def test_train_toy_refusals_and_bars(tmp_path, monkeypatch):
    from cogvx.training.toy import build

    seen = []

    def fake_build(work, out, recipe, progress, evaluate, say):
        seen.append(progress)
        if recipe.seed == 1:
            raise TrainConfigError(f"{work} holds a build with another recipe; use a new --work folder")
        if recipe.seed == 2:
            raise FileExistsError(f"{out} exists and is not empty; choose a new folder for the toy model")
        if recipe.seed == 3:
            raise KeyError("an internal slip")
        return Path(out)

    monkeypatch.setattr(build, "build_toy", fake_build)
    common = ["toy", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "m"), "--no-eval"]
    assert invoke(*common).exit_code == 0 and isinstance(seen[-1], BarProgress)  # bars by default
    assert invoke(*common, "--no-progress").exit_code == 0 and seen[-1] is None
    assert_user_error(invoke(*common, "--seed", "1"), "another recipe")
    assert_user_error(invoke(*common, "--seed", "2"), "not empty")
    internal = invoke(*common, "--seed", "3")
    assert internal.exit_code == 1 and isinstance(internal.exception, KeyError)
    assert not isinstance(internal.exception, CogvxError)


def test_the_trainer_draws_bars_only_through_the_cli(tmp_path, run_file, monkeypatch):
    monkeypatch.setattr(trainer_module, "default_dataset", lambda config, stage: worker.SyntheticLatents(stage))
    common = ["transformer", "--config", str(run_file), "--device", "cpu"]
    shown = invoke(*common, "--output-dir", str(tmp_path / "a"))
    assert shown.exit_code == 0, shown.output
    assert "train transformer" in shown.stderr and "3/3" in shown.stderr and "loss=" in shown.stderr
    quiet = invoke(*common, "--output-dir", str(tmp_path / "b"), "--no-progress")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert "3 of 3" in quiet.stdout


def test_precision_choices_come_from_the_enum():
    from cogvx.training.cli import train

    option = next(p for p in train.commands["transformer"].params if p.name == "precision")
    assert list(option.type.choices) == ["fp32", "bf16"]
    refused = invoke("transformer", "--config", "x.toml", "--precision", "fp16")
    assert refused.exit_code == 2 and "'fp16' is not one of 'fp32', 'bf16'" in refused.stderr


def test_a_damaged_or_missing_training_state_is_one_error_line(tmp_path, run_file, monkeypatch):
    import torch

    monkeypatch.setattr(trainer_module, "default_dataset", lambda config, stage: worker.SyntheticLatents(stage))
    out = tmp_path / "out"
    common = ["transformer", "--config", str(run_file), "--output-dir", str(out), "--device", "cpu", "--no-progress"]
    assert invoke(*common, "--stop-at-step", "1").exit_code == 0
    state_file = out / "checkpoint-1" / "training_state.pt"
    good = state_file.read_bytes()
    state_file.write_bytes(good[: len(good) // 3])
    line = assert_user_error(invoke(*common, "--resume", "latest"))
    assert line == (f"error: {state_file} is corrupt or truncated (failed finding central directory); move checkpoint-1 "
                    f"out of {out} and start the run again (no earlier checkpoint is there)")

    class Payload:
        def __reduce__(self):
            return exec, ("raise SystemExit('the payload ran')",)

    torch.save({"step": 1, "hook": Payload()}, state_file)
    line = assert_user_error(invoke(*common, "--resume", str(out / "checkpoint-1")))
    assert line == (f"error: {state_file} holds a Python object (exec), not only tensors and numbers; it was not loaded "
                    "(unpickling it could run code) and a cogvx checkpoint never holds one, so the file was replaced or "
                    f"altered: move checkpoint-1 out of {out} and start the run again (no earlier checkpoint is there)")
    assert "weights_only" not in line

    state_file.unlink()
    line = assert_user_error(invoke(*common, "--resume", "latest"))
    assert line == (f"error: {out / 'checkpoint-1'} has no training_state.pt (the trainer's state: step, optimizer, "
                    "random streams), so it cannot continue the run; move checkpoint-1 out of "
                    f"{out} and start the run again (no earlier checkpoint is there)")


def test_a_diverging_run_is_one_error_line_and_saves_nothing(tmp_path, run_file, monkeypatch):
    monkeypatch.setattr(trainer_module, "default_dataset", lambda config, stage: worker.SyntheticLatents(stage))
    real = trainer_module.transformer_loss
    monkeypatch.setattr(trainer_module, "transformer_loss", lambda *args: real(*args) * float("nan"))
    out = tmp_path / "out"
    line = assert_user_error(invoke("transformer", "--config", str(run_file), "--output-dir", str(out),
                                    "--device", "cpu", "--no-progress"))
    assert line == ("error: TransformerTrainer diverged at global step 1 (stage 0, step 1 of 3, lr 0.003): the loss is "
                    "nan; nothing of this step was saved, no checkpoint was written yet: lower the lr and start again")
    assert list(out.glob("checkpoint-*")) == [] and list(out.glob(".checkpoint-*")) == []
