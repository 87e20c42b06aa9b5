"""Synthetic data sets, made locally from matplotlib's bundled fonts: no downloads.

Everything here starts from a *glyph*: a character drawn once with one of matplotlib's own
fonts (the DejaVu families ship inside matplotlib) into a small anti-aliased template.  An
image is made by placing templates with an affine map and resampling them bilinearly.

Coordinates follow the rest of minidcn: ``(y, x)`` pixel indices, row 0 and column 0 at the
centres of the first pixels.  A glyph lives in its own *unit frame*: its ink is centred on
``(0, 0)`` and its longer side spans exactly 1.  An affine ``A`` (a 2x3 matrix) puts it in
an image::

    p = A[:, :2] @ u + A[:, 2]        u: unit-frame point (y, x), p: image pixel (y, x)

and rendering asks, for every output pixel p, which template point u = A⁻¹(p - t) it shows.

Three data sets are built from this:

* :func:`glyphs`: one centred character per image (an MNIST-like classification set), under a
  random scale, aspect, rotation, shear and shift.  :data:`MILD` is the training
  distribution, :data:`STRONG` the strongly deformed test distribution of lesson 06.
* :func:`scenes`: one character of a stated size in pixels, anywhere on a textured
  background, with its mask and box: objects of varied size (lesson 07) and RoI targets
  (lesson 08).
* :func:`jitter_boxes`: proposals made by disturbing ground-truth boxes (lesson 08).

All functions take ``seed`` (an int or a ``numpy.random.Generator``); the same seed gives
the same arrays.  Nothing is cached on disk; the few templates are kept in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import NamedTuple

import numpy as np

from .backends import backend
from .functional import bilinear_sample
from .grad_mode import no_grad

DIGITS = "0123456789"
FONTS = ("DejaVuSans-Bold", "DejaVuSerif-Bold", "DejaVuSansMono-Bold")
TEMPLATE_SIZE = 64  # pixels of a glyph template
TEMPLATE_MARGIN = 4  # empty pixels around the ink on each side of a template
SUPERSAMPLE = 2  # each output pixel averages SUPERSAMPLE x SUPERSAMPLE bilinear samples
CHUNK = 512  # images rendered at once (bounds the memory of the coordinate arrays)


@dataclasses.dataclass(frozen=True)
class Distortion:
    """A random affine distribution; each image draws its own parameters independently.

    * ``scale`` (lo, hi): the glyph's longer side as a fraction of the image side,
      log-uniform in [lo, hi];
    * ``aspect``: height/width stretch, log-uniform in [1/aspect, aspect];
    * ``rotation``: degrees, uniform in [-rotation, rotation];
    * ``shear``: horizontal shear factor (x += shear * y), uniform in [-shear, shear];
    * ``shift``: the centre moves uniformly within this fraction of the room left between
      the glyph's bounding box and the image border (0 centred, 1 anywhere it fits whole).
    """

    scale: tuple[float, float]
    aspect: float
    rotation: float
    shear: float
    shift: float


MILD = Distortion(scale=(0.62, 0.72), aspect=1.1, rotation=10.0, shear=0.1, shift=0.3)
STRONG = Distortion(scale=(0.4, 0.85), aspect=1.5, rotation=60.0, shear=0.6, shift=1.0)
DISTORTIONS = {"mild": MILD, "strong": STRONG}


class Glyphs(NamedTuple):
    """A classification set: ``images`` (N, 1, H, W) float32 in [0, 1] (ink is 1),
    ``labels`` (N,) int64 indices into the character string, ``fonts`` (N,) int64 indices
    into the font tuple, ``affines`` (N, 2, 3) float64 unit frame -> pixel maps."""

    images: np.ndarray
    labels: np.ndarray
    fonts: np.ndarray
    affines: np.ndarray


class Scenes(NamedTuple):
    """Objects on a background: ``images`` (N, 1, H, W) float32, ``labels`` (N,) int64,
    ``masks`` (N, H, W) bool (pixels the object covers by more than half),
    ``boxes`` (N, 4) float32 ``[x1, y1, x2, y2]`` (see :func:`mask_boxes`),
    ``sizes`` (N,) float32 the object's nominal size in pixels, ``affines`` (N, 2, 3)."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    sizes: np.ndarray
    affines: np.ndarray


# --------------------------------------------------------------------------- templates
def font_path(name: str) -> str:
    """The file of one of matplotlib's bundled fonts, e.g. ``"DejaVuSans-Bold"``."""
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", f"{name}.ttf")
    if not os.path.exists(path):
        raise ValueError(f"font_path: no bundled matplotlib font named {name!r} ({path})")
    return path


