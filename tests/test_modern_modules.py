"""The modern deformable blocks: nn.DCNv3, nn.DCNv4, nn.MultiScaleDeformableAttention.

* shapes, and what the papers' initialisation makes them compute at the start (a depthwise
  box filter between the projections for DCNv3, zeros for DCNv4, each head looking along its
  own ray with uniform weights for deformable attention), checked against NumPy;
* float64 gradcheck of tiny blocks end to end on the host backends, the gradients of the
  input and of parameters from every branch; the cuda backend agrees with the host;
* state_dict round trips, refusals of bad arguments naming them;
* optional torch cross-checks: each block re-written in torch from the papers' facts
  (the cores with grid_sample, from the cores' own tests), loaded with our state_dict.
"""

import math

import numpy as np
import pytest

import minidcn
from minidcn import Tensor, nn
from minidcn import functional as F
from tests.helpers import host, on

rng = np.random.default_rng


def randn(*shape, seed=0, scale=1.0):
    return scale * rng(seed).standard_normal(shape)


def parameter(module, name):
    for part in name.split("."):
        module = getattr(module, part)
    return module


def assign(module, name, value):
    """Replace the parameter ``name`` ("dw_conv.0.weight") with ``value`` (a Tensor)."""
    owner, _, attr = name.rpartition(".")
    setattr(parameter(module, owner) if owner else module, attr, value)


def randomise(module, seed, scale=0.3):
    """Every parameter drawn at random (the heads too, which start at zero)."""
    for k, (name, p) in enumerate(module.named_parameters()):
        p.data[...] = randn(*p.shape, seed=seed + k, scale=scale)
    return module


def as_pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def linear(x, module):
    return x @ module.weight.numpy().T + module.bias.numpy()


def window_sum(value, kernel, stride, padding, dilation, remove_center=False):
    """Σ over the kernel's points of the zero-padded value (N, H, W, C) at each output."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, h, w, c = value.shape
    padded = np.zeros((n, h + 2 * ph, w + 2 * pw, c))
    padded[:, ph:ph + h, pw:pw + w] = value
    out_h, out_w = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    total = np.zeros((n, out_h, out_w, c))
    for j in range(kh):
        for i in range(kw):
            if remove_center and (i, j) == (kw // 2, kh // 2):
                continue
            total += padded[:, j * dh:j * dh + sh * (out_h - 1) + 1:sh,
                            i * dw:i * dw + sw * (out_w - 1) + 1:sw]
    return total


# ---------------------------------------------------------------------------- DCNv3
@pytest.mark.parametrize("kwargs, points", [
    ({}, 9),
    ({"stride": 2}, 9),
    ({"remove_center": True}, 8),
    ({"kernel_size": 5, "padding": 4, "dilation": 2}, 25),
])
def test_dcnv3_at_initialisation_is_a_box_filter_between_the_projections(kwargs, points):
    """Zero offset and mask heads: every point at its grid position, each weighted
    softmax(0) = 1/P, so the core averages the value over the kernel's window."""
    block = nn.DCNv3(8, group=2, dtype=np.float64, generator=rng(1), **kwargs)
    assert np.all(block.offset.weight.numpy() == 0) and np.all(block.mask.bias.numpy() == 0)
    x = randn(2, 7, 6, 8)
    out = block(Tensor(x)).numpy()
    geometry = [as_pair(kwargs.get(k, d)) for k, d in
                (("kernel_size", 3), ("stride", 1), ("padding", 1), ("dilation", 1))]
    box = window_sum(linear(x, block.input_proj), *geometry,
                     remove_center=kwargs.get("remove_center", False)) / points
    expected = linear(box, block.output_proj)
    assert out.shape == expected.shape == (2, math.ceil(7 / block.stride[0]),
                                           math.ceil(6 / block.stride[1]), 8)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-13)


