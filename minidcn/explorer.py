"""An interactive web page of where a deformable network samples, unit by unit.

:func:`explorer` runs a trained ``nn.Sequential`` on a few images, back-tracks every unit's
sampling locations through its last 1, 2, ..., L stride-1 deformable layers with
:func:`minidcn.receptive_field.backtrack` (K, K², ..., K^L points), and writes one
self-contained HTML file: the images (8-bit grey) and the points, spreads and mask weights
(float32) are embedded as base64, the drawing code is inline JavaScript on a canvas, nothing
is fetched, so the file opens from disk in any browser, offline.  The page draws exactly the numbers computed here; it only
converts them to screen positions.

Coordinates.  The bottom deformable layer reads a map of ``S`` times fewer rows and columns
than the image (the stem's total stride, e.g. two 2×2 max-pools: S = 4).  Map position u is
drawn at pixel ``S u + (S - 1) / 2``, the centre of the S×S block it summarises (lesson 07's
convention).  Every deformable layer must keep the map's size (stride 1, "same" padding), so
that all of them share these coordinates, and only point-wise layers (ReLU, normalisation,
...) may sit between them.

For a modulated (DCNv2) network, a point's weight is the product of the masks along its path:
the top layer's mask m_k(q) of its unit, times the next layer's mask of the kernel point that
reaches it, read at the fractional parent position by the same bilinear interpolation (with
the same edge clamp) that ``backtrack`` uses for the offsets.  The page draws it as opacity
0.1 + 0.9 × weight, so that a point of weight 0 stays faintly visible.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from . import nn
from .functional import bilinear_sample, sampling_locations
from .grad_mode import no_grad
from .receptive_field import backtrack, spread
from .tensor import Tensor

__all__ = ["explorer", "explorer_data", "MAX_BYTES"]

MAX_BYTES = 20_000_000  # the page's size limit
POINTWISE = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GroupNorm, nn.BatchNorm2d, nn.InstanceNorm2d)


def _deformable_stack(model) -> list:
    """The model's DeformConv2d layers, checked to be back-trackable; else a clear error."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"explorer: model must be an nn.Sequential, got {type(model).__name__}")
    modules = list(model)
    where = [i for i, m in enumerate(modules) if isinstance(m, nn.DeformConv2d)]
    if not where:
        raise ValueError("explorer: model has no nn.DeformConv2d layer; expected at least one "
                         "stride-1 deformable layer to explore")
    for i in where:
        layer = modules[i]
        kh, kw = layer.kernel_size
        same = tuple(d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size))
        if tuple(layer.stride) != (1, 1):
            raise ValueError(f"explorer: model[{i}] (DeformConv2d) has stride {layer.stride}; "
                             "only stride-1 deformable layers can be back-tracked, expected (1, 1)")
        if tuple(2 * p for p in layer.padding) != same:
            raise ValueError(f"explorer: model[{i}] (DeformConv2d) has padding {layer.padding}; "
                             "expected 'same' padding dilation * (kernel_size - 1) / 2 = "
                             f"{tuple(s // 2 for s in same)}, so that every deformable layer "
                             "keeps the map's size")
        if layer.offset_groups != 1:
            raise ValueError(f"explorer: model[{i}] (DeformConv2d) has offset_groups "
                             f"{layer.offset_groups}; expected 1 (one set of sampling points "
                             "per unit)")
        if (kh * kw, layer.modulated) != (modules[where[0]].kernel_size[0]
                                          * modules[where[0]].kernel_size[1],
                                          modules[where[0]].modulated):
            raise ValueError(f"explorer: model[{i}] (DeformConv2d) differs from model[{where[0]}]"
                             " in kernel size or modulation; expected all deformable layers alike")
    between = [(i, m) for i, m in enumerate(modules[where[0]:where[-1] + 1], where[0])
               if not isinstance(m, (nn.DeformConv2d, *POINTWISE))]
    if between:
        i, m = between[0]
        raise ValueError(f"explorer: model[{i}] ({type(m).__name__}) sits between deformable "
                         "layers; expected only point-wise layers there ("
                         + ", ".join(t.__name__ for t in POINTWISE) + "), since back-tracking "
                         "follows one deformable layer's points straight into the next")
    return [modules[i] for i in where]


