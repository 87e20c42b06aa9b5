"""Deformable convolution v1 / v2: gradients, the properties that tie it to conv2d, borders,
bad input, and the DeformConv2d layer."""

import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidcn
from minidcn import Tensor, nn
from minidcn import functional as F
from minidcn.backends import reference
from helpers import gradcheck_on, host, on, run, tensors

# The cuda simulator runs every thread in Python (about 0.2 s per deform_conv2d call), so
# cuda gets fewer hypothesis examples and a gradcheck along random directions.
EXAMPLES = {"reference": 20, "numba": 10, "cuda": 2}
CUDA_GRADCHECK = dict(max_entries=0, directions=2)
INPUTS = ("x", "offset", "weight", "mask", "bias")


@dataclass
class Geometry:
    batch: int
    in_channels: int
    out_channels: int
    size: tuple
    kernel: tuple
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    seed: int = 0

    @property
    def out_size(self):
        return tuple((n + 2 * p - (d * (k - 1) + 1)) // s + 1 for n, k, s, p, d in
                     zip(self.size, self.kernel, self.stride, self.padding, self.dilation))

    @property
    def params(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)

    def arrays(self, **replace):
        """[x, offset, weight, mask, bias], random, with the entries named in ``replace`` swapped.

        Offsets have fractional parts in [0.1, 0.9], so no sample sits within reach of a kink.
        """
        rng = np.random.default_rng(self.seed)
        kh, kw = self.kernel
        points = self.offset_groups * kh * kw
        offset_shape = (self.batch, 2 * points) + self.out_size
        drawn = dict(
            x=rng.standard_normal((self.batch, self.in_channels) + self.size),
            offset=rng.integers(-3, 3, size=offset_shape) + rng.uniform(0.1, 0.9, offset_shape),
            weight=rng.standard_normal((self.out_channels, self.in_channels // self.groups) +
                                       self.kernel),
            mask=rng.uniform(0.2, 1.0, size=(self.batch, points) + self.out_size),
            bias=rng.standard_normal(self.out_channels),
        )
        drawn.update(replace)
        return [drawn[name] for name in INPUTS]


def deform(geometry):
    """fn(x, offset, weight, mask=None, bias=None) -> deform_conv2d with the geometry's params."""
    def fn(x, offset, weight, mask=None, bias=None):
        return F.deform_conv2d(x, offset, weight, bias, mask=mask, **geometry.params)
    return fn


def seeded_grad(shape):
    """The output gradient helpers.run() seeds backward with."""
    return np.random.default_rng(0).standard_normal(shape)


def assert_close(a, b, atol=1e-12):
    np.testing.assert_allclose(a, b, rtol=0, atol=atol * (1 + np.max(np.abs(b), initial=0)))


@st.composite
def geometries(draw):
    groups, offset_groups = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    size = tuple(draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 6))
                 for k, p, d in zip(kernel, padding, dilation))
    return Geometry(batch=draw(st.integers(1, 2)), in_channels=2 * draw(st.integers(1, 2)),
                    out_channels=groups * draw(st.integers(1, 2)), size=size, kernel=kernel,
                    stride=stride, padding=padding, dilation=dilation, groups=groups,
                    offset_groups=offset_groups, seed=draw(st.integers(0, 2**16)))


def for_each_geometry(backend_name, check):
    """Run ``check(geometry)`` over hypothesis-drawn geometries, fewer on slow backends."""
    @settings(max_examples=EXAMPLES[backend_name])
    @given(geometries())
    def property_holds(geometry):
        check(geometry)

    property_holds()


SMALL = Geometry(batch=2, in_channels=4, out_channels=4, size=(5, 6), kernel=(2, 3),
                 stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, offset_groups=2, seed=11)
GRADCHECK = Geometry(batch=1, in_channels=4, out_channels=4, size=(4, 6), kernel=(2, 2),
                     stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, offset_groups=2,
                     seed=10)
TINY = Geometry(batch=1, in_channels=2, out_channels=2, size=(3, 4), kernel=(2, 2),
                padding=(1, 0), groups=2, offset_groups=2, seed=12)


