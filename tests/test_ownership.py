"""An op owns what its backward reads.

Every op that takes an array besides its differentiable inputs (RoIs given as arrays or as
Tensors, index arrays, constants given as NumPy arrays, offsets, masks, targets) must keep
its own copy: a caller that changes its buffer between forward and backward (a detector's
proposal loop reuses one) must not change the gradient.  Each test runs forward and
backward twice, once with the caller's arrays changed right after forward, and asserts the
gradients are bitwise the same; the changes keep every value valid, so without a copy the
gradient would silently move (the crashing changes are in ``test_roi.py``'s subprocess
tests).
"""

import numpy as np
import pytest

from minidcn import Tensor
from minidcn import functional as F
from minidcn import nn
from helpers import host, on

RNG = np.random.default_rng(7)
X = RNG.standard_normal((2, 4, 5, 5))  # 4 channels: 1 output channel of a 2 x 2 ps pooling
ROIS = np.array([[0, 0.5, 0.5, 3.2, 3.7], [1, 1.2, 0.3, 4.1, 3.3]])
OFFSET = RNG.uniform(-1, 1, (2, 2, 2, 2))
MASK = RNG.uniform(0.2, 1.0, (2, 1, 2, 2))


def change_rois(r):
    """Swap the two RoIs' images and move their boxes: still valid, different gradient.
    Scalar stores only, so that it works on a host array and on a CudaArray alike."""
    r[0, 0], r[1, 0] = 1.0, 0.0
    r[0, 1], r[1, 2], r[0, 3], r[1, 4] = 1.5, 1.0, 4.0, 4.2


def change(a):
    """Any other caller array: scramble it in place, keeping its dtype and range."""
    a[...] = np.roll(a, 1) if a.dtype.kind != "b" else ~a


def gradients(backend_name, case, mutate):
    """Forward ``case`` on a backend, optionally change the caller's arrays, then backward
    with a fixed output gradient; the leaves' gradients as host arrays."""
    with on(backend_name) as device:
        leaves, out, caller_change = case(device)
        if mutate:
            caller_change()
        g = np.random.default_rng(0).standard_normal(out.shape)
        out.backward(Tensor(g, dtype=out.dtype).to(device))
        return [None if t.grad is None else host(t.grad) for t in leaves]


def assert_backward_owns(backend_name, case):
    expected = gradients(backend_name, case, mutate=False)
    got = gradients(backend_name, case, mutate=True)
    assert [g is None for g in got] == [e is None for e in expected]
    assert any(e is not None for e in expected)
    for e, g in zip(expected, got):
        if e is not None:
            np.testing.assert_array_equal(g, e)


def leaf(device, array):
    return Tensor(array.copy(), dtype=np.float64).to(device).detach().requires_grad_()


# ---------------------------------------------------------------------------- RoI family
def _roi_ops(x, offset, mask, rois):
    return {
        "roi_pool": lambda: F.roi_pool(x, rois, 2, 1.0),
        "roi_align": lambda: F.roi_align(x, rois, 2, 1.0, -1),
        "roi_align_aligned": lambda: F.roi_align(x, rois, 2, 1.0, 2, aligned=True),
        "deform_roi_pool": lambda: F.deform_roi_pool(x, rois, offset, 2, 1.0, 2, 0.1, mask),
        "deform_ps_roi_pool": lambda: F.deform_ps_roi_pool(x, rois, offset, 2, 1.0, 0, 0.1),
        "nn.RoIPool": lambda: nn.RoIPool(2, 1.0)(x, rois),
        "nn.RoIAlign": lambda: nn.RoIAlign(2, 1.0, 2)(x, rois),
    }


ROI_OPS = list(_roi_ops(None, None, None, None))


@pytest.mark.parametrize("rois_as", ["array", "tensor"])
@pytest.mark.parametrize("op", ROI_OPS)
def test_roi_ops_own_their_rois(backend_name, op, rois_as):
    def case(device):
        x, offset, mask = (leaf(device, a) for a in (X, OFFSET, MASK))
        rois = ROIS.copy()
        if rois_as == "tensor":  # a Tensor whose .data the caller changes in place
            rois = Tensor(rois, dtype=np.float64).to(device)
        out = _roi_ops(x, offset, mask, rois)[op]()
        return (x, offset, mask), out, lambda: change_rois(rois.data if rois_as == "tensor"
                                                           else rois)

    assert_backward_owns(backend_name, case)


@pytest.mark.parametrize("op", ["deform_roi_pool", "deform_ps_roi_pool"])
def test_deformable_poolings_own_offset_and_mask_given_as_arrays(backend_name, op):
    def case(device):
        x = leaf(device, X)
        offset, mask = OFFSET.copy(), MASK.copy()
        out = _roi_ops(x, offset, mask, ROIS)[op]()
        return (x,), out, lambda: (change(offset), change(mask))

    assert_backward_owns(backend_name, case)


def test_deform_roi_pool_module_owns_its_rois(backend_name):
    def case(device):
        x = leaf(device, X)
        pool = nn.DeformRoIPool(2, 1.0, 2, 0.1, 4, modulated=True, hidden=(),
                                generator=np.random.default_rng(1), dtype=np.float64)
        rois = ROIS.copy()
        out = pool.to(device)(x, rois)
        return (x,) + tuple(pool.parameters()), out, lambda: change_rois(rois)

    assert_backward_owns(backend_name, case)


# ---------------------------------------------------------------------------- indexing
INDICES = {
    "int array": lambda: np.array([1, 1, 0, 3]),
    "bool mask": lambda: np.array([True, False, True, False, True]),
    "list": lambda: [4, 0, 0],
    "tuple with an array": lambda: (np.array([2, 0]), slice(1, 3)),
}


