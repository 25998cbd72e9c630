"""Property-based tests (hypothesis) of what users type and what files hold.

- profile syntax: any string or triple either parses to a profile whose min <= opt <= max holds in
  every dimension with positive values (and which round-trips through to_dict / from_dict and JSON),
  or is refused with a ProfileError, never another exception;
- the manifest loader: random mutations of a valid manifest.json either load or are refused with an
  EngineDirectoryError, and a loaded manifest never lists a file outside its directory;
- the CLI's numeric options: values that must be refused exit 2 with one `error:` line (or click's
  usage error) before any model is loaded.

The inputs that once escaped as other exceptions (a superscript digit, a 5000-digit number, a NUL
byte in a file name, a graph that is a list, JSON nested 100,000 deep, a seed beyond 64 bits) have
a test of their own below.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from cogvx.contract.manifest import EngineDirectoryError, Manifest, StageRecord, file_sha256
from cogvx.contract.shapes import DIMENSIONS, ProfileError, ShapeProfile, ShapeSpec, parse_profile
from cogvx.modeling.configs import PRESETS

# moderate and reproducible: no example database written into the tree, no per-example deadline
PROPERTY = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
DEFAULT = ShapeSpec(1, 49, 480, 720, 226)

# -- profile syntax -----------------------------------------------------------------------------------


def assert_profile(profile: ShapeProfile) -> None:
    """The invariants every profile a user can make holds."""
    assert isinstance(profile, ShapeProfile)
    for dim in DIMENSIONS:
        low, mid, high = profile.range(dim)
        assert all(type(v) is int for v in (low, mid, high)), (dim, low, mid, high)
        assert 1 <= low <= mid <= high, (dim, low, mid, high)
    again = ShapeProfile.from_dict(json.loads(json.dumps(profile.to_dict())))  # as a manifest stores it
    assert again == profile and again.is_static == profile.is_static


numbers = st.one_of(st.integers(-5, 2000), st.integers(-10**30, 10**30), st.sampled_from([0, 1, 10**12]))
spacing = st.sampled_from(["", " ", "  ", "\t"])
# inputs that parse, so that the properties check parsed profiles as often as refusals
good_triples = st.lists(st.integers(1, 2000), min_size=3, max_size=3).map(lambda v: ":".join(map(str, sorted(v))))
good_shapes = st.lists(st.integers(1, 2000), min_size=3, max_size=4).map(lambda v: "x".join(map(str, v)))


@st.composite
def triples(draw) -> str:
    """MIN:OPT:MAX or one number, as typed: random ints (negative, zero, huge), spaces, odd separators."""
    values = draw(st.lists(numbers, min_size=1, max_size=4))
    separator = draw(st.sampled_from([":", ":", ":", ",", "::", "x"]))
    pad = draw(spacing)
    return separator.join(f"{pad}{v}{pad}" for v in values)


@st.composite
def static_shapes(draw) -> str:
    """FxHxW or BxFxHxW with random ints, sometimes with another separator or padding."""
    values = draw(st.lists(numbers, min_size=2, max_size=5))
    separator = draw(st.sampled_from(["x", "x", "X", "*", "x "]))
    return draw(spacing) + separator.join(map(str, values)) + draw(spacing)


@PROPERTY
@given(text=st.one_of(st.text(max_size=40), static_shapes(), good_shapes))
def test_shape_syntax_parses_or_is_a_profile_error(text):
    try:
        spec = ShapeSpec.parse(text, text_len=DEFAULT.text_len)
    except ProfileError:
        event("refused")
        return
    event("parsed")
    numbers_written = [int(n) for n in text.strip().split("x")]
    assert [spec.frames, spec.height, spec.width] == numbers_written[-3:]  # the numbers as written
    assert spec.batch == (numbers_written[0] if len(numbers_written) == 4 else 1)
    try:
        profile = ShapeProfile.static(spec)
    except ProfileError:
        assert min(spec.batch, spec.frames, spec.height, spec.width) < 1  # refused only for a value < 1
        return
    assert_profile(profile)


@PROPERTY
@given(profile=st.one_of(st.just("dynamic"), good_shapes, static_shapes(), st.text(max_size=20)),
       ranges=st.dictionaries(st.sampled_from(DIMENSIONS),
                              st.one_of(good_triples, st.integers(1, 2000).map(str), triples(), st.text(max_size=12)),
                              max_size=3))
def test_profile_options_parse_or_are_a_profile_error(profile, ranges):
    try:
        parsed = parse_profile(profile, DEFAULT, **ranges)
    except ProfileError:
        event("refused")
        return
    event("parsed")
    assert_profile(parsed)
    # the reference: the numbers as written, the default for a dimension not given
    written = {dim: tuple(int(v) for v in text.split(":")) for dim, text in ranges.items()
               if profile != "dynamic" or text}  # dynamic: an empty range means the default
    expected = {dim: (values * 3 if len(values) == 1 else values) for dim, values in written.items()}
    if profile == "dynamic":
        for dim in DIMENSIONS:
            assert parsed.range(dim) == expected.get(dim, (getattr(DEFAULT, dim),) * 3), dim
    else:  # FxHxW as written, a dimension given on its own (one number) replacing it
        spec = ShapeSpec.parse(profile, batch=DEFAULT.batch, text_len=DEFAULT.text_len)
        spec = dataclasses.replace(spec, **{dim: values[0] for dim, values in expected.items()})
        assert parsed.is_static and parsed.opt == spec


@PROPERTY
@given(frames=st.integers(1, 10**6), height=st.integers(1, 10**6), width=st.integers(1, 10**6),
       batch=st.one_of(st.none(), st.integers(1, 64)))
def test_a_static_profile_round_trips(frames, height, width, batch):
    text = f"{'' if batch is None else f'{batch}x'}{frames}x{height}x{width}"
    profile = parse_profile(text, DEFAULT)
    assert profile.is_static and profile.opt == ShapeSpec(batch or 1, frames, height, width, DEFAULT.text_len)
    assert ShapeProfile.from_dict(profile.to_dict()) == profile
    assert_profile(profile)


def test_refused_superscript_digit_in_a_range():
    with pytest.raises(ProfileError):
        parse_profile("dynamic", DEFAULT, frames="²")


def test_refused_a_number_of_5000_digits():
    with pytest.raises(ProfileError):
        ShapeSpec.parse("1" * 5000 + "x480x720")


# -- the manifest loader ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory) -> Path:
    """A small valid engine directory (as tests/contract/test_manifest.py makes it) plus a file outside it."""
    directory = tmp_path_factory.mktemp("engines")
    (directory / "transformer.onnx").write_bytes(b"graph bytes")
    (directory / "sub").mkdir()
    (directory / "sub" / "weights.bin").write_bytes(b"weights")
    (directory.parent / "outside.onnx").write_bytes(b"not yours")
    record = StageRecord(component="transformer", key="k", dtype="fp32",
                         profile=ShapeProfile.static(ShapeSpec(1, 17, 64, 64, 32)).to_dict(),
                         files={"transformer.onnx": file_sha256(directory / "transformer.onnx"),
                                "sub/weights.bin": file_sha256(directory / "sub" / "weights.bin")},
                         graphs={"main": "transformer.onnx"})
    model = PRESETS["toy"]
    configs = {part: getattr(model, part).to_dict() for part in ("transformer", "vae", "scheduler", "text_encoder")}
    Manifest(model="toy", configs=configs, sources={}, tools={"torch": "2"}, opset=20,
             stages={"transformer": record}).save(directory)
    Manifest.load(directory)  # valid as written
    return directory


SHA = "0" * 64
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(json_leaves, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)), max_leaves=8)
file_names = st.one_of(
    st.sampled_from(["..", "../outside.onnx", "../../etc/passwd", "/etc/passwd", "/", ".", "", "./", "sub",
                     "sub/..", "sub/../../outside.onnx", "transformer.onnx/..", "a\x00b", "transformer.onnx\x00",
                     "x" * 300, "/".join(["d" * 200] * 30), "~", "~/x", "\\..\\x", "C:\\x", "sub//weights.bin",
                     "./transformer.onnx", "sub/../transformer.onnx", "transformer.onnx "]),
    st.text(max_size=30),
    st.lists(st.sampled_from(["..", ".", "sub", "x", "", "/"]), min_size=1, max_size=6).map("/".join),
)


def paths_in(value, prefix=()) -> list[tuple]:
    """Every key path in a JSON tree (the root is ())."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths_in(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths_in(child, prefix + (index,))
    return found


