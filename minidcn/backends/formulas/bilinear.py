"""Bilinear sampling, the scalar formulas shared by the numba_cpu and cuda backends.

The formula and its conventions are stated over whole arrays in
``backends/reference/bilinear.py``:

    x(p) = Σ_q G(q, p) x(q),   G(q, p) = g(q_y, p_y) g(q_x, p_x),   g(a, b) = max(0, 1 - |a - b|),

summed over the four integer neighbours q_i of p, i = 0..3 in the order (y0, x0),
(y0, x0+1), (y0+1, x0), (y0+1, x0+1), with zero padding one pixel wide and the floor-based
(one-sided toward +1) position gradient.  Its gradients, for an upstream gradient G_c on
channel c of the sampled point:

    d/dx(q_i)   = w_i G_c                                      (the scatter)
    S_i         = Σ_c G_c x_c(q_i)                             (the gradient reaching corner i)
    d/dp_y      = Σ_i w_dy_i S_i,   d/dp_x = Σ_i w_dx_i S_i    (the position gradient)

Each function here is plain Python; ``numba_cpu`` compiles it with ``for_cpu`` and ``cuda``
with ``for_gpu`` (see ``formulas/__init__.py``), and both inline it into their loops.
"""

from __future__ import annotations

import math

__all__ = ["bilinear_weights", "add_corner_products", "interpolate", "corner_sum"]


def bilinear_weights(y, x, height, width):
    """The corner and the bilinear weights of the point (y, x) in a height x width image.

    Returns ``(inside, y0, x0, w, w_dy, w_dx)``:

    * ``inside``: the point lies in the band -1 <= y < height, -1 <= x < width (written as
      "inside", so NaN, ±inf and huge coordinates are outside: they sample 0 and get
      gradient 0).  Outside, y0 = x0 = 0 and every weight is 0.  On the line y = -1 itself
      the sampled value is 0 (its floor row is padding, row 0 has weight 0) but the
      one-sided gradient toward +1 is not, as in torchvision and the reference backend;
    * ``y0, x0 = floor(y), floor(x)``: the top-left neighbour q_0;
    * ``w``: G(q_i, p) for the four neighbours, with ly = y - y0 and lx = x - x0,
      ((1-ly)(1-lx), (1-ly) lx, ly (1-lx), ly lx);
    * ``w_dy, w_dx``: the derivatives of those weights with respect to y and x (floor
      convention: the slope on the side of y0), (-(1-lx), -lx, 1-lx, lx) and
      (-(1-ly), 1-ly, -ly, ly), so that d x(p) / d p_y = Σ_i w_dy_i x(q_i).

    A neighbour outside the image reads as 0 (zero padding), so its three weights are 0.
    Only after the inside test are the coordinates converted to integers.
    """
    if not (y >= -1.0 and y < height and x >= -1.0 and x < width):
        nothing = (0.0, 0.0, 0.0, 0.0)
        return False, 0, 0, nothing, nothing, nothing
    fy = math.floor(y)
    fx = math.floor(x)
    ly = y - fy
    lx = x - fx
    y0 = int(fy)
    x0 = int(fx)
    top = 1.0 if y0 >= 0 else 0.0  # row y0 is inside the image
    bottom = 1.0 if y0 + 1 < height else 0.0  # row y0 + 1 is inside
    left = 1.0 if x0 >= 0 else 0.0
    right = 1.0 if x0 + 1 < width else 0.0
    in00, in01, in10, in11 = top * left, top * right, bottom * left, bottom * right
    w = (in00 * (1.0 - ly) * (1.0 - lx), in01 * (1.0 - ly) * lx,
         in10 * ly * (1.0 - lx), in11 * ly * lx)
    w_dy = (-in00 * (1.0 - lx), -in01 * lx, in10 * (1.0 - lx), in11 * lx)
    w_dx = (-in00 * (1.0 - ly), in01 * (1.0 - ly), -in10 * ly, in11 * ly)
    return True, y0, x0, w, w_dy, w_dx


def add_corner_products(s, g, x, n, c, y0, x0):
    """(S_0 + g x_c(q_0), ..., S_3 + g x_c(q_3)): one channel's term of the corner sums S_i.

    ``s`` is the tuple of the four running sums, ``g`` the upstream gradient G_c of the
    point on channel c, ``x`` the (N, C, H, W) image; a neighbour outside the image reads
    as 0 (zero padding).
    """
    top, bottom = 0 <= y0 < x.shape[2], 0 <= y0 + 1 < x.shape[2]
    left, right = 0 <= x0 < x.shape[3], 0 <= x0 + 1 < x.shape[3]
    v00 = x[n, c, y0, x0] if top and left else 0.0
    v01 = x[n, c, y0, x0 + 1] if top and right else 0.0
    v10 = x[n, c, y0 + 1, x0] if bottom and left else 0.0
    v11 = x[n, c, y0 + 1, x0 + 1] if bottom and right else 0.0
    return s[0] + g * v00, s[1] + g * v01, s[2] + g * v10, s[3] + g * v11


def interpolate(x, n, c, y0, x0, w):
    """Σ_i w_i x[n, c, q_i] over the four neighbours q_i of (y0, x0), reading 0 outside the image."""
    total = 0.0
    for i in range(4):  # neighbour i is (y0 + i // 2, x0 + i % 2)
        qy, qx = y0 + i // 2, x0 + i % 2
        if 0 <= qy < x.shape[2] and 0 <= qx < x.shape[3]:
            total += w[i] * x[n, c, qy, qx]
    return total


def corner_sum(w, s):
    """Σ_i w_i S_i over the four corners: with w = w_dy or w_dx it is the position gradient
    d/dp_y or d/dp_x; with w the weights themselves, the gradient of a factor that scales
    the sampled value (the deformable convolution's mask)."""
    return w[0] * s[0] + w[1] * s[1] + w[2] * s[2] + w[3] * s[3]