@functools.lru_cache(maxsize=8)
def glyph_templates(chars: str = DIGITS, fonts: tuple = FONTS):
    """Each character drawn once per font, anti-aliased, by matplotlib's Agg renderer.

    Returns ``(templates, half_extents)``: templates (F, C, S, S) float32 ink coverage in
    [0, 1] with S = TEMPLATE_SIZE, and half_extents (F, C, 2) the (y, x) half sizes of the
    ink in the unit frame (the longer one is 0.5).  Unit point u sits at template pixel
    ``u * (S - 2 * TEMPLATE_MARGIN) + (S - 1) / 2``.
    """
    templates = np.zeros((len(fonts), len(chars), TEMPLATE_SIZE, TEMPLATE_SIZE), np.float32)
    half_extents = np.zeros((len(fonts), len(chars), 2))
    for f, font in enumerate(fonts):
        for c, char in enumerate(chars):
            templates[f, c], half_extents[f, c] = _draw_glyph(char, font_path(font))
    templates.setflags(write=False)
    half_extents.setflags(write=False)
    return templates, half_extents


def _draw_glyph(char: str, path: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path
    from matplotlib.textpath import TextPath

    outline = TextPath((0, 0), char, size=1, prop=FontProperties(fname=path))
    box = outline.get_extents()
    side = max(box.width, box.height)
    # text coordinates are (x, y-up); the unit frame is (x, y-down) centred on the ink
    ux = (outline.vertices[:, 0] - (box.x0 + box.x1) / 2) / side
    uy = -(outline.vertices[:, 1] - (box.y0 + box.y1) / 2) / side
    fig = Figure(figsize=(TEMPLATE_SIZE / 100, TEMPLATE_SIZE / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    half = TEMPLATE_SIZE / 2 / (TEMPLATE_SIZE - 2 * TEMPLATE_MARGIN)
    ax.set_xlim(-half, half)
    ax.set_ylim(half, -half)  # row 0 at the top, like an image
    ax.add_patch(PathPatch(Path(np.c_[ux, uy], outline.codes), fc="black", ec="none", lw=0))
    canvas.draw()
    coverage = 1.0 - np.asarray(canvas.buffer_rgba())[..., 0].astype(np.float32) / 255.0
    return coverage, (box.height / side / 2, box.width / side / 2)


# --------------------------------------------------------------------------- affine maps
def affine_matrices(size_px, aspect, rotation_deg, shear, centre_yx) -> np.ndarray:
    """Unit frame -> pixel maps, one per image: ``A = size * R(rotation) @ H(shear) @ S(aspect)``.

    In (y, x) order: ``S = diag(sqrt(aspect), 1/sqrt(aspect))`` stretches height against
    width, ``H = [[1, 0], [shear, 1]]`` slants (x += shear * y, like italics) and R rotates
    by ``rotation_deg`` (counter-clockwise on screen).  ``centre_yx`` (N, 2) is where the
    unit origin lands.  All arguments broadcast to N.
    """
    size_px, aspect, shear = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (size_px, aspect, shear))
    )
    theta = np.deg2rad(np.broadcast_to(np.asarray(rotation_deg, np.float64), size_px.shape))
    n = size_px.shape[0]
    cos, sin = np.cos(theta), np.sin(theta)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    slant = np.zeros((n, 2, 2))
    slant[:, 0, 0] = slant[:, 1, 1] = 1.0
    slant[:, 1, 0] = shear
    stretch = np.zeros((n, 2, 2))
    stretch[:, 0, 0] = np.sqrt(aspect)
    stretch[:, 1, 1] = 1.0 / np.sqrt(aspect)
    linear = size_px[:, None, None] * rotate @ slant @ stretch
    centre = np.broadcast_to(np.asarray(centre_yx, np.float64), (n, 2))
    return np.concatenate([linear, centre[:, :, None]], axis=2)


def random_affines(rng, half_extents, image_size: int, distortion: Distortion) -> np.ndarray:
    """Draw one affine per row of ``half_extents`` (N, 2) from ``distortion``.

    The shift is drawn last: the glyph's ink box, mapped by the linear part, leaves some room
    to the border, and the centre moves uniformly within ``distortion.shift`` of it.
    """
    n = half_extents.shape[0]
    lo, hi = distortion.scale
    size_px = image_size * np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    aspect = np.exp(rng.uniform(-1.0, 1.0, n) * np.log(distortion.aspect))
    rotation = rng.uniform(-1.0, 1.0, n) * distortion.rotation
    shear = rng.uniform(-1.0, 1.0, n) * distortion.shear
    centred = affine_matrices(size_px, aspect, rotation, shear, (image_size - 1) / 2)
    corners = half_extents[:, None, :] * np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])
    reach = np.abs(np.einsum("nij,nkj->nki", centred[:, :, :2], corners)).max(axis=1)
    room = np.maximum((image_size - 1) / 2 - reach, 0.0)
    centred[:, :, 2] += rng.uniform(-1.0, 1.0, (n, 2)) * room * distortion.shift
    return centred


