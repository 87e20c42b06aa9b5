"""The general-purpose layers: Linear, the activations, Flatten and Sequential (as in torch.nn).

``Linear`` draws its initial weights the way torch does (see :mod:`minidcn.nn.init`):
``W ~ U(-1/√in_features, 1/√in_features)`` and the bias from the same interval, taken from
``generator`` (a ``numpy.random.Generator``) so that a run can be repeated exactly.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import functional as F
from ..functional._validate import check_elements, check_int
from . import init
from .module import Module, Parameter

__all__ = ["Linear", "ReLU", "Sigmoid", "Tanh", "GELU", "Softmax", "Flatten", "Permute", "Sequential"]


def _layer_dtype(layer: str, dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{layer}: dtype must be float32 or float64, got {dtype}")
    return dtype



class Linear(Module):
    """y = x Wᵀ + b, with W of shape (out_features, in_features) and b of shape (out_features,).

    Both are drawn from U(-1/√in_features, 1/√in_features), torch's default.
    """

    def __init__(self, in_features, out_features, bias=True, *, generator=None,
                 dtype=np.float32):
        super().__init__()
        self.in_features = check_int("Linear", "in_features", in_features, 1)
        self.out_features = check_int("Linear", "out_features", out_features, 1)
        dtype = _layer_dtype("Linear", dtype)
        rng = init.generator(generator)
        shape = (self.out_features, self.in_features)
        check_elements("Linear", "the weight", shape, "in_features and out_features")
        self.weight = Parameter(init.kaiming_uniform_default(shape, self.in_features, rng, dtype))
        bound = 1.0 / np.sqrt(self.in_features)
        self.bias = Parameter(init.uniform((self.out_features,), bound, rng, dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class ReLU(Module):
    """max(x, 0), elementwise."""

    def forward(self, x):
        return F.relu(x)


class Sigmoid(Module):
    """1 / (1 + e^-x), elementwise."""

    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    """tanh x, elementwise."""

    def forward(self, x):
        return F.tanh(x)


class GELU(Module):
    """x Φ(x) = ½ x (1 + erf(x / √2)), elementwise (torch's exact GELU)."""

    def forward(self, x):
        return F.gelu(x)


class Softmax(Module):
    """e^x / Σ e^x along ``dim`` (required, as torch advises)."""

    def __init__(self, dim: int):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
            raise TypeError(f"Softmax: dim must be an int, got {dim!r}")
        self.dim = int(dim)

    def forward(self, x):
        return F.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Flatten(Module):
    """Merge the axes from ``start_dim`` on into one: (B, C, H, W) -> (B, C·H·W) by default."""

    def __init__(self, start_dim: int = 1):
        super().__init__()
        if isinstance(start_dim, bool) or not isinstance(start_dim, numbers.Integral):
            raise TypeError(f"Flatten: start_dim must be an int, got {start_dim!r}")
        self.start_dim = int(start_dim)

    def forward(self, x):
        return F.flatten(x, self.start_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}"


class Permute(Module):
    """Reorder the axes, as ``torchvision.ops.Permute``: ``Permute((0, 2, 3, 1))`` turns
    (N, C, H, W) into channels-last (N, H, W, C)."""

    def __init__(self, dims):
        super().__init__()
        if not isinstance(dims, (tuple, list)) or any(
                isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in dims):
            raise TypeError(f"Permute: dims must be a tuple of ints, got {dims!r}")
        if sorted(int(d) for d in dims) != list(range(len(dims))):
            raise ValueError(f"Permute: dims must be a permutation of 0..{len(dims) - 1}, "
                             f"got {tuple(dims)}")
        self.dims = tuple(int(d) for d in dims)

    def forward(self, x):
        return F.permute(x, self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class Sequential(Module):
    """Run modules one after the other; they are registered as children "0", "1", ...

    ``seq[i]`` is the i-th module, ``seq[i:j]`` a Sequential of a slice, ``len(seq)`` and
    ``for m in seq`` work as for a list.
    """

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(
                    f"Sequential: argument {i} must be a Module, got {type(m).__name__}"
                )
            setattr(self, str(i), m)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        layers = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*layers[index])
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f"Sequential: index must be an int or a slice, got {index!r}")
        if not -len(layers) <= index < len(layers):
            raise IndexError(f"Sequential: index {index} out of range for {len(layers)} modules")
        return layers[index]

    def forward(self, x):
        for m in self:
            x = m(x)
        return x
