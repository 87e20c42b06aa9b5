"""Plotting helpers for the lessons: images, sampling points, offsets, RoI bins, GIFs.

Every helper draws in *pixel-index coordinates*, the coordinates of the ops: ``(y, x)`` with
row 0 and column 0 at the centres of the first pixels.  ``imshow`` with its defaults puts
pixel (i, j) at exactly (x=j, y=i), so a sampling point (y, x) returned by an op is drawn
with ``scatter(x, y)`` and lands where the op reads.  Points and offsets are always passed
as (..., 2) arrays in (y, x) order, like the ops; the helpers swap to matplotlib's (x, y).

Boxes are ``[x1, y1, x2, y2]`` in RoI coordinates, where pixel column j spans [j, j + 1)
(``roi_align(aligned=True)`` and ``deform_roi_pool``): they are drawn shifted by -0.5 so
that they sit on the pixels they cover.

Nothing here picks a matplotlib backend: a script falls back to Agg by itself where there is no
display, and a notebook uses its inline backend.
Save figures with :func:`minidcn.lessons_support.save_figure` (GIFs with ``save_gif``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["show_image", "image_grid", "draw_points", "draw_offsets", "draw_box",
           "roi_bin_boxes", "draw_roi_bins", "figure_to_array", "save_gif"]


def show_image(ax, image, title: str | None = None, cmap: str = "gray", **kwargs):
    """Draw a 2-D image (H, W), or (1, H, W), with pixel centres at integer (x, y); no ticks."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    shown = ax.imshow(image, cmap=cmap, interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return shown


def image_grid(images, titles=None, ncols: int = 10, size: float = 1.2, **kwargs):
    """A new figure showing images (N, [1,] H, W) in a grid, with optional titles; returns it."""
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    n = images.shape[0]
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.2),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            show_image(ax, images[i], None if titles is None else str(titles[i]), **kwargs)
        else:
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def draw_points(ax, points, weights=None, color="tab:red", size: float = 18.0,
                cmap: str = "viridis", **kwargs):
    """Scatter (y, x) points of any leading shape (..., 2).

    With ``weights`` (same leading shape, e.g. a DCNv2 mask in [0, 1]) each point's area is
    ``size * weight`` and its colour follows ``cmap`` over [0, 1]: a point the op ignores
    (weight 0) vanishes.  Returns the PathCollection (pass it to ``colorbar``).
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if weights is None:
        return ax.scatter(points[:, 1], points[:, 0], s=size, c=color, **kwargs)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if weights.shape[0] != points.shape[0]:
        raise ValueError(f"draw_points: {weights.shape[0]} weights for {points.shape[0]} points")
    return ax.scatter(points[:, 1], points[:, 0], s=size * np.clip(weights, 0, None), c=weights,
                      cmap=cmap, vmin=0.0, vmax=1.0, **kwargs)


def draw_offsets(ax, starts, offsets, color="tab:orange", width: float = 0.006, **kwargs):
    """Arrows from (y, x) ``starts`` by (dy, dx) ``offsets`` (same shape (..., 2)), drawn to
    scale: an arrow ends exactly at start + offset in pixel coordinates."""
    starts = np.asarray(starts, dtype=np.float64).reshape(-1, 2)
    offsets = np.asarray(offsets, dtype=np.float64).reshape(-1, 2)
    if starts.shape != offsets.shape:
        raise ValueError(f"draw_offsets: starts {starts.shape} and offsets {offsets.shape} differ")
    return ax.quiver(starts[:, 1], starts[:, 0], offsets[:, 1], offsets[:, 0], color=color,
                     angles="xy", scale_units="xy", scale=1.0, width=width, **kwargs)


def draw_box(ax, box, color="tab:red", linewidth: float = 1.5, shift: float = -0.5, **kwargs):
    """A rectangle for ``[x1, y1, x2, y2]``; ``shift`` moves RoI coordinates to pixel indices
    (-0.5 for the aligned convention, 0 for boxes already in pixel-index coordinates)."""
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(4))
    patch = Rectangle((x1 + shift, y1 + shift), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                      linewidth=linewidth, **kwargs)
    ax.add_patch(patch)
    return patch


def roi_bin_boxes(box, output_size, offset=None, gamma: float = 0.1,
                  spatial_scale: float = 1.0) -> np.ndarray:
    """The k x k bins of (deformable) RoI pooling as boxes (ph, pw, 4) in pixel indices.

    Following ``deform_roi_pool`` (SEMANTICS.md): the RoI starts at ``x1 * spatial_scale -
    0.5``, has size ``roi_w = (x2 - x1) * spatial_scale`` (likewise y), bin (i, j) spans
    ``roi_w / pw`` by ``roi_h / ph``, and an offset (2, ph, pw), channel 0 for x and 1 for y,
    moves the whole bin by ``gamma * offset * (roi_w, roi_h)``.  Draw them with ``shift=0``.
    """
    ph, pw = (output_size, output_size) if np.isscalar(output_size) else output_size
    x1, y1, x2, y2 = (float(v) * spatial_scale for v in np.asarray(box).reshape(4))
    roi_w, roi_h = x2 - x1, y2 - y1
    bin_w, bin_h = roi_w / pw, roi_h / ph
    rows, cols = np.meshgrid(np.arange(ph), np.arange(pw), indexing="ij")
    left = x1 - 0.5 + cols * bin_w
    top = y1 - 0.5 + rows * bin_h
    if offset is not None:
        offset = np.asarray(offset, dtype=np.float64)
        if offset.shape != (2, ph, pw):
            raise ValueError(f"roi_bin_boxes: offset must be (2, {ph}, {pw}), got {offset.shape}")
        left = left + gamma * offset[0] * roi_w
        top = top + gamma * offset[1] * roi_h
    return np.stack([left, top, left + bin_w, top + bin_h], axis=-1)


def draw_roi_bins(ax, box, output_size, offset=None, gamma: float = 0.1, color="tab:cyan",
                  linewidth: float = 1.0, **kwargs):
    """Draw every bin of :func:`roi_bin_boxes`; returns the bins (ph, pw, 4)."""
    bins = roi_bin_boxes(box, output_size, offset, gamma)
    for b in bins.reshape(-1, 4):
        draw_box(ax, b, color=color, linewidth=linewidth, shift=0.0, **kwargs)
    return bins


def figure_to_array(fig) -> np.ndarray:
    """Render a figure to an RGB uint8 array (H, W, 3) and close it: one frame of a GIF."""
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    frame = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return frame


def save_gif(frames, path, fps: float = 4.0) -> None:
    """Write frames (each (H, W) in [0, 1] or (H, W, 3|4) uint8, all one shape) as a GIF with
    matplotlib's PillowWriter; the GIF has the frames' own pixel size."""
    from matplotlib.animation import PillowWriter
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError("save_gif: frames is empty")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"save_gif: all frames must have one shape, got {sorted(shapes)}")
    height, width = frames[0].shape[:2]
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    gray_range = {"vmin": 0.0, "vmax": 1.0} if frames[0].ndim == 2 else {}
    shown = ax.imshow(frames[0], cmap="gray", interpolation="nearest", **gray_range)
    writer = PillowWriter(fps=fps)
    with writer.saving(fig, str(path), dpi):
        for frame in frames:
            shown.set_data(frame)
            writer.grab_frame()
    print(f"wrote {path}")
