"""Back-tracking sampling locations through stacked stride-1 deformable layers."""

import numpy as np
import pytest

from minidcn.receptive_field import backtrack, spread

GRID_3X3 = np.array([(i - 1, j - 1) for i in range(3) for j in range(3)], np.float64)


def zeros(n=1, size=12, layers=3):
    return [np.zeros((n, 9, size, size, 2)) for _ in range(layers)]


def test_zero_offsets_give_the_regular_stack():
    """Three 3x3 layers: 729 points on a 7x7 block, multiplicities (1,3,6,7,6,3,1)^2, spread 2."""
    points = backtrack(zeros(), np.array([[6, 5]]), GRID_3X3)[0]
    assert points.shape == (729, 2)
    values, counts = np.unique(points - [6, 5], axis=0, return_counts=True)
    block = np.stack(np.meshgrid(np.arange(-3, 4), np.arange(-3, 4), indexing="ij"), -1)
    per_axis = np.array([1, 3, 6, 7, 6, 3, 1])
    np.testing.assert_array_equal(values, block.reshape(-1, 2))
    np.testing.assert_array_equal(counts, np.outer(per_axis, per_axis).ravel())
    assert spread(points) == pytest.approx(2.0, abs=1e-12)


def test_one_layer_reads_the_units_own_offsets():
    rng = np.random.default_rng(0)
    offset = rng.normal(size=(2, 9, 5, 6, 2))
    units = np.array([[1, 4], [4, 0]])
    points = backtrack([offset], units, GRID_3X3)
    expected = units[:, None, :] + GRID_3X3 + offset[np.arange(2), :, units[:, 0], units[:, 1]]
    np.testing.assert_allclose(points, expected, rtol=0, atol=1e-12)


def test_offsets_linear_in_position_are_interpolated_exactly():
    """Bottom-layer offsets a * x + b (linear in the unit's x): bilinear interpolation at the
    fractional points of the layer above returns the linear function there."""
    size, a, b = 12, 0.05, -0.3
    x = np.arange(size, dtype=np.float64)
    bottom = np.zeros((1, 9, size, size, 2))
    bottom[..., 1] = a * x[None, None, None, :] + b  # dx grows with x, for every kernel point
    top = np.zeros((1, 9, size, size, 2))
    top[..., 0] = 0.25  # moves every point a quarter unit down: fractional rows, same columns
    top[..., 1] = 0.5  # and half a unit right: fractional columns
    unit = np.array([[6, 5]])
    points = backtrack([bottom, top], unit, GRID_3X3)[0].reshape(9, 9, 2)
    middle = unit[0] + GRID_3X3 + [0.25, 0.5]  # the 9 points in the middle map, all inside
    expected = middle[:, None, :] + GRID_3X3[None, :, :]
    expected[..., 1] += a * middle[:, None, 1] + b
    np.testing.assert_allclose(points, expected, rtol=0, atol=1e-12)


def test_points_outside_the_map_read_the_edge_offsets():
    """A corner unit's points fall outside the map; they read the clamped position's offsets
    but keep their own position."""
    bottom = np.zeros((1, 9, 4, 4, 2))
    bottom[0, :, 0, 0] = [0.1, 0.2]  # only the corner unit (0, 0) has an offset
    top = np.zeros((1, 9, 4, 4, 2))
    points = backtrack([bottom, top], np.array([[0, 0]]), GRID_3X3)[0].reshape(9, 9, 2)
    middle = GRID_3X3  # the top layer's points around unit (0, 0), e.g. (-1, -1)
    for k, (y, x) in enumerate(middle):
        clamped = (max(y, 0), max(x, 0))
        delta = [0.1, 0.2] if clamped == (0, 0) else [0.0, 0.0]
        np.testing.assert_allclose(points[k], (y, x) + GRID_3X3 + delta, rtol=0, atol=1e-12)


def test_spread_is_the_rms_distance_from_the_centroid():
    square = np.array([[0, 0], [0, 2], [2, 0], [2, 2]], np.float64)
    assert spread(square) == pytest.approx(np.sqrt(2.0))
    np.testing.assert_allclose(spread(np.stack([square, 3 * square + 7])),
                               [np.sqrt(2.0), 3 * np.sqrt(2.0)])


@pytest.mark.parametrize("offsets, units, grid, match", [
    (np.zeros((1, 9, 4, 4, 2)), [[0, 0]], GRID_3X3, "offsets must be a list"),
    ([], [[0, 0]], GRID_3X3, "offsets is empty"),
    ([np.zeros((1, 9, 4, 4))], [[0, 0]], GRID_3X3, r"offsets\[0\] must have shape"),
    ([np.zeros((1, 9, 4, 4, 2)), np.zeros((2, 9, 4, 4, 2))], [[0, 0]], GRID_3X3,
     r"offsets\[1\] has \(N, K\)"),
    ([np.full((1, 9, 4, 4, 2), np.nan)], [[0, 0]], GRID_3X3, "NaN or infinite"),
    ([np.zeros((1, 9, 4, 4, 2))], [[0, 0]], GRID_3X3[:4], "kernel_points must have shape"),
    ([np.zeros((1, 9, 4, 4, 2))], [[0.5, 0]], GRID_3X3, "units must be"),
    ([np.zeros((1, 9, 4, 4, 2))], [[0, 0], [1, 1]], GRID_3X3, "units must be"),
    ([np.zeros((1, 9, 4, 4, 2))], [[0, 4]], GRID_3X3, "units must lie in"),
    ([np.zeros((1, 9, 4, 4, 2))], [[-1, 0]], GRID_3X3, "units must lie in"),
])
def test_backtrack_refuses_bad_arguments(offsets, units, grid, match):
    with pytest.raises((ValueError, TypeError), match=match):
        backtrack(offsets, np.asarray(units), grid)


def test_spread_refuses_bad_points():
    with pytest.raises(ValueError, match="points must have shape"):
        spread(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="points must have shape"):
        spread(np.zeros((0, 2)))
