"""Single-process trainers: exact resume, progressive stages, checkpoints other commands load, clear refusals."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from cogvx.modeling.checkpoint import read_state_dict
from cogvx.modeling.transformer import CogVideoXTransformer
from cogvx.modeling.vae import CogVideoXVAE
from cogvx.training.checkpoints import ResumeError
from cogvx.training.config import config_from_dict
from cogvx.training.trainer import TransformerTrainer, VAETrainer

_spec = importlib.util.spec_from_file_location("ddp_worker", Path(__file__).with_name("ddp_worker.py"))
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("full")
    result, trainer = worker.run(directory)
    return directory, result, trainer


def test_resume_reproduces_the_loss_sequence(full_run, tmp_path):
    directory, full, _ = full_run
    first, _ = worker.run(tmp_path, stop_at_step=3)
    assert first.stopped_early and first.step == 3 and (tmp_path / "checkpoint-3").is_dir()
    second, _ = worker.run(tmp_path, resume="latest")
    assert len(full.losses) == 6
    assert first.losses + second.losses == full.losses  # bit for bit
    records = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["stage"] for r in records] == [0, 0, 0, 0, 1, 1]  # progressive: 4 steps, then 2
    assert [r["lr"] for r in records] == [3e-3] * 4 + [1e-3] * 2
    assert [r["loss"] for r in records] == full.losses


def test_checkpoints_are_diffusers_transformers_with_the_trained_weights(full_run):
    directory, result, trainer = full_run
    assert sorted(p.name for p in directory.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4", "checkpoint-6"]
    assert result.checkpoint == directory / "checkpoint-6"
    loaded = CogVideoXTransformer.from_pretrained(directory / "checkpoint-6" / "transformer")
    trained = trainer.model.state_dict()
    assert max((loaded.state_dict()[k] - v).abs().max().item() for k, v in trained.items()) == 0.0
    assert loaded.config.num_layers == 1
    assert (directory / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    initial = CogVideoXTransformer.from_preset("toy", seed=3, **worker.TINY).state_dict()
    assert max((initial[k] - v).abs().max().item() for k, v in trained.items()) > 1e-3  # it did train


def test_resume_from_another_architecture_names_the_difference(full_run, tmp_path):
    directory, _, _ = full_run
    overrides = dict(worker.TINY, num_layers=2)
    with pytest.raises(ResumeError, match=r"another architecture \(num_layers: checkpoint 1, this run 2\)"):
        worker.run(directory, resume=directory / "checkpoint-3", model={"preset": "toy", "overrides": overrides})
    vae_config = config_from_dict({"output_dir": str(directory), "model": {"preset": "toy"},
                                   "stages": [{"height": 16, "width": 16, "frames": 9, "steps": 1, "lr": 1e-4}]})
    with pytest.raises(ResumeError, match="holds a transformer, not a vae"):
        VAETrainer(vae_config, lambda stage: None, resume="latest").fit()


def test_a_fresh_run_refuses_an_output_dir_with_checkpoints(full_run):
    directory, _, _ = full_run
    with pytest.raises(ResumeError, match="pass --resume latest to continue that run, or choose another output_dir"):
        worker.run(directory)


def test_packed_batches_train_like_stacked_ones(tmp_path):
    stages = [{"height": 16, "width": 16, "frames": 5, "steps": 3, "lr": 3e-3}]
    stacked, _ = worker.run(tmp_path / "stacked", stages=stages)
    packed, _ = worker.run(tmp_path / "packed", stages=stages, pack_tokens=24)  # 2 clips of 12 tokens per row
    assert max(abs(a - b) / abs(a) for a, b in zip(stacked.losses, packed.losses)) <= 1e-5


def test_text_dropout_one_drops_every_caption(tmp_path):
    result, _ = worker.run(tmp_path, text_dropout=1.0, stages=[{"height": 16, "width": 16, "frames": 5, "steps": 2, "lr": 1e-3}])
    assert [record["dropped"] for record in result.history] == [2, 2]


class SyntheticVideos(torch.utils.data.Dataset):
    """{"video": (3, T, H, W) in [-1, 1], "caption"}: a bright square on a dark background."""

    def __init__(self, stage):
        self.shape = (3, stage.frames, stage.height, stage.width)

    def __len__(self):
        return 4

    def __getitem__(self, index):
        video = torch.full(self.shape, -0.8)
        video[:, :, 2 + index:6 + index, 3:7] = 0.9
        return {"video": video, "caption": "a square"}


TINY_VAE = dict(block_out_channels=[8, 8, 8, 8], latent_channels=4, layers_per_block=1, norm_num_groups=2)


def vae_config(output_dir, **changes):
    data = {"output_dir": str(output_dir), "batch_size": 2, "seed": 1, "device": "cpu", "save_every": 2,
            "model": {"preset": "toy", "overrides": TINY_VAE},
            "vae_loss": {"kl_weight": 1e-3, "gan_start_step": 1, "discriminator_channels": 4, "discriminator_layers": 2},
            "stages": [{"height": 16, "width": 16, "frames": 9, "steps": 3, "lr": 1e-3}]}
    data.update(changes)
    return config_from_dict(data)


def test_vae_trainer_gan_late_resume_exact_and_loadable(tmp_path):
    full = VAETrainer(vae_config(tmp_path / "full"), SyntheticVideos).fit()
    records = [json.loads(line) for line in (tmp_path / "full" / "loss.jsonl").read_text().splitlines()]
    assert "gan" not in records[0] and {"gan", "gan_weight", "discriminator"} <= set(records[1])
    assert all(r["loss"] == pytest.approx(r["l1"] + 1e-3 * r["kl"] + r.get("gan_weight", 0) * r.get("gan", 0), rel=1e-5)
               for r in records)

    VAETrainer(vae_config(tmp_path / "split", stop_at_step=2), SyntheticVideos).fit()
    resumed = VAETrainer(vae_config(tmp_path / "split"), SyntheticVideos, resume="latest").fit()
    assert resumed.losses == full.losses[2:]  # discriminator and its optimizer resumed too

    vae = CogVideoXVAE.from_pretrained(tmp_path / "full" / "checkpoint-3" / "vae")
    saved = read_state_dict(tmp_path / "split" / "checkpoint-3" / "vae")
    assert max((vae.state_dict()[k] - v).abs().max().item() for k, v in saved.items()) == 0.0


def test_training_from_a_model_folder_encodes_videos_and_captions(tmp_path):
    from cogvx.models import build_random_toy

    base = build_random_toy(tmp_path / "toy")
    config = config_from_dict({
        "output_dir": str(tmp_path / "run"), "batch_size": 2, "device": "cpu", "model": {"checkpoint": str(base)},
        "stages": [{"height": 16, "width": 16, "frames": 5, "steps": 2, "lr": 1e-4}],
    })
    result = TransformerTrainer(config, SyntheticVideos).fit()
    assert len(result.losses) == 2 and all(0.0 < loss < 10.0 for loss in result.losses)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / "model_index.json").is_file() and (checkpoint / "vae").is_symlink()
    assert (checkpoint / "vae").resolve() == (base / "vae").resolve()


def test_the_cli_trains_resumes_and_summarises(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cogvx.training import trainer as trainer_module
    from cogvx.training.cli import train

    monkeypatch.setattr(trainer_module, "default_dataset", lambda config, stage: worker.SyntheticLatents(stage))
    run_file = tmp_path / "run.toml"
    run_file.write_text(
        'output_dir = "unused"\nbatch_size = 2\nseed = 3\n'
        '[model]\npreset = "toy"\noverrides = { num_layers = 1, num_attention_heads = 2, attention_head_dim = 16, '
        'in_channels = 4, out_channels = 4, text_embed_dim = 8, max_text_seq_length = 4, time_embed_dim = 16 }\n'
        '[[stages]]\nheight = 16\nwidth = 16\nframes = 5\nsteps = 3\nlr = 3e-3\n'
    )
    arguments = ["transformer", "--config", str(run_file), "--output-dir", str(tmp_path / "out"), "--device", "cpu",
                 "--no-progress"]
    first = CliRunner().invoke(train, arguments + ["--stop-at-step", "2"])
    assert first.exit_code == 0, first.output
    assert "2 of 3 (stopped early)" in first.output and "checkpoint-2" in first.output
    again = CliRunner().invoke(train, arguments)
    assert again.exit_code == 2 and again.stderr.startswith("error: ") and "pass --resume latest" in again.stderr
    resumed = CliRunner().invoke(train, arguments + ["--resume", "latest"])
    assert resumed.exit_code == 0 and "3 of 3" in resumed.output and "loss.png" in resumed.output
    logged = [json.loads(line)["step"] for line in (tmp_path / "out" / "loss.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]


# -- a diverging run stops before it saves NaN weights --------------------------------------------

def all_finite(value) -> bool:
    """Every tensor in nested dicts / lists / tuples is finite."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(all_finite(v) for v in value)
    return True


