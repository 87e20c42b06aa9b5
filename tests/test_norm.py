"""group_norm, batch_norm (and layer_norm / instance_norm as group norms), their modules.

Gradients are checked by finite differences on every backend; numba and cuda must agree
with the reference to 1e-10; properties tie the ops to hand computations; torch, when
installed, is the cross-check for every number torch also computes.  cuda runs in the
simulator, where every thread is a Python thread: its shapes are tiny.
"""

import os

import numpy as np
import numba
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidcn
from minidcn import Tensor, nn
from minidcn import functional as F
from minidcn.device.array import CudaArray
from minidcn.backends.numba_cpu import norm as numba_norm
from tests.helpers import gradcheck_on, host, on, run, tensors

NOT_REFERENCE = ["numba", pytest.param("cuda", marks=pytest.mark.cuda)]


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def moved(array, device):
    """A host array as a raw array on ``device`` (for running statistics)."""
    return array if device == "cpu" else CudaArray.from_host(array)


def raw_host(array):
    return array if isinstance(array, np.ndarray) else array.to_host()


# ---------------------------------------------------------------------------- gradients
def test_group_norm_gradcheck(backend_name):
    if backend_name == "cuda":  # one block; random directions keep the simulator quick
        shape, groups, kwargs = (1, 2, 2, 2), 1, dict(max_entries=2, directions=2)
    else:
        shape, groups, kwargs = (2, 4, 2, 2), 2, {}
    c = shape[1]
    gradcheck_on(backend_name, lambda x, w, b: F.group_norm(x, groups, w, b, eps=1e-3),
                 randn(*shape), randn(c, seed=1), randn(c, seed=2), **kwargs)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradcheck(backend_name, training):
    if backend_name == "cuda":
        shape, kwargs = (2, 1, 2, 2), dict(max_entries=2, directions=2)
    else:
        shape, kwargs = (3, 2, 2, 2), {}
    c = shape[1]
    rng = np.random.default_rng(3)
    running_mean, running_var = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)

    def fn(x, w, b):
        if training:
            return F.batch_norm(x, None, None, w, b, training=True, eps=1e-3)
        device = x.device
        return F.batch_norm(x, moved(running_mean, device), moved(running_var, device), w, b,
                            training=False, eps=1e-3)

    gradcheck_on(backend_name, fn, randn(*shape), randn(c, seed=1), randn(c, seed=2), **kwargs)