def small_for(backend_name):
    return TINY if backend_name == "cuda" else SMALL


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("modulated", [True, False], ids=["v2", "v1"])
def test_gradcheck_every_input(backend_name, modulated):
    geometry = TINY if backend_name == "cuda" else GRADCHECK
    inputs = geometry.arrays() if modulated else geometry.arrays(mask=None)
    names = ["input", "offset", "weight", "mask", "bias"]
    options = CUDA_GRADCHECK if backend_name == "cuda" else {}
    assert gradcheck_on(backend_name, deform(geometry), *inputs, names=names, **options)


def test_offset_gradient_at_integer_positions_is_one_sided_toward_plus_one(backend_name):
    """Integer offsets put every sample on a kink; the gradient is the right derivative.

    With padding 1 some samples sit exactly on the row y = -1 or the column x = -1 of the
    zero border, where the value is 0 but the right derivative is not.
    """
    g = Geometry(batch=1, in_channels=2, out_channels=2, size=(2, 2), kernel=(3, 3),
                 padding=(1, 1), seed=13)
    x, offset, weight, mask, _ = g.arrays()
    offset = np.random.default_rng(14).integers(-1, 2, size=offset.shape).astype(float)
    u = seeded_grad((1, 2) + g.out_size)

    def loss(off):
        y = reference.deform_conv2d_forward(x, off, mask, weight, None, g.stride, g.padding,
                                            g.dilation, 1, 1)
        return np.sum(u * y)

    step, at = 1e-6, loss(offset)
    right, left = np.zeros(offset.shape), np.zeros(offset.shape)
    for j in np.ndindex(offset.shape):
        e = np.zeros(offset.shape)
        e[j] = step
        right[j] = (loss(offset + e) - at) / step
        left[j] = (at - loss(offset - e)) / step
    _, (_, grad_offset, _, _) = run(backend_name, deform(g), x, offset, weight, mask)
    np.testing.assert_allclose(grad_offset, right, rtol=0, atol=1e-6)
    assert np.abs(right - left).max() > 0.1  # the two sides differ: the convention matters


