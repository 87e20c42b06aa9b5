"""SGD and Adam against torch's update rules, parameter groups, param_groups by lr_mult."""

import numpy as np
import pytest

from minidcn import Tensor, nn, optim

RNG = np.random.default_rng(0)
START = [RNG.standard_normal((3, 4)), RNG.standard_normal((4,))]
GRADS = [[RNG.standard_normal(p.shape) for p in START] for _ in range(6)]


def run_ours(make, dtype=np.float64, groups=None):
    params = [nn.Parameter(p.astype(dtype)) for p in START]
    opt = make(params if groups is None else groups(params))
    for grads in GRADS:
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad = Tensor(g.astype(dtype))
        opt.step()
    return [p.numpy() for p in params]


def run_torch(torch, make, dtype=np.float64, groups=None):
    params = [torch.tensor(p.astype(dtype), requires_grad=True) for p in START]
    opt = make(params if groups is None else groups(params))
    for grads in GRADS:
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g.astype(dtype))
        opt.step()
    return [p.detach().numpy() for p in params]


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.1, momentum=0.8, weight_decay=0.01),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
    dict(lr=0.2, weight_decay=0.1),
]
ADAM_CASES = [
    dict(),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.1, betas=(0.0, 0.5)),
]


@pytest.mark.parametrize("name, kwargs", [("SGD", k) for k in SGD_CASES]
                         + [("Adam", k) for k in ADAM_CASES], ids=str)
def test_matches_torch_over_several_steps(name, kwargs):
    torch = pytest.importorskip("torch")
    ours_cls, torch_cls = getattr(optim, name), getattr(torch.optim, name)
    for dtype, rtol, atol in ((np.float64, 1e-13, 1e-14), (np.float32, 1e-5, 1e-6)):
        ours = run_ours(lambda ps: ours_cls(ps, **kwargs), dtype=dtype)
        theirs = run_torch(torch, lambda ps: torch_cls(ps, **kwargs), dtype=dtype)
        for a, b in zip(ours, theirs):
            assert a.dtype == dtype
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def test_sgd_momentum_by_hand():
    p = nn.Parameter(np.array([1.0]))
    opt = optim.SGD([p], lr=0.5, momentum=0.9, weight_decay=0.1)
    p.grad = Tensor(np.array([2.0]))
    opt.step()  # g = 2 + 0.1 * 1 = 2.1; b = 2.1; p = 1 - 0.5 * 2.1
    assert p.item() == pytest.approx(1 - 1.05)
    p.grad = Tensor(np.array([2.0]))
    opt.step()  # g = 2 + 0.1 * (-0.05) = 1.995; b = 0.9 * 2.1 + 1.995 = 3.885
    assert p.item() == pytest.approx(-0.05 - 0.5 * 3.885)


def test_adam_first_step_moves_each_entry_by_lr():
    # after one step m̂ = g and v̂ = g², so the update is lr * g / (|g| + eps) ≈ lr * sign(g)
    p = nn.Parameter(np.array([1.0, 1.0, 1.0]))
    opt = optim.Adam([p], lr=0.01)
    p.grad = Tensor(np.array([3.0, -0.002, 50.0]))
    opt.step()
    np.testing.assert_allclose(p.numpy(), [0.99, 1.01, 0.99], rtol=1e-6)


def test_parameters_without_gradient_are_left_alone():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = Tensor(np.ones(2))
    opt.step()
    np.testing.assert_array_equal(b.numpy(), [1.0, 1.0])
    assert a.numpy()[0] < 1.0 and b not in opt.state


def test_zero_grad_clears_every_group():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 1.0}], lr=0.1)
    a.grad, b.grad = Tensor(np.ones(2)), Tensor(np.ones(2))
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_parameter_groups_with_their_own_lr_match_torch():
    torch = pytest.importorskip("torch")

    def groups(ps):
        return [{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.01, "momentum": 0.5}]

    ours = run_ours(lambda g: optim.SGD(g, lr=0.1, momentum=0.9), groups=groups)
    theirs = run_torch(torch, lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9), groups=groups)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


