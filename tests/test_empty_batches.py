"""Empty batches behave as in torch, on every backend.

A batch of 0 images (or 0 RoIs) gives an empty output of the shape torch gives, an empty
gradient for every batched input and a zero gradient for every weight and bias.  Axes that
torch refuses to be empty (channels or image of a convolution or pooling) are refused with
a ValueError naming the input.  The expected shapes are not written out: each case is run
once with one image (or RoI) and the empty run must give that shape with 0 in front.
"""

import numpy as np
import pytest

import minidcn.functional as F
from minidcn import Tensor, nn
from helpers import host, on

RNG = np.random.default_rng(0)
ROI = np.array([[0, 0.5, 0.5, 3.5, 3.0]])
NO_ROIS = np.zeros((0, 5))


def batched(*shapes):
    """Random arrays whose first axis is the batch."""
    return [RNG.standard_normal(s) for s in shapes]


# name -> (fn(*tensors, rois), arrays with a batch of 1, how many leading arrays are batched)
CASES = {
    "conv2d": (lambda x, w, b, rois: F.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2),
               batched((1, 4, 5, 4), (6, 2, 3, 3), (6,)), 1),
    "deform_conv2d": (lambda x, off, w, b, rois: F.deform_conv2d(x, off, w, b, padding=1),
                      batched((1, 2, 4, 4), (1, 18, 4, 4), (3, 2, 3, 3), (3,)), 2),
    "deform_conv2d mask": (lambda x, off, m, w, rois: F.deform_conv2d(x, off, w, padding=1, mask=m),
                           batched((1, 2, 4, 4), (1, 18, 4, 4), (1, 9, 4, 4), (3, 2, 3, 3)), 3),
    "bilinear_sample": (lambda x, p, rois: F.bilinear_sample(x, p),
                        batched((1, 3, 4, 5), (1, 7, 2)), 2),
    "multi_scale_deform_attn": (
        lambda v, loc, a, rois: F.multi_scale_deform_attn(v, [[2, 3], [1, 2]], loc, a),
        batched((1, 8, 2, 3), (1, 4, 2, 2, 2, 2), (1, 4, 2, 2, 2)), 3),
    "dcnv3": (lambda x, off, m, rois: F.dcnv3(x, off, m, stride=(1, 2), group=2),
              batched((1, 4, 5, 4), (1, 4, 3, 36), (1, 4, 3, 18)), 3),
    "dcnv4": (lambda x, om, rois: F.dcnv4(x, om, group=2, softmax=True),
              batched((1, 4, 5, 4), (1, 4, 5, 56)), 2),
    "gelu": (lambda x, rois: F.gelu(x), batched((1, 3, 4)), 1),
    "softmax": (lambda x, rois: F.softmax(x, -1), batched((1, 3, 4)), 1),
    "layer_norm channels_last": (lambda x, w, b, rois: F.layer_norm(x, w, b, channels_last=True),
                                 batched((1, 3, 3, 4), (4,), (4,)), 1),
    "max_pool2d": (lambda x, rois: F.max_pool2d(x, 3, 2, 1, dilation=(1, 2)), batched((1, 2, 5, 6)), 1),
    "avg_pool2d": (lambda x, rois: F.avg_pool2d(x, 2, 1, 1, count_include_pad=False),
                   batched((1, 2, 4, 4)), 1),
    "group_norm": (lambda x, w, b, rois: F.group_norm(x, 2, w, b), batched((1, 4, 3, 3), (4,), (4,)), 1),
    "batch_norm eval": (lambda x, w, b, rois: F.batch_norm(
        x, Tensor(np.zeros(4)).to(x.device), Tensor(np.ones(4)).to(x.device), w, b),
        batched((1, 4, 3, 3), (4,), (4,)), 1),
    "batch_norm train": (lambda x, w, b, rois: F.batch_norm(x, None, None, w, b, training=True),
                         batched((2, 4, 3, 3), (4,), (4,)), 1),
    "roi_pool": (lambda x, rois: F.roi_pool(x, rois, 2), batched((2, 3, 5, 5)), 0),
    "roi_align": (lambda x, rois: F.roi_align(x, rois, (2, 3), sampling_ratio=2), batched((2, 3, 5, 5)), 0),
    "deform_roi_pool": (lambda x, off, m, rois: F.deform_roi_pool(x, rois, off, 2, mask=m),
                        [RNG.standard_normal((2, 3, 5, 5)), RNG.standard_normal((1, 2, 2, 2)),
                         RNG.random((1, 1, 2, 2))], 0),
    "deform_ps_roi_pool": (lambda x, off, rois: F.deform_ps_roi_pool(x, rois, off, 2),
                           [RNG.standard_normal((2, 8, 5, 5)), RNG.standard_normal((1, 2, 2, 2))], 0),
}
ROI_CASES = {"roi_pool", "roi_align", "deform_roi_pool", "deform_ps_roi_pool"}