def test_dcnv3_initial_weights_follow_internimage():
    block = nn.DCNv3(64, group=4, generator=rng(2))
    bound = math.sqrt(6 / (64 + 64))  # xavier-uniform of a (64, 64) weight
    for layer in (block.input_proj, block.output_proj):
        w = layer.weight.numpy()
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
        assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound  # U(-b, b) has std b/√3
        assert np.all(layer.bias.numpy() == 0)
    for head in (block.offset, block.mask):
        assert np.all(head.weight.numpy() == 0) and np.all(head.bias.numpy() == 0)
    assert block.offset.out_features == 4 * 9 * 2 and block.mask.out_features == 4 * 9
    conv = block.dw_conv[0]
    assert (conv.groups, conv.kernel_size, conv.padding) == (64, (3, 3), (1, 1))
    norm = block.dw_conv[1][1]
    assert norm.channels_last and norm.eps == 1e-6
    assert block.input_proj.weight.dtype == np.float32


def test_dcnv3_mask_is_a_softmax_over_each_groups_points():
    """With mask logits from the bias alone, each group's P weights are their softmax:
    one large logit per group picks that point, which with zero offsets is a shift."""
    block = nn.DCNv3(4, group=2, dtype=np.float64, generator=rng(3))
    logits = np.full((2, 9), -40.0)
    logits[0, 3] = logits[1, 5] = 40.0  # group 0: point 3 = (i, j) = (1, 0); group 1: (1, 2)
    block.mask.bias.data[...] = logits.reshape(-1)
    x = randn(1, 5, 5, 4, seed=4)
    value = linear(x, block.input_proj)
    padded = np.pad(value, ((0, 0), (1, 1), (1, 1), (0, 0)))
    picked = np.concatenate([padded[:, 0:5, 1:6, :2], padded[:, 2:7, 1:6, 2:]], -1)
    np.testing.assert_allclose(block(Tensor(x)).numpy(), linear(picked, block.output_proj),
                               rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------- DCNv4
def test_dcnv4_starts_at_zero_and_its_modulation_is_raw_and_packed_per_group():
    block = nn.DCNv4(8, group=2, dtype=np.float64, generator=rng(5))
    packed = 2 * 3 * 9
    assert block.offset_mask.out_features == 56 == 8 * math.ceil(packed / 8)
    x = randn(2, 5, 4, 8, seed=6)
    assert np.all(block(Tensor(x)).numpy() == 0)  # modulation 0, output_proj's bias 0
    bias = np.zeros(56)
    for g in range(2):
        bias[g * 27 + 18:g * 27 + 27] = 1.0  # group g's 9 modulation scalars, after 18 offsets
    bias[packed:] = 123.0  # the padding channels are ignored
    block.offset_mask.bias.data[...] = bias
    box = window_sum(linear(x, block.value_proj), (3, 3), (1, 1), (1, 1), (1, 1))  # no softmax
    np.testing.assert_allclose(block(Tensor(x)).numpy(), linear(box, block.output_proj),
                               rtol=1e-12, atol=1e-13)


def test_dcnv4_initial_weights_follow_dcnv4():
    block = nn.DCNv4(32, group=2, generator=rng(7))
    assert sorted(block.state_dict()) == sorted(
        f"{layer}.{p}" for layer in ("value_proj", "offset_mask", "output_proj")
        for p in ("weight", "bias"))
    assert np.all(block.offset_mask.weight.numpy() == 0)
    assert np.all(block.offset_mask.bias.numpy() == 0)
    for layer in (block.value_proj, block.output_proj):
        assert np.abs(layer.weight.numpy()).max() <= math.sqrt(6 / 64)
        assert np.all(layer.bias.numpy() == 0)


# ---------------------------------------------------------------------------- attention
def test_attention_offsets_start_on_each_heads_ray():
    block = nn.MultiScaleDeformableAttention(16, num_heads=8, num_levels=3, num_points=4)
    assert np.all(block.sampling_offsets.weight.numpy() == 0)
    bias = block.sampling_offsets.bias.numpy().reshape(8, 3, 4, 2)
    rays = np.array([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]])
    for p in range(4):
        for level in range(3):
            np.testing.assert_allclose(bias[:, level, p], (p + 1) * rays, atol=1e-6)
    assert np.all(block.attention_weights.weight.numpy() == 0)
    assert np.all(block.attention_weights.bias.numpy() == 0)
    for layer in (block.value_proj, block.output_proj):
        assert np.abs(layer.weight.numpy()).max() <= math.sqrt(6 / 32)
        assert np.all(layer.bias.numpy() == 0)


