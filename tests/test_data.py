"""The synthetic data sets: shapes, seeds, geometry of the renderer, and the claim that the
strong test distribution is more deformed than the mild training one."""

import numpy as np
import pytest

from minidcn import data


def canonical(images_like: data.Glyphs) -> np.ndarray:
    """The same glyphs (same font and label), upright, centred, at the mild mean size."""
    n, _, size, _ = images_like.images.shape
    templates, _ = data.glyph_templates()
    upright = data.affine_matrices(np.full(n, 0.67 * size), 1.0, 0.0, 0.0, (size - 1) / 2)
    return data.render(templates[images_like.fonts, images_like.labels], upright, size)


def test_glyphs_shapes_dtypes_and_ranges():
    g = data.glyphs(300, "mild", image_size=28, seed=0)
    assert g.images.shape == (300, 1, 28, 28) and g.images.dtype == np.float32
    assert g.labels.shape == (300,) and g.labels.dtype == np.int64
    assert g.fonts.dtype == np.int64 and g.affines.shape == (300, 2, 3)
    assert 0.0 <= g.images.min() and g.images.max() <= 1.0
    assert set(np.unique(g.labels)) == set(range(10))  # every class drawn
    assert set(np.unique(g.fonts)) == set(range(len(data.FONTS)))
    ink = g.images.sum(axis=(1, 2, 3))
    assert ink.min() > 20  # no image is empty: the glyph is placed whole
    # the shift never pushes ink off the image: the border rows/columns stay dark
    border = np.concatenate([g.images[:, 0, 0], g.images[:, 0, -1], g.images[:, 0, :, 0],
                             g.images[:, 0, :, -1]], axis=1)
    assert border.max() < 0.05


def test_glyphs_are_deterministic_given_the_seed():
    a = data.glyphs(50, "strong", seed=7)
    b = data.glyphs(50, "strong", seed=np.random.default_rng(7))
    c = data.glyphs(50, "strong", seed=8)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)


def test_strong_distribution_is_more_deformed_than_mild():
    mild = data.glyphs(400, "mild", seed=1)
    strong = data.glyphs(400, "strong", seed=1)
    # parameters: the strong set reaches rotations and scales the mild one never does
    def angle(a):
        return np.degrees(np.abs(np.arctan2(a[:, 1, 0] - a[:, 0, 1], a[:, 0, 0] + a[:, 1, 1])))
    assert angle(mild.affines).max() < 15 < 40 < angle(strong.affines).max()
    # images: mean squared distance to the upright, centred glyph of the same font and label
    far_mild = ((mild.images[:, 0] - canonical(mild)) ** 2).mean()
    far_strong = ((strong.images[:, 0] - canonical(strong)) ** 2).mean()
    assert far_strong > 2.5 * far_mild, (far_mild, far_strong)


def test_render_shifts_by_whole_pixels_like_roll():
    templates, _ = data.glyph_templates()
    glyph = templates[0, 3][None]
    at_centre = data.affine_matrices([12.0], 1.0, 0.0, 0.0, [(15.5, 15.5)])
    moved = data.affine_matrices([12.0], 1.0, 0.0, 0.0, [(18.5, 13.5)])
    a = data.render(glyph, at_centre, 32)[0]
    b = data.render(glyph, moved, 32)[0]
    np.testing.assert_allclose(b, np.roll(a, (3, -2), axis=(0, 1)), atol=1e-6)


def test_rotation_is_counter_clockwise_on_screen():
    templates, _ = data.glyph_templates()
    glyph = templates[1, 7][None]
    upright = data.render(glyph, data.affine_matrices([20.0], 1.0, 0.0, 0.0, [(15.5, 15.5)]), 32)[0]
    turned = data.render(glyph, data.affine_matrices([20.0], 1.0, 90.0, 0.0, [(15.5, 15.5)]), 32)[0]
    np.testing.assert_allclose(turned, np.rot90(upright), atol=1e-5)  # rot90 turns anticlockwise


def test_scenes_masks_boxes_and_sizes():
    s = data.scenes(200, image_size=48, object_size=(6.0, 30.0), seed=3)
    assert s.images.shape == (200, 1, 48, 48) and s.images.dtype == np.float32
    assert s.masks.shape == (200, 48, 48) and s.masks.dtype == bool
    assert s.boxes.shape == (200, 4) and s.sizes.shape == (200,)
    assert 6.0 - 1e-4 <= s.sizes.min() and s.sizes.max() <= 30.0 + 1e-4
    assert s.masks.any(axis=(1, 2)).all()
    for mask, (x1, y1, x2, y2) in zip(s.masks, s.boxes.astype(int)):
        inside = np.zeros_like(mask)
        inside[y1:y2, x1:x2] = True
        assert mask[~inside].sum() == 0  # the box holds the whole mask
        assert mask[y1].any() and mask[y2 - 1].any() and mask[:, x1].any() and mask[:, x2 - 1].any()
    # ink is brighter than any background pixel, so the mask is visible in the image
    assert s.images[:, 0][s.masks].mean() > 0.9 > 0.5 > s.images[:, 0][~s.masks].mean()
    # bigger objects cover more pixels
    area = s.masks.sum(axis=(1, 2))
    assert np.corrcoef(np.log(s.sizes), np.log(area))[0, 1] > 0.9


def test_mask_boxes_convention():
    masks = np.zeros((2, 6, 8), bool)
    masks[0, 2:4, 1:6] = True
    np.testing.assert_array_equal(data.mask_boxes(masks), [[1, 2, 6, 4], [0, 0, 0, 0]])


def test_jitter_boxes_stays_in_image_and_grows_with_jitter():
    boxes = data.scenes(300, image_size=48, seed=4).boxes
    np.testing.assert_allclose(data.jitter_boxes(boxes, 0.0, 48), boxes)

    def iou(a, b):
        lo, hi = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        area = lambda c: np.prod(c[:, 2:] - c[:, :2], axis=1)  # noqa: E731
        return inter / (area(a) + area(b) - inter)

    small = data.jitter_boxes(boxes, 0.1, 48, seed=0)
    large = data.jitter_boxes(boxes, 0.4, 48, seed=0)
    for p in (small, large):
        assert p.min() >= 0 and p[:, 2:].max() <= 48
        assert (p[:, 2:] - p[:, :2] >= 1 - 1e-6).all()
    assert 1.0 > iou(boxes, small).mean() > iou(boxes, large).mean()
    np.testing.assert_array_equal(small, data.jitter_boxes(boxes, 0.1, 48, seed=0))


@pytest.mark.parametrize("call, error, piece", [
    (lambda: data.glyphs(0), ValueError, "n must be >= 1"),
    (lambda: data.glyphs(2.5), TypeError, "n must be an int"),
    (lambda: data.glyphs(5, "wobbly"), ValueError, "distortion must be one of"),
    (lambda: data.glyphs(5, image_size=4), ValueError, "image_size must be >= 8"),
    (lambda: data.scenes(5, image_size=32, object_size=(10, 40)), ValueError, "object_size"),
    (lambda: data.scenes(5, object_size=3), TypeError, "object_size must be a pair"),
    (lambda: data.jitter_boxes(np.zeros((3, 5)), 0.1, 32), ValueError, "boxes must be (N, 4)"),
    (lambda: data.jitter_boxes(np.zeros((3, 4)), -1, 32), ValueError, "jitter must be"),
    (lambda: data.font_path("NoSuchFont"), ValueError, "no bundled matplotlib font"),
])
def test_bad_arguments(call, error, piece):
    with pytest.raises(error, match=None) as info:
        call()
    assert piece in str(info.value)
