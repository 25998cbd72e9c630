"""Shape specs and profiles: parsing, checking requests, validating against a model."""

from __future__ import annotations

import pytest

from cogvx.contract.shapes import ProfileError, ShapeProfile, ShapeSpec, parse_profile
from cogvx.modeling.configs import PRESETS


def test_static_profile_from_cli():
    profile = parse_profile("49x480x720", ShapeSpec())
    assert profile.is_static and profile.opt == ShapeSpec(1, 49, 480, 720, 226)
    assert profile.opt.latent_frames() == 13
    assert parse_profile("2x9x256x256", ShapeSpec()).opt.batch == 2


def test_dynamic_profile_from_cli():
    profile = parse_profile("dynamic", ShapeSpec(), frames="9:49:49", height="256:480:768", width="256:720:1360")
    assert profile.range("frames") == (9, 49, 49)
    assert profile.range("width") == (256, 720, 1360)
    assert profile.range("batch") == (1, 1, 1)
    assert profile.dynamic_dims() == ["frames", "height", "width"]
    assert ShapeProfile.from_dict(profile.to_dict()) == profile


def test_request_outside_profile_names_dimension_and_range():
    profile = parse_profile("dynamic", ShapeSpec(), frames="9:49:49", height="256:480:768")
    profile.check(ShapeSpec(frames=17, height=256))
    with pytest.raises(ProfileError, match="frames 81 is outside this engine's profile \\(9 to 49\\)"):
        profile.check(ShapeSpec(frames=81))
    with pytest.raises(ProfileError, match="width 736 is outside this engine's profile \\(exactly 720\\)"):
        profile.check(ShapeSpec(width=736))


@pytest.mark.parametrize("arguments,message", [
    (dict(profile="dynamic", frames="49:9:49"), "frames: need min <= opt <= max \\(got 49:9:49\\)"),
    (dict(profile="49x480"), "not FRAMESxHEIGHTxWIDTH"),
    (dict(profile="dynamic", frames="9-49"), "give MIN:OPT:MAX"),
    (dict(profile="49x480x720", frames="9:49:49"), "is a range, but --profile 49x480x720 is static"),
])
def test_bad_profiles(arguments, message):
    profile = arguments.pop("profile")
    with pytest.raises(ProfileError, match=message):
        parse_profile(profile, ShapeSpec(), **arguments)


def test_profiles_validated_against_the_model():
    parse_profile("dynamic", ShapeSpec(), frames="9:49:49").validate_for(PRESETS["cogvideox-5b"])
    with pytest.raises(ProfileError, match="frames 48: frames must be 4k\\+1"):
        parse_profile("48x480x720", ShapeSpec()).validate_for(PRESETS["cogvideox-5b"])
    with pytest.raises(ProfileError, match="height 500: must be a multiple of 16"):
        parse_profile("49x500x720", ShapeSpec()).validate_for(PRESETS["cogvideox-5b"])
    with pytest.raises(ProfileError, match="takes exactly 226 text tokens"):
        parse_profile("49x480x720", ShapeSpec(text_len=100)).validate_for(PRESETS["cogvideox-2b"])
    with pytest.raises(ProfileError, match="learned positions for 480x720 only"):
        parse_profile("dynamic", ShapeSpec(), height="256:480:480").validate_for(PRESETS["cogvideox-5b-i2v"])
