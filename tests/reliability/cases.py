"""Attacks and faults against the CLI, as data: each case sets up real files, runs one `cogvx`
command, and says what must come out (exit code, the one stderr line) and what must stay intact.

The same cases are the reliability tests (test_cases.py) and the table in docs/reliability.md
(`python tests/reliability/write_table.py` runs them and writes it), so the table is what the
code does, not what someone remembered.

A `World` holds the shared material: a tiny 5B checkpoint made by diffusers, a second checkpoint
of the same architecture with other weights, a tiny I2V checkpoint, and an engine directory of the
first (text encoder, transformer, streaming decoder at 9x64x64). Each case works in its own folder
and copies what it will damage.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from cogvx.cli import main

PROMPT = "a red square moving right"


@dataclass
class World:
    root: Path  # shared, read-only for the cases
    checkpoint: Path  # tiny 5B
    other: Path  # same configs, other transformer and VAE weights
    i2v: Path  # tiny 5B-I2V
    engines: Path  # engines of `checkpoint`, 9x64x64
    cache: Path  # COGVX_CACHE for the runner


@dataclass
class Case:
    name: str
    argv: Callable[[World, Path], list[str]]  # (world, the case's folder) -> cogvx arguments
    exit: int = 2
    message: str = ""  # a substring of the one `error:` line (exit 2), or of the output (other exits)
    setup: Callable[[World, Path], None] | None = None  # prepares the case's folder
    check: Callable[[World, Path], None] | None = None  # asserts what must hold afterwards
    absent: list[str] = field(default_factory=list)  # texts the error line must not contain


@dataclass
class Outcome:
    exit: int
    stderr_lines: list[str]
    output: str
    created: list[str]  # files that appeared under the case's folder
    changed: list[str]  # files under the case's folder or the world whose bytes changed


def snapshot(*folders: Path) -> dict[str, str]:
    files = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def run(case: Case, world: World, folder: Path) -> Outcome:
    folder.mkdir(parents=True, exist_ok=True)
    if case.setup:
        case.setup(world, folder)
    before = snapshot(folder, world.root)
    result = CliRunner(env={"COGVX_CACHE": str(world.cache)}).invoke(main, case.argv(world, folder))
    after = snapshot(folder, world.root)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a failed case, shown as such
    return Outcome(result.exit_code, [line for line in result.stderr.splitlines() if line.strip()], result.output,
                   sorted(set(after) - set(before)),
                   sorted(k for k in before if k in after and before[k] != after[k]) +
                   sorted(set(before) - set(after)))


# -- setups ------------------------------------------------------------------------------------------

def copy_engines(world: World, folder: Path) -> Path:
    target = folder / "E"
    shutil.copytree(world.engines, target)
    return target


def edit_manifest(folder: Path, change: Callable[[dict], None]) -> None:
    path = folder / "E" / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def plant_victims(world: World, folder: Path) -> None:
    copy_engines(world, folder)
    (folder / "victim.txt").write_text("the user's own file")
    (folder / "absolute-victim.txt").write_text("another file of the user's")

    def change(data):
        files = data["stages"]["transformer"]["files"]
        files["../victim.txt"] = files["transformer.onnx"]
        files[str(folder / "absolute-victim.txt")] = files["transformer.onnx"]
        data["configs"]["transformer"]["num_layers"] += 1  # "another model": export --force would replace it
    edit_manifest(folder, change)


def victims_intact(world: World, folder: Path) -> None:
    assert (folder / "victim.txt").read_text() == "the user's own file"
    assert (folder / "absolute-victim.txt").read_text() == "another file of the user's"


def graph_outside(world: World, folder: Path) -> None:
    copy_engines(world, folder)
    shutil.copy(folder / "E" / "transformer.onnx", folder / "elsewhere.onnx")
    edit_manifest(folder, lambda d: d["stages"]["transformer"]["graphs"].update(main="../elsewhere.onnx"))


def shuffled_tokenizer(world: World, folder: Path) -> None:
    engines = copy_engines(world, folder)
    path = engines / "tokenizer" / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    vocab[3], vocab[4] = vocab[4], vocab[3]  # two pieces swapped: still a valid tokenizer
    path.write_text(json.dumps(data))


def truncated_graph(world: World, folder: Path) -> None:
    graph = copy_engines(world, folder) / "transformer.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])


def nan_decoder(world: World, folder: Path) -> None:
    """One NaN in a decoder bias, the manifest's hash updated to match: only the numbers can tell."""
    engines = copy_engines(world, folder)
    for name in json.loads((engines / "manifest.json").read_text())["stages"]["vae_decoder"]["graphs"].values():
        model = onnx.load(engines / name)
        bias = next(t for t in model.graph.initializer if t.name.endswith("bias") and t.data_type == 1)
        values = onnx.numpy_helper.to_array(bias).copy()
        values.flat[0] = float("nan")
        bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
        onnx.save(model, engines / name)
        digest = hashlib.sha256((engines / name).read_bytes()).hexdigest()
        edit_manifest(folder, lambda d, name=name, digest=digest:
                      d["stages"]["vae_decoder"]["files"].update({name: digest}))