def at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def mutate(manifest: dict, data) -> None:
    """One random change: delete a key, replace a value (another type, a random JSON value), add a key,
    or list a random file name (in files, or as a graph)."""
    action = data.draw(st.sampled_from(["delete", "replace", "retype", "add", "file", "graph"]))
    stages = manifest.get("stages")
    records = [r for r in stages.values() if isinstance(r, dict)] if isinstance(stages, dict) else []
    if action in ("file", "graph") and records:
        record = data.draw(st.sampled_from(records))
        name = data.draw(file_names)
        digest = data.draw(st.one_of(st.just(SHA), st.text(max_size=70), json_leaves))
        if action == "file" or not isinstance(record.get("graphs"), dict):
            if isinstance(record.get("files"), dict):
                record["files"][name] = digest
        else:
            record["graphs"][data.draw(st.text(max_size=8))] = name
            if data.draw(st.booleans()) and isinstance(record.get("files"), dict):
                record["files"][name] = SHA  # listed and hashed: only its place can refuse it
        return
    path = data.draw(st.sampled_from(paths_in(manifest)))
    target = at(manifest, path)
    if action == "add" and isinstance(target, dict):
        target[data.draw(st.text(max_size=10))] = data.draw(json_values)
        return
    if not path:
        return
    parent, key = at(manifest, path[:-1]), path[-1]
    if action == "delete":
        del parent[key]
    elif action == "retype":
        parent[key] = {"str": str(target), "int": 1, "float": 1.5, "list": [target], "dict": {"v": target},
                       "null": None, "bool": True}[data.draw(st.sampled_from(["str", "int", "float", "list", "dict",
                                                                                "null", "bool"]))]
    else:
        parent[key] = data.draw(json_values)