def bilinear(image, u, v):
    """image (H, W, D) read at normalised (u, v) as grid_sample(align_corners=False, zeros)."""
    h, w, _ = image.shape
    x, y = u * w - 0.5, v * h - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    total = np.zeros(image.shape[2])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * image[yy, xx]
    return total


@pytest.mark.parametrize("per_level", [False, True])
def test_attention_at_initialisation_averages_the_points_on_each_heads_ray(per_level):
    """Uniform weights 1/(L·P); head m reads level l at r + (p + 1) ray_m / (W_l, H_l)."""
    heads, levels, points, e = 2, 2, 3, 4
    block = nn.MultiScaleDeformableAttention(e, heads, levels, points, dtype=np.float64,
                                             generator=rng(8))
    shapes = [(4, 5), (2, 3)]
    query, value = randn(2, 3, e, seed=9), randn(2, 26, e, seed=10)
    reference = rng(11).uniform(0.1, 0.9, (2, 3, levels, 2) if per_level else (2, 3, 2))
    out = block(Tensor(query), Tensor(reference), Tensor(value), shapes).numpy()
    projected = linear(value, block.value_proj).reshape(2, 26, heads, e // heads)
    rays = np.array([[1.0, 0.0], [-1.0, 0.0]])
    expected = np.zeros((2, 3, e))
    for n in range(2):
        for q in range(3):
            for m in range(heads):
                start = 0
                for level, (h, w) in enumerate(shapes):
                    image = projected[n, start:start + h * w, m].reshape(h, w, -1)
                    r = reference[n, q, level] if per_level else reference[n, q]
                    for p in range(points):
                        u, v = r + (p + 1) * rays[m] / (w, h)
                        expected[n, q, m * 2:(m + 1) * 2] += bilinear(image, u, v) / (levels * points)
                    start += h * w
    np.testing.assert_allclose(out, linear(expected, block.output_proj), rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------- gradients
def small_blocks():
    """(name, block, input arrays, forward(block, *tensors), parameters checked)."""
    dcnv3 = randomise(nn.DCNv3(4, group=2, dtype=np.float64), seed=20)
    dcnv4 = randomise(nn.DCNv4(4, group=2, dtype=np.float64), seed=30)
    attention = randomise(nn.MultiScaleDeformableAttention(4, 2, 2, 2, dtype=np.float64), 40)
    shapes = [(3, 3), (2, 2)]
    return [
        ("DCNv3", dcnv3, [randn(1, 3, 3, 4, seed=21)], lambda b, x: b(x),
         ["input_proj.weight", "dw_conv.0.weight", "dw_conv.1.1.weight", "offset.weight",
          "mask.bias", "output_proj.bias"]),
        ("DCNv4", dcnv4, [randn(1, 3, 3, 4, seed=31)], lambda b, x: b(x),
         ["value_proj.weight", "offset_mask.weight", "output_proj.weight"]),
        ("MultiScaleDeformableAttention", attention,
         [randn(1, 2, 4, seed=41), rng(42).uniform(0.2, 0.8, (1, 2, 2)), randn(1, 13, 4, seed=43)],
         lambda b, q, r, v: b(q, r, v, shapes),
         ["sampling_offsets.weight", "attention_weights.bias", "value_proj.weight",
          "output_proj.weight"]),
    ]


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("index", range(3), ids=["DCNv3", "DCNv4", "attention"])
def test_gradcheck_of_a_tiny_block_end_to_end(backend, index):
    """The inputs and one parameter of every branch, by finite differences."""
    _, block, arrays, forward, names = small_blocks()[index]

    def fn(*tensors):
        inputs, params = tensors[:len(arrays)], tensors[len(arrays):]
        for name, value in zip(names, params):
            assign(block, name, value)
        return forward(block, *inputs)

    values = [Tensor(a, requires_grad=True) for a in arrays]
    values += [Tensor(parameter(block, n).numpy().copy(), requires_grad=True) for n in names]
    with minidcn.backend(backend):
        assert minidcn.gradcheck(fn, values)


@pytest.mark.cuda
@pytest.mark.parametrize("index", range(3), ids=["DCNv3", "DCNv4", "attention"])
def test_a_block_on_cuda_agrees_with_the_host(index):
    results = {}
    for device in ("cpu", "cuda"):
        _, block, arrays, forward, _ = small_blocks()[index]
        with on("cuda" if device == "cuda" else "numba"):
            block.to(device)
            inputs = [Tensor(a).to(device).requires_grad_() for a in arrays]
            out = forward(block, *inputs)
            out.backward(Tensor(randn(*out.shape, seed=50)).to(device))
            assert out.device == device
            results[device] = [host(out)] + [host(t.grad) for t in inputs] + [
                host(p.grad) for p in block.parameters()]
    for got, want in zip(results["cuda"], results["cpu"]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- state
@pytest.mark.parametrize("make, arrays", [
    (lambda g: nn.DCNv3(8, group=2, generator=g), [randn(1, 4, 4, 8)]),
    (lambda g: nn.DCNv4(8, group=2, generator=g), [randn(1, 4, 4, 8)]),
    (lambda g: nn.MultiScaleDeformableAttention(8, 2, 1, 2, generator=g),
     [randn(1, 3, 8), rng(0).uniform(0, 1, (1, 3, 2)), randn(1, 12, 8)]),
])
def test_state_dict_round_trip(tmp_path, make, arrays):
    first, second = randomise(make(rng(60)), seed=61), make(rng(62))
    inputs = [Tensor(a, dtype=np.float32) for a in arrays]
    extra = [[(3, 4)]] if len(arrays) == 3 else []
    assert not np.allclose(first(*inputs, *extra).numpy(), second(*inputs, *extra).numpy())
    first.save(tmp_path / "block.npz")
    second.load_state_dict(str(tmp_path / "block.npz"))
    np.testing.assert_array_equal(first(*inputs, *extra).numpy(), second(*inputs, *extra).numpy())
    third = make(rng(63))
    third.load_state_dict(first.state_dict())
    np.testing.assert_array_equal(first(*inputs, *extra).numpy(), third(*inputs, *extra).numpy())


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("call, error, message", [
    (lambda: nn.DCNv3(6, group=4), ValueError, "DCNv3: channels = 6 must be divisible by group = 4"),
    (lambda: nn.DCNv3(8, group=0), ValueError, "DCNv3: group must be >= 1, got 0"),
    (lambda: nn.DCNv3(8, offset_scale=float("nan")), ValueError, "DCNv3: offset_scale must be finite"),
    (lambda: nn.DCNv3(8, kernel_size=4, padding=1, remove_center=True), ValueError,
     "DCNv3: remove_center needs an odd square kernel"),
    (lambda: nn.DCNv3(8, remove_center=1), TypeError, "DCNv3: remove_center must be a bool"),
    (lambda: nn.DCNv3(8, kernel_size=5), ValueError,
     r"DCNv3: padding \(1, 1\) does not keep .* kernel_size 5 and dilation 1 the height needs "
     r"padding 2"),
    (lambda: nn.DCNv3(8, dilation=(1, 2)), ValueError, "the width needs padding 2"),
    (lambda: nn.DCNv3(8, dtype=np.int32), TypeError, "DCNv3: dtype must be float32 or float64"),
    (lambda: nn.DCNv4(8, stride=2), ValueError, "DCNv4: stride must be 1, got 2"),
    (lambda: nn.DCNv4(8, kernel_size=2, padding=0), ValueError,
     r"DCNv4: .* the height needs padding 0.5, not an integer"),
    (lambda: nn.DCNv4("8"), TypeError, "DCNv4: channels must be an int, got str"),
    (lambda: nn.MultiScaleDeformableAttention(10, num_heads=4), ValueError,
     "MultiScaleDeformableAttention: embed_dims = 10 must be divisible by num_heads = 4"),
    (lambda: nn.MultiScaleDeformableAttention(8, 2, 1, 0), ValueError,
     "MultiScaleDeformableAttention: num_points must be >= 1, got 0"),
    # sizes past the element limit are refused naming the block's arguments (they were
    # refused by an inner Linear naming its in_features and out_features: the battery)
    (lambda: nn.DCNv3(2**20, group=1), ValueError,
     r"DCNv3: the projections' weight would have shape \(1048576, 1048576\), .*check channels"),
    (lambda: nn.DCNv4(8, kernel_size=2**16 + 1, padding=2**15), ValueError,
     r"DCNv4: the offset head's weight would have shape \(51541180435, 8\), .*check channels, "
     r"group and kernel_size"),
    (lambda: nn.MultiScaleDeformableAttention(8, 2, 2**16, 2**16), ValueError,
     r"MultiScaleDeformableAttention: sampling_offsets' weight would have shape "
     r"\(17179869184, 8\), .*check embed_dims, num_heads, num_levels and num_points"),
    (lambda: nn.MultiScaleDeformableAttention(2**20, 1, 1, 1), ValueError,
     r"MultiScaleDeformableAttention: the projections' weight .*check embed_dims"),
])
def test_constructors_refuse_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_dcnv3_and_dcnv4_refuse_inputs_that_are_not_channels_last():
    for block in (nn.DCNv3(8, group=2), nn.DCNv4(8, group=2)):
        name = type(block).__name__
        with pytest.raises(ValueError, match=rf"{name}: input must be channels-last \(N, H, W, C\) "
                                             rf"with C = 8, got shape \(1, 8, 4, 4\)"):
            block(Tensor(np.zeros((1, 8, 4, 4), np.float32)))
        with pytest.raises(ValueError, match=rf"{name}: input must be channels-last"):
            block(Tensor(np.zeros((4, 4, 8), np.float32)))


def attention_inputs(**changes):
    args = dict(query=np.zeros((2, 3, 8), np.float32),
                reference_points=np.full((2, 3, 2), 0.5, np.float32),
                value=np.zeros((2, 20, 8), np.float32), spatial_shapes=[(4, 4), (2, 2)])
    args.update(changes)
    return {k: Tensor(v) if k != "spatial_shapes" else v for k, v in args.items()}


@pytest.mark.parametrize("changes, error, message", [
    (dict(query=np.zeros((2, 3, 6), np.float32)), ValueError,
     r"query must be \(N, Q, E\) with E = embed_dims = 8, got shape \(2, 3, 6\)"),
    (dict(value=np.zeros((2, 20), np.float32)), ValueError, r"value must be \(N, S, E\)"),
    (dict(value=np.zeros((1, 20, 8), np.float32)), ValueError,
     r"value must have query's batch N = 2, got shape \(1, 20, 8\)"),
    (dict(reference_points=np.zeros((2, 3, 3, 2), np.float32)), ValueError,
     r"reference_points must have shape \(N, Q, 2\) = \(2, 3, 2\) or \(N, Q, L, 2\) = "
     r"\(2, 3, 2, 2\), normalised \(x, y\), got \(2, 3, 3, 2\)"),
    (dict(reference_points=np.zeros((2, 3, 2))), TypeError,
     "MultiScaleDeformableAttention: all tensors must have one dtype"),
    (dict(spatial_shapes=[(4, 4), (2, 3)]), ValueError, r"spatial_shapes \[\[4, 4\], \[2, 3\]\] covers"),
    (dict(spatial_shapes=[(4, 4), (2, 1), (1, 2)]), ValueError,
     "spatial_shapes must have num_levels = 2 rows, got 3"),
    (dict(spatial_shapes=np.array([[4.0, 4.0], [2.0, 2.0]])), TypeError,
     "spatial_shapes must hold integers"),
])
def test_attention_refuses_bad_inputs_by_name(changes, error, message):
    block = nn.MultiScaleDeformableAttention(8, num_heads=2, num_levels=2, num_points=2)
    with pytest.raises(error, match=message):
        block(**attention_inputs(**changes))


# ---------------------------------------------------------------------------- torch
def torch_state(torch, block):
    return {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in block.state_dict().items()}


def compare_with_torch(torch, block, arrays, forward, torch_forward):
    """Our block and its torch re-writing on the same weights: output, input gradients and
    every parameter gradient to 1e-10 (float64)."""
    inputs = [Tensor(a, requires_grad=True) for a in arrays]
    out = forward(block, *inputs)
    g = randn(*out.shape, seed=70)
    (out * Tensor(g)).sum().backward()
    state = torch_state(torch, block)
    torch_inputs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out_t = torch_forward(state, *torch_inputs)
    (out_t * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(out.numpy(), out_t.detach().numpy(), rtol=0, atol=1e-10)
    for t, t_t in zip(inputs, torch_inputs):
        np.testing.assert_allclose(t.grad.numpy(), t_t.grad.numpy(), rtol=0, atol=1e-10)
    for name, p in block.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), state[name].grad.numpy(), rtol=0, atol=1e-10,
                                   err_msg=name)


def test_dcnv3_block_matches_torch():
    torch = pytest.importorskip("torch")
    from tests.test_dcnv3 import torch_dcnv3

    TF = torch.nn.functional
    block = randomise(nn.DCNv3(6, group=3, stride=2, dtype=np.float64), seed=80, scale=0.4)

    def torch_block(s, x):
        value = TF.linear(x, s["input_proj.weight"], s["input_proj.bias"])
        f = TF.conv2d(x.permute(0, 3, 1, 2), s["dw_conv.0.weight"], s["dw_conv.0.bias"],
                      stride=2, padding=1, groups=6).permute(0, 2, 3, 1)
        f = TF.gelu(TF.layer_norm(f, (6,), s["dw_conv.1.1.weight"], s["dw_conv.1.1.bias"], 1e-6))
        offset = TF.linear(f, s["offset.weight"], s["offset.bias"])
        n, h, w, _ = f.shape
        mask = torch.softmax(TF.linear(f, s["mask.weight"], s["mask.bias"]).reshape(n, h, w, 3, 9),
                             -1).reshape(n, h, w, 27)
        out = torch_dcnv3(torch, value, offset, mask, (3, 3), (2, 2), (1, 1), (1, 1), 3, 1.0,
                          False)
        return TF.linear(out, s["output_proj.weight"], s["output_proj.bias"])

    compare_with_torch(torch, block, [randn(2, 5, 6, 6, seed=81)], lambda b, x: b(x), torch_block)


def test_dcnv4_block_matches_torch():
    torch = pytest.importorskip("torch")
    from tests.test_dcnv3 import torch_dcnv3

    TF = torch.nn.functional
    block = randomise(nn.DCNv4(4, group=2, offset_scale=0.5, dtype=np.float64), seed=90,
                      scale=0.4)

    def torch_block(s, x):
        value = TF.linear(x, s["value_proj.weight"], s["value_proj.bias"])
        packed = TF.linear(x, s["offset_mask.weight"], s["offset_mask.bias"])
        n, h, w, _ = x.shape
        per_group = packed[..., :2 * 27].reshape(n, h, w, 2, 27)
        offset = per_group[..., :18].reshape(n, h, w, 36)
        modulation = per_group[..., 18:].reshape(n, h, w, 18)
        out = torch_dcnv3(torch, value, offset, modulation, (3, 3), (1, 1), (1, 1), (1, 1), 2,
                          0.5, False)
        return TF.linear(out, s["output_proj.weight"], s["output_proj.bias"])

    compare_with_torch(torch, block, [randn(1, 4, 5, 4, seed=91)], lambda b, x: b(x), torch_block)


def test_attention_block_matches_torch():
    torch = pytest.importorskip("torch")
    from tests.test_multi_scale_deform_attn import torch_multi_scale_deform_attn

    TF = torch.nn.functional
    shapes = [(4, 5), (2, 3)]
    block = randomise(nn.MultiScaleDeformableAttention(6, 3, 2, 2, dtype=np.float64), seed=100,
                      scale=0.4)

    def torch_block(s, query, reference, value):
        n, q, _ = query.shape
        v = TF.linear(value, s["value_proj.weight"], s["value_proj.bias"]).reshape(n, 26, 3, 2)
        offsets = TF.linear(query, s["sampling_offsets.weight"],
                            s["sampling_offsets.bias"]).reshape(n, q, 3, 2, 2, 2)
        weights = torch.softmax(TF.linear(query, s["attention_weights.weight"],
                                          s["attention_weights.bias"]).reshape(n, q, 3, 4),
                                -1).reshape(n, q, 3, 2, 2)
        normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)
        locations = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :,
                                                                             None, :]
        out = torch_multi_scale_deform_attn(torch, v, np.array(shapes), locations, weights)
        return TF.linear(out, s["output_proj.weight"], s["output_proj.bias"])

    arrays = [randn(2, 3, 6, seed=101), rng(102).uniform(0.1, 0.9, (2, 3, 2, 2)),
              randn(2, 26, 6, seed=103)]
    compare_with_torch(torch, block, arrays, lambda b, q, r, v: b(q, r, v, shapes), torch_block)


