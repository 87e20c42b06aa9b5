"""The scalar formulas compose: compiling one compiles, for the same target, every formula it
calls, once per target (``backends/formulas/__init__.py``)."""

import numpy as np
import pytest
from numba import njit

from minidcn.backends.formulas import bilinear, dcnv3, for_cpu, for_gpu, multi_scale_deform_attn


def test_a_formula_is_compiled_once_per_target():
    assert for_cpu(bilinear.bilinear_weights) is for_cpu(bilinear.bilinear_weights)
    first, second = for_cpu(dcnv3.kernel_point, bilinear.corner_sum)
    assert first is for_cpu(dcnv3.kernel_point) and second is for_cpu(bilinear.corner_sum)


def test_the_formulas_a_formula_calls_are_compiled_for_the_same_target():
    compiled = for_cpu(multi_scale_deform_attn.sampling_point).py_func.__globals__
    assert compiled["bilinear_weights"] is for_cpu(bilinear.bilinear_weights)
    assert compiled["level_start"] is for_cpu(multi_scale_deform_attn.level_start)
    # the formula's own module keeps the plain Python functions, for Python callers
    assert multi_scale_deform_attn.bilinear_weights is bilinear.bilinear_weights


@pytest.mark.cuda
def test_for_gpu_composes_too():
    compiled = for_gpu(dcnv3.kernel_point)
    body = getattr(compiled, "py_func", None) or compiled.fn  # real target / simulator
    assert body.__globals__["bilinear_weights"] is for_gpu(bilinear.bilinear_weights)
    assert body.__globals__["kernel_tap"] is for_gpu(dcnv3.kernel_tap)
    assert for_gpu(dcnv3.kernel_point) is compiled


kernel_point, modulation_stats = for_cpu(dcnv3.kernel_point, dcnv3.modulation_stats)


@njit
def _kernel_points(offsets, logits, geometry, remove_center, softmax, out):
    points = logits.shape[0]
    top, total = modulation_stats(logits, points, softmax)
    for p in range(points):
        inside, y0, x0, w, w_dy, w_dx, m = kernel_point(p, 2, 1, offsets, logits, geometry, 0.5,
                                                        remove_center, 5, 6, softmax, top, total)
        out[p, 0], out[p, 1], out[p, 2], out[p, 3] = inside, y0, x0, m
        for k in range(4):
            out[p, 4 + k], out[p, 8 + k], out[p, 12 + k] = w[k], w_dy[k], w_dx[k]


@pytest.mark.parametrize("remove_center", [False, True])
@pytest.mark.parametrize("softmax", [False, True])
def test_a_composed_formula_compiled_matches_the_plain_python(remove_center, softmax):
    geometry = (3, 3, 1, 1, 1, 1, 1, 1)
    points = 9 - int(remove_center)
    rng = np.random.default_rng(0)
    offsets = rng.uniform(-4, 4, 2 * points)
    offsets[:2] = (0.5, np.nan)  # a NaN offset: outside, weights 0
    logits = rng.standard_normal(points)
    compiled = np.empty((points, 16))
    _kernel_points(offsets, logits, geometry, remove_center, softmax, compiled)
    top, total = dcnv3.modulation_stats(logits, points, softmax)
    for p in range(points):
        inside, y0, x0, w, w_dy, w_dx, m = dcnv3.kernel_point(
            p, 2, 1, offsets, logits, geometry, 0.5, remove_center, 5, 6, softmax, top, total)
        np.testing.assert_array_equal(compiled[p, :3], [inside, y0, x0])
        np.testing.assert_array_equal(compiled[p, 4:], [*w, *w_dy, *w_dx])
        np.testing.assert_allclose(compiled[p, 3], m, rtol=1e-15)  # exp: libm may differ in the last bit
    assert compiled[0, 0] == 0 and (compiled[1:, 0] == 1).any()


def test_kernel_tap_skips_the_centre_x_major():
    taps = [dcnv3.kernel_tap(p, 3, 5, True) for p in range(14)]
    assert taps == [(i, j) for i in range(5) for j in range(3) if (i, j) != (2, 1)]