def assert_inside(directory: Path, manifest: Manifest) -> None:
    root = directory.resolve()
    for record in manifest.stages.values():
        for name in [*record.files, *record.graphs.values()]:
            resolved = (root / name).resolve()
            assert root in resolved.parents, (name, resolved)


@settings(PROPERTY, max_examples=200)
@given(data=st.data())
def test_a_mutated_manifest_loads_or_is_an_engine_directory_error(engine_dir, data):
    original = json.loads((engine_dir / "manifest.json").read_text())
    manifest = copy.deepcopy(original)
    for _ in range(data.draw(st.integers(1, 3))):
        mutate(manifest, data)
    (engine_dir / "manifest.json").write_text(json.dumps(manifest))
    try:
        loaded = Manifest.load(engine_dir)
    except EngineDirectoryError:
        event("refused")
        return
    finally:
        (engine_dir / "manifest.json").write_text(json.dumps(original))
    event("loaded")
    assert_inside(engine_dir, loaded)


@settings(PROPERTY, max_examples=100)
@given(cut=st.integers(0, 10**6), noise=st.binary(max_size=64))
def test_a_truncated_or_noisy_manifest_is_an_engine_directory_error(engine_dir, cut, noise):
    text = (engine_dir / "manifest.json").read_bytes()
    damaged = text[: cut % len(text)] + noise
    assume(damaged != text)
    try:
        (engine_dir / "manifest.json").write_bytes(damaged)
        try:
            loaded = Manifest.load(engine_dir)
        except EngineDirectoryError:
            return
        assert_inside(engine_dir, loaded)  # noise that still reads as the same JSON (e.g. trailing spaces)
    finally:
        (engine_dir / "manifest.json").write_bytes(text)


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/passwd", "sub/../../outside.onnx", "..", "sub/..", "."])
def test_a_name_outside_or_not_a_file_is_refused(engine_dir, name):
    """The property's `assert_inside` has something to catch: these must never load."""
    original = (engine_dir / "manifest.json").read_text()
    manifest = json.loads(original)
    manifest["stages"]["transformer"]["files"][name] = SHA
    try:
        (engine_dir / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(EngineDirectoryError, match="not a file inside"):
            Manifest.load(engine_dir)
    finally:
        (engine_dir / "manifest.json").write_text(original)


@pytest.mark.parametrize("change", [
    lambda m: m["stages"]["transformer"]["files"].update({"a\x00b": SHA}),  # once: ValueError from resolve()
    lambda m: m["stages"]["transformer"]["graphs"].update(main=["transformer.onnx"]),  # once: TypeError
], ids=["nul byte in a file name", "a graph that is a list"])
def test_refused_a_hostile_manifest_entry(engine_dir, change):
    original = (engine_dir / "manifest.json").read_text()
    manifest = json.loads(original)
    change(manifest)
    try:
        (engine_dir / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(EngineDirectoryError):
            Manifest.load(engine_dir)
    finally:
        (engine_dir / "manifest.json").write_text(original)


# -- the CLI's numeric options ------------------------------------------------------------------------

class ModelLoaded(AssertionError):
    """Raised by the stubbed loaders: a refusal must come before any model is loaded."""


@pytest.fixture(scope="module")
def no_model_loads():
    """Every way `generate` / `validate` load a model raises ModelLoaded (and is counted)."""
    from cogvx.runtime.pipeline import CogVideoXPipeline

    calls = []

    def loader(name):
        def load(*args, **kwargs):
            calls.append(name)
            raise ModelLoaded(f"{name} was called: the input should have been refused before")
        return classmethod(lambda cls, *args, **kwargs: load(*args, **kwargs))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CogVideoXPipeline, "from_pretrained", loader("from_pretrained"))
        patch.setattr(CogVideoXPipeline, "from_engines", loader("from_engines"))
        yield calls


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


def parses(kind, text: str) -> bool:
    try:
        kind(text)
    except (ValueError, OverflowError):
        return False
    return True


def invoke(*arguments: str):
    from cogvx.cli import main

    return CliRunner().invoke(main, list(arguments))


THRESHOLD_NAMES = ("cosine", "sqnr", "psnr")
non_finite = st.sampled_from(["nan", "NaN", "-nan", "inf", "+inf", "-inf", "Infinity", "-Infinity", " inf ",
                              "1e400", "-1e999", "9" * 400])
not_a_number = st.text(max_size=12).filter(lambda v: not parses(float, v))


@st.composite
def bad_thresholds(draw) -> str:
    kind = draw(st.sampled_from(["non-finite", "not a number", "unknown name", "no value"]))
    name = draw(st.sampled_from(THRESHOLD_NAMES))
    if kind == "non-finite":
        return f"{name}={draw(non_finite)}"
    if kind == "not a number":
        return f"{name}={draw(not_a_number)}"
    if kind == "unknown name":
        return f"{draw(st.text(max_size=10).filter(lambda n: n not in THRESHOLD_NAMES))}={draw(st.text(max_size=6))}"
    return draw(st.sampled_from([name, f"{name}=", "="]))


@settings(PROPERTY, max_examples=120)
@given(item=bad_thresholds())
def test_validate_refuses_a_bad_threshold_in_one_line_before_loading(no_model_loads, out_dir, item):
    no_model_loads.clear()
    result = invoke("validate", "--engines", str(out_dir / "no-engines"), "--report", str(out_dir / "report"),
                    "--threshold", "psnr=30", f"--threshold={item}")
    assert result.exit_code == 2, (item, result.output, result.exception)
    assert result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.rstrip("\n")], result.stderr  # exactly one line
    assert result.stderr.startswith(f"error: --threshold {item!r}: "), result.stderr
    assert no_model_loads == []
    assert not (out_dir / "report").exists()