def scalar_deform_conv2d(x, offset, weight, mask, bias, g):
    """The definition, one output value at a time, with the channel layouts spelled out."""
    kh, kw = g.kernel
    (s_h, s_w), (p_h, p_w), (d_h, d_w) = g.stride, g.padding, g.dilation
    c_in, c_out = x.shape[1], weight.shape[0]
    per_group, per_offset_group = c_in // g.groups, c_in // g.offset_groups
    out = np.zeros((x.shape[0], c_out) + g.out_size)
    for b, o, oy, ox in np.ndindex(out.shape):
        total = bias[o]
        for c, i, j in np.ndindex(per_group, kh, kw):
            channel = (o // (c_out // g.groups)) * per_group + c
            group = channel // per_offset_group
            dy = offset[b, group * 2 * kh * kw + 2 * (i * kw + j), oy, ox]
            dx = offset[b, group * 2 * kh * kw + 2 * (i * kw + j) + 1, oy, ox]
            m = mask[b, group * kh * kw + i * kw + j, oy, ox]
            y, xx = oy * s_h - p_h + i * d_h + dy, ox * s_w - p_w + j * d_w + dx
            value = 0.0
            for qy, qx in np.ndindex(x.shape[2], x.shape[3]):
                g_y, g_x = max(0, 1 - abs(qy - y)), max(0, 1 - abs(qx - xx))
                value += g_y * g_x * x[b, channel, qy, qx]
            total += weight[o, c, i, j] * value * m
        out[b, o, oy, ox] = total
    return out


def test_matches_a_scalar_loop_written_from_the_layout_spec(backend_name):
    g = Geometry(batch=1, in_channels=4, out_channels=4, size=(4, 5), kernel=(2, 3),
                 stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2, offset_groups=2, seed=16)
    inputs = g.arrays()
    out, _ = run(backend_name, deform(g), *inputs)
    assert_close(out, scalar_deform_conv2d(*inputs, g))


# ---------------------------------------------------------------- properties
def test_zero_offsets_without_mask_equal_conv2d(backend_name):
    def check(g):
        x, offset, weight, _, bias = g.arrays()
        out, (gx, _, gw, _, gb) = run(backend_name, deform(g), x, np.zeros_like(offset), weight,
                                      None, bias)

        def conv(x, weight, bias):
            return F.conv2d(x, weight, bias, groups=g.groups, **g.params)

        out_conv, grads_conv = run(backend_name, conv, x, weight, bias)
        for ours, expected in zip((out, gx, gw, gb), (out_conv, *grads_conv)):
            assert_close(ours, expected)
    for_each_geometry(backend_name, check)


def test_mask_of_ones_equals_v1(backend_name):
    def check(g):
        x, offset, weight, mask, bias = g.arrays()
        out_v2, grads_v2 = run(backend_name, deform(g), x, offset, weight, np.ones_like(mask), bias)
        out_v1, grads_v1 = run(backend_name, deform(g), x, offset, weight, None, bias)
        assert_close(out_v2, out_v1)
        for ours, expected in zip(grads_v2, grads_v1):
            if expected is not None:  # v1 has no mask gradient
                assert_close(ours, expected)
    for_each_geometry(backend_name, check)


def shifted_and_padded(x, shifts, padding):
    """X[b, c, h, w] = x[b, c, h - p_h + dy_g, w - p_w + dx_g] (0 outside), over the padded extent.

    ``shifts`` holds one integer (dy, dx) per offset group; channel c is in group c // (C / G).
    """
    batch, channels, height, width = x.shape
    out = np.zeros((batch, channels, height + 2 * padding[0], width + 2 * padding[1]))
    for c in range(channels):
        dy, dx = shifts[c // (channels // len(shifts))]
        for h in range(out.shape[2]):
            for w in range(out.shape[3]):
                sy, sx = h - padding[0] + dy, w - padding[1] + dx
                if 0 <= sy < height and 0 <= sx < width:
                    out[:, c, h, w] = x[:, c, sy, sx]
    return out


def test_integer_offsets_equal_conv2d_of_the_shifted_input(backend_name):
    def check(g):
        x, offset, weight, _, bias = g.arrays()
        kh, kw = g.kernel
        shifts = np.random.default_rng(g.seed).integers(-2, 3, size=(g.offset_groups, 2))
        shifted_offset = np.broadcast_to(shifts[None, :, None, :, None, None],
                                         (g.batch, g.offset_groups, kh * kw, 2) + g.out_size)
        shifted_offset = shifted_offset.reshape(offset.shape).astype(float)
        with on(backend_name) as device:
            x, off, w, b, shifted = tensors(device, x, shifted_offset, weight, bias,
                                            shifted_and_padded(x, shifts, g.padding))
            out = host(deform(g)(x, off, w, bias=b))
            expected = host(F.conv2d(shifted, w, b, g.stride, 0, g.dilation, g.groups))
        assert_close(out, expected)
    for_each_geometry(backend_name, check)


def test_offsets_far_outside_give_just_the_bias(backend_name):
    def check(g):
        x, offset, weight, mask, bias = g.arrays()
        signs = np.random.default_rng(g.seed).choice([-1.0, 1.0], size=offset.shape)
        far = (100.0 + sum(g.size)) * signs
        out, (gx, goff, gw, gm, gb) = run(backend_name, deform(g), x, far, weight, mask, bias)
        np.testing.assert_array_equal(out, np.broadcast_to(bias[:, None, None], out.shape))
        for grad in (gx, goff, gw, gm):
            assert not grad.any()
        assert_close(gb, seeded_grad(out.shape).sum(axis=(0, 2, 3)))
    for_each_geometry(backend_name, check)


def test_adjoint_identity_in_the_input(backend_name):
    """deform_conv2d without bias is linear in x: <J v, u> = <v, Jᵀ u>, Jᵀ u from backward."""
    def check(g):
        x, offset, weight, mask, _ = g.arrays()
        out, (grad_x, *_) = run(backend_name, deform(g), x, offset, weight, mask)
        u = seeded_grad(out.shape)
        lhs, rhs = np.sum(out * u), np.sum(x * grad_x)
        assert abs(lhs - rhs) <= 1e-12 * (1 + np.sum(np.abs(out * u)))
    for_each_geometry(backend_name, check)


# ---------------------------------------------------------------- NaN, inf, huge
def test_nonfinite_and_huge_offsets_read_zero_without_warnings(backend_name):
    geometry = small_for(backend_name)
    x, offset, weight, mask, bias = geometry.arrays()
    rng = np.random.default_rng(15)
    bad = rng.random(offset.shape) < 0.3
    values = rng.choice([np.nan, np.inf, -np.inf, 1e30, -1e300, 3e9], size=offset.shape)
    poisoned = np.where(bad, values, offset)
    far_away = np.where(bad, 1e4, offset)  # the same samples, moved out by a finite amount
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, grads = run(backend_name, deform(geometry), x, poisoned, weight, mask, bias)
    out_far, grads_far = run(backend_name, deform(geometry), x, far_away, weight, mask, bias)
    assert np.all(np.isfinite(out)) and all(np.all(np.isfinite(g)) for g in grads)
    assert_close(out, out_far)
    for g, g_far in zip(grads, grads_far):
        assert_close(g, g_far)
    assert not grads[1][bad].any()


# ---------------------------------------------------------------- memory layout and dtype
def strided(arr):
    """The same values in a view that skips every other element along each axis."""
    view = np.zeros(tuple(2 * n for n in arr.shape))[tuple(slice(None, None, 2) for _ in arr.shape)]
    view[...] = arr
    return view


def test_fortran_and_strided_inputs_give_identical_results(backend_name):
    geometry = small_for(backend_name)
    inputs = geometry.arrays()
    expected_out, expected_grads = run(backend_name, deform(geometry), *inputs)
    for layout in (np.asfortranarray, strided):
        arrays = [layout(a) for a in inputs]
        assert not arrays[0].flags.c_contiguous
        out, grads = run(backend_name, deform(geometry), *arrays)
        np.testing.assert_array_equal(out, expected_out)
        for g, g_expected in zip(grads, expected_grads):
            np.testing.assert_array_equal(g, g_expected)


def test_float32_stays_float32(backend_name):
    geometry = small_for(backend_name)
    inputs = geometry.arrays()
    expected, _ = run(backend_name, deform(geometry), *inputs)
    with on(backend_name) as device:
        out = deform(geometry)(*[Tensor(a, dtype=np.float32).to(device) for a in inputs])
    assert out.dtype == np.float32
    np.testing.assert_allclose(host(out), expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- bad input
def good_arguments():
    """Valid arguments for kernel 3x3, padding 1, 2 offset groups, groups 2: output 5x5."""
    return dict(input=np.zeros((2, 4, 5, 5)), offset=np.zeros((2, 36, 5, 5)),
                weight=np.zeros((6, 2, 3, 3)), bias=np.zeros(6), stride=1, padding=1,
                dilation=1, mask=np.zeros((2, 18, 5, 5)))


BAD_ARGUMENTS = [
    (dict(input=np.zeros((4, 5, 5))), ValueError, "deform_conv2d: input must be 4-D"),
    (dict(offset=np.zeros((36, 5, 5))), ValueError, "offset must be 4-D"),
    (dict(weight=np.zeros((6, 2, 9))), ValueError, "weight must be 4-D"),
    (dict(bias=np.zeros((6, 1))), ValueError, "bias must be 1-D"),
    (dict(mask=np.zeros((2, 18, 25))), ValueError, "mask must be 4-D"),
    (dict(offset=np.zeros((2, 35, 5, 5))), ValueError,
     r"positive multiple of 2 \* 3 \* 3 = 18, got 35"),
    (dict(offset=np.zeros((2, 36, 4, 5))), ValueError,
     r"offset must have shape \(2, 36, 5, 5\).*got \(2, 36, 4, 5\)"),
    (dict(offset=np.zeros((3, 36, 5, 5))), ValueError,
     "offset has batch size 3, expected input's batch size 2"),
    (dict(mask=np.zeros((1, 18, 5, 5))), ValueError,
     "mask has batch size 1, expected input's batch size 2"),
    (dict(mask=np.zeros((2, 9, 5, 5))), ValueError,
     r"mask must have shape \(2, 18, 5, 5\).*got \(2, 9, 5, 5\)"),
    (dict(mask=np.zeros((2, 18, 5, 6))), ValueError, r"mask must have shape \(2, 18, 5, 5\)"),
    (dict(weight=np.zeros((6, 3, 3, 3))), ValueError,
     r"input channels 4 must be a multiple of weight.shape\[1\] = 3"),
    (dict(weight=np.zeros((5, 2, 3, 3)), bias=np.zeros(5)), ValueError,
     r"weight.shape\[0\] = 5 must be divisible by groups = .* 2"),
    (dict(offset=np.zeros((2, 54, 5, 5)), mask=None), ValueError,
     "input channels 4 must be divisible by the offset groups 3"),
    (dict(stride=0), ValueError, "stride must be >= 1, got 0"),
    (dict(dilation=(1, 0)), ValueError, "dilation must be >= 1, got 0"),
    (dict(padding=-1), ValueError, "padding must be >= 0, got -1"),
    (dict(stride=1.5), TypeError, "stride must be an int, got float"),
    (dict(padding=(1, 1, 1)), ValueError, "padding must be an int or a pair"),
    (dict(bias=np.zeros(5)), ValueError, r"bias must have shape \(6,\).*got \(5,\)"),
    (dict(padding=0, dilation=3, offset=np.zeros((2, 36, 1, 1)), mask=None), ValueError,
     "kernel height with dilation spans 7 but the padded input height is only 5"),
    (dict(input=np.zeros((2, 4, 5, 5), np.float32)), TypeError,
     "one dtype, got input float32, offset float64"),
    (dict(mask=np.zeros((2, 18, 5, 5), np.float32)), TypeError, "one dtype"),
    (dict(offset=np.full((2, 36, 5, 5), "x")), TypeError, "deform_conv2d: offset .*numeric"),
    (dict(weight="weights"), TypeError,
     "deform_conv2d: weight must be a Tensor or array-like, got str"),
    (dict(input=np.zeros((2, 4, 0, 5))), ValueError,
     "input may have an empty batch .axis 0. but no other zero-sized axis"),
    (dict(weight=np.zeros((6, 2, 0, 3))), ValueError, "weight must have no zero-sized axis"),
]


@pytest.mark.parametrize("changes, error, message", BAD_ARGUMENTS)
def test_bad_input_is_rejected_before_any_kernel_runs(monkeypatch, changes, error, message):
    def no_kernels(device):
        raise AssertionError("a kernel was looked up before validation finished")

    monkeypatch.setattr(minidcn.functional.deform_conv, "kernels", no_kernels)
    with pytest.raises(error, match=message):
        F.deform_conv2d(**{**good_arguments(), **changes})


def test_good_arguments_reach_the_kernels():
    """The bad-input cases above differ from these only by the change they name."""
    with minidcn.backend("reference"):
        assert F.deform_conv2d(**good_arguments()).shape == (2, 6, 5, 5)


@pytest.mark.cuda
def test_tensors_on_two_devices_are_rejected():
    arguments = {k: Tensor(v) if isinstance(v, np.ndarray) else v
                 for k, v in good_arguments().items()}
    arguments["offset"] = arguments["offset"].to("cuda")
    with pytest.raises(ValueError, match="deform_conv2d: all tensors must be on one device"):
        F.deform_conv2d(**arguments)


# ---------------------------------------------------------------- sampling locations
def test_sampling_locations_are_the_grid_plus_the_offsets():
    g = SMALL
    _, offset, _, _, _ = g.arrays()
    kh, kw = g.kernel
    zero = F.sampling_locations(np.zeros_like(offset), g.kernel, **g.params)
    assert zero.shape == (g.batch, g.offset_groups, kh * kw) + g.out_size + (2,)
    oy, ox = np.meshgrid(np.arange(g.out_size[0]), np.arange(g.out_size[1]), indexing="ij")
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        grid_y = oy * g.stride[0] - g.padding[0] + i * g.dilation[0]
        grid_x = ox * g.stride[1] - g.padding[1] + j * g.dilation[1]
        np.testing.assert_array_equal(zero[:, :, k], np.broadcast_to(
            np.stack([grid_y, grid_x], axis=-1), zero.shape[:2] + zero.shape[3:]))
    moved = F.sampling_locations(offset, g.kernel, **g.params)
    delta = offset.reshape(g.batch, g.offset_groups, kh * kw, 2, *g.out_size)
    np.testing.assert_allclose(moved - zero, np.moveaxis(delta, 3, -1), rtol=0, atol=1e-14)


def test_sampling_locations_reject_bad_offsets():
    with pytest.raises(ValueError, match=r"sampling_locations: offset must have 2 \* offset_gr"):
        F.sampling_locations(np.zeros((1, 10, 3, 3)), 3)
    with pytest.raises(ValueError, match="sampling_locations: kernel_size must be >= 1"):
        F.sampling_locations(np.zeros((1, 18, 3, 3)), 0)


# ---------------------------------------------------------------- the layer
def layer(**kwargs):
    options = dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, dilation=1, groups=2,
                   offset_groups=2, generator=np.random.default_rng(0), dtype=np.float64)
    options.update(kwargs)
    return nn.DeformConv2d(**options)


X = np.random.default_rng(20).standard_normal((2, 4, 5, 6))


def loss_of(m, seed):
    """A random projection of the layer's output on X, as a scalar Tensor."""
    out = m(X)
    return (out * Tensor(np.random.default_rng(seed).standard_normal(out.shape))).sum()


def test_layer_at_initialisation_is_a_plain_convolution():
    with minidcn.backend("reference"):
        m = layer(stride=2, dilation=(1, 2))
        m.record_sampling = True
        out = host(m(X))
        plain = host(F.conv2d(X, m.weight, m.bias, stride=2, padding=1, dilation=(1, 2), groups=2))
    np.testing.assert_allclose(out, plain, rtol=0, atol=1e-12)
    assert m.last_mask is None
    assert m.last_sampling_locations.shape == (2, 2, 9) + out.shape[2:] + (2,)
    grid = F.sampling_locations(np.zeros((2, 36) + out.shape[2:]), 3, 2, 1, (1, 2))
    np.testing.assert_array_equal(m.last_sampling_locations, grid)


def test_modulated_layer_starts_with_mask_one_half():
    with minidcn.backend("reference"):
        m = layer(modulated=True)
        m.record_sampling = True
        out = host(m(X))
        without_bias = host(F.conv2d(X, m.weight, None, padding=1, groups=2))
    expected = 0.5 * without_bias + host(m.bias)[:, None, None]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    assert m.last_mask.shape == (2, 2, 9, 5, 6) and np.all(m.last_mask == 0.5)


def test_sampling_is_recorded_only_when_asked():
    with minidcn.backend("reference"):
        m = layer(modulated=True)
        m(X)
        with pytest.raises(RuntimeError, match="DeformConv2d: last_sampling_locations is kept "
                                               "only by a forward run with recording on"):
            m.last_sampling_locations
        model = nn.Sequential(m, nn.ReLU())
        with nn.recording_sampling(model):
            model(X)
        assert not m.record_sampling  # the flag is restored, the recording stays readable
        np.testing.assert_array_equal(m.last_sampling_locations,
                                      F.sampling_locations(np.zeros((2, 36, 5, 6)), 3, 1, 1, 1))
        assert m.last_mask.shape == (2, 2, 9, 5, 6)
        m(X)  # a forward without recording forgets the last one: no stale plot
        with pytest.raises(RuntimeError, match="DeformConv2d: last_mask is kept only"):
            m.last_mask
    with pytest.raises(TypeError, match="recording_sampling: model must be a Module"):
        with nn.recording_sampling(lambda x: x):
            pass


def test_layer_default_init_and_parameters():
    m = layer(modulated=True, bias=True)
    names = [n for n, _ in m.named_parameters()]
    assert names == ["weight", "bias", "offset_conv.weight", "offset_conv.bias",
                     "mask_conv.weight", "mask_conv.bias"]
    bound = 1 / np.sqrt(2 * 9)  # fan_in = in_channels / groups * kh * kw
    assert m.weight.shape == (6, 2, 3, 3) and np.abs(host(m.weight)).max() <= bound
    assert np.abs(host(m.weight)).max() > bound / 2
    assert m.offset_conv.weight.shape == (36, 4, 3, 3)
    assert m.mask_conv.weight.shape == (18, 4, 3, 3)
    assert not host(m.offset_conv.weight).any() and not host(m.mask_conv.bias).any()
    assert layer(bias=False).bias is None
    assert layer(dtype=np.float32).weight.dtype == np.float32
    np.testing.assert_array_equal(host(layer().weight), host(layer().weight))  # seeded generator


def test_layer_accepts_external_offsets_and_masks():
    rng = np.random.default_rng(21)
    offset, mask = rng.standard_normal((2, 36, 5, 6)), rng.uniform(0, 1, (2, 18, 5, 6))
    with minidcn.backend("reference"):
        m = layer()
        m.record_sampling = True
        out = host(m(X, offset=offset, mask=mask))
        expected = host(F.deform_conv2d(X, offset, m.weight, m.bias, padding=1, mask=mask))
        np.testing.assert_array_equal(m.last_mask, mask.reshape(2, 2, 9, 5, 6))
        np.testing.assert_array_equal(m.last_sampling_locations,
                                      F.sampling_locations(offset, 3, 1, 1, 1))
        with pytest.raises(ValueError, match=r"DeformConv2d: offset must have shape \(B, 36, "):
            m(X, offset=rng.standard_normal((2, 18, 5, 6)))
    np.testing.assert_array_equal(out, expected)


def test_gradients_reach_both_predictors():
    with minidcn.backend("reference"):
        m = layer(modulated=True)
        loss_of(m, seed=22).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and np.abs(host(p.grad)).max() > 0, name


def test_layer_rejects_bad_configuration():
    with pytest.raises(ValueError, match="DeformConv2d: in_channels = 4 must be divisible by "
                                         "offset_groups = 3"):
        layer(offset_groups=3)
    with pytest.raises(ValueError, match="out_channels = 6 must be divisible by groups = 4"):
        layer(groups=4)  # checked by Conv2d, which DeformConv2d extends
    with pytest.raises(ValueError, match="DeformConv2d: offset_lr_mult must be finite and >= 0.0"):
        layer(offset_lr_mult=-1)
    with pytest.raises(TypeError, match="DeformConv2d: dtype must be float32 or float64"):
        layer(dtype=np.int32)
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        layer(stride=0)


def test_offset_lr_mult_scales_the_predictors_step():
    """One SGD step on param_groups: the predictors move by lr · offset_lr_mult · grad."""
    steps = {}
    for mult in (1.0, 0.1):
        with minidcn.backend("reference"):
            m = layer(modulated=True, offset_lr_mult=mult)
            before = {n: host(p).copy() for n, p in m.named_parameters()}
            opt = minidcn.optim.SGD(minidcn.optim.param_groups(m, lr=0.5), lr=0.5)
            loss_of(m, seed=23).backward()
            opt.step()
        steps[mult] = {n: host(p) - before[n] for n, p in m.named_parameters()}
    assert {p.lr_mult for p in m.offset_conv.parameters()} == {0.1} and m.weight.lr_mult == 1.0
    for name, step in steps[0.1].items():
        assert np.abs(steps[1.0][name]).max() > 0, name
        scale = 0.1 if name.startswith(("offset_conv", "mask_conv")) else 1.0
        np.testing.assert_allclose(step, scale * steps[1.0][name], rtol=1e-12, atol=1e-15)
