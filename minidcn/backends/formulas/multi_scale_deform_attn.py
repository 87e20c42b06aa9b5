"""Multi-scale deformable attention, the scalar formulas shared by the numba_cpu and cuda backends.

The formula is stated over whole arrays in ``backends/reference/multi_scale_deform_attn.py``:
a normalised location (u, v) on level l (H_l x W_l pixels, rows start_l ... of value's S
axis) is read by bilinear sampling at pixel (y, x) = (v H_l - 0.5, u W_l - 0.5).  The corner
and weights of that pixel position come from ``formulas/bilinear.py`` (``bilinear_weights``);
what is particular to this op is where the four neighbours live in the channels-last,
level-concatenated value: neighbour q_i = (y0 + i // 2, x0 + i % 2) is row
start_l + (y0 + i // 2) W_l + x0 + i % 2 of value[n, :, m, :], whose D channels are
contiguous.

Per sampling point the kernels of both backends need what does not depend on the channel
(``sampling_point``: the rows of its neighbours and its weights, the level's first row from
``level_start``), and, in the backward pass,
given the corner sums S_i = Σ_d g_d value[row_i, d], the point's gradients
(``point_gradients``; it writes the location's pair in place):

    grad_A = Σ_i w_i S_i,   grad_u = W_l A Σ_i w_dx_i S_i,   grad_v = H_l A Σ_i w_dy_i S_i.

Each function here is plain Python; ``numba_cpu`` compiles it with ``for_cpu`` and ``cuda``
with ``for_gpu`` (see ``formulas/__init__.py``), the formulas it calls with it.
"""

from __future__ import annotations

from .bilinear import bilinear_weights, corner_sum

__all__ = ["level_pixel", "corner_rows", "level_start", "sampling_point", "point_gradients"]


def level_pixel(u, v, height, width):
    """(y, x) = (v H - 0.5, u W - 0.5): the pixel coordinates of the normalised location
    (u, v) on a height x width map (grid_sample's align_corners=False: u = 0 and u = 1 are
    the map's outer edges)."""
    return v * height - 0.5, u * width - 0.5


def corner_rows(y0, x0, height, width, start):
    """The row of value (in its S axis) holding each neighbour q_i = (y0 + i // 2, x0 + i % 2)
    of a point on the level that starts at row ``start``, or -1 for a neighbour outside the
    height x width map (zero padding: it is not read, and its weights are 0)."""
    top, bottom = 0 <= y0 < height, 0 <= y0 + 1 < height
    left, right = 0 <= x0 < width, 0 <= x0 + 1 < width
    row = start + y0 * width + x0
    return (row if top and left else -1,
            row + 1 if top and right else -1,
            row + width if bottom and left else -1,
            row + width + 1 if bottom and right else -1)


def level_start(spatial_shapes, level):
    """start_l = Σ_{k < l} H_k W_k: the row of value's S axis where level l begins."""
    start = 0
    for k in range(level):
        start += spatial_shapes[k, 0] * spatial_shapes[k, 1]
    return start


def sampling_point(spatial_shapes, level, location):
    """``(rows, w, w_dy, w_dx)`` of the point at normalised ``location`` (u, v) on level
    ``level`` (H_l x W_l = spatial_shapes[level]): the rows of value holding its four
    neighbours (-1 for a neighbour that is not read, all four for a point outside the band
    -1 <= y < H_l, -1 <= x < W_l, NaN included), the bilinear weights and their slopes."""
    height, width = spatial_shapes[level, 0], spatial_shapes[level, 1]
    y, x = level_pixel(location[0], location[1], height, width)
    inside, y0, x0, w, w_dy, w_dx = bilinear_weights(y, x, height, width)
    if not inside:
        return (-1, -1, -1, -1), w, w_dy, w_dx
    return corner_rows(y0, x0, height, width, level_start(spatial_shapes, level)), w, w_dy, w_dx


def point_gradients(spatial_shapes, level, s, a, w, w_dy, w_dx, grad_location):
    """grad_A of a point with attention weight ``a`` on level ``level``, from the corner sums
    ``s`` = (S_0, ..., S_3); its location gradient (W_l A Σ_i w_dx_i S_i, H_l A Σ_i w_dy_i S_i)
    is written into ``grad_location``, the point's 2 entries of grad_sampling_locations."""
    height, width = spatial_shapes[level, 0], spatial_shapes[level, 1]
    grad_location[0] = width * a * corner_sum(w_dx, s)
    grad_location[1] = height * a * corner_sum(w_dy, s)
    return corner_sum(w, s)
