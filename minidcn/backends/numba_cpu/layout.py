"""Moving arrays between the user's (B, C, H, W) layout and the layouts the kernels want.

The convolutions (``conv.py``, ``deform_conv.py``) read their input channels-last, (B, H, W, C)
inside a zero border, so that the channels of one pixel are one contiguous run; and BLAS gives
them their products as (pixels × channels) matrices.  These loops convert both ways.

What makes a transpose fast: one of its two sides is always read or written with a stride,
so each loop keeps that side small enough to stay in the L1 cache (one image row, or a tile
of ``TILE`` pixels), and walks the other side contiguously.  Each thread owns whole rows or
whole (image, group) blocks of what it writes, so the results do not depend on the number of
threads.
"""

from __future__ import annotations

from numba import njit, prange

__all__ = ["pad_channels_last", "crop_channels_first", "product_to_output", "output_to_product"]


@njit(cache=True, parallel=True)
def pad_channels_last(x, padding, xpad):
    """xpad[n, r + p_h, q + p_w, c] = x[n, c, r, q]: the interior only; the border of xpad
    must already be zero (it is allocated zeroed and never written).  One thread per
    (image, input row)."""
    n_images, channels, height, width = x.shape
    ph, pw = padding
    for task in prange(n_images * height):
        n, r = task // height, task % height
        out = xpad[n, r + ph]
        for c in range(channels):
            src = x[n, c, r]
            for q in range(width):
                out[pw + q, c] = src[q]


@njit(cache=True, parallel=True)
def crop_channels_first(xpad, padding, x):
    """x[n, c, r, q] = xpad[n, r + p_h, q + p_w, c]: the adjoint of ``pad_channels_last``
    (the border is dropped).  One thread per (image, row)."""
    n_images, channels, height, width = x.shape
    ph, pw = padding
    for task in prange(n_images * height):
        n, r = task // height, task % height
        src = xpad[n, r + ph]
        for c in range(channels):
            out = x[n, c, r]
            for q in range(width):
                out[q] = src[pw + q, c]


TILE = 64  # pixels per block of the transposes: a (TILE × O_g) block stays in the L1 cache


@njit(cache=True, parallel=True)
def product_to_output(product, bias, y):
    """y[n, g·O_g + o, p] = product[g, n·L + p, o] + bias[g·O_g + o]: the (L × O_g) blocks of
    the product, transposed into the (C_out, L) image of y.  One thread per (image, group);
    it walks the pixels in tiles so that the block it transposes stays in the L1 cache."""
    groups, per_group = product.shape[0], product.shape[2]
    n_images, pixels = y.shape[0], y.shape[2]
    for task in prange(n_images * groups):
        n, g = task // groups, task % groups
        block = product[g, n * pixels:(n + 1) * pixels]
        for first in range(0, pixels, TILE):
            last = min(first + TILE, pixels)
            for o in range(per_group):
                out, b = y[n, g * per_group + o], bias[g * per_group + o]
                for p in range(first, last):
                    out[p] = block[p, o] + b


@njit(cache=True, parallel=True)
def output_to_product(grad_y, grad_product):
    """grad_product[g, n·L + p, o] = grad_y[n, g·O_g + o, p]: the adjoint of
    ``product_to_output`` (without the bias), in the same tiles."""
    groups, per_group = grad_product.shape[0], grad_product.shape[2]
    n_images, pixels = grad_y.shape[0], grad_y.shape[2]
    for task in prange(n_images * groups):
        n, g = task // groups, task % groups
        block = grad_product[g, n * pixels:(n + 1) * pixels]
        for first in range(0, pixels, TILE):
            last = min(first + TILE, pixels)
            for o in range(per_group):
                src = grad_y[n, g * per_group + o]
                for p in range(first, last):
                    block[p, o] = src[p]
