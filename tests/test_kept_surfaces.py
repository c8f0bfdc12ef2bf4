"""FaceSynthesizer.keep_surfaces: a texture or lighting edit of a view rendered before re-uses its
fast-path geometry, and the result is the render from scratch, bit for bit (issue 16: texture and
lighting drags at a fraction of a preview's cost)."""

import dataclasses

import numpy as np
import pytest

from engine.errors import CgofError
from engine.model.latent import FaceSpec
from engine.synthesizer import FaceSynthesizer

SIZE = 48
FIELDS = ("image", "depth", "mesh_depth", "mask", "normals", "evals_per_pixel", "albedo_evals_per_pixel",
          "evals_per_face_pixel", "evals_per_background_pixel", "normal_evals_per_pixel", "yaw_deg", "pitch_deg")
BASE = FaceSpec(identity={0: 1.0, 3: -0.5}, expression={1: 0.8}, texture={0: 0.5}, lighting={1: 0.3}, seed=5)


@pytest.fixture(scope="module")
def pair():
    """(kept, fresh): the default model twice, one keeping surfaces, one rendering from scratch."""
    kept, fresh = FaceSynthesizer.load(device="cpu"), FaceSynthesizer.load(device="cpu")
    kept.keep_surfaces(4)
    return kept, fresh


def _equal(a, b) -> bool:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if not (np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y):
            return False
    return True


@pytest.mark.parametrize("quality", ["preview", "fast"])
def test_texture_and_lighting_edits_reuse_the_geometry_and_match_a_render_from_scratch(pair, quality):
    kept, fresh = pair
    edits = [BASE,
             dataclasses.replace(BASE, texture={0: -1.0, 2: 0.7}),  # albedo again
             dataclasses.replace(BASE, texture={0: -1.0, 2: 0.7}, lighting={0: 0.5, 4: -0.4}),  # shading only
             dataclasses.replace(BASE, lighting={2: 1.0})]  # back to the first texture: albedo again
    before = kept.surface_reuses
    for i, spec in enumerate(edits):
        a, b = kept.render(spec, 20.0, -5.0, SIZE, quality), fresh.render(spec, 20.0, -5.0, SIZE, quality)
        assert _equal(a, b), (quality, i)
        assert a.surface_reused == (i > 0) and not b.surface_reused
    assert kept.surface_reuses == before + 3
    # the first edit's texture changed the picture: a texture edit is not a no-op that would hide a bug
    assert not np.array_equal(kept.render(edits[0], 20.0, -5.0, SIZE, quality).image,
                              kept.render(edits[1], 20.0, -5.0, SIZE, quality).image)


def test_a_batch_is_kept_as_a_whole(pair):
    kept, fresh = pair
    specs = [BASE, dataclasses.replace(BASE, seed=9)]
    kept.render_many(specs, [0.0, 15.0], [0.0, 5.0], SIZE, "preview")
    recoloured = [dataclasses.replace(s, texture={1: 1.5}, lighting={3: -0.5}) for s in specs]
    got = kept.render_many(recoloured, [0.0, 15.0], [0.0, 5.0], SIZE, "preview")
    want = fresh.render_many(recoloured, [0.0, 15.0], [0.0, 5.0], SIZE, "preview")
    assert all(g.surface_reused and _equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("change", [
    dict(spec=dict(identity={0: -1.0})), dict(spec=dict(expression={2: 1.0})), dict(spec=dict(seed=6)),
    dict(spec=dict(psi=0.7)), dict(yaw=10.0), dict(pitch=3.0), dict(size=SIZE + 16), dict(quality="fast")])
def test_anything_else_renders_from_scratch(pair, change):
    kept, fresh = pair
    kept.render(BASE, 20.0, -5.0, SIZE, "preview")
    spec = dataclasses.replace(BASE, texture={4: 2.0}, **change.get("spec", {}))
    args = (spec, change.get("yaw", 20.0), change.get("pitch", -5.0), change.get("size", SIZE),
            change.get("quality", "preview"))
    a = kept.render(*args)
    assert not a.surface_reused and _equal(a, fresh.render(*args))


def test_handed_out_arrays_do_not_share_the_kept_tensors(pair):
    kept, fresh = pair
    first = kept.render(BASE, -25.0, 10.0, SIZE, "fast")
    for arr in (first.depth, first.mesh_depth, first.normals):
        arr[...] = 7.0
    first.mask[...] = False
    again = kept.render(dataclasses.replace(BASE, lighting={5: 0.6}), -25.0, 10.0, SIZE, "fast")
    assert again.surface_reused and _equal(again, fresh.render(dataclasses.replace(BASE, lighting={5: 0.6}),
                                                               -25.0, 10.0, SIZE, "fast"))
    again.depth[...] = 3.0
    third = kept.render(dataclasses.replace(BASE, lighting={5: 0.1}), -25.0, 10.0, SIZE, "fast")
    assert third.surface_reused and _equal(third, fresh.render(dataclasses.replace(BASE, lighting={5: 0.1}),
                                                               -25.0, 10.0, SIZE, "fast"))


def test_a_replaced_render_config_is_another_geometry(pair):
    kept, fresh = pair
    kept.render(BASE, 5.0, 0.0, SIZE, "preview")
    original = kept.renderer.config
    try:
        kept.renderer.config = dataclasses.replace(original, preview_fill_depth=0.0)
        fresh.renderer.config = kept.renderer.config
        spec = dataclasses.replace(BASE, lighting={6: 0.4})
        a = kept.render(spec, 5.0, 0.0, SIZE, "preview")
        assert not a.surface_reused and _equal(a, fresh.render(spec, 5.0, 0.0, SIZE, "preview"))
    finally:
        kept.renderer.config = fresh.renderer.config = original


def test_off_by_default_never_for_the_reference_and_bounded():
    synth = FaceSynthesizer.load(device="cpu")
    synth.render(BASE, 0.0, 0.0, 32, "preview")
    assert not synth.render(BASE, 0.0, 0.0, 32, "preview").surface_reused  # off: the bench times from scratch
    synth.keep_surfaces(2)
    synth.render(BASE, 0.0, 0.0, 32, "reference")
    assert not synth.render(BASE, 0.0, 0.0, 32, "reference").surface_reused
    for yaw in (1.0, 2.0, 3.0):
        synth.render(BASE, yaw, 0.0, 32, "preview")
    assert len(synth._surfaces) == 2
    assert not synth.render(BASE, 1.0, 0.0, 32, "preview").surface_reused  # the oldest went first
    assert synth.render(BASE, 3.0, 0.0, 32, "preview").surface_reused
    synth.keep_surfaces(0)
    assert len(synth._surfaces) == 0
    for bad in (-1, 1.5, True, "4"):
        with pytest.raises(CgofError, match="keep_surfaces"):
            synth.keep_surfaces(bad)
