"""RoI pooling layers: RoIPool and RoIAlign (torchvision.ops), and DeformRoIPool, the DCN
paper's deformable RoI pooling module that predicts its own offsets (and, modulated, its
mask).

DeformRoIPool is the paper's design (DCN v1 section 2.2, figure 3; DCN v2 for the mask):

1. a plain RoI pooling of the features, roi_align(aligned=True), to (K, C, ph, pw);
2. a small fully connected head on the flattened pooled features predicts the normalised
   offsets (K, 2, ph, pw), channel 0 = x; its last layer starts at zero, so at
   initialisation the offsets are 0 and the module is roi_align(aligned=True);
3. modulated: a second head, same shape, ends in a sigmoid and predicts the mask
   (K, 1, ph, pw); its last layer also starts at zero, so the mask starts at 0.5 (as in
   mmcv's ModulatedDeformRoIPoolPack);
4. deform_roi_pool(features, rois, offset, mask=mask).

Head sizes: ``hidden`` lists the widths of the hidden layers (each Linear + ReLU).  The
paper uses one fc layer (``hidden=()``); mmcv's DeformRoIPoolPack uses ``(1024, 1024)``
for the offsets and ``(1024,)`` for the mask.  Here both heads use ``hidden``, 256 by
default.  Gradients reach the features along both paths (through the head and through the
deformable pooling), as in mmcv.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..functional import deform_roi_pool, reshape, roi_align, roi_pool
from ..functional._validate import as_tensor, check_float, check_int, pair
from ..functional._validate import shown_int
from ..tensor import FLOAT_DTYPES
from .init import generator as pick_generator
from .layers import Linear, ReLU, Sequential, Sigmoid
from .module import Module
from .recording import RecordsSampling

__all__ = ["RoIPool", "RoIAlign", "DeformRoIPool"]


class RoIPool(Module):
    """``torchvision.ops.RoIPool``: ``forward(input, rois)`` is
    ``roi_pool(input, rois, output_size, spatial_scale)``."""

    def __init__(self, output_size, spatial_scale):
        super().__init__()
        self.output_size = pair("RoIPool", "output_size", output_size, 1)
        self.spatial_scale = check_float("RoIPool", "spatial_scale", spatial_scale)

    def forward(self, input, rois):
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class RoIAlign(Module):
    """``torchvision.ops.RoIAlign``: ``forward(input, rois)`` is
    ``roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)``."""

    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=False):
        super().__init__()
        self.output_size = pair("RoIAlign", "output_size", output_size, 1)
        self.spatial_scale = check_float("RoIAlign", "spatial_scale", spatial_scale)
        self.sampling_ratio = check_int("RoIAlign", "sampling_ratio", sampling_ratio)
        if not isinstance(aligned, (bool, np.bool_)):
            raise TypeError(f"RoIAlign: aligned must be a bool, got {aligned!r}")
        self.aligned = bool(aligned)

    def forward(self, input, rois):
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio,
                         self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


def _hidden_sizes(value) -> tuple:
    """hidden as a tuple of widths, each >= 1."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        sizes = (value,)
    elif isinstance(value, (tuple, list)):
        sizes = tuple(value)
    else:
        raise TypeError(f"DeformRoIPool: hidden must be an int or a tuple of ints, got "
                        f"{type(value).__name__} {value!r}")
    for h in sizes:
        check_int("DeformRoIPool", "hidden", h, 1)
    return tuple(int(h) for h in sizes)


