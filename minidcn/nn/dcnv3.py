"""The DCNv3 and DCNv4 blocks: InternImage's and DCNv4's modules around the cores
``F.dcnv3`` and ``F.dcnv4``, channels-last, input and output (N, H, W, C).

DCNv2 learns a kh·kw·C_in·C_out kernel and samples it at learned positions.  DCNv3
(InternImage, Wang et al., CVPR 2023) splits that into a pointwise projection shared by all
kernel points and a weightless depthwise sampling, with G groups that each learn their own
offsets, and a softmax over each group's P points in place of DCNv2's sigmoid mask:

    x → input_proj (Linear C→C) ─────────────────────────────┐ value
    x → dw_conv: depthwise kh×kw conv → LayerNorm(C) → GELU   │
          ├→ offset (Linear C→G·P·2)  (dx, dy) per point      │
          └→ mask   (Linear C→G·P) → softmax over P per group │
                                  F.dcnv3(value, offset, mask) → output_proj (Linear C→C)

DCNv4 (Xiong et al., CVPR 2024) drops the depthwise branch and the softmax: one Linear on
the input predicts the offsets and the modulation together (its output padded up to a
multiple of 8, the padding ignored), and the modulation is used raw, unbounded:

    x → value_proj (Linear C→C) ──────────────────────────────┐ value
    x → offset_mask (Linear C→8⌈3GP/8⌉) ── F.dcnv4(value, offset_mask) → output_proj

Initialisation (the facts of both papers' code): the offset and mask heads start at zero
(weight and bias), the projections are xavier-uniform with zero bias, the depthwise conv
keeps torch's default.  So at initialisation DCNv3 samples every kernel point at its grid
position with weight 1/P, a depthwise box filter between the two projections, and DCNv4
outputs output_proj's bias (zero): its modulation starts at 0.

Names follow the papers' modules, so their state_dict keys are the same (``dw_conv.0``,
``dw_conv.1.1`` for the LayerNorm, ``offset``, ``mask``, ``input_proj``, ``output_proj``;
``value_proj``, ``offset_mask``, ``output_proj``).  Options of theirs not offered:
``dw_kernel_size`` (DCNv3's depthwise conv has the kernel size of the core; DCNv4 has no
depthwise conv), ``act_layer``/``norm_layer`` (GELU and LayerNorm), ``center_feature_scale``,
DCNv4's ``output_bias`` and ``without_pointwise``.  DCNv4's CUDA op needs D = C/G to be a
multiple of 16; these run any D.
"""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..functional._validate import as_tensor, check_elements, check_float, check_int, pair
from . import init
from .conv import Conv2d
from .layers import GELU, Linear, Permute, Sequential, _layer_dtype
from .module import Module
from .norm import LayerNorm, _flag

__all__ = ["DCNv3", "DCNv4"]