GENERATE = ("generate", "--prompt", "a red square moving right")
COUNTS = {"--frames": int, "--height": int, "--width": int, "--steps": int, "--seed": int, "--guidance": float}


@settings(PROPERTY, max_examples=100)
@given(option=st.sampled_from(sorted(COUNTS)), value=st.text(max_size=12))
def test_generate_refuses_a_non_number_as_a_usage_error_before_loading(no_model_loads, out_dir, option, value):
    assume(not parses(COUNTS[option], value))
    no_model_loads.clear()
    result = invoke(*GENERATE, "--out", str(out_dir / "never.mp4"), f"{option}={value}")
    assert result.exit_code == 2, (option, value, result.output, result.exception)
    assert f"Error: Invalid value for '{option}'" in result.stderr
    assert no_model_loads == [] and not (out_dir / "never.mp4").exists()


def must_refuse(option: str):
    """Values of `option` that no run can use."""
    if option == "--frames":  # 4k+1 >= 1; a million frames is no video any model makes
        return st.one_of(st.integers(max_value=0), st.integers(2, 10**4).filter(lambda f: (f - 1) % 4),
                         st.integers(10**6, 10**30).map(lambda f: 4 * f + 1))
    if option in ("--height", "--width"):  # positive multiples of 16
        return st.one_of(st.integers(max_value=0), st.integers(1, 10**4).filter(lambda v: v % 16),
                         st.integers(10**6, 10**30).map(lambda v: 16 * v))
    if option == "--steps":
        return st.one_of(st.integers(max_value=0), st.integers(10**7, 10**30))
    if option == "--seed":  # torch generators take seeds in [-2**63, 2**64)
        return st.one_of(st.integers(2**64, 2**200), st.integers(-2**200, -2**63 - 1))
    assert option == "--guidance"
    return st.one_of(non_finite, st.floats(max_value=-1e-9, allow_infinity=False).map(repr))