def model_copy(world: World, folder: Path, change: Callable[[dict], None]) -> None:
    target = folder / "model"
    shutil.copytree(world.checkpoint, target)
    config = target / "transformer" / "config.json"
    data = json.loads(config.read_text())
    change(data)
    config.write_text(json.dumps(data))


def pickled_text_encoder(world: World, folder: Path) -> None:
    """text_encoder weights as a pickle whose unpickling would run code (it would create `pwned`)."""
    target = folder / "model"
    shutil.copytree(world.checkpoint, target)
    weights = target / "text_encoder" / "model.safetensors"
    weights.unlink()

    class Payload:
        def __reduce__(self):
            return (Path.touch, (folder / "pwned",))
    (target / "text_encoder" / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": Payload()}))


def corrupt_weights(world: World, folder: Path) -> None:
    target = folder / "model"
    shutil.copytree(world.checkpoint, target)
    weights = next((target / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])


def png_video(folder: Path, frames: int) -> None:
    from cogvx.runtime.video_io import write_video
    import numpy as np

    write_video(np.full((frames, 64, 64, 3), 7, np.uint8), folder / "frames", fps=8)


def bomb_png(world: World, folder: Path) -> None:
    """A PNG whose header claims 60000 x 60000 pixels: 3.6 billion pixels from a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                      + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def other_weights(world: World, folder: Path) -> None:
    """A checkpoint with the same configs as the engines' and other weights in vae/."""
    target = folder / "model"
    shutil.copytree(world.checkpoint, target)
    weights = next((target / "vae").glob("*.safetensors"))
    state = load_file(weights)
    save_file({name: tensor * 1.01 for name, tensor in state.items()}, weights)


# -- the cases --------------------------------------------------------------------------------------

def generate(*extra: str, model: Callable[[World, Path], Path] | None = None, out: str = "out.mp4"):
    return lambda w, f: ["generate", "--model", str(model(w, f) if model else w.checkpoint), "--prompt", PROMPT,
                         "--steps", "2", "--out", str(f / out), *extra]


def generate_engines(*extra: str):
    return lambda w, f: ["generate", "--backend", "onnxruntime", "--engines", str(f / "E"), "--prompt", PROMPT,
                         "--steps", "2", "--out", str(f / "out.mp4"), *extra]


def validate(*extra: str, model: Callable[[World, Path], Path] | None = None):
    return lambda w, f: ["validate", "--model", str(model(w, f) if model else w.checkpoint), "--engines",
                         str(f / "E"), "--steps", "2", "--report", str(f / "report"), *extra]


def export(*extra: str, model: Callable[[World, Path], Path] | None = None, out: str = "E",
           profile: str = "9x64x64"):
    return lambda w, f: ["export", "--model", str(model(w, f) if model else w.checkpoint), "--out", str(f / out),
                         "--profile", profile, *extra]


def copied_model(w: World, f: Path) -> Path:
    return f / "model"


def graphs_kept(w: World, f: Path) -> None:
    assert (f / "E" / "transformer.onnx").is_file(), "--force deleted a file listed by a manifest it could not trust"


def payload_not_run(w: World, f: Path) -> None:
    assert not (f / "pwned").exists(), "the pickle's payload ran"


CASES = [
    # engine directories that must not be turned against the user
    Case("manifest lists ../victim.txt and an absolute path; export --force",
         export("--components", "text_encoder", "--force"), message="nothing it lists was touched",
         setup=plant_victims, check=victims_intact),
    Case("manifest lists ../victim.txt; generate from it", generate_engines(), message="not a file inside",
         setup=plant_victims, check=victims_intact),
    Case("graphs.main points outside the directory", generate_engines(), message="has no sha256 in files",
         setup=graph_outside),
    Case("tokenizer vocabulary shuffled", generate_engines(), message="tokenizer/tokenizer.json does not match",
         setup=shuffled_tokenizer),
    Case("truncated transformer graph", generate_engines(), message="transformer.onnx does not match the manifest",
         setup=truncated_graph),
    Case("manifest without its configs", generate_engines(), message="has no 'configs'",
         setup=lambda w, f: (copy_engines(w, f), edit_manifest(f, lambda d: d.pop("configs")))),
    Case("manifest with a mistyped opset", generate_engines(), message="manifest.opset has the wrong type",
         setup=lambda w, f: (copy_engines(w, f), edit_manifest(f, lambda d: d.update(opset="20")))),
    Case("manifest without its configs; export --force recovers it", export("--components", "text_encoder",
         "--force"), exit=0, message="text_encoder",
         setup=lambda w, f: (copy_engines(w, f), edit_manifest(f, lambda d: d.pop("configs"))), check=graphs_kept),
    Case("another checkpoint's components into the same --out",
         export("--components", "vae_decoder", model=copied_model), message="different weights in",
         setup=lambda w, f: (copy_engines(w, f), other_weights(w, f))),
    Case("generate --engines with --model of other weights (same configs)",
         lambda w, f: generate_engines("--model", str(f / "model"))(w, f),
         message="is not the vae these engines were exported from",
         setup=lambda w, f: (copy_engines(w, f), other_weights(w, f),
                             edit_manifest(f, lambda d: d["stages"].pop("vae_decoder")))),
    Case("validate against another checkpoint", validate(model=copied_model),
         message="is not the vae these engines were exported from",
         setup=lambda w, f: (copy_engines(w, f), other_weights(w, f))),
    Case("export into a non-empty folder without a manifest", export(out="mine"),
         message="holds no manifest.json",
         setup=lambda w, f: ((f / "mine").mkdir(), (f / "mine" / "notes.txt").write_text("mine"))),
    # no silent garbage
    Case("decoder graph with one NaN bias (hash updated): validate", validate(), exit=1,
         message="vae_decoder", setup=nan_decoder),
    Case("decoder graph with one NaN bias (hash updated): generate", generate_engines(),
         message="the VAE decoder (latent frames 0 to 2) gave NaN or inf", setup=nan_decoder),
    Case("--threshold psnr=nan", validate("--threshold", "psnr=nan"), message="give a finite number",
         setup=lambda w, f: copy_engines(w, f)),
    Case("--threshold sqnr=inf", validate("--threshold", "sqnr=inf"), message="give a finite number",
         setup=lambda w, f: copy_engines(w, f)),
    Case("--guidance inf", generate("--guidance", "inf"), message="guidance must be a finite number"),
    Case("--guidance nan", generate("--guidance", "nan"), message="guidance must be a finite number"),
    Case("--guidance -1", generate("--guidance", "-1"), message="guidance must be a finite number >= 0"),
    # silent defaults and sizes the machine cannot hold
    Case("--frames 0", generate("--frames", "0"), message="frames must be 4k+1 (got 0)"),
    Case("--height 0", generate("--height", "0"), message="height must be a positive multiple of 16 (got 0)"),
    Case("--frames 48", generate("--frames", "48"), message="frames must be 4k+1 (got 48); try 45 or 49"),
    Case("--frames 1000000001", generate("--frames", "1000000001"), message="frames 1000000001 is more than 8x"),
    Case("--height 100000", generate("--height", "100000"), message="height 100000 is more than 8x"),
    Case("--steps 0", generate("--steps", "0"), message="steps must be between 1 and 1000"),
    Case("--steps 100000", generate("--steps", "100000"), message="steps must be between 1 and 1000"),
    Case("num_layers: 1000000 in the transformer config",
         generate(model=copied_model),
         message="needs at least", setup=lambda w, f: model_copy(w, f, lambda d: d.update(num_layers=1000000))),
    Case("num_attention_heads: -2 in the transformer config",
         generate(model=copied_model),
         message="num_attention_heads = -2 is not a whole number >= 0",
         setup=lambda w, f: model_copy(w, f, lambda d: d.update(num_attention_heads=-2))),
    Case("num_layers: \"many\" in the transformer config",
         generate(model=copied_model),
         message="num_layers = 'many' is not a whole number",
         setup=lambda w, f: model_copy(w, f, lambda d: d.update(num_layers="many"))),
    # files
    Case("a 9-frame PNG folder over a 17-frame one", generate("--frames", "9", out="frames"), exit=0,
         message="frames",
         setup=lambda w, f: png_video(f, 17),
         check=lambda w, f: _frames_are(f / "frames", 9)),
    Case("PNG output into a folder holding other files", generate(out="mine"), message="holds other files",
         setup=lambda w, f: ((f / "mine").mkdir(), (f / "mine" / "notes.txt").write_text("mine"))),
    Case("--out in a folder that does not exist", generate(out="missing/out.mp4"),
         message="does not exist; create it first"),
    Case("--out where nothing can be written", generate("--out", "/proc/cogvx-out.mp4"),
         message="cannot write in /proc"),
    Case("--out with an unknown suffix", generate(out="out.avi"), message="use a .mp4 or .gif file"),
    Case("--image of 60000x60000 pixels (decompression bomb)", lambda w, f: [
         "generate", "--model", str(w.i2v), "--prompt", PROMPT, "--steps", "2", "--image", str(f / "bomb.png"),
         "--out", str(f / "out.mp4")], message="decompression bomb", setup=bomb_png),
    Case("--image that is not an image", lambda w, f: [
         "generate", "--model", str(w.i2v), "--prompt", PROMPT, "--steps", "2", "--image", str(f / "notes.png"),
         "--out", str(f / "out.mp4")], message="cannot read image",
         setup=lambda w, f: (f / "notes.png").write_text("not an image")),
    Case("pickle text_encoder/pytorch_model.bin with a code payload",
         generate(model=copied_model),
         message="cogvx never runs pickled code", absent=["weights_only=False"], setup=pickled_text_encoder,
         check=payload_not_run),
    Case("truncated transformer weights", generate(model=copied_model), message="corrupt or truncated",
         setup=corrupt_weights),
    # export arguments
    Case("--profile 9x64", export(profile="9x64"), message="is not FRAMESxHEIGHTxWIDTH"),
    Case("--profile 10x64x64", export(profile="10x64x64"), message="frames must be 4k+1"),
    Case("--profile dynamic --frames 17:9:9", export("--frames", "17:9:9", profile="dynamic"),
         message="need min <= opt <= max"),
    Case("--components unet", export("--components", "unet"), message="unknown components"),
]


def _frames_are(folder: Path, count: int) -> None:
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"frame_{i:04d}.png" for i in range(count)], names


def expect(case: Case, outcome: Outcome, world: World, folder: Path) -> None:
    """What every case must show: the exit code, one clear line, nothing half-written, nothing lost."""
    assert outcome.exit == case.exit, (outcome.exit, outcome.stderr_lines, outcome.output[-2000:])
    if case.exit == 2:
        assert len(outcome.stderr_lines) >= 1 and outcome.stderr_lines[-1].startswith("error: "), outcome.stderr_lines
        assert not any(line.startswith("Traceback") for line in outcome.stderr_lines)
        errors = [line for line in outcome.stderr_lines if line.startswith("error: ")]
        assert len(errors) == 1 and case.message in errors[0], errors
        assert not any(text in errors[0] for text in case.absent), errors[0]
        assert not outcome.created, outcome.created  # no partial output
        assert not outcome.changed, outcome.changed  # nothing of the user's touched
    else:
        assert case.message in outcome.output, outcome.output[-2000:]
    world_changes = [path for path in outcome.changed if path.startswith(str(world.root))]
    assert not world_changes, world_changes
    if case.check:
        case.check(world, folder)
