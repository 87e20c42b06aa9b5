"""DCNv3 and DCNv4 cores (``F.dcnv3``, ``F.dcnv4``) on the three backends.

* Gradients: float64 gradcheck of every input on every backend, sampling positions drawn
  away from integers (where bilinear sampling has kinks).
* Agreement: the numba and cuda kernels equal the reference to 1e-10 in float64, forward and
  every gradient; numba is bitwise the same for one or two threads.
* Properties tying the family together: zero offsets and a unit mask give a depthwise box
  filter; dcnv3 is deform_conv2d with depthwise all-ones weights once the offset layout is
  converted; offset_scale scales the kernel grid and the offsets about the kernel centre;
  remove_center is the full kernel with the centre's mask at 0; dcnv4 is dcnv3 on the
  unpacked (and, with softmax=True, softmax-normalised) modulation; DCNv4's padding channels
  get gradient 0; NaN, infinite and huge offsets read 0 and get gradient 0.
* Refusals: every argument, before any kernel runs.
* Optional: a pure-torch grid_sample implementation agrees forward and backward.
"""

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidcn import Tensor
from minidcn import functional as F
from minidcn.backends import numba_cpu, reference
from minidcn.backends.reference.dcnv3 import sampling_locations
from helpers import gradcheck_on, on, run, tensors