def _images(images, inputs):
    array = np.asarray(images)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[0] < 1 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"explorer: images must be numbers shaped (N, H, W) or (N, 1, H, W) "
                         f"with N >= 1, got {np.asarray(images).shape} of {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError("explorer: images hold NaN or infinite values")
    if inputs is None:
        inputs = np.asarray(images, dtype=np.float32).reshape(len(array), 1, *array.shape[1:])
    inputs = np.asarray(inputs)
    if inputs.ndim != 4 or len(inputs) != len(array):
        raise ValueError(f"explorer: inputs must be (N, C, H, W) with N = {len(array)} like "
                         f"images, got {inputs.shape}")
    return array.astype(np.float64), inputs


def explorer_data(model, images, inputs=None, batch: int = 50) -> dict:
    """Everything the page shows, as NumPy arrays (the page embeds them unchanged, as float32).

    Args:
        model: an ``nn.Sequential`` with one or more stride-1 DeformConv2d layers.
        images: (N, H, W) or (N, 1, H, W), what the page shows (grey, from min to max).
        inputs: what the model reads, (N, C, H, W); default ``images`` as float32 (pass the
            standardised images if the model was trained on those).

    Returns a dict with ``images`` (N, H, W); ``stride`` S and ``map_size`` (h, w);
    ``kernel_points`` (K, 2); for each depth d = 1..L, ``points[d-1]`` (N, h, w, K^d, 2) in
    image pixels (y, x), ``spread[d-1]`` (N, h, w) and ``regular[d-1]`` (K^d, 2), the regular
    grid relative to the unit in pixels, ``regular_spread[d-1]``; and for a modulated network
    ``weights[d-1]`` (N, h, w, K^d), the product of the masks along each point's path.
    """
    layers = _deformable_stack(model)
    shown, inputs = _images(images, inputs)
    per_layer = [[] for _ in layers]
    masks = [[] for _ in layers]
    with no_grad(), nn.recording_sampling(model):
        for i in range(0, len(inputs), batch):
            model(Tensor(inputs[i:i + batch]))
            for kept, mask, layer in zip(per_layer, masks, layers):
                kept.append(layer.last_sampling_locations[:, 0].astype(np.float64))
                if layer.modulated:
                    mask.append(layer.last_mask[:, 0].astype(np.float64))
    locations = [np.concatenate(kept) for kept in per_layer]  # (N, K, h, w, 2), bottom first
    n, k, h, w, _ = locations[0].shape
    if any(where.shape != locations[0].shape for where in locations):
        raise ValueError("explorer: the deformable layers' maps differ in size: "
                         f"{[where.shape[2:4] for where in locations]}; expected one size")
    height, width = shown.shape[1:]
    stride = height // h
    if stride * h != height or stride * w != width:
        raise ValueError(f"explorer: images are {height}x{width} but the deformable layers' map "
                         f"is {h}x{w}; expected the image size to be a whole multiple of it")
    regular_grid = sampling_locations(np.zeros((1, 2 * k, h, w)), layers[0].kernel_size,
                                      layers[0].stride, layers[0].padding,
                                      layers[0].dilation)[:, 0]
    kernel_points = regular_grid[0, :, 0, 0]  # p_k: the regular grid of unit (0, 0)
    offsets = [where - regular_grid for where in locations]  # Δp_k = p - (q + p_k)

    def to_image(points):
        return stride * points + (stride - 1) / 2

    units = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
    out = {"images": shown, "stride": stride, "map_size": (h, w), "kernel_points": kernel_points,
           "points": [], "spread": [], "regular": [], "regular_spread": [],
           "modulated": layers[0].modulated, "weights": []}
    for depth in range(1, len(layers) + 1):
        chosen = offsets[len(layers) - depth:]
        points = np.stack([backtrack(chosen, np.repeat(unit[None], n, 0), kernel_points)
                           for unit in units], 1)  # (N, h*w, K^d, 2) map coordinates
        pixels = to_image(points)
        out["points"].append(pixels.reshape(n, h, w, k ** depth, 2))
        out["spread"].append(spread(pixels).reshape(n, h, w))
        zero = [np.zeros((1, k, h, w, 2))] * depth
        regular = backtrack(zero, np.zeros((1, 2), np.int64), kernel_points)[0] * stride
        out["regular"].append(regular)
        out["regular_spread"].append(float(spread(regular)))
    if layers[0].modulated:
        out["weights"] = _path_weights(out["points"], [np.concatenate(m) for m in masks],
                                       to_image, stride)
    return out


