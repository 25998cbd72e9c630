"""Opening an engine directory: manifest.json checked key by key, paths kept inside the directory."""

from __future__ import annotations

import json

import pytest

from cogvx.contract.manifest import EngineDirectoryError, Manifest, StageRecord, file_sha256
from cogvx.contract.shapes import ShapeProfile, ShapeSpec
from cogvx.modeling.configs import PRESETS


@pytest.fixture
def directory(tmp_path):
    """A small engine directory: one stage over one (stand-in) graph file, listed with its sha256."""
    model = PRESETS["toy"]
    (tmp_path / "transformer.onnx").write_bytes(b"graph bytes")
    record = StageRecord(component="transformer", key="k", dtype="fp32",
                         profile=ShapeProfile.static(ShapeSpec(1, 17, 64, 64, 32)).to_dict(),
                         files={"transformer.onnx": file_sha256(tmp_path / "transformer.onnx")},
                         graphs={"main": "transformer.onnx"})
    configs = {part: getattr(model, part).to_dict() for part in ("transformer", "vae", "scheduler", "text_encoder")}
    Manifest(model="toy", configs=configs, sources={}, tools={}, opset=20,
             stages={"transformer": record}).save(tmp_path)
    return tmp_path


def edit(directory, change) -> None:
    data = json.loads((directory / "manifest.json").read_text())
    change(data)
    (directory / "manifest.json").write_text(json.dumps(data))


def test_a_good_manifest_loads_and_verifies(directory):
    manifest = Manifest.load(directory)
    manifest.verify(directory)
    assert manifest.model_config().transformer == PRESETS["toy"].transformer
    assert manifest.stages["transformer"].stage == "denoiser"


@pytest.mark.parametrize("change,message", [
    (lambda d: d.pop("configs"), "has no 'configs'"),
    (lambda d: d.update(opset="20"), "manifest.opset has the wrong type"),
    (lambda d: d.update(extra=1), "unknown keys \\['extra'\\]"),
    (lambda d: d["configs"].pop("vae"), "configs has no vae config"),
    (lambda d: d["stages"]["transformer"].pop("files"), "stages.transformer has no 'files'"),
    (lambda d: d["stages"]["transformer"].update(dtype="fp12"), "precision 'fp12' is not one of"),
    (lambda d: d["stages"]["transformer"].update(component="unet"), "names component 'unet'"),
    (lambda d: d["stages"]["transformer"]["profile"]["min"].update(frames="9"), "frames must be a whole number"),
    (lambda d: d["stages"]["transformer"]["files"].update({"x.onnx": "not-a-hash"}), "is not a sha256"),
    (lambda d: d["stages"]["transformer"]["graphs"].update(main="other.onnx"), "has no sha256 in files"),
    (lambda d: d["stages"]["transformer"]["files"].update({"../outside": "0" * 64}), "not a file inside"),
    (lambda d: d["stages"]["transformer"]["files"].update({"/etc/passwd": "0" * 64}), "not a file inside"),
    (lambda d: d["configs"]["transformer"].update(num_layers="many"), "num_layers = 'many' is not a whole number"),
])
def test_every_bad_manifest_is_one_clear_error(directory, change, message):
    edit(directory, change)
    with pytest.raises(EngineDirectoryError, match=message):
        Manifest.load(directory)


def test_non_json_numbers_and_non_objects_are_refused(directory):
    text = (directory / "manifest.json").read_text().replace('"opset": 20', '"opset": NaN')
    (directory / "manifest.json").write_text(text)
    with pytest.raises(EngineDirectoryError, match="unreadable"):
        Manifest.load(directory)
    (directory / "manifest.json").write_text("[1, 2]")
    with pytest.raises(EngineDirectoryError, match="manifest format list"):
        Manifest.load(directory)


def test_a_link_leading_out_is_refused(directory, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.onnx"
    outside.write_bytes(b"not yours")
    (directory / "linked.onnx").symlink_to(outside)
    edit(directory, lambda d: d["stages"]["transformer"]["files"].update({"linked.onnx": file_sha256(outside)}))
    with pytest.raises(EngineDirectoryError, match="not a file inside"):
        Manifest.load(directory)
