"""State dicts cross between minidcn and torch both ways: the same keys, shapes and outputs.

Conv2d, Linear, GroupNorm, BatchNorm2d (with num_batches_tracked) and DeformConv2d.  A
minidcn DeformConv2d holds torchvision's DeformConv2d parameters (``weight``, ``bias``) plus
the usual predictors ``offset_conv`` (2 · offset_groups · kh · kw channels, torchvision's
offset layout) and ``mask_conv`` (offset_groups · kh · kw channels, through a sigmoid); the
torch side here builds the same module from ``torch.nn.Conv2d`` and, when torchvision
imports, ``torchvision.ops.deform_conv2d`` (otherwise minidcn's ``deform_conv2d`` runs on
the offsets and mask torch's predictors computed: then only the predictors and the state
dict are checked against torch, the deformable sampling itself against minidcn).
"""

import numpy as np
import pytest

from minidcn import Tensor, nn, no_grad
from minidcn import functional as F

torch = pytest.importorskip("torch", reason="torch is not installed (optional; pip install "
                                            "torch to check the state-dict round trips)")
try:
    from torchvision.ops import deform_conv2d as tv_deform_conv2d
except Exception:  # not installed, or a build that does not match torch
    tv_deform_conv2d = None

RTOL = ATOL = 1e-5


def to_numpy(state):
    return {k: v.detach().numpy().copy() for k, v in state.items()}


def to_torch(state):
    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def randomise_torch(module, rng):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.normal(0.0, 0.2, tuple(p.shape)).astype(np.float32)))
    return module


def same_outputs(ours, theirs, x):
    with no_grad():
        a = ours(Tensor(x)).numpy()
    with torch.no_grad():
        b = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


class TorchDeformConv2d(torch.nn.Module):
    """torchvision's DeformConv2d parameters plus offset_conv / mask_conv predictors."""

    def __init__(self, cin, cout, k, stride, padding, dilation, groups, offset_groups,
                 modulated):
        super().__init__()
        self.geometry = (stride, padding, dilation)
        self.weight = torch.nn.Parameter(torch.empty(cout, cin // groups, k, k))
        self.bias = torch.nn.Parameter(torch.empty(cout))
        points = offset_groups * k * k
        self.offset_conv = torch.nn.Conv2d(cin, 2 * points, k, stride, padding, dilation)
        self.mask_conv = (torch.nn.Conv2d(cin, points, k, stride, padding, dilation)
                          if modulated else None)

    def forward(self, x):
        offset = self.offset_conv(x)
        mask = torch.sigmoid(self.mask_conv(x)) if self.mask_conv is not None else None
        stride, padding, dilation = self.geometry
        if tv_deform_conv2d is not None:
            return tv_deform_conv2d(x, offset, self.weight, self.bias, stride, padding,
                                    dilation, mask)
        y = F.deform_conv2d(x.numpy(), offset.numpy(), self.weight.detach().numpy(),
                            self.bias.detach().numpy(), stride, padding, dilation,
                            None if mask is None else mask.numpy())
        return torch.from_numpy(y.numpy())


CASES = {
    "Conv2d": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2),
               lambda: torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2),
               (2, 4, 9, 9)),
    "Linear": (lambda: nn.Linear(7, 3), lambda: torch.nn.Linear(7, 3), (5, 7)),
    "GroupNorm": (lambda: nn.GroupNorm(2, 6), lambda: torch.nn.GroupNorm(2, 6), (3, 6, 4, 5)),
    "DeformConv2d": (
        lambda: nn.DeformConv2d(4, 6, 3, padding=1, dilation=1, groups=2, offset_groups=2,
                                modulated=True),
        lambda: TorchDeformConv2d(4, 6, 3, 1, 1, 1, 2, 2, True), (2, 4, 7, 7)),
    "DeformConv2d v1": (lambda: nn.DeformConv2d(4, 4, 3, stride=2, padding=2, dilation=2),
                        lambda: TorchDeformConv2d(4, 4, 3, 2, 2, 2, 1, 1, False),
                        (1, 4, 8, 8)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_torch_state_dict_loads_into_minidcn_and_back(name):
    make_ours, make_theirs, shape = CASES[name]
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape).astype(np.float32)
    theirs = randomise_torch(make_theirs(), rng)
    ours = make_ours()
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    ours.load_state_dict(to_numpy(theirs.state_dict()))
    same_outputs(ours, theirs, x)

    # And back: fresh random minidcn weights into a fresh torch module.
    fresh = make_ours()
    for p in fresh.parameters():
        p.data = rng.normal(0.0, 0.2, p.shape).astype(np.float32)
    back = make_theirs()
    back.load_state_dict(to_torch(fresh.state_dict()), strict=True)
    same_outputs(fresh, back, x)


def test_batchnorm2d_state_dict_with_num_batches_tracked_both_ways():
    rng = np.random.default_rng(4)
    x = rng.normal(1.0, 2.0, size=(4, 3, 5, 5)).astype(np.float32)
    theirs = randomise_torch(torch.nn.BatchNorm2d(3), rng)
    theirs.train()
    with torch.no_grad():
        theirs(torch.from_numpy(x))
        theirs(torch.from_numpy(x * 0.5))  # two steps: num_batches_tracked = 2
    ours = nn.BatchNorm2d(3)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    ours.load_state_dict(to_numpy(theirs.state_dict()))
    assert int(ours.num_batches_tracked) == 2
    ours.eval(), theirs.eval()
    same_outputs(ours, theirs, x)

    # One training step on each side moves the same statistics the same way.
    ours.train(), theirs.train()
    same_outputs(ours, theirs, x - 0.5)
    for key, value in ours.state_dict().items():
        np.testing.assert_allclose(value, theirs.state_dict()[key].numpy(), rtol=RTOL,
                                   atol=ATOL, err_msg=key)
    assert int(ours.num_batches_tracked) == 3

    back = torch.nn.BatchNorm2d(3)
    back.load_state_dict(to_torch(ours.state_dict()), strict=True)
    assert int(back.num_batches_tracked) == 3
    ours.eval(), back.eval()
    same_outputs(ours, back, x)