# ---------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("backend_name", NOT_REFERENCE)
def test_group_norm_backends_agree(backend_name):
    x, w, b = randn(2, 4, 3, 2), randn(4, seed=1), randn(4, seed=2)
    fn = lambda x, w, b: F.group_norm(x, 2, w, b)  # noqa: E731
    out, grads = run(backend_name, fn, x, w, b)
    ref_out, ref_grads = run("reference", fn, x, w, b)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-10)
    for g, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(g, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend_name", NOT_REFERENCE)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_backends_agree(backend_name, training):
    x, w, b = randn(2, 3, 2, 2), randn(3, seed=1), randn(3, seed=2)
    start_mean, start_var = randn(3, seed=3), np.linspace(0.5, 2.0, 3)
    results = []
    for name in ("reference", backend_name):
        with on(name) as device:
            rm, rv = moved(start_mean.copy(), device), moved(start_var.copy(), device)
            fn = lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=training)  # noqa: E731
            out, grads = run(name, fn, x, w, b)
            results.append((out, grads, raw_host(rm), raw_host(rv)))
    (out, grads, rm, rv), (ref_out, ref_grads, ref_rm, ref_rv) = results[1], results[0]
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-10)
    for g, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(g, ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(rm, ref_rm, rtol=0, atol=1e-10)
    np.testing.assert_allclose(rv, ref_rv, rtol=0, atol=1e-10)


def test_numba_bitwise_independent_of_thread_count():
    x, dy = randn(3, 8, 5, 7).astype(np.float32), randn(3, 8, 5, 7, seed=1).astype(np.float32)
    w, b = randn(8, seed=2).astype(np.float32), randn(8, seed=3).astype(np.float32)
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            y, mean, rstd = numba_norm.group_norm_forward(x, 4, w, b, 1e-5)
            grads = numba_norm.group_norm_backward(dy, x, mean, rstd, w, 4)
            bmean, bvar = numba_norm.batch_norm_stats(x)
            by, smean, srstd = numba_norm.batch_norm_forward(x, bmean, bvar, w, b, 1e-5)
            bgrads = numba_norm.batch_norm_backward(dy, x, smean, srstd, w, True)
            results.append((y, mean, rstd, *grads, bmean, bvar, by, *bgrads))
    finally:
        numba.set_num_threads(previous)
    for a, b_ in zip(results[0], results[-1]):
        np.testing.assert_array_equal(a, b_)


def test_numba_kernels_accept_non_contiguous_arrays():
    x, dy, w = randn(2, 6, 4, 3), randn(2, 6, 4, 3, seed=1), randn(6, seed=2)
    fx, fdy = np.asfortranarray(x), np.asfortranarray(dy)
    strided_w = np.repeat(w, 2)[::2]
    y, mean, rstd = numba_norm.group_norm_forward(x, 3, w, None, 1e-5)
    fy, fmean, frstd = numba_norm.group_norm_forward(fx, 3, strided_w, None, 1e-5)
    np.testing.assert_array_equal(y, fy)
    for a, b in zip(numba_norm.group_norm_backward(dy, x, mean, rstd, w, 3),
                    numba_norm.group_norm_backward(fdy, fx, fmean, frstd, strided_w, 3)):
        np.testing.assert_array_equal(a, b)
    stats = numba_norm.batch_norm_stats(x)
    np.testing.assert_array_equal(stats[0], numba_norm.batch_norm_stats(fx)[0])
    y, smean, srstd = numba_norm.batch_norm_forward(x, *stats, w, None, 1e-5)
    np.testing.assert_array_equal(y, numba_norm.batch_norm_forward(fx, *stats, strided_w, None,
                                                                   1e-5)[0])
    for a, b in zip(numba_norm.batch_norm_backward(dy, x, smean, srstd, w, True),
                    numba_norm.batch_norm_backward(fdy, fx, smean, srstd, strided_w, True)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- accuracy
def _float32_vs_float64(backend_name, fn, x):
    """fn's output and input gradient for x as float32 and as float64 (same values)."""
    x32 = x.astype(np.float32)
    dy = randn(*x.shape, seed=9)
    results = []
    with on(backend_name) as device:
        for dtype in (np.float32, np.float64):
            t = Tensor(x32, dtype=dtype).to(device).detach().requires_grad_(True)
            out = fn(t)
            out.backward(Tensor(dy, dtype=dtype).to(device))
            results.append((host(out), host(t.grad)))
    return results


def test_float32_statistics_are_stable_with_a_large_mean(backend_name):
    """mean 1e3, unit spread: float32 must match float64 to 2e-4 (a one-pass float32
    E[x²] - E[x]² would be off by about 1e-1 here)."""
    shape, groups = ((1, 2, 3, 4), 1) if backend_name == "cuda" else ((2, 4, 32, 32), 2)
    x = 1e3 + randn(*shape)
    for fn in (lambda t: F.group_norm(t, groups),
               lambda t: F.batch_norm(t, None, None, training=True)):
        (y32, g32), (y64, g64) = _float32_vs_float64(backend_name, fn, x)
        np.testing.assert_allclose(y32, y64, rtol=0, atol=2e-4)
        np.testing.assert_allclose(g32, g64, rtol=0, atol=2e-4)


# ---------------------------------------------------------------------------- properties
def by_hand(x, axes, eps):
    """(x - mean) / sqrt(var + eps) over ``axes`` in NumPy, the biased variance."""
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def test_one_group_is_layer_norm_over_chw():
    x, w, b = randn(3, 4, 5, 2), randn(4, seed=1), randn(4, seed=2)
    expected = by_hand(x, (1, 2, 3), 1e-5) * w[:, None, None] + b[:, None, None]
    with minidcn.backend("reference"):
        xt, wt, bt = tensors("cpu", x, w, b)
        np.testing.assert_allclose(F.group_norm(xt, 1, wt, bt).numpy(), expected, atol=1e-12)
        np.testing.assert_array_equal(F.layer_norm(xt, wt, bt).numpy(),
                                      F.group_norm(xt, 1, wt, bt).numpy())


def test_one_group_per_channel_is_instance_norm():
    x, w, b = randn(3, 4, 5, 2), randn(4, seed=1), randn(4, seed=2)
    expected = by_hand(x, (2, 3), 1e-5) * w[:, None, None] + b[:, None, None]
    with minidcn.backend("reference"):
        xt, wt, bt = tensors("cpu", x, w, b)
        np.testing.assert_allclose(F.group_norm(xt, 4, wt, bt).numpy(), expected, atol=1e-12)
        np.testing.assert_array_equal(F.instance_norm(xt, wt, bt).numpy(),
                                      F.group_norm(xt, 4, wt, bt).numpy())


@pytest.mark.parametrize("backend_name", ["reference", "numba"])
def test_each_group_has_mean_zero_and_variance_var_over_var_plus_eps(backend_name):
    eps = 0.5  # large, so that var / (var + eps) is visibly below 1
    x = randn(2, 6, 3, 3) * np.linspace(0.3, 2.0, 6)[:, None, None]
    with on(backend_name):
        y = F.group_norm(Tensor(x), 3, eps=eps).numpy().reshape(2, 3, -1)
    var = x.reshape(2, 3, -1).var(axis=2)
    np.testing.assert_allclose(y.mean(axis=2), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=2), var / (var + eps), rtol=1e-12)


@settings(max_examples=20)
@given(n=st.integers(1, 3), groups=st.integers(1, 3), per_group=st.integers(1, 3),
       length=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_invariant_to_shift_and_positive_scale_within_a_group(n, groups, per_group, length,
                                                              seed):
    """x -> a x + b with a > 0 and b constant per (n, g) leaves the output unchanged when eps
    scales with the variance (eps -> a² eps): exactly, up to rounding."""
    rng = np.random.default_rng(seed)
    channels, eps = groups * per_group, 1e-3
    x = rng.standard_normal((n, channels, length))
    a = rng.uniform(0.1, 10.0, (n, groups))
    b = rng.uniform(-100.0, 100.0, (n, groups))
    per_channel = lambda v: np.repeat(v, per_group, axis=1)[..., None]  # noqa: E731
    moved_x = per_channel(a) * x + per_channel(b)
    with minidcn.backend("reference"):
        y = F.group_norm(Tensor(x), groups, eps=eps).numpy()
        shifted = F.group_norm(Tensor(x + per_channel(b)), groups, eps=eps).numpy()
        np.testing.assert_allclose(shifted, y, atol=1e-9)  # a shift needs no change of eps
        for k in range(n):  # one image at a time, since eps can only scale per call
            for g in range(groups):
                sl = (slice(k, k + 1), slice(g * per_group, (g + 1) * per_group))
                y_moved = F.group_norm(Tensor(moved_x[sl]), 1, eps=eps * a[k, g] ** 2).numpy()
                np.testing.assert_allclose(y_moved, by_hand(x[sl], (1, 2), eps), atol=1e-9)
                np.testing.assert_allclose(y[sl], by_hand(x[sl], (1, 2), eps), atol=1e-12)


def test_group_norm_of_an_image_does_not_depend_on_the_batch():
    x = randn(4, 6, 3, 3)
    alone = F.group_norm(Tensor(x[1:2]), 3).numpy()
    in_batch = F.group_norm(Tensor(x), 3).numpy()[1:2]
    np.testing.assert_allclose(alone, in_batch, atol=1e-12)
    bn_alone = F.batch_norm(Tensor(x[1:2]), None, None, training=True).numpy()
    bn_in_batch = F.batch_norm(Tensor(x), None, None, training=True).numpy()[1:2]
    assert np.abs(bn_alone - bn_in_batch).max() > 0.1  # batch norm, by contrast, does


@pytest.mark.parametrize("as_tensor", [False, True])
def test_batch_norm_running_statistics_over_several_steps(as_tensor):
    momentum, c = 0.3, 3
    running_mean, running_var = np.zeros(c), np.ones(c)
    stats = (Tensor(running_mean), Tensor(running_var)) if as_tensor else (running_mean,
                                                                            running_var)
    expected_mean, expected_var = np.zeros(c), np.ones(c)
    for step in range(4):
        x = 2.0 * randn(5, c, 2, 3, seed=step) + step
        F.batch_norm(Tensor(x), *stats, training=True, momentum=momentum)
        per_channel = x.transpose(1, 0, 2, 3).reshape(c, -1)
        m = per_channel.shape[1]
        unbiased = ((per_channel - per_channel.mean(axis=1, keepdims=True)) ** 2).sum(1) / (m - 1)
        expected_mean = (1 - momentum) * expected_mean + momentum * per_channel.mean(axis=1)
        expected_var = (1 - momentum) * expected_var + momentum * unbiased
    got_mean, got_var = (s.numpy() if as_tensor else s for s in stats)
    np.testing.assert_allclose(got_mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(got_var, expected_var, rtol=1e-12)
    x = randn(2, c, 2, 2, seed=7)  # evaluation: normalised by them, and they stay put
    y = F.batch_norm(Tensor(x), *stats, training=False).numpy()
    expected = (x - expected_mean[:, None, None]) / np.sqrt(expected_var[:, None, None] + 1e-5)
    np.testing.assert_allclose(y, expected, atol=1e-12)
    np.testing.assert_allclose(got_mean, expected_mean, rtol=1e-12)


@pytest.mark.cuda
def test_batch_norm_updates_device_running_statistics_in_place():
    x = randn(3, 2, 2, 1)
    rm, rv = CudaArray.from_host(np.zeros(2)), CudaArray.from_host(np.ones(2))
    with on("cuda") as device:
        (xt,) = tensors(device, x)
        F.batch_norm(xt, rm, rv, training=True, momentum=0.5)
    per_channel = x.transpose(1, 0, 2, 3).reshape(2, -1)
    np.testing.assert_allclose(rm.to_host(), 0.5 * per_channel.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(rv.to_host(), 0.5 + 0.5 * per_channel.var(axis=1, ddof=1),
                               rtol=1e-12)


# ---------------------------------------------------------------------------- modules
def test_group_norm_modules():
    x = Tensor(randn(2, 4, 3, 3).astype(np.float32))
    gn = nn.GroupNorm(2, 4)
    assert gn.weight.shape == (4,) and np.all(gn.weight.numpy() == 1)
    assert np.all(gn.bias.numpy() == 0) and gn.weight.dtype == np.float32
    np.testing.assert_array_equal(gn(x).numpy(), F.group_norm(x, 2, gn.weight, gn.bias).numpy())
    ln, inorm = nn.LayerNorm(4), nn.InstanceNorm2d(4)
    assert isinstance(ln, nn.GroupNorm) and (ln.num_groups, inorm.num_groups) == (1, 4)
    assert inorm.weight is None and list(inorm.parameters()) == []
    np.testing.assert_array_equal(ln(x).numpy(), F.layer_norm(x, ln.weight, ln.bias).numpy())
    np.testing.assert_array_equal(inorm(x).numpy(), F.instance_norm(x).numpy())
    assert nn.GroupNorm(2, 4, dtype=np.float64).weight.dtype == np.float64


def test_batch_norm2d_train_eval_and_state_dict(tmp_path):
    bn = nn.BatchNorm2d(3, momentum=0.2)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                     "num_batches_tracked"]
    xs = [2.0 * randn(4, 3, 2, 2, seed=s).astype(np.float32) + 1 for s in range(3)]
    for x in xs:
        y = bn(Tensor(x)).numpy()
        np.testing.assert_allclose(y, by_hand(x.astype(np.float64), (0, 2, 3), 1e-5), atol=1e-5)
    state = bn.state_dict()
    assert state["num_batches_tracked"] == 3 and state["num_batches_tracked"].dtype == np.int64
    assert np.abs(state["running_mean"]).max() > 0.1
    bn.eval()
    x = xs[0]
    rm, rv = state["running_mean"], state["running_var"]
    expected = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5)
    np.testing.assert_allclose(bn(Tensor(x)).numpy(), expected, atol=1e-5)
    assert bn.state_dict()["num_batches_tracked"] == 3  # evaluation tracks nothing
    bn.save(tmp_path / "bn.npz")
    fresh = nn.BatchNorm2d(3)
    fresh.load_state_dict(tmp_path / "bn.npz")
    fresh.eval()
    np.testing.assert_array_equal(fresh(Tensor(x)).numpy(), bn(Tensor(x)).numpy())


def test_batch_norm2d_without_running_statistics_uses_the_batch_in_eval():
    bn = nn.BatchNorm2d(3, track_running_stats=False).eval()
    assert bn.running_mean is None and "running_mean" not in bn.state_dict()
    x = randn(4, 3, 2, 2).astype(np.float32)
    np.testing.assert_allclose(bn(Tensor(x)).numpy(), by_hand(x, (0, 2, 3), 1e-5), atol=1e-5)


def test_batch_norm2d_momentum_none_is_the_cumulative_average():
    bn = nn.BatchNorm2d(2, momentum=None, dtype=np.float64)
    xs = [randn(3, 2, 2, 2, seed=s) + s for s in range(3)]
    for x in xs:
        bn(Tensor(x))
    means = [x.mean(axis=(0, 2, 3)) for x in xs]
    np.testing.assert_allclose(bn.running_mean, np.mean(means, axis=0), rtol=1e-12)


# ---------------------------------------------------------------------------- torch
def test_group_norm_matches_torch():
    torch = pytest.importorskip("torch")
    x, w, b = randn(3, 6, 4, 5), randn(6, seed=1), randn(6, seed=2)
    out, grads = run("numba", lambda x, w, b: F.group_norm(x, 3, w, b), x, w, b)
    X, W, B = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    Y = torch.nn.functional.group_norm(X, 3, W, B)
    Y.backward(torch.tensor(np.random.default_rng(0).standard_normal(Y.shape)))  # run()'s grad
    np.testing.assert_allclose(out, Y.detach().numpy(), atol=1e-12)
    for g, t in zip(grads, (X, W, B)):
        np.testing.assert_allclose(g, t.grad.numpy(), atol=1e-12)
    xt, torch_x = Tensor(x), torch.tensor(x)
    np.testing.assert_allclose(F.layer_norm(xt).numpy(),
                               torch.nn.functional.layer_norm(torch_x, x.shape[1:]).numpy(),
                               atol=1e-12)
    np.testing.assert_allclose(F.instance_norm(xt).numpy(),
                               torch.nn.functional.instance_norm(torch_x).numpy(), atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_torch(training):
    torch = pytest.importorskip("torch")
    x, w, b = randn(4, 3, 2, 5), randn(3, seed=1), randn(3, seed=2)
    rm, rv = randn(3, seed=3), np.linspace(0.5, 2.0, 3)
    RM, RV = torch.tensor(rm), torch.tensor(rv)
    fn = lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training, momentum=0.25)  # noqa: E731
    out, grads = run("numba", fn, x, w, b)
    X, W, B = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    Y = torch.nn.functional.batch_norm(X, RM, RV, W, B, training, momentum=0.25)
    Y.backward(torch.tensor(np.random.default_rng(0).standard_normal(Y.shape)))  # run()'s grad
    np.testing.assert_allclose(out, Y.detach().numpy(), atol=1e-12)
    for g, t in zip(grads, (X, W, B)):
        np.testing.assert_allclose(g, t.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(rm, RM.numpy(), atol=1e-12)
    np.testing.assert_allclose(rv, RV.numpy(), atol=1e-12)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm2d_matches_torch_over_training_steps(momentum):
    torch = pytest.importorskip("torch")
    ours, theirs = nn.BatchNorm2d(3, momentum=momentum), torch.nn.BatchNorm2d(3, momentum=momentum)
    for step in range(3):
        x = (randn(4, 3, 3, 3, seed=step) * (step + 1)).astype(np.float32)
        np.testing.assert_allclose(ours(Tensor(x)).numpy(),
                                   theirs(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_allclose(ours.state_dict()[name], theirs.state_dict()[name].numpy(),
                                   rtol=1e-6)
    ours.eval()
    theirs.eval()
    np.testing.assert_allclose(ours(Tensor(x)).numpy(),
                               theirs(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


# ---------------------------------------------------------------------------- bad input
X = randn(2, 4, 3, 3).astype(np.float32)
C4 = np.ones(4, np.float32)
W4, XT = Tensor(C4.copy()), Tensor(X.copy())


def _overlapping_halves():
    """running_mean = buffer[0:4], running_var = buffer[3:7]: one element shared."""
    buffer = np.ones(7, np.float32)
    return buffer[:4], buffer[3:]


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.group_norm(X, 3), ValueError, "cannot be split into num_groups=3"),
    (lambda: F.group_norm(X, 0), ValueError, "num_groups must be >= 1"),
    (lambda: F.group_norm(X, 2.0), TypeError, "num_groups must be an int"),
    (lambda: F.group_norm(X, 2, np.ones(3, np.float32)), ValueError,
     "weight must have shape (C,) = (4,)"),
    (lambda: F.group_norm(X, 2, C4, np.ones(5, np.float32)), ValueError,
     "bias must have shape (C,) = (4,)"),
    (lambda: F.group_norm(X, 2, np.ones(4)), TypeError, "one dtype"),
    (lambda: F.group_norm(X[0, 0, 0], 1), ValueError, "at least 2 dimensions"),
    (lambda: F.group_norm(X, 2, eps=0.0), ValueError, "group_norm: eps must be a finite number "
     "> 0 (it keeps 1/sqrt(var + eps) finite on a constant group), got 0.0"),
    (lambda: F.group_norm(X, 2, eps=-1.0), ValueError, "group_norm: eps must be a finite number "
     "> 0 (it keeps 1/sqrt(var + eps) finite on a constant group), got -1.0"),
    (lambda: F.layer_norm(X, eps=float("nan")), ValueError, "layer_norm: eps must be a finite "
     "number > 0 (it keeps 1/sqrt(var + eps) finite on a constant group), got nan"),
    (lambda: F.instance_norm(X, eps="small"), TypeError, "instance_norm: eps must be a real "
     "number, got str 'small'"),
    (lambda: F.batch_norm(X, C4.copy(), C4.copy(), eps=float("inf")), ValueError,
     "batch_norm: eps must be a finite number > 0"),
    (lambda: F.batch_norm(X, C4.copy(), C4.copy(), eps=True), TypeError,
     "batch_norm: eps must be a real number, got bool True"),
    (lambda: nn.GroupNorm(2, 4, eps=0), ValueError, "GroupNorm: eps must be a finite number > 0"),
    (lambda: nn.LayerNorm(4, eps=-1e-5), ValueError, "LayerNorm: eps must be a finite number > 0"),
    (lambda: nn.InstanceNorm2d(4, eps=0.0), ValueError,
     "InstanceNorm2d: eps must be a finite number > 0"),
    (lambda: nn.BatchNorm2d(4, eps=0.0), ValueError, "BatchNorm2d: eps must be a finite number > 0"),
    (lambda: nn.BatchNorm2d(4, affine="no"), TypeError, "BatchNorm2d: affine must be a bool, "
     "got str 'no'"),
    (lambda: nn.BatchNorm2d(4, track_running_stats=0), TypeError,
     "BatchNorm2d: track_running_stats must be a bool, got int 0"),
    (lambda: nn.GroupNorm(2, 4, affine=None), TypeError, "GroupNorm: affine must be a bool, "
     "got NoneType None"),
    (lambda: F.batch_norm(X, np.zeros(4, np.float32), -C4), ValueError,
     "batch_norm: running_var must be finite and >= 0 (a variance) to normalise by it "
     "(training=False), got -1.0 at channel 0"),
    (lambda: F.batch_norm(X, np.zeros(4, np.float32), np.array([1, 1, np.inf, 1], np.float32)),
     ValueError, "batch_norm: running_var must be finite and >= 0 (a variance) to normalise by "
     "it (training=False), got inf at channel 2"),
    (lambda: F.batch_norm(X, np.array([0, np.nan, 0, 0], np.float32), C4.copy()), ValueError,
     "batch_norm: running_mean must be finite to normalise by it (training=False), got nan at "
     "channel 1"),
    (lambda: F.batch_norm(X, C4, C4), ValueError, "batch_norm: running_mean and running_var "
     "must be separate arrays, got two that share memory (running_mean is updated in place)"),
    (lambda: F.batch_norm(X, Tensor(C4), C4, training=True), ValueError,
     "batch_norm: running_mean and running_var must be separate arrays"),
    (lambda: F.batch_norm(X, *_overlapping_halves(), training=True), ValueError,
     "batch_norm: running_mean and running_var must be separate arrays"),
    (lambda: F.batch_norm(X, np.zeros(4, np.float32), W4.data, W4, training=True), ValueError,
     "batch_norm: running_var and weight must be separate arrays, got two that share memory "
     "(running_var is updated in place)"),
    (lambda: F.batch_norm(XT, XT.data[0, :, 0, 0], C4.copy(), training=True), ValueError,
     "batch_norm: running_mean and input must be separate arrays"),
    (lambda: F.group_norm("x", 2), TypeError, "group_norm: input must be a Tensor"),
    (lambda: F.layer_norm(X, np.ones(2, np.float32)), ValueError, "layer_norm: weight"),
    (lambda: F.instance_norm(X[0, 0, 0]), ValueError, "instance_norm: input must be (N, C, *)"),
    (lambda: F.batch_norm(X[:1, :, :1, :1], None, None, training=True), ValueError,
     "more than 1 value per channel"),
    (lambda: F.batch_norm(X, np.zeros(3, np.float32), np.ones(3, np.float32)), ValueError,
     "running_mean must have shape (C,) = (4,)"),
    (lambda: F.batch_norm(X, C4.copy(), np.ones(4)), TypeError,
     "running_var must have the input's dtype float32"),
    (lambda: F.batch_norm(X, [0.0] * 4, C4.copy()), TypeError,
     "running_mean must be a Tensor, a numpy.ndarray or a CudaArray"),
    (lambda: F.batch_norm(X, C4.copy(), None, training=True), ValueError,
     "must both be given or both be None"),
    (lambda: F.batch_norm(X, None, None), ValueError, "required when training=False"),
    (lambda: F.batch_norm(X, None, None, training=1), TypeError, "training must be a bool"),
    (lambda: F.batch_norm(X, None, None, training=True, momentum=1.5), ValueError,
     "momentum must be in [0, 1]"),
    (lambda: F.batch_norm(X, None, None, training=True, momentum=-0.1), ValueError,
     "momentum must be finite and >= 0"),
    (lambda: F.batch_norm(X, np.broadcast_to(np.float32(0), (4,)), C4.copy(), training=True),
     ValueError, "running_mean is a read-only array"),
    (lambda: F.batch_norm(X, C4.copy(), C4.copy(), weight=np.ones(2, np.float32)), ValueError,
     "batch_norm: weight must have shape (C,) = (4,)"),
    (lambda: nn.GroupNorm(3, 4), ValueError, "num_channels = 4 must be divisible by num_groups"),
    (lambda: nn.GroupNorm(2, 4)(np.ones((2, 6, 3), np.float32)), ValueError,
     "GroupNorm: expected input (N, 4, *) with 4 channels"),
    (lambda: nn.BatchNorm2d(4)(X[0]), ValueError, "BatchNorm2d: expected 4-D input"),
    (lambda: nn.BatchNorm2d(4, momentum=2.0), ValueError, "momentum must be in [0, 1] or None"),
    (lambda: nn.InstanceNorm2d(4)(X[:, :, 0]), ValueError, "InstanceNorm2d: expected 4-D input"),
    (lambda: nn.LayerNorm(4, dtype=np.int32), TypeError, "dtype must be float32 or float64"),
])
def test_bad_input(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


@pytest.mark.cuda
def test_bad_devices():
    x = Tensor(X)
    on_device = Tensor(C4).to("cuda")
    with pytest.raises(ValueError, match="one device"):
        F.group_norm(x, 2, on_device)
    with pytest.raises(ValueError, match="running_mean is on cuda but input is on cpu"):
        F.batch_norm(x, CudaArray.from_host(C4), CudaArray.from_host(C4))


@pytest.mark.cuda
def test_batchnorm_module_moves_to_cuda_and_back_keeping_its_counter_an_int():
    bn = nn.BatchNorm2d(3).double().to("cuda")
    assert np.asarray(bn.num_batches_tracked).dtype.kind == "i"
    x = Tensor(np.random.default_rng(0).standard_normal((4, 3, 2, 2))).double().to("cuda")
    bn(x).sum().backward()
    bn.to("cpu")
    state = bn.state_dict()
    assert state["num_batches_tracked"] == 1
    assert state["running_mean"].dtype == np.float64


def test_read_only_running_statistics_are_fine_in_evaluation():
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    rm.flags.writeable = rv.flags.writeable = False  # evaluation only reads them
    y = F.batch_norm(Tensor(X), rm, rv).numpy()
    np.testing.assert_allclose(y, X / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_separate_views_of_one_buffer_are_not_aliased():
    buffer = np.concatenate([np.zeros(4), np.ones(4)])
    x = randn(3, 4, 2, 2)
    separate = np.zeros(4), np.ones(4)
    F.batch_norm(Tensor(x), buffer[:4], buffer[4:], training=True)
    F.batch_norm(Tensor(x), *separate, training=True)
    np.testing.assert_array_equal(buffer, np.concatenate(separate))


def test_training_only_writes_the_running_statistics_so_their_values_are_not_checked():
    x = randn(3, 4, 2, 2)
    rm, rv = np.full(4, np.nan), -np.ones(4)
    y = F.batch_norm(Tensor(x), rm, rv, training=True, momentum=0.5).numpy()
    np.testing.assert_allclose(y, by_hand(x, (0, 2, 3), 1e-5), atol=1e-12)  # batch statistics
    assert np.isnan(rm).all()
    with pytest.raises(ValueError, match="running_mean must be finite to normalise by it"):
        F.batch_norm(Tensor(x), rm, rv, training=False)


@pytest.mark.cuda
def test_aliased_device_running_statistics_are_refused():
    x = Tensor(X).to("cuda")
    rm = CudaArray.from_host(np.zeros(4, np.float32))
    for rv in (rm, rm.reshape(4), CudaArray(rm.dev)):
        with pytest.raises(ValueError, match="running_mean and running_var must be separate"):
            F.batch_norm(x, rm, rv, training=True)
    rv = CudaArray.from_host(np.ones(4, np.float32))
    F.batch_norm(x, rm, rv, training=True)  # two allocations: fine


@pytest.mark.cuda
def test_device_running_statistics_are_checked_in_evaluation():
    x = Tensor(X).to("cuda")
    rm = CudaArray.from_host(np.zeros(4, np.float32))
    rv = CudaArray.from_host(np.array([1, 1, 1, -2], np.float32))
    with pytest.raises(ValueError, match="running_var must be finite and >= 0 .* got -2.0 at "
                                         "channel 3"):
        F.batch_norm(x, rm, rv)


# ---------------------------------------------------------------------------- ownership
def _eval_grads(device, x, w, rm, rv, g, after=None):
    """(dx, dγ) of batch_norm in evaluation; ``after()`` runs between forward and backward."""
    xt, wt = tensors(device, x, w, requires_grad=True)
    y = F.batch_norm(xt, moved(rm, device) if not callable(rm) else rm(),
                     moved(rv, device) if not callable(rv) else rv(), wt, training=False)
    if after is not None:
        after()
    y.backward(Tensor(g).to(device))
    return host(xt.grad), host(wt.grad)


def test_evaluation_backward_reads_its_own_copy_of_the_running_statistics(backend_name):
    x, w, g = randn(3, 2, 2, 2), randn(2, seed=1), randn(3, 2, 2, 2, seed=2)
    rm0, rv0 = randn(2, seed=3), np.array([0.5, 2.0])
    with on(backend_name) as device:
        expected = _eval_grads(device, x, w, rm0, rv0, g)
        rm, rv = moved(rm0.copy(), device), moved(rv0.copy(), device)

        def change_them():  # in place, by hand and by a training step of the same buffers
            rm[...] = 7.0
            rv[...] = 0.01
            F.batch_norm(Tensor(3 * x + 5).to(device), rm, rv, training=True, momentum=1.0)

        got = _eval_grads(device, x, w, lambda: rm, lambda: rv, g, after=change_them)
        assert abs(raw_host(rm)[0] - (3 * x + 5)[:, 0].mean()) < 1e-9  # they did change
    for ours, theirs in zip(got, expected):
        np.testing.assert_array_equal(ours, theirs)


def test_backward_reads_its_own_copy_of_arrays_given_as_input_and_weight():
    x, w, g = randn(3, 2, 2, 2), randn(2, seed=1), randn(3, 2, 2, 2, seed=2)
    for fn in (lambda x, w: F.group_norm(x, 1, w), lambda x, w: F.batch_norm(x, None, None, w,
                                                                             training=True)):
        xt, wt = Tensor(x.copy(), requires_grad=True), Tensor(w.copy(), requires_grad=True)
        fn(xt, wt).backward(Tensor(g))
        x_array, w_array = x.copy(), w.copy()
        xt2, wt2 = Tensor(x.copy(), requires_grad=True), Tensor(w.copy(), requires_grad=True)
        y_weight = fn(xt2, w_array)    # backward reads the weight for dx
        y_input = fn(x_array, wt2)     # and the input for dγ
        w_array[...] = 0.0
        x_array[...] = 0.0
        y_weight.backward(Tensor(g))
        y_input.backward(Tensor(g))
        np.testing.assert_array_equal(xt2.grad.numpy(), xt.grad.numpy())
        np.testing.assert_array_equal(wt2.grad.numpy(), wt.grad.numpy())


# ---------------------------------------------------------------------------- module state
def test_batch_norm2d_refuses_a_counter_it_cannot_count_from():
    x = Tensor(X)
    bn = nn.BatchNorm2d(4, momentum=None)
    bn.num_batches_tracked = np.array(-1)
    with pytest.raises(ValueError) as info:
        bn(x)
    assert str(info.value) == ("BatchNorm2d: buffer num_batches_tracked must be >= 0 (batches "
                               "seen), got -1")
    assert np.all(bn.running_mean == 0)  # refused before anything was updated
    bn.num_batches_tracked = 2.0
    with pytest.raises(TypeError, match="BatchNorm2d: buffer num_batches_tracked must be a 0-d "
                                        "integer array, got float 2.0"):
        bn(x)
    bn.num_batches_tracked = np.array(2**63 - 1)
    with pytest.raises(ValueError, match="num_batches_tracked must be <= 9223372036854775806 "
                                         "\\(one more batch must fit in int64\\)"):
        bn(x)
    assert np.all(bn.running_mean == 0)
    bn.num_batches_tracked = 2  # a plain int is a counter too
    bn(x)
    assert bn.num_batches_tracked == 3 and bn.state_dict()["num_batches_tracked"].dtype == np.int64
    bn.eval().num_batches_tracked = np.array(-1)
    bn(x)  # evaluation does not read the counter


@pytest.mark.parametrize("name, value, message", [
    ("num_batches_tracked", np.array(-1), "key 'num_batches_tracked' in {file} must be >= 0 "
     "(batches seen), got -1"),
    ("running_var", np.array([1, 1, -0.5, 1]), "key 'running_var' in {file} must hold finite "
     "variances >= 0, got -0.5"),
    ("running_mean", np.array([0, np.inf, 0, 0]), "key 'running_mean' in {file} must hold "
     "finite means, got inf"),
])
def test_batch_norm2d_refuses_a_restored_state_it_cannot_use(tmp_path, name, value, message):
    bn = nn.BatchNorm2d(4)
    path = tmp_path / "bn.npz"
    np.savez(path, **dict(bn.state_dict(), **{name: value}))
    with pytest.raises(ValueError) as info:
        bn.load_state_dict(path)
    assert str(info.value) == "load_state_dict: " + message.format(file=repr(str(path)))
    assert bn.num_batches_tracked == 0 and np.all(bn.running_var == 1)  # nothing loaded


NORM_IMPORTED_UNDER_A_SMALL_GRID = """
import numpy as np
from minidcn import Tensor, functional as F
from minidcn.device import launch
launch.THREADS_PER_BLOCK = 4           # as test_cuda_array's small_grid fixture does
from minidcn.backends.cuda import norm  # noqa: F401  first imported (and compiled) under it
x = Tensor(np.arange(2 * 4 * 3 * 3, dtype=np.float64).reshape(2, 4, 3, 3))
small = F.group_norm(x.to("cuda"), 2).to("cpu").numpy()
launch.THREADS_PER_BLOCK = 128          # the fixture undone: full blocks again
full = F.group_norm(x.to("cuda"), 2).to("cpu").numpy()
np.testing.assert_allclose(small, full, rtol=0, atol=1e-12)
np.testing.assert_allclose(full, F.group_norm(x, 2).numpy(), rtol=0, atol=1e-12)
print("ok")
"""


@pytest.mark.cuda
def test_cuda_norm_does_not_keep_the_block_size_it_was_imported_with():
    """The block-sum kernels' shared array has a fixed size, so the norm module may first be
    imported while a test has shrunk the launch grid (the test order decides) and still run
    full blocks afterwards (it raised IndexError in the simulator)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(minidcn.__file__).resolve().parent.parent
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", NORM_IMPORTED_UNDER_A_SMALL_GRID], env=env,
                          cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