def forward_backward(backend_name, name, arrays, rois):
    """(output, gradients of every array) as host arrays, backward from ones."""
    fn = CASES[name][0]
    with on(backend_name) as device:
        ts = [Tensor(a, dtype=np.float64).to(device).requires_grad_(True) for a in arrays]
        out = fn(*ts, rois)
        out.backward(Tensor(np.ones(out.shape)).to(device))
        return host(out), [host(t.grad) for t in ts]


def emptied(name, arrays):
    """The same arrays with an empty batch (or, for the RoI ops, the per-RoI ones empty)."""
    _, _, n_batched = CASES[name]
    if name in ROI_CASES:  # input keeps its images; offset and mask are per RoI
        return [arrays[0]] + [a[:0] for a in arrays[1:]]
    return [a[:0] for a in arrays[:n_batched]] + arrays[n_batched:]


@pytest.mark.parametrize("name", list(CASES))
def test_empty_batch_gives_empty_output_and_zero_gradients(backend_name, name):
    arrays = CASES[name][1]
    full_rois, empty_rois = (ROI, NO_ROIS) if name in ROI_CASES else (None, None)
    full_out, _ = forward_backward(backend_name, name, arrays, full_rois)
    empty = emptied(name, arrays)
    out, grads = forward_backward(backend_name, name, empty, empty_rois)
    assert out.shape == (0,) + full_out.shape[1:]
    for a, g in zip(empty, grads):
        assert g.shape == a.shape
        np.testing.assert_array_equal(g, np.zeros_like(a))  # weights and bias: zeros; others: empty


def test_empty_batch_through_layers_as_in_torch():
    """nn.Conv2d / BatchNorm2d on an empty training batch: empty output, zero parameter
    gradients; BatchNorm2d counts the batch but keeps its running statistics (torch 2.13)."""
    x = Tensor(np.zeros((0, 3, 6, 6), np.float32), requires_grad=True)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    y = nn.MaxPool2d(2)(bn(conv(x)))
    assert y.shape == (0, 4, 3, 3)
    y.sum().backward()
    for p in list(conv.parameters()) + list(bn.parameters()):
        np.testing.assert_array_equal(host(p.grad), 0)
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert int(bn.num_batches_tracked) == 1


def test_batch_norm_on_an_empty_batch_leaves_the_running_statistics(backend_name):
    with on(backend_name) as device:
        mean, var = Tensor(np.arange(4.0)).to(device), Tensor(np.arange(1.0, 5.0)).to(device)
        F.batch_norm(Tensor(np.zeros((0, 4, 2, 2))).to(device), mean, var, training=True)
        np.testing.assert_array_equal(host(mean), np.arange(4.0))
        np.testing.assert_array_equal(host(var), np.arange(1.0, 5.0))


def test_norms_accept_any_empty_axis():
    """As torch: empty image, empty channels."""
    assert F.group_norm(np.zeros((2, 4, 0, 3)), 2).shape == (2, 4, 0, 3)
    assert F.layer_norm(np.zeros((2, 0, 3, 3))).shape == (2, 0, 3, 3)
    assert F.batch_norm(np.zeros((2, 0, 3)), None, None, training=True).shape == (2, 0, 3)