# ---------------------------------------------------------------------------- building blocks
def test_xavier_uniform_and_constant_overwrite_a_parameter_in_place():
    conv_weight = nn.Parameter(np.zeros((6, 2, 3, 3), np.float32))
    same = nn.init.xavier_uniform_(conv_weight, rng(110))
    assert same is conv_weight and conv_weight.dtype == np.float32
    bound = math.sqrt(6 / (2 * 9 + 6 * 9))  # fans: in 2·3·3, out 6·3·3, as torch counts them
    w = conv_weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert nn.init.constant_(conv_weight, 0.25) is conv_weight
    assert np.all(conv_weight.numpy() == 0.25)
    with pytest.raises(ValueError, match=r"xavier_uniform_: the weight must be at least 2-D "
                                         r"\(fan_out, fan_in, ...\), got shape \(3,\)"):
        nn.init.xavier_uniform_(nn.Parameter(np.zeros(3)))


def test_permute_module():
    x = randn(2, 3, 4, 5)
    np.testing.assert_array_equal(nn.Permute((0, 2, 3, 1))(Tensor(x)).numpy(),
                                  x.transpose(0, 2, 3, 1))
    assert repr(nn.Permute([0, 2, 3, 1])) == "Permute(dims=(0, 2, 3, 1))"
    with pytest.raises(ValueError, match=r"Permute: dims must be a permutation of 0..2, got "
                                         r"\(0, 1, 1\)"):
        nn.Permute((0, 1, 1))
    with pytest.raises(TypeError, match="Permute: dims must be a tuple of ints, got 3"):
        nn.Permute(3)
