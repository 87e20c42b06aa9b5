"""RoI pooling kernels called directly: the numba scatter passes are deterministic whatever the
thread count, and the host entry points take non-contiguous arrays."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minidcn
from minidcn.backends import numba_cpu, reference

# Every backward kernel on inputs where many RoIs overlap (the scatter collides) and with
# more output channels than one numba channel block; prints a digest of all the bytes.
DIGEST_SCRIPT = """
import hashlib
import numpy as np
from minidcn.backends.numba_cpu import roi_pool as k

rng = np.random.default_rng(0)
x = rng.standard_normal((2, 80, 9, 10))
rois = np.concatenate([rng.integers(0, 2, (40, 1)), rng.uniform(-2, 6, (40, 2)),
                       rng.uniform(3, 12, (40, 2))], axis=1)
offset = rng.uniform(-1, 1, (40, 2, 2, 2))
mask = rng.uniform(0, 1, (40, 1, 2, 2))
digest = hashlib.sha256()
for dtype in (np.float64, np.float32):
    xs, rs, os_, ms = (a.astype(dtype) for a in (x, rois, offset, mask))
    g = rng.standard_normal((40, 80, 2, 2)).astype(dtype)
    gps = rng.standard_normal((40, 20, 2, 2)).astype(dtype)
    _, argmax = k.roi_pool_forward(xs, rs, (2, 2), 0.8)
    outs = [k.roi_pool_backward(g, argmax, rs, xs.shape),
            k.sampled_roi_backward(g, None, rs, None, None, xs.shape, 0.8, 0, 0.0, False, False)[0],
            *k.sampled_roi_backward(g, xs, rs, os_, ms, xs.shape, 0.8, 2, 0.3, True, False),
            *k.sampled_roi_backward(gps, xs, rs, os_, None, xs.shape, 0.8, 0, 0.3, True, True)[:2]]
    for o in outs:
        digest.update(np.ascontiguousarray(o).tobytes())
print(digest.hexdigest())
"""


def _digest_with_threads(threads: int) -> str:
    root = Path(minidcn.__file__).resolve().parent.parent
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_numba_backward_is_bitwise_the_same_with_one_or_two_threads():
    one, two = _digest_with_threads(1), _digest_with_threads(2)
    assert len(one) == 64 and one == two


def _odd_layouts(*arrays):
    """Fortran-ordered copies of 4-D arrays, every-other-column views of 2-D ones."""
    out = []
    for a in arrays:
        if a.ndim == 2:
            wide = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)
            wide[:, ::2] = a
            out.append(wide[:, ::2])
        else:
            out.append(np.asfortranarray(a))
    return out


@pytest.mark.parametrize("kernels", [reference, numba_cpu], ids=["reference", "numba"])
def test_host_kernels_take_non_contiguous_arrays(kernels):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 7))
    rois = np.concatenate([rng.integers(0, 2, (5, 1)), rng.uniform(-1, 4, (5, 2)),
                           rng.uniform(2, 8, (5, 2))], axis=1)
    offset, mask = rng.uniform(-1, 1, (5, 2, 2, 3)), rng.uniform(0, 1, (5, 1, 2, 3))
    g = rng.standard_normal((5, 3, 2, 3))
    x_ps, g_ps = rng.standard_normal((2, 12, 6, 7)), rng.standard_normal((5, 2, 2, 3))

    sample, sample_grad = kernels.sampled_roi_forward, kernels.sampled_roi_backward

    def everything(x, rois, offset, mask, g, x_ps, g_ps):
        y, argmax = kernels.roi_pool_forward(x, rois, (2, 3), 0.9)
        return [y, argmax, kernels.roi_pool_backward(g, argmax, rois, x.shape),
                sample(x, rois, None, None, (2, 3), 0.9, 2, 0.0, True, False),
                sample_grad(g, None, rois, None, None, x.shape, 0.9, 2, 0.0, True, False)[0],
                sample(x, rois, offset, mask, (2, 3), 0.9, 0, 0.2, True, False),
                *sample_grad(g, x, rois, offset, mask, x.shape, 0.9, 0, 0.2, True, False),
                sample(x_ps, rois, offset, None, (2, 3), 0.9, 2, 0.2, True, True),
                *sample_grad(g_ps, x_ps, rois, offset, None, x_ps.shape, 0.9, 2, 0.2, True,
                             True)[:2]]

    arrays = (x, rois, offset, mask, g, x_ps, g_ps)
    odd = _odd_layouts(*arrays)
    assert not any(a.flags.c_contiguous for a in odd)
    for want, got in zip(everything(*arrays), everything(*odd)):
        np.testing.assert_array_equal(got, want)


# The sample-count limit in functional/roi.py counts what the kernels will count: the same
# arithmetic, at every magnitude (where the counts fit an int64, beyond which the kernels'
# conversion is undefined and the limit refuses anyway).
COORDINATES = [0.0, 0.3, -7.5, 1e3, -1e6, 3e9, 1e15, -1e30, 3e38, 1e300, -1.5e308, np.inf,
               np.nan]


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_sample_limit_counts_the_grid_the_kernels_use(dtype, aligned):
    from minidcn.backends.numba_cpu.roi_pool import _roi_setup
    from minidcn.backends.reference.roi_pool import _box, _grid_size
    from minidcn.functional.roi import _adaptive_grid

    rng = np.random.default_rng(5)
    with np.errstate(over="ignore", invalid="ignore"):  # 1e300 is inf in float32
        boxes = np.array([[0, a, b, c, d] for a, b, c, d in rng.choice(COORDINATES, (400, 4))],
                         dtype)
        for scale in (1e-302, 1e-10, 0.0625, 1.0, 1e10):
            output_size = (3, 2)
            f64_h, f64_w = _adaptive_grid(boxes, output_size, scale, aligned, np.float64)
            own_h, own_w = _adaptive_grid(boxes, output_size, scale, aligned, dtype)
            for k in range(len(boxes)):
                _, geometry, _ = _roi_setup(boxes, k, 3, 2, scale, 0, aligned)
                for mine, theirs in ((f64_h[k], geometry[4]), (f64_w[k], geometry[5])):
                    if mine < 2**62:
                        assert mine == theirs, (boxes[k], scale)
                _, _, roi_h, roi_w = _box(boxes[k], scale, aligned)
                assert own_h[k] == _grid_size(0, roi_h, 3), (boxes[k], scale)
                assert own_w[k] == _grid_size(0, roi_w, 2), (boxes[k], scale)