def _path_weights(pixels_by_depth, masks, to_image, stride) -> list:
    """Product of the masks along each point's path, per depth (see the module docstring).

    The points at depth d are read by layer L - d (bottom first, 0-based) at their parents,
    the points at depth d - 1 (the unit itself for d = 1), in the order parent-major."""
    n, h, w = pixels_by_depth[0].shape[:3]
    k = masks[0].shape[1]
    depth_count = len(masks)
    units = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1)
    weights = []
    parent_weight = np.ones((n, h, w, 1))
    for depth in range(1, depth_count + 1):
        mask = masks[depth_count - depth]  # (N, K, h, w)
        if depth == 1:
            parents = np.broadcast_to(units[None, :, :, None, :].astype(np.float64),
                                      (n, h, w, 1, 2))
        else:
            parents = (pixels_by_depth[depth - 2] - (stride - 1) / 2) / stride  # map coords
        lookup = np.clip(parents, 0, [h - 1, w - 1]).reshape(n, -1, 2)
        read = bilinear_sample(mask, lookup).numpy()  # (N, K, h*w*P)
        read = read.reshape(n, k, h, w, -1).transpose(0, 2, 3, 4, 1)  # (N, h, w, P, K)
        parent_weight = (parent_weight[..., None] * read).reshape(n, h, w, -1)
        weights.append(parent_weight)
    return weights


def _b64(array, dtype) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def explorer(model, images, path, *, inputs=None, title: str = "Where do the sampling points go?",
             notes: str = "", batch: int = 50) -> Path:
    """Write the interactive explorer of ``model``'s sampling locations on ``images`` to
    ``path``, one self-contained HTML file; returns the path.

    ``model``, ``images`` and ``inputs`` as for :func:`explorer_data`; ``title`` heads the page
    and ``notes`` (plain text) is printed under it.  Refuses (ValueError) a page larger than
    ``MAX_BYTES``: pass fewer images.  Open the file in a browser: click an image of the strip,
    then move over or click a unit.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"explorer: path must be a str or pathlib.Path, got {type(path).__name__}")
    if not isinstance(title, str) or not isinstance(notes, str):
        raise TypeError("explorer: title and notes must be str, got "
                        f"{type(title).__name__} and {type(notes).__name__}")
    layers = _deformable_stack(model)
    shown, _ = _images(images, inputs)
    n, height, width = shown.shape
    k = layers[0].kernel_size[0] * layers[0].kernel_size[1]
    per_unit = sum(k ** d for d in range(1, len(layers) + 1)) * (8 + 4 * layers[0].modulated)
    data = explorer_data(model, images, inputs, batch)
    h, w = data["map_size"]
    size = 4 / 3 * n * (h * w * per_unit + height * width)
    if size > MAX_BYTES:
        raise ValueError(f"explorer: {n} images of {h}x{w} units with {len(layers)} deformable "
                         f"layers make a page of about {size / 1e6:.0f} MB, over the "
                         f"{MAX_BYTES / 1e6:g} MB limit; pass fewer images (at most "
                         f"{max(1, int(n * MAX_BYTES / size))})")
    low, high = float(shown.min()), float(shown.max())
    grey = np.round(255 * (shown - low) / (high - low if high > low else 1.0)).astype(np.uint8)
    payload = {
        "n": n, "height": height, "width": width, "stride": data["stride"],
        "mapH": h, "mapW": w, "layers": len(layers), "K": k, "modulated": data["modulated"],
        "greyRange": [low, high],
        "images": _b64(grey, np.uint8),
        "points": [_b64(p, np.float32) for p in data["points"]],
        "spread": [_b64(s, np.float32) for s in data["spread"]],
        "regular": [_b64(r, np.float32) for r in data["regular"]],
        "regularSpread": data["regular_spread"],
        "weights": [_b64(wt, np.float32) for wt in data["weights"]],
    }
    page = (_TEMPLATE.replace("%DATA%", json.dumps(payload).replace("</", "<\\/"))
            .replace("%TITLE%", html.escape(title)).replace("%NOTES%", html.escape(notes)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


_TEMPLATE = (Path(__file__).resolve().parent / "explorer.html").read_text(encoding="utf-8")