# ----------------------------------------------------------------------------- cases
def kernel_points(kernel_size, remove_center):
    """(i, j) = (column, row) of the P kernel points as SEMANTICS.md states them: x-major,
    p = i kh + j, the centre (kw // 2, kh // 2) left out with remove_center (written here
    again, not imported, so that the tests pin the layout down)."""
    kh, kw = kernel_size
    i, j = np.divmod(np.arange(kh * kw), kh)
    keep = ~(remove_center & (i == kw // 2) & (j == kh // 2))
    return i[keep], j[keep]


def output_size(size, kernel, stride, padding, dilation):
    return tuple((n + 2 * p - (d * (k - 1) + 1)) // s + 1
                 for n, k, s, p, d in zip(size, kernel, stride, padding, dilation))


def away_from_integers(offset, tail, margin=0.15):
    """``offset`` nudged so that no sampling coordinate lies within ``margin`` of an integer
    (bilinear sampling has a kink there, where a central difference disagrees)."""
    offset = offset.copy()
    locations = sampling_locations(offset, *tail)  # (N, H_out, W_out, G, P, [y, x])
    frac = locations - np.floor(locations)
    shift = np.where((frac < margin) | (frac > 1 - margin), 0.5 - frac, 0.0) / tail[5]
    pairs = offset.reshape(locations.shape)  # [dx, dy]
    pairs[..., 0] += shift[..., 1]
    pairs[..., 1] += shift[..., 0]
    return offset


def dcn_case(batch=1, size=(4, 5), group=2, per_group=3, kernel=(3, 3), stride=(1, 1),
             padding=(1, 1), dilation=(1, 1), offset_scale=1.0, remove_center=False, seed=0,
             spread=1.5):
    """Random float64 dcnv3 inputs, the functional's keyword arguments and the kernels' tail."""
    rng = np.random.default_rng(seed)
    out_h, out_w = output_size(size, kernel, stride, padding, dilation)
    points = kernel[0] * kernel[1] - int(remove_center)
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation,
                  group=group, offset_scale=offset_scale, remove_center=remove_center)
    tail = tuple(kwargs.values())
    offset = spread * rng.standard_normal((batch, out_h, out_w, group * points * 2))
    return dict(
        x=rng.standard_normal((batch, *size, group * per_group)),
        offset=away_from_integers(offset, tail),
        mask=rng.uniform(-1, 1, (batch, out_h, out_w, group * points)),
        grad=rng.standard_normal((batch, out_h, out_w, group * per_group)),
        kwargs=kwargs, tail=tail, points=points)


def pack(offset, mask, group, points, extra=0, fill=7.0):
    """DCNv4's offset_mask from DCNv3's offset and mask: per group 2P offsets then P scalars,
    then ``extra`` padding channels holding ``fill``."""
    lead = offset.shape[:3]
    blocks = np.concatenate([offset.reshape(*lead, group, 2 * points),
                             mask.reshape(*lead, group, points)], axis=-1)
    padding = np.full((*lead, extra), fill)
    return np.concatenate([blocks.reshape(*lead, 3 * group * points), padding], axis=-1)


def softmax(logits, group):
    shaped = logits.reshape(*logits.shape[:3], group, -1)
    e = np.exp(shaped - shaped.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).reshape(logits.shape)


def dcnv3_of(kwargs):
    return lambda x, offset, mask: F.dcnv3(x, offset, mask, **kwargs)


def dcnv4_of(kwargs, use_softmax):
    return lambda x, offset_mask: F.dcnv4(x, offset_mask, softmax=use_softmax, **kwargs)


def v4_case(case, extra=3):
    """The case's offsets and mask packed for dcnv4, with ``extra`` padding channels."""
    return pack(case["offset"], case["mask"], case["kwargs"]["group"], case["points"], extra)


GEOMETRIES = {
    "3x3": {},
    "stride-dilation-nonsquare": dict(size=(5, 6), kernel=(3, 2), stride=(2, 1), padding=(1, 0),
                                      dilation=(1, 2), group=1, per_group=2),
    "scale-remove_center": dict(size=(4, 4), group=2, per_group=2, offset_scale=0.5,
                                remove_center=True, padding=(2, 1), dilation=(2, 1)),
}


# ----------------------------------------------------------------------------- gradients
def _gradcheck_budget(backend_name):
    """The cuda simulator runs every thread as Python: check along a few random directions."""
    return dict(max_entries=0, directions=4) if backend_name == "cuda" else {}


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_dcnv3_gradcheck(backend_name, geometry):
    case = dcn_case(**GEOMETRIES[geometry], seed=1)
    assert gradcheck_on(backend_name, dcnv3_of(case["kwargs"]), case["x"], case["offset"],
                        case["mask"], **_gradcheck_budget(backend_name))


@pytest.mark.parametrize("use_softmax", [False, True])
def test_dcnv4_gradcheck(backend_name, use_softmax):
    case = dcn_case(**GEOMETRIES["scale-remove_center"], seed=2)
    assert gradcheck_on(backend_name, dcnv4_of(case["kwargs"], use_softmax), case["x"],
                        v4_case(case), **_gradcheck_budget(backend_name))


# ----------------------------------------------------------------------------- agreement
def kernels_of(ops, case, version=3, use_softmax=False, device=lambda a: a, host=lambda a: a):
    """[out, grad_x, grad_offset, grad_mask] (v3) or [out, grad_x, grad_offset_mask] (v4)."""
    x, grad = device(case["x"]), device(case["grad"])
    if version == 3:
        inputs = (device(case["offset"]), device(case["mask"]))
        out = ops.dcnv3_forward(x, *inputs, *case["tail"])
        grads = ops.dcnv3_backward(grad, x, *inputs, *case["tail"])
    else:
        offset_mask = device(v4_case(case))
        out = ops.dcnv4_forward(x, offset_mask, *case["tail"], use_softmax)
        grads = ops.dcnv4_backward(grad, x, offset_mask, *case["tail"], use_softmax)
    return [host(a) for a in (out, *grads)]


def max_difference(got, expected):
    """The largest |got - expected| over all the arrays, after checking shapes and dtypes."""
    worst = 0.0
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)))
    return worst


@st.composite
def geometries(draw):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    remove_center = kernel[0] == kernel[1] == 3 and draw(st.booleans())
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    size = tuple(draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 7))
                 for k, p, d in zip(kernel, padding, dilation))
    return dict(batch=draw(st.integers(1, 2)), size=size, group=draw(st.integers(1, 3)),
                per_group=draw(st.integers(1, 5)), kernel=kernel, stride=stride, padding=padding,
                dilation=dilation, offset_scale=draw(st.sampled_from([1.0, 0.5, 2.0])),
                remove_center=remove_center, seed=draw(st.integers(0, 2**16)))