# --------------------------------------------------------------------------- rendering
def render(templates: np.ndarray, affines: np.ndarray, image_size: int) -> np.ndarray:
    """Ink coverage (N, H, W) float32 of templates (N, S, S) placed by affines (N, 2, 3).

    Each output pixel averages SUPERSAMPLE² points; each point p reads the template at
    ``u = A⁻¹ (p - t)`` with minidcn's own bilinear sampling (zero outside the template).
    """
    n = templates.shape[0]
    out = np.empty((n, image_size, image_size), np.float32)
    sub = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    fine = (np.arange(image_size)[:, None] + sub[None, :]).ravel()
    grid = np.stack(np.meshgrid(fine, fine, indexing="ij"), axis=-1).reshape(-1, 2).astype(np.float32)
    per_unit = TEMPLATE_SIZE - 2 * TEMPLATE_MARGIN
    for start in range(0, n, CHUNK):
        a = affines[start:start + CHUNK]
        m = (np.linalg.inv(a[:, :, :2]) * per_unit).astype(np.float32)[:, :, :, None]
        dy = grid[None, :, 0] - a[:, 0, 2:].astype(np.float32)
        dx = grid[None, :, 1] - a[:, 1, 2:].astype(np.float32)
        points = np.stack([m[:, 0, 0] * dy + m[:, 0, 1] * dx, m[:, 1, 0] * dy + m[:, 1, 1] * dx], -1)
        samples = _sample(templates[start:start + CHUNK, None], points + (TEMPLATE_SIZE - 1) / 2)
        fine_images = samples.reshape(-1, image_size, SUPERSAMPLE, image_size, SUPERSAMPLE)
        out[start:start + CHUNK] = fine_images.mean(axis=(2, 4))
    return out