@pytest.mark.parametrize("kind", list(INDICES))
def test_getitem_owns_its_index(backend_name, kind):
    def case(device):
        t = leaf(device, np.arange(25.0).reshape(5, 5))
        index = INDICES[kind]()
        out = t[index]

        def caller_change():
            for part in (index if isinstance(index, tuple) else (index,)):
                if isinstance(part, list):
                    part[0] = 2
                elif isinstance(part, np.ndarray):
                    change(part)
        return (t,), out, caller_change

    assert_backward_owns(backend_name, case)


def test_getitem_owns_a_tensor_index(backend_name):
    def case(device):
        t = leaf(device, np.arange(5.0))
        index = Tensor(np.array([1.0, 1.0, 0.0]), dtype=np.float64).to(device)
        out = t[index]

        def caller_change():
            index.data[0] = 4.0
        return (t,), out, caller_change

    assert_backward_owns(backend_name, case)


# ---------------------------------------------------------------------------- constants
@pytest.mark.parametrize("op", ["mul", "div", "pow", "rpow", "matmul", "linear"])
def test_ops_own_numpy_constants(backend_name, op):
    def case(device):
        a = leaf(device, np.linspace(0.5, 2.0, 9).reshape(3, 3))
        const = np.linspace(1.0, 3.0, 9).reshape(3, 3)
        out = {"mul": lambda: a * const, "div": lambda: a / const,
               "pow": lambda: a ** const, "rpow": lambda: F.pow(const, a),
               "matmul": lambda: F.matmul(a, const), "linear": lambda: F.linear(a, const)}[op]()
        return (a,), out, lambda: change(const)

    assert_backward_owns(backend_name, case)


def _host_op_case(op):
    """(differentiable x, the op's output, the NumPy arrays the caller keeps) for ops whose
    array arguments must live on the host (a device op refuses host weights)."""
    rng = np.random.default_rng(3)
    x = leaf("cpu", rng.standard_normal((1, 2, 4, 4)))
    weight = rng.standard_normal((2, 2, 3, 3))
    if op == "conv2d":
        return x, F.conv2d(x, weight), [weight]
    if op == "deform_conv2d":
        offset = rng.uniform(-1, 1, (1, 18, 2, 2))
        mask = rng.uniform(0, 1, (1, 9, 2, 2))
        return x, F.deform_conv2d(x, offset, weight, mask=mask), [offset, weight, mask]
    if op in ("dcnv3", "dcnv4"):  # x read channels-last: (N, H, W, C) = (1, 2, 4, 4), 2 groups
        offset = rng.uniform(-1, 1, (1, 2, 4, 36))
        mask = rng.uniform(0, 1, (1, 2, 4, 18))
        if op == "dcnv3":
            return x, F.dcnv3(x, offset, mask, group=2), [offset, mask]
        offset_mask = np.concatenate([offset, mask], axis=-1)
        return x, F.dcnv4(x, offset_mask, group=2, softmax=True), [offset_mask]
    if op == "multi_scale_deform_attn":  # x read as value (N, S, M, D): one 1 x 2 level
        shapes = np.array([[1, 2]])
        locations = rng.uniform(0, 1, (1, 3, 4, 1, 2, 2))
        weights = rng.uniform(0, 1, (1, 3, 4, 1, 2))
        return x, F.multi_scale_deform_attn(x, shapes, locations, weights), [shapes, locations,
                                                                              weights]
    points = rng.uniform(0, 3, (1, 5, 2))
    return x, F.bilinear_sample(x, points), [points]


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("op", ["conv2d", "deform_conv2d", "bilinear_sample", "dcnv3", "dcnv4",
                                "multi_scale_deform_attn"])
def test_host_ops_own_numpy_arguments(backend, op):
    def case(device):
        x, out, arrays = _host_op_case(op)
        return (x,), out, lambda: [change(a) for a in arrays]

    assert_backward_owns(backend, case)


def test_multi_scale_deform_attn_owns_its_spatial_shapes(backend_name):
    """Swapping the two levels keeps S = 8 (valid), so a shared array would move the gradient."""
    def case(device):
        rng = np.random.default_rng(5)
        value, locations, weights = (leaf(device, a) for a in (
            rng.standard_normal((1, 8, 2, 3)), rng.uniform(0, 1, (1, 4, 2, 2, 2, 2)),
            rng.uniform(0, 1, (1, 4, 2, 2, 2))))
        shapes = np.array([[2, 3], [1, 2]])
        out = F.multi_scale_deform_attn(value, shapes, locations, weights)
        return (value, locations, weights), out, lambda: shapes.__setitem__(
            slice(None), [[1, 2], [2, 3]])

    assert_backward_owns(backend_name, case)


def test_cross_entropy_owns_its_target(backend_name):
    def case(device):
        scores = leaf(device, np.random.default_rng(4).standard_normal((4, 3)))
        target = np.array([0, 2, 1, 1])
        return (scores,), F.cross_entropy(scores, target), lambda: change(target)

    assert_backward_owns(backend_name, case)


def test_a_constant_from_a_float32_buffer_is_copied_too():
    a = Tensor(np.ones(3, np.float32), requires_grad=True)
    const = np.array([1.0, 2.0, 3.0], np.float32)  # same dtype: the Tensor could share it
    y = a * const
    const[:] = 0.0
    y.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [1.0, 2.0, 3.0])


def test_owned_index_copy_is_read_only():
    t = Tensor(np.arange(4.0), requires_grad=True)
    index = np.array([0, 1])
    y = t[index]
    saved = y._node.ctx.index
    assert saved is not index and not saved.flags.writeable