def assert_finite_checkpoints(directory: Path, component: str, names: list[str]) -> None:
    from cogvx.training.checkpoints import read_state

    assert sorted(p.name for p in directory.glob("checkpoint-*")) == names
    assert not list(directory.glob(".checkpoint-*"))  # no half-written one either
    for name in names:
        weights = read_state_dict(directory / name / component)
        state = read_state(directory / name)
        assert weights and all_finite(weights) and all_finite(state), name
        assert all_finite(state["optimizer"]["state"]) and state["optimizer"]["state"]  # Adam's moments too


def nan_on_call(function, call: int, value: float = float("nan")):
    """`function`, whose result is multiplied by `value` on its `call`-th call (1-based)."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        result = function(*args, **kwargs)
        return result * value if len(calls) == call else result
    return wrapped


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_the_run_before_any_nan_checkpoint(full_run, tmp_path, monkeypatch, value):
    from cogvx.training import trainer as trainer_module
    from cogvx.training.trainer import TrainingDivergedError

    _, full, _ = full_run
    monkeypatch.setattr(trainer_module, "transformer_loss", nan_on_call(trainer_module.transformer_loss, 5, value))
    trainer = TransformerTrainer(worker.tiny_config(tmp_path), worker.SyntheticLatents)
    with pytest.raises(TrainingDivergedError) as caught:
        trainer.fit()
    shown = "nan" if math.isnan(value) else "inf"
    assert str(caught.value) == (
        f"TransformerTrainer diverged at global step 5 (stage 1, step 1 of 2, lr 0.001): the loss is {shown}; "
        f"nothing of this step was saved, {tmp_path / 'checkpoint-4'} is the newest checkpoint (finite weights): "
        "lower the lr and continue from it with --resume latest")
    assert_finite_checkpoints(tmp_path, "transformer", ["checkpoint-3", "checkpoint-4"])
    # the optimizer never applied the step: the weights in memory are those of checkpoint-4
    saved = read_state_dict(tmp_path / "checkpoint-4" / "transformer")
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())
    records = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # no NaN row in the log
    # the checkpoints left are intact: resuming from the newest continues the run exactly
    monkeypatch.undo()
    resumed = TransformerTrainer(worker.tiny_config(tmp_path), worker.SyntheticLatents, resume="latest").fit()
    assert resumed.losses == full.losses[4:]


def test_a_huge_learning_rate_diverges_with_one_clear_error(tmp_path):
    from cogvx.training.trainer import TrainingDivergedError

    stages = [{"height": 16, "width": 16, "frames": 5, "steps": 4, "lr": 1e30, "name": "main"}]
    with pytest.raises(TrainingDivergedError) as caught:
        worker.run(tmp_path, stages=stages, save_every=1, optimizer={"grad_clip": None})
    assert str(caught.value) == (
        "TransformerTrainer diverged at global step 2 (stage 0 'main', step 2 of 4, lr 1e+30): the loss is nan; "
        f"nothing of this step was saved, {tmp_path / 'checkpoint-1'} is the newest checkpoint (finite weights): "
        "lower the lr or set optimizer.grad_clip and continue from it with --resume latest")
    assert_finite_checkpoints(tmp_path, "transformer", ["checkpoint-1"])


def test_a_diverging_discriminator_stops_the_vae_run(tmp_path, monkeypatch):
    from cogvx.training import losses
    from cogvx.training.trainer import TrainingDivergedError

    # the discriminator first trains at global step 2 (gan_start_step 1); its second step (global step 3) is NaN
    original, calls = losses.VAELoss.discriminator_loss, []

    def discriminator_loss(self, *args):
        calls.append(1)
        d_loss, parts = original(self, *args)
        return (d_loss * float("nan") if len(calls) == 2 else d_loss), parts

    monkeypatch.setattr(losses.VAELoss, "discriminator_loss", discriminator_loss)
    with pytest.raises(TrainingDivergedError) as caught:
        VAETrainer(vae_config(tmp_path), SyntheticVideos).fit()
    assert str(caught.value) == (
        "VAETrainer diverged at global step 3 (stage 0, step 3 of 3, lr 0.001): the discriminator loss is nan; "
        f"nothing of this step was saved, {tmp_path / 'checkpoint-2'} is the newest checkpoint (finite weights): "
        "lower the lr and continue from it with --resume latest")
    assert_finite_checkpoints(tmp_path, "vae", ["checkpoint-2"])
    from cogvx.training.checkpoints import read_state

    assert read_state(tmp_path / "checkpoint-2")["extra"]["discriminator"]  # the discriminator was saved, finite


# -- a corrupt, truncated, altered or missing training_state.pt -------------------------------------

@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped at step 4 with checkpoint-2 and checkpoint-4 (copy it before changing it)."""
    directory = tmp_path_factory.mktemp("stopped")
    worker.run(directory, stop_at_step=4, save_every=2)
    assert sorted(p.name for p in directory.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    return directory


def copy_run(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


class RunsCode:
    """A pickle payload: unpickling it would run `exec` (which would create the file `marker`)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def damage(file: Path, how: str) -> None:
    data = file.read_bytes()
    if how == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        file.write_bytes(b"")
    elif how == "text":
        file.write_text("step = 4\n")
    elif how == "not a state":
        torch.save({"step": 4}, file)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how, why", [
    ("truncated", "is corrupt or truncated (failed finding central directory)"),
    ("empty", "is corrupt or truncated (it is empty or ends early)"),
    ("text", "is corrupt or truncated (it is not a file torch.save wrote)"),
    ("not a state", "is not a cogvx training state (no component, stage, stage_step, optimizer, ranks, extra)"),
])
def test_a_damaged_training_state_is_a_resume_error_naming_the_file(full_run, stopped_run, tmp_path, how, why):
    _, full, _ = full_run
    directory = copy_run(stopped_run, tmp_path / "run")
    damage(directory / "checkpoint-4" / "training_state.pt", how)
    with pytest.raises(ResumeError) as caught:
        worker.run(directory, resume="latest")
    assert str(caught.value) == (
        f"{directory / 'checkpoint-4' / 'training_state.pt'} {why}; move checkpoint-4 out of {directory} to continue "
        f"from checkpoint-2 with --resume latest (or pass --resume {directory / 'checkpoint-2'})")
    with pytest.raises(ResumeError) as named:  # the same from an explicit --resume
        worker.run(directory, resume=directory / "checkpoint-4")
    assert str(named.value) == str(caught.value)
    # the advice works: without the damaged folder, the run continues exactly from checkpoint-2
    (directory / "checkpoint-4").rename(tmp_path / "damaged-checkpoint-4")
    resumed, _ = worker.run(directory, resume="latest")
    assert resumed.losses == full.losses[2:]


def test_a_pickle_payload_in_the_training_state_is_refused_unloaded(stopped_run, tmp_path):
    from cogvx.training.checkpoints import read_state

    directory = copy_run(stopped_run, tmp_path / "run")
    state_file = directory / "checkpoint-4" / "training_state.pt"
    marker = tmp_path / "the-payload-ran"
    state = torch.load(state_file, weights_only=True)
    torch.save({**state, "extra": {"hook": RunsCode(marker)}}, state_file)
    with pytest.raises(ResumeError) as caught:
        worker.run(directory, resume="latest")
    message = str(caught.value)
    assert message == (
        f"{state_file} holds a Python object (exec), not only tensors and numbers; it was not loaded "
        "(unpickling it could run code) and a cogvx checkpoint never holds one, so the file was replaced or altered: "
        f"move checkpoint-4 out of {directory} to continue from checkpoint-2 with --resume latest "
        f"(or pass --resume {directory / 'checkpoint-2'})")
    assert "weights_only" not in message and "False" not in message and "\n" not in message
    assert not marker.exists()  # never unpickled
    with pytest.raises(ResumeError):
        read_state(directory / "checkpoint-4")  # the Python API refuses it the same way
    assert not marker.exists()


def test_a_missing_training_state_beside_a_checkpoint_is_refused(stopped_run, tmp_path):
    directory = copy_run(stopped_run, tmp_path / "run")
    (directory / "checkpoint-4" / "training_state.pt").unlink()
    with pytest.raises(ResumeError) as caught:
        worker.run(directory, resume="latest")  # not silently from checkpoint-2 (whose run would overwrite -4)
    assert str(caught.value) == (
        f"{directory / 'checkpoint-4'} has no training_state.pt (the trainer's state: step, optimizer, random "
        f"streams), so it cannot continue the run; move checkpoint-4 out of {directory} to continue from "
        f"checkpoint-2 with --resume latest (or pass --resume {directory / 'checkpoint-2'})")
    with pytest.raises(ResumeError, match="already holds checkpoint-4; pass --resume latest"):
        worker.run(directory)  # nor does a fresh run start over it
    assert (directory / "checkpoint-4" / "transformer" / "config.json").is_file()  # left as it was