def test_group_overrides_and_defaults():
    a, b = nn.Parameter(np.zeros(1)), nn.Parameter(np.zeros(1))
    opt = optim.SGD([{"params": a}, {"params": [b], "lr": 1.0}], lr=0.1, momentum=0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 1.0]
    assert [g["momentum"] for g in opt.param_groups] == [0.5, 0.5]
    a.grad, b.grad = Tensor(np.ones(1)), Tensor(np.ones(1))
    opt.step()
    assert a.item() == pytest.approx(-0.1) and b.item() == pytest.approx(-1.0)


class WithOffsets(nn.Module):
    """A conv-like layer whose offset predictor trains at a tenth of the rate."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(np.ones((2, 2)))
        self.offset_weight = nn.Parameter(np.ones(3), lr_mult=0.1)
        self.offset_bias = nn.Parameter(np.ones(3), lr_mult=0.1)
        self.head = nn.Linear(2, 1)
        self.frozen = nn.Parameter(np.ones(1), lr_mult=0.0)


def test_param_groups_splits_by_lr_mult():
    m = WithOffsets()
    groups = optim.param_groups(m, lr=0.5, momentum=0.9)
    assert [g["lr"] for g in groups] == [0.5, 0.05, 0.0]
    assert [[id(p) for p in g["params"]] for g in groups] == [
        [id(m.weight), id(m.head.weight), id(m.head.bias)],
        [id(m.offset_weight), id(m.offset_bias)],
        [id(m.frozen)],
    ]
    assert all(g["momentum"] == 0.9 for g in groups)
    opt = optim.SGD(groups, lr=0.5)
    for p in m.parameters():
        p.grad = Tensor(np.ones(p.shape, dtype=p.dtype))
    opt.step()
    assert m.weight.numpy()[0, 0] == pytest.approx(0.5)
    assert m.offset_weight.numpy()[0] == pytest.approx(0.95)
    assert m.frozen.item() == 1.0


def test_param_groups_errors():
    with pytest.raises(ValueError, match="param_groups: ReLU has no parameters"):
        optim.param_groups(nn.ReLU(), lr=0.1)
    with pytest.raises(ValueError, match="param_groups: lr must be a finite number >= 0.0, got -1.0"):
        optim.param_groups(WithOffsets(), lr=-1)
    m = WithOffsets()
    m.offset_bias.lr_mult = -2.0
    with pytest.raises(ValueError, match="param_groups: a parameter's lr_mult must be"):
        optim.param_groups(m, lr=0.1)


def _p():
    return nn.Parameter(np.ones(2))


@pytest.mark.parametrize("make, error, piece", [
    (lambda: optim.SGD([], lr=0.1), ValueError,
     "SGD: params must hold at least one Tensor or group, got an empty parameter list"),
    (lambda: optim.SGD(_p(), lr=0.1), TypeError, "SGD: params must be an iterable of Tensors"),
    (lambda: optim.SGD(None, lr=0.1), TypeError,
     "SGD: params must be an iterable of Tensors or of dicts, got NoneType"),
    (lambda: optim.SGD([_p()], lr=-0.1), ValueError, "SGD: lr must be a finite number >= 0.0, got -0.1"),
    (lambda: optim.SGD([_p()], lr="fast"), TypeError, "SGD: lr must be a real number, got str"),
    (lambda: optim.SGD([_p()], lr=float("nan")), ValueError, "SGD: lr must be a finite number"),
    (lambda: optim.SGD([_p()], lr=0.1, momentum=-1), ValueError, "SGD: momentum must be"),
    (lambda: optim.SGD([_p()], lr=0.1, weight_decay=-1), ValueError, "SGD: weight_decay must be"),
    (lambda: optim.SGD([_p()], lr=0.1, nesterov=True), ValueError,
     "SGD: nesterov needs momentum > 0 and dampening = 0"),
    (lambda: optim.SGD([_p()], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError,
     "SGD: nesterov needs momentum > 0 and dampening = 0"),
    (lambda: optim.SGD([_p()], lr=0.1, nesterov="yes"), TypeError, "SGD: nesterov must be True or False"),
    (lambda: optim.SGD([1.0], lr=0.1), TypeError, "SGD: params\\[0\\] must be a Tensor, got float"),
    (lambda: optim.SGD([_p() * 2], lr=0.1), ValueError, "SGD: params\\[0\\] is not a leaf tensor"),
    (lambda: optim.Adam([_p()], betas=(0.9, 1.0)), ValueError, "Adam: betas\\[1\\] must be in \\[0.0, 1.0\\), got 1.0"),
    (lambda: optim.Adam([_p()], betas=(-0.1, 0.9)), ValueError, "Adam: betas\\[0\\] must be in"),
    (lambda: optim.Adam([_p()], betas=0.9), TypeError, "Adam: betas must be a pair"),
    (lambda: optim.Adam([_p()], eps=-1e-8), ValueError, "Adam: eps must be a finite number > 0.0, got -1e-08"),
    (lambda: optim.Adam([_p()], eps=0.0), ValueError, "Adam: eps must be a finite number > 0.0, got 0.0"),
    (lambda: optim.Adam([_p()], eps=float("inf")), ValueError, "Adam: eps must be a finite number > 0.0, got inf"),
    (lambda: optim.Adam([_p()], eps="tiny"), TypeError, "Adam: eps must be a real number, got str"),
    (lambda: optim.Adam([_p()], weight_decay=-0.1), ValueError,
     "Adam: weight_decay must be a finite number >= 0.0, got -0.1"),
    (lambda: optim.Adam([_p()], betas=(0.9, float("nan"))), ValueError, "Adam: betas\\[1\\] must be in \\[0.0, 1.0\\), got nan"),
    (lambda: optim.Adam([_p()], betas=(0.9, 0.99, 0.9)), TypeError, "Adam: betas must be a pair"),
    (lambda: optim.SGD([_p()], lr=0.1, dampening=1.5), ValueError, "SGD: dampening must be in \\[0.0, 1.0\\], got 1.5"),
    (lambda: optim.SGD([_p()], lr=0.1, momentum=float("inf")), ValueError,
     "SGD: momentum must be a finite number >= 0.0, got inf"),
    (lambda: optim.SGD([_p()], lr=True), TypeError, "SGD: lr must be a real number, got bool"),
    (lambda: optim.Adam([_p()], lr=-1), ValueError, "Adam: lr must be"),
    (lambda: optim.Adam([{"params": [_p()], "lr": -1}]), ValueError, "Adam: lr must be"),
    (lambda: optim.Adam([{"params": []}]), ValueError,
     "Adam: a parameter group's params must hold at least one Tensor, got an empty parameter list"),
    (lambda: optim.Adam([{"lr": 0.1}]), ValueError, "Adam: a parameter group needs a 'params' entry"),
    (lambda: optim.Adam([{"params": [_p()], "momentum": 0.9}]), TypeError,
     "Adam: unknown option\\(s\\) \\['momentum'\\] in a parameter group"),
])
def test_argument_errors(make, error, piece):
    with pytest.raises(error, match=piece):
        make()


def test_duplicate_parameters_are_rejected():
    p = _p()
    with pytest.raises(ValueError, match="appears more than once"):
        optim.SGD([{"params": [p]}, {"params": [p], "lr": 0.01}], lr=0.1)
    with pytest.raises(ValueError, match="appears more than once"):
        optim.Adam([p, p])
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="appears more than once"):
        opt.add_param_group({"params": [p]})


def test_a_gradient_that_does_not_fit_is_an_error():
    p = _p()
    opt = optim.SGD([p], lr=0.1)
    p.grad = Tensor(np.ones(3))
    with pytest.raises(ValueError, match=r"SGD.step: a gradient of shape \(3,\) on cpu does not fit"):
        opt.step()


def test_training_a_tiny_regression_converges():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32) + 0.3
    model = nn.Linear(3, 1, generator=np.random.default_rng(0))
    opt = optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = ((model(Tensor(x)) - Tensor(y)) ** 2).mean()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-4
    np.testing.assert_allclose(model.weight.numpy(), [[1.0, -2.0, 0.5]], atol=1e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
    lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.01),
], ids=["sgd", "adam"])
def test_optimizers_update_device_parameters_like_host_ones(make):
    host = [nn.Parameter(p.copy()) for p in START]
    device = [nn.Parameter(Tensor(p).to("cuda").data) for p in START]
    opt_host, opt_device = make(host), make(device)
    for grads in GRADS[:2]:
        for ph, pd, g in zip(host, device, grads):
            ph.grad = Tensor(g)
            pd.grad = Tensor(g).to("cuda")
        opt_host.step()
        opt_device.step()
    for ph, pd in zip(host, device):
        assert pd.device == "cuda"
        np.testing.assert_allclose(pd.to("cpu").numpy(), ph.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: optim.Adam(ps)])
def test_a_float64_learning_rate_keeps_float32_parameters_float32(make):
    p = nn.Parameter(np.ones(3, dtype=np.float32))
    opt = make([p])
    opt.param_groups[0]["lr"] = np.float64(0.05)
    p.grad = Tensor(np.ones(3, dtype=np.float32))
    opt.step()
    opt.step()
    assert p.dtype == np.float32
    for state in opt.state.values():
        assert all(v.dtype == np.float32 for v in state.values() if hasattr(v, "dtype"))


def test_adam_with_the_smallest_eps_keeps_a_zero_gradient_parameter_finite():
    p = nn.Parameter(np.ones(2))
    opt = optim.Adam([p], lr=0.1, eps=5e-324)  # the smallest eps > 0 (a subnormal)
    p.grad = Tensor(np.zeros(2))
    opt.step()
    np.testing.assert_array_equal(p.numpy(), np.ones(2))  # 0 / (0 + eps) = 0, not NaN


@pytest.mark.parametrize("make, key, value, piece", [
    (lambda p: optim.Adam([p]), "eps", 0.0, "Adam: eps must be a finite number > 0.0, got 0.0"),
    (lambda p: optim.SGD([p], lr=0.1), "lr", -0.5, "SGD: lr must be a finite number >= 0.0, got -0.5"),
    (lambda p: optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True), "dampening", 0.5,
     "SGD: nesterov needs momentum > 0 and dampening = 0"),
])
def test_step_checks_hyperparameters_changed_after_construction(make, key, value, piece):
    p = nn.Parameter(np.ones(2))
    opt = make(p)
    opt.param_groups[0][key] = value  # as a learning-rate schedule writes group["lr"]
    p.grad = Tensor(np.zeros(2))
    with pytest.raises(ValueError, match=piece):
        opt.step()
    np.testing.assert_array_equal(p.numpy(), np.ones(2))  # refused before any update


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: optim.Adam(ps, lr=0.1)])
def test_a_parameter_reshaped_after_a_step_is_refused_before_any_update(make):
    a, b = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))
    opt = make([a, b])
    a.grad, b.grad = Tensor(np.ones(3)), Tensor(np.ones(2))
    opt.step()
    before = a.numpy().copy()
    b.data = np.ones(1)  # its momentum (3 entries would broadcast) no longer fits
    a.grad, b.grad = Tensor(np.ones(3)), Tensor(np.ones(1))
    with pytest.raises(ValueError, match=r"step: the state '\w+' of shape \(2,\) on cpu does not "
                                         r"fit its parameter \(1,\) on cpu"):
        opt.step()
    np.testing.assert_array_equal(a.numpy(), before)  # a was not updated either