class DeformRoIPool(Module, RecordsSampling):
    """Deformable RoI pooling with its own offset head (and mask head when modulated).

    Args:
        output_size: int or (ph, pw).
        spatial_scale: image coordinates times this are feature-map coordinates.
        sampling_ratio: samples per bin along each axis; <= 0 is adaptive.
        gamma: the offset scale (0.1 in the paper).
        in_channels: C, the channels of the features.
        modulated: DCNv2, with a sigmoid mask head.
        hidden: width(s) of the heads' hidden layers: an int, or a sequence (``()`` for a
            single fc layer, as in the paper).
        offset_lr_mult: learning-rate multiplier stored as ``lr_mult`` on the heads'
            Parameters (see :func:`minidcn.optim.param_groups`).
        generator: a ``numpy.random.Generator`` for the initial weights.
        dtype: float32 or float64.

    ``forward(input, rois)`` returns (K, C, ph, pw).  With ``record_sampling = True`` (or
    inside ``nn.recording_sampling(model)``; see ``nn/recording.py``), each call keeps host
    NumPy copies for plots: ``last_bin_positions`` (K, ph, pw, 4) holds each displaced bin as [x1, y1, x2, y2] in
    the rois' image coordinates (bin (i, j) spans ``x1 + j w / pw + gamma offset_x w`` to
    ``+ w / pw``, with w = x2 - x1 of the RoI; likewise y), ``last_offset`` the normalised
    offsets (K, 2, ph, pw) and ``last_mask`` the mask (K, 1, ph, pw) or None.
    """

    def __init__(self, output_size, spatial_scale, sampling_ratio, gamma, in_channels,
                 modulated=False, *, hidden=256, offset_lr_mult=1.0, generator=None,
                 dtype=np.float32):
        super().__init__()
        name = "DeformRoIPool"
        self.output_size = pair(name, "output_size", output_size, 1)
        self.spatial_scale = check_float(name, "spatial_scale", spatial_scale)
        self.sampling_ratio = check_int(name, "sampling_ratio", sampling_ratio)
        self.gamma = check_float(name, "gamma", gamma)
        self.in_channels = check_int(name, "in_channels", in_channels, 1)
        self.hidden = _hidden_sizes(hidden)
        self.offset_lr_mult = check_float(name, "offset_lr_mult", offset_lr_mult, 0.0)
        if np.dtype(dtype) not in FLOAT_DTYPES:
            raise TypeError(f"{name}: dtype must be float32 or float64, got {np.dtype(dtype)}")
        rng = pick_generator(generator)
        bins = self.output_size[0] * self.output_size[1]
        widths = (in_channels * bins,) + self.hidden + (2 * bins,)
        largest = max(a * b for a, b in zip(widths, widths[1:]))  # exact: Python ints
        if largest * np.dtype(dtype).itemsize >= 2**63:
            ph, pw = (shown_int(n) for n in self.output_size)
            raise ValueError(f"{name}: output_size ({ph}, {pw}) with in_channels="
                             f"{shown_int(in_channels)} and hidden={self.hidden} makes a head "
                             f"weight of {shown_int(largest)} entries; an array holds less than "
                             f"2**63 bytes")
        self.offset_fc = self._head(in_channels * bins, 2 * bins, rng, dtype)
        self.mask_fc = Sequential(*self._head(in_channels * bins, bins, rng, dtype),
                                  Sigmoid()) if modulated else None
        self.record_sampling = False

    def _head(self, in_features, out_features, rng, dtype) -> Sequential:
        """Linear + ReLU per hidden width, then a Linear whose weight and bias are zero."""
        layers, width = [], in_features
        for h in self.hidden:
            layers += [Linear(width, h, generator=rng, dtype=dtype), ReLU()]
            width = h
        last = Linear(width, out_features, generator=rng, dtype=dtype)
        last.weight.data = np.zeros_like(last.weight.data)
        last.bias.data = np.zeros_like(last.bias.data)
        layers.append(last)
        head = Sequential(*layers)
        for p in head.parameters():
            p.lr_mult = self.offset_lr_mult
        return head

    @property
    def modulated(self) -> bool:
        return self.mask_fc is not None

    def forward(self, input, rois):
        x = as_tensor("DeformRoIPool", "input", input)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DeformRoIPool: input must have shape (B, {self.in_channels}, H, W) "
                             f"(in_channels={self.in_channels}), got {x.shape}")
        ph, pw = self.output_size
        pooled = roi_align(x, rois, self.output_size, self.spatial_scale, self.sampling_ratio,
                           aligned=True)
        k = pooled.shape[0]
        features = reshape(pooled, (k, self.in_channels * ph * pw))
        offset = reshape(self.offset_fc(features), (k, 2, ph, pw))
        mask = reshape(self.mask_fc(features), (k, 1, ph, pw)) if self.modulated else None
        y = deform_roi_pool(x, rois, offset, self.output_size, self.spatial_scale,
                            self.sampling_ratio, self.gamma, mask)
        self._keep(lambda: self._record(rois, offset, mask))
        return y

    def _record(self, rois, offset, mask) -> dict:
        """Host copies of the offsets, the mask and the bin boxes (image coordinates)."""
        def host(t):
            return np.asarray(t.detach().to("cpu").numpy(), dtype=np.float64).copy()

        boxes = host(as_tensor("DeformRoIPool", "rois", rois))[:, 1:]
        offset = host(offset)
        ph, pw = self.output_size
        x1, y1, x2, y2 = (boxes[:, n, None, None] for n in range(4))  # each (K, 1, 1)
        w, h = x2 - x1, y2 - y1
        left = x1 + np.arange(pw)[None, None, :] * w / pw + self.gamma * offset[:, 0] * w
        top = y1 + np.arange(ph)[None, :, None] * h / ph + self.gamma * offset[:, 1] * h
        return {"last_offset": offset, "last_mask": None if mask is None else host(mask),
                "last_bin_positions": np.stack([left, top, left + w / pw, top + h / ph], axis=-1)}

    @property
    def last_offset(self):
        """(K, 2, ph, pw) host normalised offsets of the last forward (channel 0 = x)."""
        return self._recorded_item("last_offset")

    @property
    def last_mask(self):
        """(K, 1, ph, pw) host mask of the last forward, or None when not modulated."""
        return self._recorded_item("last_mask")

    @property
    def last_bin_positions(self):
        """(K, ph, pw, 4) host boxes [x1, y1, x2, y2] of the displaced bins (image coordinates)."""
        return self._recorded_item("last_bin_positions")

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}, "
                f"in_channels={self.in_channels}, modulated={self.modulated}, hidden={self.hidden}")