def _sample(images: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``images`` (N, 1, S, S) read at ``points`` (N, P, 2) (y, x) -> (N, P) float32.

    This is :func:`minidcn.functional.bilinear_sample` on the numba backend, whichever host
    backend is active, so that the same seed gives the same images under any backend.
    """
    with no_grad(), backend("numba"):
        sampled = bilinear_sample(images.astype(np.float32), points.astype(np.float32))
    return sampled.numpy()[:, 0]


# --------------------------------------------------------------------------- data sets
def glyphs(n: int, distortion="mild", *, image_size: int = 28, seed=0,
           chars: str = DIGITS, fonts: tuple = FONTS) -> Glyphs:
    """``n`` images of one character each, drawn from ``distortion`` ("mild", "strong" or a
    :class:`Distortion`); labels and fonts are uniform.

    >>> train = glyphs(1000, "mild", seed=0)
    >>> train.images.shape, train.labels.dtype
    ((1000, 1, 28, 28), dtype('int64'))
    """
    n = _check_count("glyphs", "n", n)
    image_size = _check_count("glyphs", "image_size", image_size, minimum=8)
    distortion = _distortion("glyphs", distortion)
    rng = np.random.default_rng(seed)
    templates, half_extents = glyph_templates(chars, tuple(fonts))
    labels = rng.integers(0, len(chars), n)
    font_ids = rng.integers(0, len(fonts), n)
    affines = random_affines(rng, half_extents[font_ids, labels], image_size, distortion)
    ink = render(templates[font_ids, labels], affines, image_size)
    return Glyphs(ink[:, None], labels.astype(np.int64), font_ids.astype(np.int64), affines)


def scenes(n: int, *, image_size: int = 64, object_size=(8.0, 40.0), distortion="mild",
           seed=0, chars: str = DIGITS, fonts: tuple = FONTS) -> Scenes:
    """``n`` images each holding one character whose longer side is log-uniform in
    ``object_size`` pixels, placed anywhere it fits whole, on a smooth random background.

    The rotation, shear and aspect come from ``distortion``; its scale and shift are replaced
    by ``object_size`` and "anywhere".  Pixel values: the background of
    :func:`smooth_background` (0 to 0.4, plus noise), ink 1, blended by the ink's coverage and
    clipped to [0, 1].  ``sizes`` is the glyph's nominal longer side, sqrt|det A| (the aspect
    and shear change the box, not this number).
    """
    n = _check_count("scenes", "n", n)
    image_size = _check_count("scenes", "image_size", image_size, minimum=8)
    lo, hi = _check_range("scenes", "object_size", object_size, image_size)
    distortion = dataclasses.replace(
        _distortion("scenes", distortion), scale=(lo / image_size, hi / image_size), shift=1.0
    )
    rng = np.random.default_rng(seed)
    placed = glyphs(n, distortion, image_size=image_size, seed=rng, chars=chars, fonts=fonts)
    ink = placed.images[:, 0]
    background = smooth_background(rng, n, image_size)
    images = np.clip(background * (1 - ink) + ink, 0.0, 1.0).astype(np.float32)
    masks = ink > 0.5
    sizes = np.sqrt(np.abs(np.linalg.det(placed.affines[:, :, :2]))).astype(np.float32)
    return Scenes(images[:, None], placed.labels, masks, mask_boxes(masks), sizes, placed.affines)


def smooth_background(rng, n: int, image_size: int, cells: int = 6) -> np.ndarray:
    """Low-frequency clutter: a random ``cells`` x ``cells`` grid in [0, 0.4] interpolated
    bilinearly up to the image, plus Gaussian pixel noise of standard deviation 0.02."""
    coarse = rng.uniform(0.0, 0.4, (n, cells, cells))
    axis = np.arange(image_size) * ((cells - 1) / (image_size - 1))
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(1, -1, 2)
    smooth = _sample(coarse[:, None], np.broadcast_to(grid, (n,) + grid.shape[1:]))
    noise = rng.normal(0.0, 0.02, (n, image_size * image_size))
    return (smooth + noise).reshape(n, image_size, image_size)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes ``[x1, y1, x2, y2]`` (N, 4) float32 around boolean masks (N, H, W).

    A box covers whole pixels: pixel column j spans [j, j + 1), so the box of columns
    c0..c1 is x1 = c0, x2 = c1 + 1.  This is the box convention of torchvision's
    ``roi_align(aligned=True)``, which samples pixel j's centre at box coordinate j + 0.5.
    An empty mask gives the box [0, 0, 0, 0].
    """
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    boxes = np.zeros((masks.shape[0], 4), np.float32)
    for i, (r, c) in enumerate(zip(rows, cols)):
        if r.any():
            ys, xs = np.flatnonzero(r), np.flatnonzero(c)
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def jitter_boxes(boxes, jitter: float, image_size: int, seed=0) -> np.ndarray:
    """Proposals: each box's centre moves by up to ``jitter`` times its width/height, and
    each side is scaled by ``exp(u * jitter)`` with u uniform in [-1, 1]; the result is
    clipped to the image and kept at least one pixel wide.  Returns (N, 4) float32."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"jitter_boxes: boxes must be (N, 4) [x1, y1, x2, y2], got {boxes.shape}")
    jitter = float(jitter)
    if not (np.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"jitter_boxes: jitter must be finite and >= 0, got {jitter}")
    rng = np.random.default_rng(seed)
    n = boxes.shape[0]
    size = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, 2:] + boxes[:, :2]) / 2 + rng.uniform(-1, 1, (n, 2)) * jitter * size
    half = size * np.exp(rng.uniform(-1, 1, (n, 2)) * jitter) / 2
    low = np.clip(centre - half, 0, image_size - 1)
    high = np.clip(np.maximum(centre + half, low + 1), 1, image_size)
    return np.concatenate([low, high], axis=1).astype(np.float32)


# --------------------------------------------------------------------------- validation
def _check_count(fn: str, name: str, value, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return int(value)


def _check_range(fn: str, name: str, value, image_size: int) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: {name} must be a pair (lo, hi) of numbers, got {value!r}") from None
    if not (0 < lo <= hi <= image_size):
        raise ValueError(
            f"{fn}: {name} must satisfy 0 < lo <= hi <= image_size ({image_size}), got {value!r}"
        )
    return lo, hi


def _distortion(fn: str, value) -> Distortion:
    if isinstance(value, Distortion):
        return value
    if isinstance(value, str) and value in DISTORTIONS:
        return DISTORTIONS[value]
    raise ValueError(
        f"{fn}: distortion must be one of {sorted(DISTORTIONS)} or a Distortion, got {value!r}"
    )