@pytest.mark.parametrize("call", [
    lambda x: F.conv2d(x, np.zeros((3, 2, 1, 1))),
    lambda x: F.deform_conv2d(x, np.zeros((x.shape[0], 2) + x.shape[2:]), np.zeros((3, 2, 1, 1))),
    lambda x: F.max_pool2d(x, 1),
    lambda x: F.avg_pool2d(x, 1),
])
@pytest.mark.parametrize("shape", [(1, 0, 4, 4), (1, 2, 0, 4), (1, 2, 4, 0), (0, 0, 4, 4)])
def test_empty_channels_or_image_are_refused_as_in_torch(call, shape):
    with pytest.raises(ValueError, match=r"input may have an empty batch \(axis 0\) but no other "
                                         r"zero-sized axis, as in torch, got shape"):
        call(np.zeros(shape))


def test_batch_norm_still_refuses_one_value_per_channel_in_training():
    with pytest.raises(ValueError, match="batch_norm: training needs more than 1 value per channel"):
        F.batch_norm(np.zeros((1, 4, 1, 1)), None, None, training=True)


def test_empty_shapes_and_refusals_match_torch():
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    for name in ("conv2d", "max_pool2d", "avg_pool2d", "group_norm"):
        fn, arrays, _ = CASES[name]
        empty = emptied(name, arrays)
        ours = fn(*[Tensor(a) for a in empty], None).shape
        t = [torch.tensor(a) for a in empty]
        theirs = {"conv2d": lambda: tf.conv2d(*t, stride=(2, 1), padding=1, groups=2),
                  "max_pool2d": lambda: tf.max_pool2d(*t, 3, 2, 1, dilation=(1, 2)),
                  "avg_pool2d": lambda: tf.avg_pool2d(*t, 2, 1, 1, count_include_pad=False),
                  "group_norm": lambda: tf.group_norm(t[0], 2, *t[1:])}[name]().shape
        assert ours == tuple(theirs), name
    with pytest.raises(RuntimeError):
        tf.conv2d(torch.zeros(1, 2, 0, 4), torch.zeros(3, 2, 1, 1), padding=1)
    with pytest.raises(RuntimeError):
        tf.max_pool2d(torch.zeros(1, 0, 4, 4), 1)
    mean, var = torch.zeros(4), torch.ones(4)
    assert tf.batch_norm(torch.zeros(0, 4, 3, 3), mean, var, training=True).shape == (0, 4, 3, 3)
    assert mean.eq(0).all() and var.eq(1).all()


def test_deformable_layers_on_an_empty_batch_and_zero_rois():
    """The layers wrap the ops above: empty output, zero gradients for every parameter."""
    x = Tensor(np.zeros((0, 4, 6, 6), np.float32), requires_grad=True)
    layer = nn.DeformConv2d(4, 3, 3, padding=1, modulated=True)
    layer.record_sampling = True
    y = layer(x)
    y.sum().backward()
    assert y.shape == (0, 3, 6, 6) and layer.last_sampling_locations.shape == (0, 1, 9, 6, 6, 2)
    features = Tensor(np.ones((2, 4, 6, 6), np.float32), requires_grad=True)
    pools = [nn.RoIPool(2, 1.0), nn.RoIAlign(2, 1.0, 2),
             nn.DeformRoIPool(2, 1.0, 2, 0.1, 4, modulated=True, hidden=8)]
    for pool in pools:
        out = pool(features, np.zeros((0, 5), np.float32))
        out.sum().backward()
        assert out.shape == (0, 4, 2, 2)
    np.testing.assert_array_equal(host(features.grad), 0)
    for p in list(layer.parameters()) + list(pools[2].parameters()):
        np.testing.assert_array_equal(host(p.grad), 0)


@pytest.mark.parametrize("shape", [(3, 0), (0, 3), (0, 0)])
def test_log_softmax_of_an_empty_axis_is_empty_as_in_torch(backend_name, shape):
    """log_softmax over a 0-length axis used to fail inside numpy's max, naming nothing."""
    with on(backend_name) as device:
        x = Tensor(np.zeros(shape)).to(device).requires_grad_(True)
        y = F.log_softmax(x, 1)
        y.backward(Tensor(np.ones(shape)).to(device))
        assert y.shape == shape and host(x.grad).shape == shape
