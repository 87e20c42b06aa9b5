"""Integer arguments too large for the kernels, and sizes that would exhaust memory, are
refused before any kernel runs or any array is allocated, with an error naming the argument.

Limits (``minidcn.functional._validate``): every integer argument at most 2**31 - 1 in
magnitude (torch's own limit for pooling), and no output, zero-padded input or layer weight
of more than 2**30 elements.
"""

import re

import numpy as np
import pytest

import minidcn.functional as F
from minidcn import Tensor, nn
from minidcn.functional._validate import MAX_INT, MAX_OUTPUT_ELEMENTS
from minidcn.functional.pooling import _has_empty_window
from helpers import host, on

X = np.random.default_rng(0).standard_normal((1, 2, 4, 4))
W1 = np.ones((3, 2, 1, 1))
W2 = np.ones((3, 2, 2, 2))
OFF1 = np.zeros((1, 2, 4, 4))
ROIS = np.array([[0, 0, 0, 3, 3.0]])
X4 = np.zeros((1, 4, 4, 2))  # channels-last, for dcnv3 / dcnv4 (3 x 3 kernel, group 1)
OFF4, MASK4, OFF_MASK4 = np.zeros((1, 4, 4, 18)), np.zeros((1, 4, 4, 9)), np.zeros((1, 4, 4, 27))
TOO_BIG = r"must be at most 2\*\*31 - 1 = 2147483647 in magnitude \(the kernels. index arithmetic\)"

