"""RoI pooling layers: RoIAlign, RoIPool, and DeformRoIPool with its offset / mask heads."""

import numpy as np
import pytest

import minidcn
from minidcn import Tensor, nn
from minidcn import functional as F


def _data(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 8, 9)).astype(dtype)
    rois = np.array([[0, 2.0, 3.0, 13.0, 12.0], [1, 0.5, 1.5, 9.0, 15.0], [1, 4.0, 2.0, 16.0, 9.0]],
                    dtype=dtype)
    return x, rois


def test_roi_align_and_roi_pool_modules_are_the_functions():
    x, rois = _data()
    align = nn.RoIAlign((2, 3), 0.5, 2, aligned=True)
    pool = nn.RoIPool(2, 0.5)
    np.testing.assert_array_equal(align(Tensor(x), rois).numpy(),
                                  F.roi_align(Tensor(x), rois, (2, 3), 0.5, 2, True).numpy())
    np.testing.assert_array_equal(pool(Tensor(x), rois).numpy(),
                                  F.roi_pool(Tensor(x), rois, 2, 0.5).numpy())
    assert "aligned=True" in repr(align) and "output_size=(2, 2)" in repr(pool)


@pytest.mark.parametrize("modulated", [False, True])
def test_deform_roi_pool_starts_as_roi_align(modulated):
    x, rois = _data()
    layer = nn.DeformRoIPool(3, 0.5, 2, 0.1, 3, modulated, generator=np.random.default_rng(1))
    layer.record_sampling = True
    got = layer(Tensor(x), rois).numpy()
    want = F.roi_align(Tensor(x), rois, 3, 0.5, 2, aligned=True).numpy()
    np.testing.assert_array_equal(got, want * (0.5 if modulated else 1.0))
    np.testing.assert_array_equal(layer.last_offset, 0.0)
    assert layer.last_mask is None if not modulated else np.all(layer.last_mask == 0.5)
    # zero offsets: the bins tile the RoI
    x1, y1, x2, y2 = rois[1, 1:].astype(np.float64)
    w, h = x2 - x1, y2 - y1
    np.testing.assert_allclose(layer.last_bin_positions[1, 2, 1],
                               [x1 + w / 3, y1 + 2 * h / 3, x1 + 2 * w / 3, y1 + h], rtol=1e-12)


def test_bin_positions_follow_the_predicted_offsets():
    x, rois = _data(np.float64)
    layer = nn.DeformRoIPool((2, 2), 0.5, 2, 0.2, 3, hidden=(), dtype=np.float64)
    layer.record_sampling = True
    head = layer.offset_fc[0]
    head.bias.data = np.array([0.5, -1.0, 0.0, 0.25, 1.0, 0.0, -0.5, 0.75])  # x then y, per bin
    layer(Tensor(x), rois)
    offset = head.bias.data.reshape(2, 2, 2)
    x1, y1, x2, y2 = rois[0, 1:]
    w, h = x2 - x1, y2 - y1
    for i in range(2):
        for j in range(2):
            left = x1 + j * w / 2 + 0.2 * offset[0, i, j] * w
            top = y1 + i * h / 2 + 0.2 * offset[1, i, j] * h
            np.testing.assert_allclose(layer.last_bin_positions[0, i, j],
                                       [left, top, left + w / 2, top + h / 2], rtol=1e-12)


def test_gradients_reach_the_heads_and_the_features():
    x, rois = _data()
    layer = nn.DeformRoIPool(2, 0.5, 2, 0.1, 3, modulated=True, hidden=(4,),
                             generator=np.random.default_rng(2))
    t = Tensor(x, requires_grad=True)
    layer(t, rois).sum().backward()
    last_offset, last_mask = layer.offset_fc[2], layer.mask_fc[2]
    for p in (last_offset.weight, last_offset.bias, last_mask.weight, last_mask.bias):
        assert p.grad is not None and np.isfinite(p.grad.numpy()).all()
        assert np.abs(p.grad.numpy()).max() > 0
    assert np.abs(t.grad.numpy()).max() > 0


def test_whole_module_gradcheck():
    """Features reach the output through the heads (offsets, mask) and the pooling itself."""
    x, rois = _data(np.float64, seed=3)
    rois[:, 1:] = [[4.0, 4.2, 10.0, 9.0], [3.1, 3.3, 11.0, 10.4], [5.2, 4.1, 12.3, 11.2]]
    layer = nn.DeformRoIPool(2, 0.5, 2, 0.1, 3, modulated=True, hidden=(3,),
                             generator=np.random.default_rng(4), dtype=np.float64)
    rng = np.random.default_rng(5)
    for head in (layer.offset_fc, layer.mask_fc):
        head[2].weight.data = 0.05 * rng.standard_normal(head[2].weight.shape)
    with minidcn.backend("reference"):
        minidcn.gradcheck(lambda t: layer(t, rois), [Tensor(x, requires_grad=True)],
                          max_entries=64, directions=8)


