"""Back-tracking sampling locations through stacked deformable layers (DCN paper, Figure 5).

A stride-1 deformable layer's unit q reads its input map at q + p_k + Δp_k(q), k = 0..K-1,
and that input is the output map of the layer below.  Following one top-layer unit down
through L such layers gives K^L sampling locations in the bottom layer's input: each point
q of a layer's output map becomes the K points q + p_k + Δp_k(q).  A point between units
needs the offsets at a fractional position; they are interpolated bilinearly from the four
surrounding units, with the same kernel G the layer uses to read its input
(:func:`minidcn.functional.bilinear_sample`).  For that lookup only, a point outside the
map is clamped to the map's edge: it reads the nearest edge unit's offsets, and the point
itself stays where it is.

Lesson 07 draws and measures these points; :func:`spread` is its one-number summary.
"""

from __future__ import annotations

import numpy as np

from .functional import bilinear_sample

__all__ = ["backtrack", "spread"]


def _as_offsets(offsets) -> list[np.ndarray]:
    if isinstance(offsets, np.ndarray) or not hasattr(offsets, "__len__"):
        raise TypeError("backtrack: offsets must be a list of arrays (N, K, H, W, 2), one per "
                        f"layer, bottom first; got {type(offsets).__name__}")
    if len(offsets) == 0:
        raise ValueError("backtrack: offsets is empty, expected one array per layer")
    layers = []
    for i, offset in enumerate(offsets):
        offset = np.asarray(offset, dtype=np.float64)
        if offset.ndim != 5 or offset.shape[-1] != 2:
            raise ValueError(f"backtrack: offsets[{i}] must have shape (N, K, H, W, 2), got "
                             f"{offset.shape}")
        if layers and offset.shape[:2] != layers[0].shape[:2]:
            raise ValueError(f"backtrack: offsets[{i}] has (N, K) = {offset.shape[:2]}, expected "
                             f"{layers[0].shape[:2]} like offsets[0]")
        if not np.isfinite(offset).all():
            raise ValueError(f"backtrack: offsets[{i}] holds NaN or infinite values")
        layers.append(offset)
    return layers


def backtrack(offsets, units, kernel_points) -> np.ndarray:
    """The sampling locations of one top-layer unit per image, through every layer.

    Args:
        offsets: a list with one array (N, K, H, W, 2) per stride-1 deformable layer, bottom
            layer first: the offset (dy, dx) = Δp_k(q) of kernel point k at output unit q of
            image n.  ``layer.last_sampling_locations[:, 0]`` (recorded by a forward inside
            ``with minidcn.nn.recording_sampling(model):``) minus the regular grid
            (:func:`minidcn.functional.sampling_locations` of zero offsets) gives it.
        units: (N, 2) integers, the (y, x) of the top-layer unit followed in each image.
        kernel_points: (K, 2) the kernel's regular grid p_k relative to the unit, e.g.
            (-1, -1) .. (1, 1) for a 3 × 3 kernel with padding 1.

    Going down one layer, every point q becomes the K points

        q + p_k + Δp_k(q),   Δp_k(q) = Σ_r G(r, clamp(q)) Δp_k(r),

    with the layer's own offsets interpolated bilinearly at the (clamped) fractional q.

    Returns:
        (N, K ** L, 2) positions (y, x) in the coordinates of the bottom layer's input map,
        in the order (top kernel point, ..., bottom kernel point).
    """
    layers = _as_offsets(offsets)
    n, kernel_size = layers[0].shape[:2]
    grid = np.asarray(kernel_points, dtype=np.float64)
    if grid.shape != (kernel_size, 2):
        raise ValueError(f"backtrack: kernel_points must have shape ({kernel_size}, 2) to match "
                         f"the offsets' K = {kernel_size}, got {grid.shape}")
    start = np.asarray(units)
    if start.shape != (n, 2) or not np.issubdtype(start.dtype, np.integer):
        raise ValueError(f"backtrack: units must be ({n}, 2) integers (one (y, x) per image), "
                         f"got shape {start.shape} of {start.dtype}")
    height, width = layers[-1].shape[2:4]
    if start.min() < 0 or (start[:, 0] >= height).any() or (start[:, 1] >= width).any():
        raise ValueError(f"backtrack: units must lie in the top layer's {height}x{width} map, "
                         f"got (y, x) from {start.min(axis=0).tolist()} to "
                         f"{start.max(axis=0).tolist()}")
    points = start.astype(np.float64)[:, None, :]  # (N, 1, 2)
    for offset in reversed(layers):
        _, _, height, width, _ = offset.shape
        maps = offset.transpose(0, 1, 4, 2, 3).reshape(n, 2 * kernel_size, height, width)
        lookup = np.clip(points, 0, [height - 1, width - 1])
        delta = bilinear_sample(maps, lookup).numpy()  # (N, 2K, P): dy, dx per kernel point
        delta = delta.reshape(n, kernel_size, 2, -1).transpose(0, 3, 1, 2)  # (N, P, K, 2)
        points = (points[:, :, None, :] + grid + delta).reshape(n, -1, 2)
    return points


def spread(points) -> np.ndarray:
    """RMS distance of each set of points (..., P, 2) from its centroid: sqrt(mean |p - p̄|²)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim < 2 or points.shape[-1] != 2 or points.shape[-2] == 0:
        raise ValueError(f"spread: points must have shape (..., P, 2) with P >= 1, got "
                         f"{points.shape}")
    centred = points - points.mean(axis=-2, keepdims=True)
    return np.sqrt((centred**2).sum(axis=-1).mean(axis=-1))