def assert_refused_before_loading(no_model_loads, out_dir, option: str, value) -> None:
    no_model_loads.clear()
    result = invoke(*GENERATE, "--out", str(out_dir / "never.mp4"), f"{option}={value}")
    assert result.exit_code == 2, (option, value, result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and option.strip("-") in lines[0], result.stderr
    assert no_model_loads == [] and not (out_dir / "never.mp4").exists()


@settings(PROPERTY, max_examples=100)
@given(data=st.data(), option=st.sampled_from(["--frames", "--height", "--width", "--steps", "--guidance"]))
def test_generate_refuses_unusable_numbers_in_one_line_before_loading(no_model_loads, out_dir, data, option):
    assert_refused_before_loading(no_model_loads, out_dir, option, data.draw(must_refuse(option)))


@settings(PROPERTY, max_examples=20)
@given(seed=must_refuse("--seed"))
def test_refused_generate_refuses_an_out_of_range_seed_before_loading(no_model_loads, out_dir, seed):
    assert_refused_before_loading(no_model_loads, out_dir, "--seed", seed)


def test_the_stubbed_loader_is_what_generate_calls(no_model_loads, out_dir):
    """The loads the properties watch for are the ones generate really makes (else they prove nothing)."""
    no_model_loads.clear()
    result = invoke(*GENERATE, "--out", str(out_dir / "ok.mp4"), "--steps", "1")
    assert isinstance(result.exception, ModelLoaded) and no_model_loads == ["from_pretrained"]


def test_refused_deeply_nested_json(engine_dir):
    original = (engine_dir / "manifest.json").read_text()
    try:
        (engine_dir / "manifest.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
        with pytest.raises(EngineDirectoryError):
            Manifest.load(engine_dir)
    finally:
        (engine_dir / "manifest.json").write_text(original)
