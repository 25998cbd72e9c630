"""`export_engines`: the engine directory, its manifest, content-keyed reuse, and every refusal."""

from __future__ import annotations

import errno
import json
import shutil

import onnx
import pytest

from cogvx.contract.manifest import EngineDirectoryError, Manifest, file_sha256, folder_fingerprint
from cogvx.contract.shapes import ProfileError, ShapeProfile, ShapeSpec, parse_profile
from cogvx.engines.export_dir import export_engines
from cogvx.modeling.configs import TransformerConfig
from cogvx.runtime.onnxruntime_backend import onnxruntime_stages
from cogvx.runtime.pipeline import CogVideoXPipeline

SPEC = ShapeSpec(batch=1, frames=9, height=64, width=64, text_len=7)  # the tiny models read 7 tokens


@pytest.fixture(scope="module")
def engines(tiny_checkpoint, tmp_path_factory):
    checkpoint = tiny_checkpoint("5b")
    out = tmp_path_factory.mktemp("engines") / "toy-5b"
    results = export_engines(checkpoint, out, ["text_encoder", "transformer"], ShapeProfile.static(SPEC))
    return checkpoint, out, results


def test_manifest_records_what_was_built(engines):
    checkpoint, out, results = engines
    assert [r.reused for r in results] == [False, False]
    manifest = Manifest.load(out)
    assert set(manifest.stages) == {"text_encoder", "transformer"}
    for record in manifest.stages.values():
        for name, digest in record.files.items():
            assert file_sha256(out / name) == digest
        assert ShapeProfile.from_dict(record.profile) == ShapeProfile.static(SPEC)
    assert manifest.stages["text_encoder"].dtype == "fp32" and manifest.opset == 20
    assert manifest.configs["transformer"] == TransformerConfig.from_file(checkpoint / "transformer").to_dict()
    # every folder of the checkpoint is fingerprinted: the directory belongs to this one checkpoint
    assert manifest.sources == {folder: folder_fingerprint(checkpoint / folder)
                                for folder in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")}
    assert (out / "tokenizer").is_dir()  # the engine directory runs without the checkpoint
    tokenizer_files = [name for name in manifest.stages["text_encoder"].files if name.startswith("tokenizer/")]
    assert tokenizer_files and all((out / name).is_file() for name in tokenizer_files)  # hashed like the graphs
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # nothing temporary left


def test_same_export_again_is_reused(engines):
    checkpoint, out, _ = engines
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")}
    results = export_engines(checkpoint, out, ["text_encoder", "transformer"], ShapeProfile.static(SPEC))
    assert [r.reused for r in results] == [True, True]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")} == before


def test_corrupt_graph_is_caught_by_the_manifest(engines, tmp_path):
    _, out, _ = engines
    copy = tmp_path / "engines"
    shutil.copytree(out, copy)
    graph = copy / "transformer.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])  # truncated
    with pytest.raises(EngineDirectoryError, match="transformer.onnx does not match the manifest"):
        onnxruntime_stages(copy)
    graph.unlink()
    with pytest.raises(EngineDirectoryError, match="transformer.onnx is missing"):
        onnxruntime_stages(copy)


def test_another_models_engines_are_refused_unless_forced(engines, tiny_checkpoint, tmp_path):
    _, out, _ = engines
    copy = tmp_path / "engines"
    shutil.copytree(out, copy)
    other = tiny_checkpoint("2b")
    with pytest.raises(EngineDirectoryError, match="holds engines of another model.*--force"):
        export_engines(other, copy, ["transformer"], ShapeProfile.static(SPEC))
    assert Manifest.load(copy).stages.keys() == {"text_encoder", "transformer"}  # untouched
    export_engines(other, copy, ["transformer"], ShapeProfile.static(SPEC), force=True)
    manifest = Manifest.load(copy)
    assert set(manifest.stages) == {"transformer"} and not (copy / "text_encoder.onnx").exists()
    assert manifest.configs["transformer"] == TransformerConfig.from_file(other / "transformer").to_dict()
    assert manifest.sources["transformer"] == folder_fingerprint(other / "transformer")


def test_a_directory_holds_one_checkpoint(engines, tiny_checkpoint, tmp_path):
    """Another checkpoint of the same architecture (other weights) cannot add its components, and a
    --model beside the engines must be the checkpoint they came from (weights, not only configs)."""
    checkpoint, out, _ = engines
    copy, other = tmp_path / "engines", tmp_path / "other"
    shutil.copytree(out, copy)
    shutil.copytree(checkpoint, other)
    (other / "vae" / "config.json").write_text((other / "vae" / "config.json").read_text() + "\n")  # same config
    with pytest.raises(EngineDirectoryError, match="different weights in vae"):
        export_engines(other, copy, ["vae_decoder"], ShapeProfile.static(SPEC))
    assert set(Manifest.load(copy).stages) == {"text_encoder", "transformer"}
    with pytest.raises(EngineDirectoryError, match="vae is not the vae these engines were exported from"):
        CogVideoXPipeline.from_engines(copy, other)
    CogVideoXPipeline.from_engines(copy, checkpoint)  # the right checkpoint is accepted


def test_tampered_tokenizer_is_caught(engines, tmp_path):
    _, out, _ = engines
    copy = tmp_path / "engines"
    shutil.copytree(out, copy)
    name = next(n for n in Manifest.load(copy).stages["text_encoder"].files if n.startswith("tokenizer/"))
    (copy / name).write_bytes((copy / name).read_bytes() + b" ")
    with pytest.raises(EngineDirectoryError, match=f"{name} does not match the manifest"):
        onnxruntime_stages(copy)


@pytest.mark.parametrize("planted", ["../victim.txt", "ABSOLUTE"])
def test_a_manifest_cannot_reach_outside_its_directory(engines, tmp_path, planted):
    """A manifest listing a path outside the directory: --force deletes nothing, loading refuses."""
    checkpoint, out, _ = engines
    copy = tmp_path / "engines"
    shutil.copytree(out, copy)
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file")
    planted = str(victim) if planted == "ABSOLUTE" else planted
    manifest_path = copy / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["stages"]["transformer"]["files"][planted] = file_sha256(victim)
    data["configs"]["transformer"]["num_layers"] += 1  # "another model": the export would replace it
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(EngineDirectoryError, match="not a file inside"):
        onnxruntime_stages(copy)
    with pytest.raises(EngineDirectoryError, match="not a file inside"):
        export_engines(checkpoint, copy, ["text_encoder"], ShapeProfile.static(SPEC))
    # not even --force obeys a planted manifest: nothing it lists is deleted
    with pytest.raises(EngineDirectoryError, match="nothing it lists was touched"):
        export_engines(checkpoint, copy, ["text_encoder"], ShapeProfile.static(SPEC), force=True)
    assert victim.read_text() == "the user's own file"
    assert (copy / "text_encoder.onnx").is_file() and (copy / "transformer.onnx").is_file()


def test_force_recovers_a_damaged_manifest_without_deleting(engines, tmp_path):
    checkpoint, out, _ = engines
    copy = tmp_path / "engines"
    shutil.copytree(out, copy)
    data = json.loads((copy / "manifest.json").read_text())
    del data["configs"]  # damaged, not planted
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineDirectoryError, match="has no 'configs'.*--force"):
        export_engines(checkpoint, copy, ["text_encoder"], ShapeProfile.static(SPEC))
    export_engines(checkpoint, copy, ["text_encoder"], ShapeProfile.static(SPEC), force=True)
    assert set(Manifest.load(copy).stages) == {"text_encoder"}
    assert (copy / "transformer.onnx").is_file()  # listed by the damaged manifest: not deleted