HUGE_INTEGERS = [
    (lambda v: F.conv2d(X, W1, stride=v), "conv2d: stride"),
    (lambda v: F.conv2d(X, W1, padding=v), "conv2d: padding"),
    (lambda v: F.conv2d(X, W2, dilation=v), "conv2d: dilation"),
    (lambda v: F.conv2d(X, W1, groups=v), "conv2d: groups"),
    (lambda v: F.deform_conv2d(X, OFF1, W1, stride=v), "deform_conv2d: stride"),
    (lambda v: F.deform_conv2d(X, OFF1, W1, padding=(0, v)), "deform_conv2d: padding"),
    (lambda v: F.deform_conv2d(X, OFF1, W1, dilation=v), "deform_conv2d: dilation"),
    (lambda v: F.max_pool2d(X, v, padding=v // 2), "max_pool2d: kernel_size"),
    (lambda v: F.max_pool2d(X, 2, stride=v), "max_pool2d: stride"),
    (lambda v: F.max_pool2d(X, 2, dilation=v), "max_pool2d: dilation"),
    (lambda v: F.avg_pool2d(X, (2, v)), "avg_pool2d: kernel_size"),
    (lambda v: F.group_norm(X, v), "group_norm: num_groups"),
    (lambda v: F.roi_pool(X, ROIS, v), "roi_pool: output_size"),
    (lambda v: F.roi_align(X, ROIS, (2, v)), "roi_align: output_size"),
    (lambda v: F.roi_align(X, ROIS, 2, sampling_ratio=v), "roi_align: sampling_ratio"),
    (lambda v: F.roi_align(X, ROIS, 2, sampling_ratio=-int(v)), "roi_align: sampling_ratio"),
    (lambda v: F.deform_roi_pool(X, ROIS, None, v), "deform_roi_pool: output_size"),
    (lambda v: F.deform_ps_roi_pool(X, ROIS, None, 2, sampling_ratio=v),
     "deform_ps_roi_pool: sampling_ratio"),
    (lambda v: F.sampling_locations(OFF1, 1, stride=v), "sampling_locations: stride"),
    (lambda v: nn.Conv2d(2, v, 1), "Conv2d: out_channels"),
    (lambda v: nn.DeformConv2d(2, 2, 1, offset_groups=v), "DeformConv2d: offset_groups"),
    (lambda v: nn.GroupNorm(v, 4), "GroupNorm: num_groups"),
    (lambda v: nn.Linear(v, 2), "Linear: in_features"),
    (lambda v: F.dcnv3(X4, OFF4, MASK4, kernel_size=(1, v)), "dcnv3: kernel_size"),
    (lambda v: F.dcnv3(X4, OFF4, MASK4, stride=v), "dcnv3: stride"),
    (lambda v: F.dcnv3(X4, OFF4, MASK4, padding=v), "dcnv3: padding"),
    (lambda v: F.dcnv3(X4, OFF4, MASK4, dilation=v), "dcnv3: dilation"),
    (lambda v: F.dcnv3(X4, OFF4, MASK4, group=v), "dcnv3: group"),
    (lambda v: F.dcnv4(X4, OFF_MASK4, stride=(v, 1)), "dcnv4: stride"),
    (lambda v: F.dcnv4(X4, OFF_MASK4, group=v), "dcnv4: group"),
    (lambda v: nn.DCNv3(v), "DCNv3: channels"),
    (lambda v: nn.DCNv4(8, group=v), "DCNv4: group"),
    (lambda v: nn.MultiScaleDeformableAttention(8, 2, v),
     "MultiScaleDeformableAttention: num_levels"),
]


@pytest.mark.parametrize("value", [2**31, 2**62, 2**64, np.uint64(2**64 - 1)])
@pytest.mark.parametrize("call, name", HUGE_INTEGERS, ids=[n for _, n in HUGE_INTEGERS])
def test_huge_integers_are_refused_naming_the_argument(call, name, value):
    with pytest.raises(ValueError, match=f"{name} {TOO_BIG}, got -?{int(value)}"):
        call(value)


@pytest.mark.parametrize("shapes", [[[1, 2], [2**31, 1]], [[1, 2], [2**62, 1]],
                                    [[1, 2], [2**64, 1]], [[1, 2], [2**63 + 1, 1]],
                                    [[1, 2], [np.uint64(2**64 - 1), 1]],
                                    np.array([[1, 2], [2**64 - 1, 1]], np.uint64)],
                         ids=["2**31", "2**62", "2**64", "2**63 + 1", "uint64 in a list",
                              "uint64 2**64 - 1"])
def test_huge_level_sizes_are_refused_naming_the_level(shapes):
    """Exactly, as given: a list holding 2**63 + 1 beside small ints is a float64 array to
    NumPy, and was refused as "dtype float64" (the battery)."""
    value, locations, weights = (np.zeros((1, 2, 1, 1)), np.zeros((1, 1, 1, 2, 1, 2)),
                                 np.zeros((1, 1, 1, 2, 1)))
    with pytest.raises(ValueError, match=r"multi_scale_deform_attn: spatial_shapes\[1, 0\] "
                                         r"\(H_1\) must be in \[1, 2\*\*31 - 1\] .*got "
                                         f"{int(shapes[1][0])}"):
        F.multi_scale_deform_attn(value, shapes, locations, weights)


@pytest.mark.parametrize("value, kind", [(2.0, "float"), (True, "bool"), (np.float64(2), "float64"),
                                         (np.bool_(True), "bool")])
@pytest.mark.parametrize("call, name", HUGE_INTEGERS[:12], ids=[n for _, n in HUGE_INTEGERS[:12]])
def test_non_integers_are_refused_naming_the_argument(call, name, value, kind):
    with pytest.raises(TypeError, match=f"{name} must be an int, got {kind}"):
        call(value)


def test_numpy_integers_and_the_largest_int_are_accepted(backend_name):
    """2**31 - 1 itself runs, and gives the numbers of the equivalent small stride."""
    with on(backend_name) as device:
        x, w = Tensor(X).to(device), Tensor(W2).to(device)
        huge = F.conv2d(x, w, stride=(np.int64(MAX_INT), np.int32(1)))
        small = F.conv2d(x, w, stride=(3, 1))
        np.testing.assert_array_equal(host(huge), host(small))
        assert host(F.max_pool2d(x, 2, stride=MAX_INT)).shape == (1, 2, 1, 1)


@pytest.mark.parametrize("call, message", [
    (lambda: F.conv2d(X, W1, padding=2**15),
     r"conv2d: the output would have shape \(1, 3, 65540, 65540\), 12886474800 elements, more "
     r"than the 1073741824 \(2\*\*30\) an op may allocate; check padding and stride"),
    (lambda: F.conv2d(X, W2, dilation=2**30, padding=2**29),
     r"conv2d: the padded input would have shape \(1, 2, 1073741828, 1073741828\), .*check padding"),
    (lambda: F.deform_conv2d(X, np.zeros((1, 2, 1, 1)), W1, padding=2**30, stride=2**31 - 1),
     r"deform_conv2d: offset must have shape \(1, 2, 2, 2\)"),
    (lambda: F.roi_align(X, ROIS, (2**16, 2**16 + 1)),
     r"roi_align: the output would have shape \(1, 2, 65536, 65537\), .*check output_size"),
    (lambda: F.roi_align(X[:, :1], ROIS, (2**15, 2**15)),
     r"roi_align: the kernels. per-bin offsets would have shape \(1, 2, 32768, 32768\)"),
    (lambda: F.roi_pool(X, ROIS, (2**16, 2**16)), r"roi_pool: the output would have shape"),
    (lambda: F.deform_roi_pool(X[:, :1], ROIS, None, (2**15, 2**15)),
     r"deform_roi_pool: the kernels. per-bin offsets would have shape \(1, 2, 32768, 32768\)"),
    (lambda: nn.Conv2d(1, 2**20, 2**10),
     r"Conv2d: the weight would have shape \(1048576, 1, 1024, 1024\), .*check in_channels, "
     r"out_channels and kernel_size"),
    (lambda: nn.DeformConv2d(1, 2**20, 2**10), r"the weight would have shape"),
    (lambda: nn.Linear(2**20, 2**20), r"Linear: the weight would have shape \(1048576, 1048576\), "
                                      r".*check in_features and out_features"),
])
def test_sizes_past_the_element_limit_are_refused_before_allocating(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_element_limit_is_inclusive():
    """Exactly 2**30 elements is allowed: the check counts, it does not guess."""
    from minidcn.functional._validate import check_elements
    check_elements("f", "the output", (2**15, 2**15), "x")
    with pytest.raises(ValueError, match="f: the output would have shape"):
        check_elements("f", "the output", (2**15, 2**15 + 1), "x")
    assert MAX_OUTPUT_ELEMENTS == 2**30


def test_pooling_windows_far_larger_than_the_image_cost_the_image(backend_name):
    """max_pool2d(x, 2**30, 1, padding=2**29) used to allocate a (windows x 2**30) array in
    the argument check.  Now the kernels visit only the window points inside the image: the
    call gives the numbers of the small window that covers the same pixels (kernel
    2H x (2W + 1), padding H, W), on every backend, forward and backward."""
    height, width = X.shape[2:]
    huge, half = (2**30, 2**29 + 1), (2**29, 2**28)
    small, small_half = (2 * height, 2 * width + 1), (height, width)
    with on(backend_name) as device:
        for pool in (lambda t, k, p: F.max_pool2d(t, k, 1, p),
                     lambda t, k, p: F.avg_pool2d(t, k, 1, p, count_include_pad=False)):
            results = []
            for kernel, padding in ((huge, half), (small, small_half)):
                x = Tensor(X).to(device).requires_grad_(True)
                y = pool(x, kernel, padding)
                y.backward(Tensor(np.arange(float(np.prod(y.shape))).reshape(y.shape)).to(device))
                results.append((host(y), host(x.grad)))
            assert results[0][0].shape == (1, 2, height + 1, width)
            for a, b in zip(*results):
                np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)
        total = host(F.avg_pool2d(Tensor(X).to(device), huge, 1, half)) * (huge[0] * huge[1])
        np.testing.assert_allclose(total, X.sum(axis=(2, 3), keepdims=True) + 0 * total, rtol=1e-12)


@pytest.mark.parametrize("fn", [F.max_pool2d, F.avg_pool2d])
def test_pooling_kernel_past_the_int_limit_is_refused(fn):
    with pytest.raises(ValueError, match=f"{fn.__name__}: kernel_size {TOO_BIG}, got 4294967296"):
        fn(X, 2**32, padding=2**31)  # the call; torch refuses it too (int overflow)


def test_empty_window_check_is_arithmetic():
    """The check agrees with listing every position, window by window, on all small cases."""
    for size in range(1, 8):
        for k in range(1, 6):
            for s in range(1, 4):
                for d in range(1, 4):
                    for p in range(0, k // 2 + 1):
                        span = d * (k - 1) + 1
                        if size + 2 * p < span:
                            continue
                        out = (size + 2 * p - span) // s + 1
                        positions = np.arange(out)[:, None] * s - p + np.arange(k) * d
                        listed = not ((positions >= 0) & (positions < size)).any(axis=1).all()
                        assert _has_empty_window(size, k, s, p, d, out) == listed
    assert _has_empty_window(4, MAX_INT, 1, MAX_INT // 2, 1, 5) is False  # no window-sized array


T = Tensor(np.zeros((2, 3, 4)))


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.reshape(T, (2**64, -1)), ValueError,
     r"reshape: cannot view 24 elements \(2, 3, 4\) as shape \(18446744073709551616, -1\)"),
    (lambda: F.reshape(T, (np.bool_(True), 24)), TypeError, "reshape: shape must be ints"),
    (lambda: F.permute(T, (1.0, 0, 2)), TypeError, r"permute: dims must be ints, got \(1.0, 0, 2\)"),
    (lambda: F.transpose(T, 0, 1.0), TypeError, "transpose: dim1 must be an int, got float 1.0"),
    (lambda: F.transpose(T, True, 1), TypeError, "transpose: dim0 must be an int, got bool True"),
    (lambda: F.transpose(T, 0, 2**64), ValueError, "transpose: dim1=18446744073709551616 is out of range"),
    (lambda: F.flatten(T, 1.0), TypeError, "flatten: start_dim must be an int, got float 1.0"),
])
def test_shape_ops_refuse_huge_and_non_integer_axes(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_shape_ops_accept_numpy_integers():
    assert F.permute(T, np.array([2, 0, 1])).shape == (4, 2, 3)
    assert F.transpose(T, np.int64(0), -1).shape == (4, 3, 2)
    assert F.reshape(T, np.array([4, -1])).shape == (4, 6)


@pytest.mark.parametrize("value, shown", [(10**5000, "got about 2**16609"),
                                          (-10**5000, "got -about 2**16609")],
                         ids=["10**5000", "-10**5000"])
def test_an_integer_too_long_to_print_is_still_refused(value, shown):
    # Python refuses to print an int of more than 4300 digits; the refusal must not.
    with pytest.raises(ValueError, match=f"conv2d: (stride|padding) .*{re.escape(shown)}"):
        F.conv2d(X, W1, stride=value) if value > 0 else F.conv2d(X, W1, padding=value)