@settings(max_examples=25)
@given(geometries(), st.sampled_from([(3, False), (4, False), (4, True)]))
def test_numba_matches_reference(geometry, version):
    case = dcn_case(**geometry)
    got = kernels_of(numba_cpu, case, *version)
    assert max_difference(got, kernels_of(reference, case, *version)) <= 1e-10


def on_cuda(a):
    from minidcn.device.array import CudaArray

    return CudaArray.from_host(a)


@pytest.mark.cuda
@pytest.mark.parametrize("version", [(3, False), (4, False), (4, True)], ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_cuda_matches_reference(geometry, version):
    from minidcn.backends import cuda

    case = dcn_case(**dict(GEOMETRIES[geometry], size=(3, 4)), seed=3)
    got = kernels_of(cuda, case, *version, device=on_cuda, host=lambda a: a.to_host())
    assert max_difference(got, kernels_of(reference, case, *version)) <= 1e-10


def test_numba_is_bitwise_identical_for_one_or_two_threads():
    case = dcn_case(batch=2, size=(6, 7), group=3, per_group=5, seed=4)
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            results.append(kernels_of(numba_cpu, case, 3) + kernels_of(numba_cpu, case, 4, True))
    finally:
        numba.set_num_threads(previous)
    for a, b in zip(results[0], results[-1], strict=True):
        assert a.tobytes() == b.tobytes()


def test_numba_kernels_accept_any_memory_layout():
    case = dcn_case(seed=5)
    strided = {k: np.asfortranarray(v) if k in ("x", "grad", "offset", "mask") else v
               for k, v in case.items()}
    assert not strided["grad"].flags.c_contiguous
    for version in ((3, False), (4, True)):
        for a, b in zip(kernels_of(numba_cpu, strided, *version),
                        kernels_of(numba_cpu, case, *version), strict=True):
            assert a.tobytes() == b.tobytes()


def test_float32_runs_in_float32_and_agrees_with_float64(backend_name):
    case = dcn_case(seed=6)
    with on(backend_name) as device:
        x, offset, mask = (Tensor(case[k].astype(np.float32)).to(device)
                           for k in ("x", "offset", "mask"))
        out32 = F.dcnv3(x, offset, mask, **case["kwargs"])
        assert out32.dtype == np.float32
        x, offset, mask = tensors(device, case["x"], case["offset"], case["mask"])
        out64 = F.dcnv3(x, offset, mask, **case["kwargs"])
        np.testing.assert_allclose(out32.to("cpu").numpy(), out64.to("cpu").numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- properties
def box_filter(x, kernel, stride, padding, dilation):
    """Σ of x over each output pixel's (dilated) kernel window, zero padding, per channel."""
    (kh, kw), (s_h, s_w), (p_h, p_w), (d_h, d_w) = kernel, stride, padding, dilation
    padded = np.pad(x, ((0, 0), (p_h, p_h), (p_w, p_w), (0, 0)))
    out_h, out_w = output_size(x.shape[1:3], kernel, stride, padding, dilation)
    out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += padded[:, i * d_h: i * d_h + s_h * (out_h - 1) + 1: s_h,
                          j * d_w: j * d_w + s_w * (out_w - 1) + 1: s_w]
    return out


@pytest.mark.parametrize("geometry", ["3x3", "stride-dilation-nonsquare"])
def test_zero_offsets_and_unit_mask_give_a_depthwise_box_filter(backend_name, geometry):
    case = dcn_case(**GEOMETRIES[geometry], seed=7)
    kwargs = case["kwargs"]
    out, _ = run(backend_name, dcnv3_of(kwargs), case["x"], np.zeros_like(case["offset"]),
                 np.ones_like(case["mask"]))
    expected = box_filter(case["x"], kwargs["kernel_size"], kwargs["stride"], kwargs["padding"],
                          kwargs["dilation"])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def as_deform_conv2d(case):
    """deform_conv2d's (input, offset, weight, mask) computing the case's dcnv3: channels-first,
    (dy, dx) pairs, row-major kernel points, offset groups = group, and a depthwise all-ones
    weight (C, 1, kh, kw) (groups = C: each output channel sums its own input channel)."""
    kh, kw = case["kwargs"]["kernel_size"]
    group = case["kwargs"]["group"]
    n, out_h, out_w, _ = case["offset"].shape
    i, j = kernel_points((kh, kw), False)  # column and row of dcnv3's point p
    row_major = np.argsort(j * kw + i)  # dcnv3's point at each row-major position
    offset = case["offset"].reshape(n, out_h, out_w, group, kh * kw, 2)[:, :, :, :, row_major, ::-1]
    mask = case["mask"].reshape(n, out_h, out_w, group, kh * kw)[..., row_major]
    weight = np.ones((case["x"].shape[3], 1, kh, kw))
    return (case["x"].transpose(0, 3, 1, 2), offset.reshape(n, out_h, out_w, -1).transpose(0, 3, 1, 2),
            weight, mask.reshape(n, out_h, out_w, -1).transpose(0, 3, 1, 2))


def deform_conv2d_of(kwargs):
    return lambda x, offset, weight, mask: F.deform_conv2d(
        x, offset, weight, stride=kwargs["stride"], padding=kwargs["padding"],
        dilation=kwargs["dilation"], mask=mask)


@pytest.mark.parametrize("geometry", ["3x3", "stride-dilation-nonsquare"])
def test_dcnv3_is_deform_conv2d_with_depthwise_all_ones_weights(backend_name, geometry):
    case = dcn_case(**GEOMETRIES[geometry], seed=8)
    out, _ = run(backend_name, dcnv3_of(case["kwargs"]), case["x"], case["offset"], case["mask"])
    out_dc, _ = run(backend_name, deform_conv2d_of(case["kwargs"]), *as_deform_conv2d(case))
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), out_dc, rtol=0, atol=1e-12)