def test_bad_requests_are_refused_before_any_work(tiny_checkpoint, tmp_path):
    checkpoint = tiny_checkpoint("5b")
    out = tmp_path / "engines"
    static = ShapeProfile.static(SPEC)
    with pytest.raises(EngineDirectoryError, match="unknown components.*choose from"):
        export_engines(checkpoint, out, ["unet"], static)
    partial = tmp_path / "no-text"
    shutil.copytree(checkpoint, partial, ignore=shutil.ignore_patterns("text_encoder"))
    with pytest.raises(EngineDirectoryError, match="has no text_encoder/ folder"):
        export_engines(partial, out, ["text_encoder"], static)
    with pytest.raises(ProfileError, match="frames must be 4k\\+1"):
        export_engines(checkpoint, out, ["transformer"], ShapeProfile.static(ShapeSpec(frames=10, height=64, width=64)))
    with pytest.raises(ProfileError, match="need min <= opt <= max"):
        parse_profile("dynamic", SPEC, frames="17:9:9")
    (out / "notes.txt").parent.mkdir(parents=True, exist_ok=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(EngineDirectoryError, match="not empty and holds no manifest.json"):
        export_engines(checkpoint, out, ["transformer"], static)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_disk_full_mid_export_leaves_nothing_that_looks_complete(tiny_checkpoint, tmp_path, monkeypatch):
    checkpoint = tiny_checkpoint("5b")
    out = tmp_path / "engines"
    real_save = onnx.save_model

    def full_disk(model, path, *args, **kwargs):
        real_save(model, path, *args, **kwargs)
        with open(path, "r+b") as handle:  # half the bytes made it, then the disk filled up
            handle.truncate(max(1, handle.seek(0, 2) // 2))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_engines(checkpoint, out, ["text_encoder", "transformer"], ShapeProfile.static(SPEC))
    assert not list(out.glob("*.onnx")) and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert Manifest.load(out).stages == {}  # the manifest lists nothing that was not finished
    monkeypatch.setattr(onnx, "save_model", real_save)
    results = export_engines(checkpoint, out, ["text_encoder"], ShapeProfile.static(SPEC))
    assert [r.reused for r in results] == [False] and [p.name for p in out.glob("*.onnx")] == ["text_encoder.onnx"]


def test_concurrent_exports_into_one_directory_are_serialized(tiny_checkpoint, tmp_path):
    """Two exports at once into one folder: the second waits for the first's lock, then extends its
    manifest, so both stages are recorded and both graphs verify."""
    import threading

    checkpoint = tiny_checkpoint("5b")
    out = tmp_path / "engines"
    errors = []

    def export(component):
        try:
            export_engines(checkpoint, out, [component], ShapeProfile.static(SPEC))
        except Exception as error:  # reported below with the other thread's outcome
            errors.append(error)

    threads = [threading.Thread(target=export, args=(c,)) for c in ("text_encoder", "transformer")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    manifest = Manifest.load(out)
    assert set(manifest.stages) == {"text_encoder", "transformer"}
    manifest.verify(out)


def test_a_refused_export_leaves_no_folder_behind(tiny_checkpoint, tmp_path):
    with pytest.raises(EngineDirectoryError, match="unknown components"):
        export_engines(tiny_checkpoint("5b"), tmp_path / "new", ["unet"], ShapeProfile.static(SPEC))
    with pytest.raises(ProfileError, match="frames must be 4k\\+1"):
        export_engines(tiny_checkpoint("5b"), tmp_path / "new", ["transformer"],
                       ShapeProfile.static(ShapeSpec(frames=10, height=64, width=64)))
    assert not (tmp_path / "new").exists()