def test_parameters_state_dict_and_lr_mult():
    layer = nn.DeformRoIPool(2, 1.0, 0, 0.1, 4, modulated=True, hidden=(5, 6), offset_lr_mult=0.1)
    names = [n for n, _ in layer.named_parameters()]
    assert names == ["offset_fc.0.weight", "offset_fc.0.bias", "offset_fc.2.weight",
                     "offset_fc.2.bias", "offset_fc.4.weight", "offset_fc.4.bias",
                     "mask_fc.0.weight", "mask_fc.0.bias", "mask_fc.2.weight", "mask_fc.2.bias",
                     "mask_fc.4.weight", "mask_fc.4.bias"]
    assert layer.offset_fc[0].weight.shape == (5, 16) and layer.offset_fc[4].weight.shape == (8, 6)
    assert all(p.lr_mult == 0.1 for p in layer.parameters())
    other = nn.DeformRoIPool(2, 1.0, 0, 0.1, 4, modulated=True, hidden=(5, 6))
    other.load_state_dict(layer.state_dict())
    for (_, a), (_, b) in zip(layer.named_parameters(), other.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("make, error, text", [
    (lambda: nn.DeformRoIPool(2, 1.0, 0, 0.1, 0), ValueError, "in_channels must be >= 1"),
    (lambda: nn.DeformRoIPool(2, 1.0, 0, 0.1, 3, hidden=(4, 0)), ValueError, "hidden must be >= 1"),
    (lambda: nn.DeformRoIPool(2, 1.0, 0, 0.1, 3, hidden=2.5), TypeError, "hidden must be an int"),
    (lambda: nn.DeformRoIPool(0, 1.0, 0, 0.1, 3), ValueError, "output_size must be >= 1"),
    (lambda: nn.DeformRoIPool(2, 1.0, 0, 0.1, 3, dtype=np.int32), TypeError, "float32 or float64"),
    (lambda: nn.RoIAlign(2, 1.0, 0.5), TypeError, "sampling_ratio must be an int"),
    (lambda: nn.RoIPool(2, "1"), TypeError, "spatial_scale must be a real number"),
    (lambda: nn.DeformRoIPool(2**30, 1.0, 0, 0.1, 1), ValueError,
     "output_size (1073741824, 1073741824) with in_channels=1 and hidden=(256,) makes a head "
     "weight of about 2**69 entries"),  # was numpy's "array is too big"
    (lambda: nn.DeformRoIPool(2, 1.0, 0, 0.1, 2**62, hidden=()), ValueError,
     "in_channels must be at most"),
])
def test_bad_layer_arguments(make, error, text):
    with pytest.raises(error) as info:
        make()
    assert text in str(info.value)


def test_wrong_input_channels():
    layer = nn.DeformRoIPool(2, 1.0, 0, 0.1, 4)
    x, rois = _data()
    with pytest.raises(ValueError, match=r"input must have shape \(B, 4, H, W\)"):
        layer(Tensor(x), rois)


def test_deform_roi_pool_records_only_when_asked():
    """Training pays for no host copies: a forward without recording keeps nothing, and
    reading then says how to turn recording on; nn.recording_sampling turns it on for a
    block and restores the flag."""
    x, rois = _data()
    layer = nn.DeformRoIPool(2, 0.5, 2, 0.1, 3, modulated=True, hidden=(4,))
    layer(Tensor(x), rois)
    for name in ("last_offset", "last_mask", "last_bin_positions"):
        with pytest.raises(RuntimeError, match=f"DeformRoIPool: {name} is kept only by a forward"):
            getattr(layer, name)
    model = nn.Sequential(nn.ReLU())
    model.pool = layer
    with nn.recording_sampling(model):
        layer(Tensor(x), rois)
    assert not layer.record_sampling
    assert layer.last_offset.shape == (len(rois), 2, 2, 2) and layer.last_mask.shape == (len(rois), 1, 2, 2)
    layer(Tensor(x), rois)  # recording off again: the old recording is forgotten, not shown stale
    with pytest.raises(RuntimeError, match="record_sampling = True"):
        layer.last_bin_positions