def test_dcnv3_gradients_are_deform_conv2d_gradients():
    case = dcn_case(**GEOMETRIES["stride-dilation-nonsquare"], seed=9)
    with on("numba") as device:
        x, offset, mask = tensors(device, case["x"], case["offset"], case["mask"], requires_grad=True)
        F.dcnv3(x, offset, mask, **case["kwargs"]).backward(Tensor(case["grad"]))
        expected = as_deform_conv2d(dict(case, x=x.grad.numpy(), offset=offset.grad.numpy(),
                                         mask=mask.grad.numpy()))
        x_dc, offset_dc, weight, mask_dc = tensors(device, *as_deform_conv2d(case), requires_grad=True)
        y = deform_conv2d_of(case["kwargs"])(x_dc, offset_dc, weight, mask_dc)
        y.backward(Tensor(np.ascontiguousarray(case["grad"].transpose(0, 3, 1, 2))))
        for name, t, want in zip(("input", "offset", "mask"), (x_dc, offset_dc, mask_dc),
                                 (expected[0], expected[1], expected[3])):
            np.testing.assert_allclose(t.grad.numpy(), want, rtol=0, atol=1e-12, err_msg=name)


def test_offset_scale_scales_grid_and_offsets_about_the_kernel_centre(backend_name):
    """y = oy s_h - p_h + c_h + s (j d_h - c_h + dy) is, with s = 1, the offset
    dy' = s (j d_h - c_h + dy) - (j d_h - c_h)."""
    case = dcn_case(**GEOMETRIES["stride-dilation-nonsquare"], offset_scale=2.0, seed=10)
    kwargs, tail = case["kwargs"], case["tail"]
    (kh, kw), (d_h, d_w) = kwargs["kernel_size"], kwargs["dilation"]
    i, j = kernel_points((kh, kw), False)
    grid = np.stack([i * d_w - (d_w * (kw - 1)) // 2, j * d_h - (d_h * (kh - 1)) // 2], axis=-1)
    pairs = case["offset"].reshape(sampling_locations(case["offset"], *tail).shape)
    unscaled = (2.0 * (grid + pairs) - grid).reshape(case["offset"].shape)
    out, _ = run(backend_name, dcnv3_of(kwargs), case["x"], case["offset"], case["mask"])
    out_1, _ = run(backend_name, dcnv3_of(dict(kwargs, offset_scale=1.0)), case["x"], unscaled,
                   case["mask"])
    np.testing.assert_allclose(out, out_1, rtol=0, atol=1e-12)


def test_offset_scale_zero_reads_the_kernel_centre_at_every_point():
    case = dcn_case(seed=11)
    out, _ = run("numba", dcnv3_of(dict(case["kwargs"], offset_scale=0.0)), case["x"],
                 case["offset"], case["mask"])
    mask_sum = case["mask"].reshape(*case["mask"].shape[:3], 2, 9).sum(axis=-1)  # group 2, 3x3
    expected = case["x"].reshape(1, 4, 5, 2, 3) * mask_sum[..., None]  # stride 1, centred
    np.testing.assert_allclose(out, expected.reshape(out.shape), rtol=0, atol=1e-12)


def test_remove_center_is_the_full_kernel_with_the_centre_masked_out(backend_name):
    case = dcn_case(group=2, per_group=2, remove_center=True, seed=12)
    n, out_h, out_w, _ = case["mask"].shape
    centre = 4  # x-major 3x3: column 1, row 1
    offset = np.insert(case["offset"].reshape(n, out_h, out_w, 2, 8, 2), centre, 0.3, axis=4)
    mask = np.insert(case["mask"].reshape(n, out_h, out_w, 2, 8), centre, 0.0, axis=4)
    out, _ = run(backend_name, dcnv3_of(case["kwargs"]), case["x"], case["offset"], case["mask"])
    full, _ = run(backend_name, dcnv3_of(dict(case["kwargs"], remove_center=False)), case["x"],
                  offset.reshape(n, out_h, out_w, -1), mask.reshape(n, out_h, out_w, -1))
    np.testing.assert_allclose(out, full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("use_softmax", [False, True])
def test_dcnv4_is_dcnv3_on_the_unpacked_modulation(backend_name, use_softmax):
    """softmax=True equals dcnv3 with the softmax-normalised mask, softmax=False with the raw
    scalars; forward and gradients (through the softmax's Jacobian), and the padding channels
    get gradient 0."""
    case = dcn_case(group=2, per_group=2, seed=13)
    group, points = 2, 9
    mask = softmax(case["mask"], group) if use_softmax else case["mask"]
    out3, (grad_x3, grad_offset3, grad_mask3) = run(
        backend_name, dcnv3_of(case["kwargs"]), case["x"], case["offset"], mask)
    out4, (grad_x4, grad_om4) = run(backend_name, dcnv4_of(case["kwargs"], use_softmax),
                                    case["x"], v4_case(case, extra=5))
    np.testing.assert_allclose(out4, out3, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad_x4, grad_x3, rtol=0, atol=1e-12)
    if use_softmax:  # d/dl_p = m_p (grad_m_p - Σ_q m_q grad_m_q), per group
        m = mask.reshape(*mask.shape[:3], group, points)
        g = grad_mask3.reshape(m.shape)
        grad_mask3 = (m * (g - (m * g).sum(axis=-1, keepdims=True))).reshape(mask.shape)
    expected = pack(grad_offset3, grad_mask3, group, points, extra=5, fill=0.0)
    np.testing.assert_allclose(grad_om4, expected, rtol=0, atol=1e-12)
    assert np.all(grad_om4[..., group * 3 * points:] == 0.0)


BAD_OFFSETS = [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e9]


def test_nonfinite_and_huge_offsets_read_zero_and_get_zero_gradient(backend_name):
    case = dcn_case(size=(3, 4), group=1, per_group=2, seed=14)
    offset, mask = case["offset"].copy(), case["mask"].copy()
    pairs = offset.reshape(*offset.shape[:3], 9, 2)
    for k, bad in enumerate(BAD_OFFSETS):  # point k of pixel (0, k % 4), dx or dy
        pairs[0, 0, k % 4, k, k % 2] = bad
    pairs[0, 1, 1, 2, :] = np.nan  # both coordinates NaN
    bad = ~np.isfinite(pairs).all(axis=-1) | (np.abs(pairs) > 1e9).any(axis=-1)  # (N, H, W, P)
    out, (grad_x, grad_offset, grad_mask) = run(backend_name, dcnv3_of(case["kwargs"]), case["x"],
                                                offset, mask)
    # the same as those points' mask set to 0 (they read 0), and their gradients 0
    zeroed = np.where(bad.reshape(mask.shape), 0.0, mask)
    out_0, (grad_x_0, _, _) = run(backend_name, dcnv3_of(case["kwargs"]), case["x"],
                                  np.where(np.isfinite(offset), offset, 0.0), zeroed)
    np.testing.assert_allclose(out, out_0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad_x, grad_x_0, rtol=0, atol=1e-12)
    assert np.all(grad_offset.reshape(pairs.shape)[bad] == 0.0)
    assert np.all(grad_mask.reshape(bad.shape)[bad] == 0.0)
    assert np.all(np.isfinite(grad_offset)) and np.all(np.isfinite(grad_mask))


@pytest.mark.parametrize("scale", [1e308, -1e308])
def test_an_offset_scale_that_overflows_reads_zero_and_gets_zero_gradient(backend_name, scale):
    """With s = ±1e308 every point but the centre lands far outside and reads 0; its offset
    gradient s m Σ w' S is 0.  The numba and cuda kernels computed (s m) first, which
    overflows to inf for |m| > 1.8, and inf · 0 gave NaN gradients (the battery found it)."""
    case = dcn_case(size=(3, 4), group=1, per_group=2, seed=19)
    case["mask"] = 4.0 + case["mask"]  # m in (3, 5): s m overflows
    kwargs = dict(case["kwargs"], offset_scale=scale)
    out, grads = run(backend_name, dcnv3_of(kwargs), case["x"], case["offset"], case["mask"])
    assert np.all(out == 0.0) and all(np.all(g == 0.0) for g in grads)
    out, grads = run(backend_name, dcnv4_of(kwargs, False), case["x"], v4_case(case))
    assert np.all(out == 0.0) and all(np.all(g == 0.0) for g in grads)


def test_huge_padding_and_stride_read_outside_without_overflow(backend_name):
    """Integer arguments near the 2**31 - 1 limit: every location is about -2**30, far outside,
    so the output and the offset and mask gradients are 0 (no wrapped index reads the image)."""
    x = np.random.default_rng(18).standard_normal((1, 2, 3, 2))
    kwargs = dict(kernel_size=3, stride=2**31 - 1, padding=2**30, dilation=1, group=1)
    out, grads = run(backend_name, dcnv3_of(kwargs), x, np.full((1, 2, 2, 18), 0.5),
                     np.ones((1, 2, 2, 9)))
    assert out.shape == (1, 2, 2, 2) and np.all(out == 0.0)
    assert all(np.all(g == 0.0) for g in grads)


def test_empty_batch_gives_empty_output_and_gradients(backend_name):
    case = dcn_case(batch=0, seed=15)
    out, grads = run(backend_name, dcnv3_of(case["kwargs"]), case["x"], case["offset"], case["mask"])
    assert out.shape == (0, 4, 5, 6)
    assert [g.shape for g in grads] == [case["x"].shape, case["offset"].shape, case["mask"].shape]
    out, grads = run(backend_name, dcnv4_of(case["kwargs"], True), case["x"], v4_case(case))
    assert out.shape == (0, 4, 5, 6) and grads[1].shape == (0, 4, 5, 2 * 27 + 3)


# ----------------------------------------------------------------------------- refusals
def refusal_case():
    """Valid float64 dcnv3 and dcnv4 arguments: input (1, 4, 5, 6), group 2, 3x3, P = 9."""
    case = dcn_case(seed=16)
    return dict(input=case["x"], offset=case["offset"], mask=case["mask"],
                offset_mask=v4_case(case, extra=2), kwargs=dict(group=2))


BAD_ARGUMENTS = [  # (argument, value, error, message); both ops unless the argument is one op's
    ("input", np.zeros((4, 5, 6)), ValueError, r"input must be 4-D \(N, H, W, group \* D\), got 3-D"),
    ("input", np.zeros((1, 0, 5, 6)), ValueError, r"input may have an empty batch .* got shape \(1, 0, 5, 6\)"),
    ("input", np.zeros((1, 4, 5, 6), np.float32), TypeError, r"one dtype, got input float32"),
    ("input", "image", TypeError, r"input must be a Tensor or array-like, got str"),
    ("input", np.zeros((1, 4, 5, 5)), ValueError, r"input channels 5 must be a multiple of group 2"),
    ("input", np.zeros((2, 4, 5, 6)), ValueError, r"must have shape \(2, 4, 5, "),
    ("offset", np.zeros((1, 4, 5, 35)), ValueError,
     r"offset must have shape \(1, 4, 5, 36\) \(N, H_out, W_out, group 2 \* P 9 \* 2\), got \(1, 4, 5, 35\)"),
    ("offset", np.zeros((1, 3, 5, 36)), ValueError, r"offset must have shape \(1, 4, 5, 36\)"),
    ("offset", np.zeros((4, 5, 36)), ValueError, r"offset must be 4-D"),
    ("mask", np.zeros((1, 4, 5, 9)), ValueError,
     r"mask must have shape \(1, 4, 5, 18\) \(N, H_out, W_out, group 2 \* P 9\), got \(1, 4, 5, 9\)"),
    ("mask", np.zeros((1, 4, 5)), ValueError, r"mask must be 4-D"),
    ("mask", np.zeros((1, 4, 5, 18), np.float32), TypeError, r"one dtype, .*mask float32"),
    ("offset_mask", np.zeros((1, 4, 5, 53)), ValueError,
     r"offset_mask must have shape \(1, 4, 5, M\) .* M >= group 2 \* 3 \* P 9 = 54, got \(1, 4, 5, 53\)"),
    ("offset_mask", np.zeros((1, 4, 4, 54)), ValueError, r"offset_mask must have shape \(1, 4, 5, M\)"),
    ("offset_mask", np.zeros((1, 4, 5)), ValueError, r"offset_mask must be 4-D"),
    ("kernel_size", 0, ValueError, r"kernel_size must be >= 1, got 0"),
    ("kernel_size", 2.5, TypeError, r"kernel_size must be an int, got float 2.5"),
    ("kernel_size", (3, 3, 3), ValueError, r"kernel_size must be an int or a pair, got \(3, 3, 3\)"),
    ("kernel_size", 9, ValueError, r"kernel height with dilation spans 9 but the padded input height is only 6"),
    ("stride", 0, ValueError, r"stride must be >= 1, got 0"),
    ("stride", (1, "2"), TypeError, r"stride must be an int, got str"),
    ("padding", -1, ValueError, r"padding must be >= 0, got -1"),
    ("padding", 2**31, ValueError, r"padding must be at most 2\*\*31 - 1"),
    ("dilation", 0, ValueError, r"dilation must be >= 1, got 0"),
    ("group", 0, ValueError, r"group must be >= 1, got 0"),
    ("group", 2.0, TypeError, r"group must be an int, got float 2.0"),
    ("group", True, TypeError, r"group must be an int, got bool True"),
    ("group", 2**31, ValueError, r"group must be at most 2\*\*31 - 1"),
    ("offset_scale", float("nan"), ValueError, r"offset_scale must be finite, got nan"),
    ("offset_scale", "1", TypeError, r"offset_scale must be a real number, got str"),
    ("remove_center", 1, TypeError, r"remove_center must be a bool \(True or False\), got int 1"),
    ("softmax", "yes", TypeError, r"softmax must be a bool \(True or False\), got str 'yes'"),
]


def call(op, args):
    kwargs = dict(args["kwargs"])
    if op == "dcnv3":
        return F.dcnv3(args["input"], args["offset"], args["mask"], **kwargs)
    return F.dcnv4(args["input"], args["offset_mask"], **kwargs)


ONE_OP = {"offset": "dcnv3", "mask": "dcnv3", "offset_mask": "dcnv4", "softmax": "dcnv4"}
REFUSALS = [(op, *bad) for bad in BAD_ARGUMENTS for op in ("dcnv3", "dcnv4")
            if ONE_OP.get(bad[0], op) == op]


@pytest.mark.parametrize("op, argument, value, error, message", REFUSALS,
                         ids=[f"{op}-{a}={v!r:.20}" for op, a, v, _, _ in REFUSALS])
def test_bad_arguments_are_refused_naming_them(op, argument, value, error, message):
    args = refusal_case()
    if argument in args:
        args[argument] = value
    else:
        args["kwargs"][argument] = value
    with pytest.raises(error, match=rf"^{op}: (.*){message}"):
        call(op, args)


@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
@pytest.mark.parametrize("kernel_size", [(3, 5), 4, 1])
def test_remove_center_needs_an_odd_square_kernel_of_at_least_3(op, kernel_size):
    args = refusal_case()
    args["kwargs"].update(kernel_size=kernel_size, remove_center=True)
    with pytest.raises(ValueError, match=rf"^{op}: remove_center needs an odd square kernel of at "
                                         rf"least 3 x 3 .* got kernel_size \(\d, \d\)"):
        call(op, args)


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
def test_tensors_on_two_devices_are_refused(op):
    args = refusal_case()
    args["input"] = Tensor(args["input"], dtype=np.float64).to("cuda")
    with pytest.raises(ValueError, match=rf"^{op}: all tensors must be on one device, got input on cuda"):
        call(op, args)


# ----------------------------------------------------------------------------- torch
def torch_dcnv3(torch, x, offset, mask, kernel_size, stride, padding, dilation, group,
                offset_scale, remove_center):
    """dcnv3 written with torch.nn.functional.grid_sample: each group's planes read at the
    normalised locations (align_corners=False: u = (2x + 1) / W - 1, zero padding)."""
    (kh, kw), (s_h, s_w), (p_h, p_w), (d_h, d_w) = kernel_size, stride, padding, dilation
    n, height, width, channels = x.shape
    _, out_h, out_w, _ = offset.shape
    i, j = (torch.as_tensor(a) for a in kernel_points(kernel_size, remove_center))
    c_h, c_w = (d_h * (kh - 1)) // 2, (d_w * (kw - 1)) // 2
    pairs = offset.reshape(n, out_h, out_w, group, len(i), 2)
    rows = (torch.arange(out_h) * s_h - p_h + c_h).reshape(-1, 1, 1, 1)
    columns = (torch.arange(out_w) * s_w - p_w + c_w).reshape(-1, 1, 1)
    y = rows + offset_scale * ((j * d_h - c_h) + pairs[..., 1])
    x_at = columns + offset_scale * ((i * d_w - c_w) + pairs[..., 0])
    grid = torch.stack([(2 * x_at + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(n * group, out_h, -1, 2)
    planes = x.reshape(n, height, width, group, -1).permute(0, 3, 4, 1, 2)
    values = torch.nn.functional.grid_sample(planes.reshape(n * group, -1, height, width), grid,
                                             mode="bilinear", padding_mode="zeros",
                                             align_corners=False)
    values = values.reshape(n, group, -1, out_h, out_w, len(i))
    m = mask.reshape(n, out_h, out_w, group, len(i)).permute(0, 3, 1, 2, 4)[:, :, None]
    return (values * m).sum(-1).permute(0, 3, 4, 1, 2).reshape(n, out_h, out_w, channels)


@pytest.mark.parametrize("geometry", ["3x3", "scale-remove_center"])
def test_agrees_with_a_torch_grid_sample_implementation(geometry):
    torch = pytest.importorskip("torch")
    case = dcn_case(**dict(GEOMETRIES[geometry], padding=(1, 1)), seed=17)
    out, grads = run("numba", dcnv3_of(case["kwargs"]), case["x"], case["offset"], case["mask"])
    inputs = [torch.tensor(case[k], requires_grad=True) for k in ("x", "offset", "mask")]
    out_t = torch_dcnv3(torch, *inputs, *case["tail"])
    out_t.backward(torch.tensor(np.random.default_rng(0).standard_normal(out.shape)))  # run()'s
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=0, atol=1e-10)
    for name, got, t in zip(("input", "offset", "mask"), grads, inputs):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=0, atol=1e-10, err_msg=name)