class _Block(Module):
    """What DCNv3 and DCNv4 share: the checked arguments, the two projections, the input check."""

    def __init__(self, channels, kernel_size, stride, padding, dilation, group, offset_scale,
                 remove_center):
        super().__init__()
        fn = type(self).__name__
        self.channels = check_int(fn, "channels", channels, 1)
        self.kernel_size = pair(fn, "kernel_size", kernel_size, 1)
        self.stride = pair(fn, "stride", stride, 1)
        self.padding = pair(fn, "padding", padding, 0)
        self.dilation = pair(fn, "dilation", dilation, 1)
        self.group = check_int(fn, "group", group, 1)
        self.offset_scale = check_float(fn, "offset_scale", offset_scale)
        self.remove_center = _flag(fn, "remove_center", remove_center)
        if self.channels % self.group:
            raise ValueError(f"{fn}: channels = {channels} must be divisible by group = {group} "
                             f"(G groups of D = C / G channels)")
        kh, kw = self.kernel_size
        if self.remove_center and (kh != kw or kh % 2 == 0 or kh < 3):
            raise ValueError(f"{fn}: remove_center needs an odd square kernel of at least 3 x 3, "
                             f"got kernel_size {self.kernel_size}")
        self.points = kh * kw - int(self.remove_center)
        # the widest layer is the offset head, (G·3P rounded up to 8) x C in DCNv4 (G·2P x C
        # in DCNv3, whose depthwise conv has C·kh·kw weights); refused here, naming the
        # block's own arguments, rather than by a Linear naming in_ and out_features
        for what, shape in (("the projections' weight", (self.channels, self.channels)),
                            ("the offset head's weight",
                             (self.group * 3 * self.points + 7, self.channels))):
            check_elements(fn, what, shape, "channels, group and kernel_size")

    def _check_same_grid(self, depthwise: bool):
        """The heads predict offsets at each pixel of their input's grid, so the core must
        put its outputs on that grid: per axis, (H + 2p - d(k-1) - 1) // s + 1 must equal,
        for every H, (H + 2q - k) // s + 1 with q = (k-1)//2 after DCNv3's depthwise conv,
        or H itself for DCNv4 (stride 1, no depthwise conv).  So 2p = d(k-1) + 2q - k + 1,
        or 2p = d(k-1)."""
        fn = type(self).__name__
        for axis, k, p, d in zip(("height", "width"), self.kernel_size, self.padding,
                                 self.dilation):
            twice_needed = d * (k - 1) + (2 * ((k - 1) // 2) - k + 1 if depthwise else 0)
            if 2 * p != twice_needed:
                needed = (f"padding {twice_needed // 2}" if twice_needed % 2 == 0 else
                          f"padding {twice_needed / 2}, not an integer: change kernel_size or "
                          f"dilation")
                raise ValueError(
                    f"{fn}: padding {self.padding} does not keep the core's output on the grid "
                    f"where the offsets are predicted (one per pixel); with kernel_size {k} "
                    f"and dilation {d} the {axis} needs {needed}")

    def _projection(self, generator, dtype):
        """Linear(C, C) with xavier-uniform weight and zero bias, as both papers initialise it."""
        layer = Linear(self.channels, self.channels, generator=generator, dtype=dtype)
        init.xavier_uniform_(layer.weight, generator)
        init.constant_(layer.bias, 0.0)
        return layer

    def _zero_head(self, out_features, generator, dtype):
        """Linear(C, out_features) with weight and bias zero: offsets 0, equal logits."""
        layer = Linear(self.channels, out_features, generator=generator, dtype=dtype)
        init.constant_(layer.weight, 0.0)
        init.constant_(layer.bias, 0.0)
        return layer

    def _checked_input(self, x):
        fn = type(self).__name__
        x = as_tensor(fn, "input", x)
        if x.ndim != 4 or x.shape[3] != self.channels:
            raise ValueError(f"{fn}: input must be channels-last (N, H, W, C) with C = "
                             f"{self.channels}, got shape {x.shape}")
        return x

    def _core_args(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, group=self.group, offset_scale=self.offset_scale,
                    remove_center=self.remove_center)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, group={self.group}, "
                f"offset_scale={self.offset_scale}, remove_center={self.remove_center}")


class DCNv3(_Block):
    """InternImage's DCNv3 block (see the module docstring): (N, H, W, C) -> (N, H_out, W_out, C).

    Args:
        channels: C; divisible by ``group``.
        kernel_size, stride, padding, dilation: the core's (an int or an (h, w) pair), as in
            ``F.dcnv3``.  The depthwise conv has the same kernel size, padding (k-1)//2 and
            the same stride, so that the offsets it predicts sit on the core's output grid;
            ``padding`` must then be the "same" padding, d(k-1)/2 for an odd k (a ValueError
            says which).  InternImage uses stride 1 (its depthwise conv has stride 1, so
            another stride would not fit); a stride s here downsamples both branches alike.
        group: G, the groups that learn their own offsets and softmax (D = C / G channels each).
        offset_scale: s in ``F.dcnv3``: the offsets and the kernel grid are scaled by it.
        remove_center: leave out the kernel's centre point (P = k² - 1; odd square kernels).
        generator: a ``numpy.random.Generator`` for the initial weights (else the one
            ``minidcn.manual_seed`` resets); dtype: float32 or float64.

    The LayerNorm has eps = 1e-6, as InternImage's ``build_norm_layer``.
    """

    def __init__(self, channels, kernel_size=3, stride=1, padding=1, dilation=1, group=4,
                 offset_scale=1.0, remove_center=False, *, generator=None, dtype=np.float32):
        super().__init__(channels, kernel_size, stride, padding, dilation, group, offset_scale,
                         remove_center)
        self._check_same_grid(depthwise=True)
        dtype = _layer_dtype("DCNv3", dtype)
        c, (kh, kw) = self.channels, self.kernel_size
        self.input_proj = self._projection(generator, dtype)
        self.dw_conv = Sequential(
            Conv2d(c, c, self.kernel_size, stride=self.stride,
                   padding=((kh - 1) // 2, (kw - 1) // 2), groups=c, generator=generator,
                   dtype=dtype),
            Sequential(Permute((0, 2, 3, 1)),
                       LayerNorm(c, eps=1e-6, channels_last=True, dtype=dtype)),
            GELU())
        self.offset = self._zero_head(self.group * self.points * 2, generator, dtype)
        self.mask = self._zero_head(self.group * self.points, generator, dtype)
        self.output_proj = self._projection(generator, dtype)

    def forward(self, input):
        x = self._checked_input(input)
        value = self.input_proj(x)
        features = self.dw_conv(F.permute(x, (0, 3, 1, 2)))  # (N, H_out, W_out, C)
        offset = self.offset(features)
        logits = self.mask(features)
        n, h, w, _ = logits.shape
        mask = F.softmax(F.reshape(logits, (n, h, w, self.group, self.points)), -1)
        out = F.dcnv3(value, offset, F.reshape(mask, (n, h, w, self.group * self.points)),
                      **self._core_args())
        return self.output_proj(out)


class DCNv4(_Block):
    """DCNv4's block (see the module docstring): (N, H, W, C) -> (N, H, W, C).

    Args as :class:`DCNv3`, except:
        stride: must be 1.  The offsets and modulation come from a Linear at each input
            pixel, so the output grid is the input grid (DCNv4's module has the same
            constraint); ``padding`` must keep it, d(k-1)/2 for an odd k.

    ``offset_mask`` has 8⌈3GP/8⌉ outputs: group g's 2P offsets ((dx, dy) pairs) then its P
    modulation scalars, from channel g·3P on; the last few pad the count to a multiple of 8,
    as DCNv4 does, and are ignored by ``F.dcnv4`` (they get zero gradient).
    """

    def __init__(self, channels, kernel_size=3, stride=1, padding=1, dilation=1, group=4,
                 offset_scale=1.0, remove_center=False, *, generator=None, dtype=np.float32):
        super().__init__(channels, kernel_size, stride, padding, dilation, group, offset_scale,
                         remove_center)
        if self.stride != (1, 1):
            raise ValueError(f"DCNv4: stride must be 1, got {stride}: the offsets and modulation "
                             f"are predicted per input pixel, so the output stays on the input "
                             f"grid")
        self._check_same_grid(depthwise=False)
        dtype = _layer_dtype("DCNv4", dtype)
        self.value_proj = self._projection(generator, dtype)
        packed = self.group * 3 * self.points
        self.offset_mask = self._zero_head(8 * math.ceil(packed / 8), generator, dtype)
        self.output_proj = self._projection(generator, dtype)

    def forward(self, input):
        x = self._checked_input(input)
        out = F.dcnv4(self.value_proj(x), self.offset_mask(x), softmax=False,
                      **self._core_args())
        return self.output_proj(out)
