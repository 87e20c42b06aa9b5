"""DeformConv2d: a deformable convolution layer that predicts its own offsets (and mask).

The DCN papers' design:

* a plain convolution (the *offset predictor*) with the layer's kernel size, stride, padding
  and dilation reads the input and predicts 2 · offset_groups · kh · kw offset channels per
  output pixel;
* DCNv2 (``modulated=True``) adds a second one, the *mask predictor*, whose output goes
  through a sigmoid: one modulation scalar in (0, 1) per kernel point;
* both predictors start at zero, so at initialisation the offsets are 0 and the layer is a
  plain convolution (times 0.5, the sigmoid of 0, when modulated); training then learns
  where to look.

The papers train the predictors with a smaller learning rate.  ``offset_lr_mult`` is stored
as ``lr_mult`` on the predictors' Parameters; :func:`minidcn.optim.param_groups` turns it
into a real parameter group of the optimiser.

For plots, a layer can keep what its last forward sampled (host copies, opt-in so that
training pays nothing for them): set ``layer.record_sampling = True``, or run the forwards
inside ``with recording_sampling(model):`` (``nn/recording.py``); then
``layer.last_sampling_locations`` and ``layer.last_mask`` hold the last forward's positions and mask.
"""

from __future__ import annotations

import numpy as np

from ..functional import sampling_locations, sigmoid
from ..functional._validate import as_tensor, check_float, check_int
from ..functional.deform_conv import checked_deform_conv2d
from ..tensor import FLOAT_DTYPES
from .conv import Conv2d
from .init import generator as pick_generator
from .recording import RecordsSampling

__all__ = ["DeformConv2d"]


class DeformConv2d(Conv2d, RecordsSampling):
    """Deformable convolution v1 / v2 with its own offset (and mask) predictor.

    A Conv2d whose sampling grid moves: ``weight``, ``bias`` and the geometry are Conv2d's
    (torch's default init, U(-1/√fan_in, 1/√fan_in), fan_in = in_channels / groups · kh · kw).

    Args:
        in_channels, out_channels: channels of the input and of the output.
        kernel_size, stride, padding, dilation: ints or (h, w) pairs, as for Conv2d.
        groups: weight groups, as for Conv2d.
        offset_groups: channel groups that share one set of offsets (torchvision's
            ``offset_groups``, mmcv's ``deform_groups``).
        bias: learn an additive bias.
        modulated: DCNv2, with a sigmoid mask predictor.
        offset_lr_mult: learning-rate multiplier of the predictors (``lr_mult``).
        generator: a ``numpy.random.Generator`` for the initial weights.
        dtype: float32 or float64.

    ``record_sampling`` (False unless set, or inside :func:`recording_sampling`): when True,
    each forward keeps host copies of what it sampled, ``last_sampling_locations``, the
    absolute (y, x) positions, shaped (B, offset_groups, kh · kw, H_out, W_out, 2), and
    ``last_mask``, the mask shaped (B, offset_groups, kh · kw, H_out, W_out), or None for an
    unmodulated forward.  A forward without recording forgets them (no stale plot), and
    reading them then raises a RuntimeError that says how to turn recording on.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, offset_groups=1, bias=True, modulated=False, *, offset_lr_mult=1.0,
                 generator=None, dtype=np.float32):
        name = "DeformConv2d"
        if np.dtype(dtype) not in FLOAT_DTYPES:
            raise TypeError(f"{name}: dtype must be float32 or float64, got {np.dtype(dtype)}")
        offset_groups = check_int(name, "offset_groups", offset_groups, 1)
        offset_lr_mult = check_float(name, "offset_lr_mult", offset_lr_mult, 0.0)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, generator=generator, dtype=dtype)
        if self.in_channels % offset_groups:
            raise ValueError(f"{name}: in_channels = {in_channels} must be divisible by "
                             f"offset_groups = {offset_groups}")
        self.offset_groups, self.offset_lr_mult = offset_groups, offset_lr_mult
        rng = pick_generator(generator)
        kernel_points = self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        self.offset_conv = self._zero_predictor(2 * kernel_points, rng, dtype)
        self.mask_conv = self._zero_predictor(kernel_points, rng, dtype) if modulated else None
        self.record_sampling = False

    def _zero_predictor(self, channels, rng, dtype) -> Conv2d:
        """A Conv2d with the layer's geometry, all weights 0, learning rate × offset_lr_mult."""
        conv = Conv2d(self.in_channels, channels, self.kernel_size, self.stride, self.padding,
                      self.dilation, groups=1, bias=True, generator=rng, dtype=dtype)
        for p in conv.parameters():
            p.data = np.zeros_like(p.data)
            p.lr_mult = self.offset_lr_mult
        return conv

    @property
    def modulated(self) -> bool:
        return self.mask_conv is not None

    def forward(self, x, offset=None, mask=None):
        """y = deform_conv2d(x, offset, weight, bias, mask).

        ``offset`` defaults to the offset predictor's output and, for a modulated layer,
        ``mask`` to sigmoid(mask predictor); pass either to use your own (an external mask
        also works on a layer built with ``modulated=False``).
        """
        if offset is None:
            offset = self.offset_conv(x)
        if mask is None and self.modulated:
            mask = sigmoid(self.mask_conv(x))
        y = checked_deform_conv2d("DeformConv2d", x, offset, self.weight, self.bias, self.stride,
                                  self.padding, self.dilation, mask, self.offset_groups)
        self._keep(lambda: self._record(offset, mask))
        return y

    def _record(self, offset, mask):
        """Host copies of the positions sampled and of the mask (already validated)."""
        locations = sampling_locations(offset, self.kernel_size, self.stride, self.padding,
                                       self.dilation)
        if mask is not None:
            mask = as_tensor("DeformConv2d", "mask", mask).detach().to("cpu").numpy().copy()
            mask = mask.reshape(locations.shape[:-1])
        return {"last_sampling_locations": locations, "last_mask": mask}

    @property
    def last_sampling_locations(self):
        """(B, offset_groups, kh · kw, H_out, W_out, 2) host positions of the last forward."""
        return self._recorded_item("last_sampling_locations")

    @property
    def last_mask(self):
        """(B, offset_groups, kh · kw, H_out, W_out) host mask of the last forward, or None."""
        return self._recorded_item("last_mask")

    def extra_repr(self) -> str:
        extra = f", offset_groups={self.offset_groups}, modulated={self.modulated}"
        if self.offset_lr_mult != 1.0:
            extra += f", offset_lr_mult={self.offset_lr_mult}"
        return super().extra_repr() + extra
