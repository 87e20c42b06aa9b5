# %% [markdown]
# # 04 deformable convolution (DCN v1): a 3×3 grid that can move
#
# A plain 3×3 convolution reads its input on a fixed grid around each output pixel p0,
#
#     y(p0) = Σ_k w_k · x(p0 + p_k),      p_k ∈ {-1, 0, 1}²  (times the dilation),
#
# and a deformable convolution adds one learned offset Δp_k per kernel point and output pixel,
#
#     y(p0) = Σ_k w_k · x(p0 + p_k + Δp_k),
#
# reading x between pixels by bilinear interpolation (lesson 03). This lesson:
#
# 1. redraws the DCN paper's Figure 1 on a photograph: the regular grid, a deformed grid, and
#    the offsets that realise a scaling and a rotation, computed from the transformation, and
#    checks that `deform_conv2d` with those offsets reads exactly the transformed grid;
# 2. checks that a `DeformConv2d` layer with zero offsets is a plain convolution;
# 3. *learns* offsets by gradient descent, so that the deformable layer on an image reproduces
#    a plain convolution applied to a scaled or rotated copy of it, and compares the learned
#    offsets with the true ones, known exactly from the transformation.
#
# Run it with `minidcn lesson 4` or `python lessons/04_deformable_conv.py`. Coordinates are
# `(y, x)` pixel indices, as everywhere in minidcn; the photographs are drawn with y pointing
# down, so a positive dy moves a point down the page.

# %%
import matplotlib.cbook as cbook
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

import minidcn
from minidcn import Tensor, nn, viz
from minidcn import functional as F
from minidcn.lessons_support import check, quick, save_figure

rng = np.random.default_rng(4)

# %% [markdown]
# ## 1. The paper's Figure 1, computed
#
# The kernel points, relative to the window's centre, are p_k = d·(i - 1, j - 1) for
# i, j ∈ {0, 1, 2}, in row-major order (the order of `deform_conv2d`'s offset channels:
# channel 2k holds dy and channel 2k + 1 holds dx of point k). A linear map A of the window
# (about its centre) moves p_k to A p_k, so the offsets that realise it are
#
#     Δp_k = A p_k - p_k = (A - I) p_k,
#
# the same at every output pixel. Below: A = 1.6·I (a scaling), A = a rotation by 30°, and,
# for the general case of the paper's panel (b), offsets drawn at random from N(0, (0.4 d)²)
# for each point independently (seed 4): any offsets at all are allowed, nothing ties them to
# a transformation. The grid is dilated (d = 4) only so that it is visible on the photograph;
# with padding = d, output pixel p0 is the centre of its window, so the points read are
# p0 + p_k + Δp_k.
#
# The photograph is matplotlib's bundled picture of Grace Hopper, gray, 2×2 blocks averaged.

# %%
with cbook.get_sample_data("grace_hopper.jpg") as file:
    rgb = mpimg.imread(file, format="jpg")
photo = (rgb.astype(np.float64).mean(axis=2) / 255.0).reshape(300, 2, 256, 2).mean(axis=(1, 3))

DILATION = 4
unit_points = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij"),
                       axis=-1).reshape(9, 2).astype(np.float64)  # p_k for d = 1, (9, 2)
kernel_points = DILATION * unit_points  # p_k of the dilated grid


def rotation(degrees):
    """The 2×2 matrix acting on (y, x) that turns points counter-clockwise as drawn (y down)."""
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


deformed_grids = {  # the nine points each panel reads, relative to the window's centre
    "(b) random offsets": kernel_points + rng.normal(0.0, 0.4 * DILATION, size=(9, 2)),
    "(c) scaling by 1.6": kernel_points @ (1.6 * np.eye(2)).T,  # A p_k
    "(d) rotation by 30°": kernel_points @ rotation(30.0).T,
}
deformations = {name: grid - kernel_points for name, grid in deformed_grids.items()}  # Δp_k
for name, offsets in deformations.items():
    print(f"{name}: Δp_k (dy, dx) for the nine points, row-major:")
    print("   ", "  ".join(f"({dy:+.2f}, {dx:+.2f})" for dy, dx in offsets))


def constant_offset_field(offsets, height, width):
    """Offsets (9, 2) of one window -> the (1, 18, H, W) tensor layout, equal at every pixel."""
    return np.broadcast_to(offsets.reshape(1, 18, 1, 1), (1, 18, height, width)).copy()


# %% [markdown]
# Does `deform_conv2d` with these offsets really read the transformed grid? Take a 48×48 patch,
# four random 3×3 filters, and for every output pixel p0 compute the same sum twice:
#
# * `deform_conv2d(x, offset, w, padding=d, dilation=d)`, with the offsets of each panel at
#   every pixel;
# * by hand: `bilinear_sample` x at the nine points of the deformed grid, p0 + A p_k (for
#   panel (b), p0 + p_k + Δp_k), then Σ_k w_k · sample_k.
#
# And for the scaling, `sampling_locations` must be p0 + 1.6 p_k exactly.

# %%
patch = photo[100:148, 90:138]
height, width = patch.shape
x_patch = Tensor(patch[None, None])
filters = Tensor(rng.normal(size=(4, 1, 3, 3)))
centres = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij"),
                   axis=-1).reshape(-1, 2).astype(np.float64)  # every p0 (H·W, 2)

for name, offsets in deformations.items():
    field = constant_offset_field(offsets, height, width)
    y = F.deform_conv2d(x_patch, Tensor(field), filters, padding=DILATION, dilation=DILATION)
    points = centres[:, None, :] + deformed_grids[name]  # p0 + A p_k, (H·W, 9, 2)
    samples = F.bilinear_sample(x_patch, Tensor(points.reshape(1, -1, 2))).numpy()
    by_hand = np.einsum("ok,pk->op", filters.numpy().reshape(4, 9), samples.reshape(-1, 9))
    gap = np.abs(y.numpy().reshape(4, -1) - by_hand).max()
    print(f"{name}: max |deform_conv2d - Σ_k w_k x(p0 + A p_k)| = {gap:.1e}")
    check(gap < 1e-12, f"{name}: deform_conv2d reads exactly the deformed grid at all "
                       f"{height * width} output pixels")

locations = F.sampling_locations(constant_offset_field(deformations["(c) scaling by 1.6"],
                                                       height, width),
                                 3, padding=DILATION, dilation=DILATION)  # (1, 1, 9, H, W, 2)
expected = centres.reshape(height, width, 1, 2) + 1.6 * kernel_points
gap = np.abs(locations[0, 0].transpose(1, 2, 0, 3) - expected).max()
check(gap < 1e-12, "sampling_locations of the scaling offsets are p0 + 1.6 p_k")

# %% [markdown]
# A scaling by an integer factor is something we already know: scaled by 2, the grid
# p0 + 2 p_k is a convolution with twice the dilation. So `deform_conv2d` with offsets
# Δp_k = p_k must equal `conv2d(..., dilation=2d)`.

# %%
doubled = F.deform_conv2d(x_patch, Tensor(constant_offset_field(kernel_points, height, width)),
                          filters, padding=DILATION, dilation=DILATION)
dilated = F.conv2d(x_patch, filters, padding=2 * DILATION, dilation=2 * DILATION)
gap = np.abs(doubled.numpy() - dilated.numpy()).max()
print(f"max |deform_conv2d(Δp_k = p_k) - conv2d(dilation {2 * DILATION})| = {gap:.1e}")
check(gap < 1e-12, "offsets Δp_k = p_k turn a 3×3 convolution into one of twice the dilation")

# %% [markdown]
# The figure: the patch, one window at its centre. Green: the regular grid p0 + p_k. Navy: the
# deformed grid p0 + p_k + Δp_k (= p0 + A p_k). Light-blue arrows: the offsets Δp_k, drawn to
# scale (an arrow ends where the point samples).

# %%
centre = np.array([height // 2, width // 2], dtype=np.float64)
fig, axes = plt.subplots(2, 2, figsize=(8.6, 9.4), layout="constrained")
axes = axes.ravel()
viz.show_image(axes[0], patch, "(a) regular sampling grid p0 + p_k", vmin=0, vmax=1)
viz.draw_points(axes[0], centre + kernel_points, color="limegreen", size=60, edgecolors="black")
for ax, (name, offsets) in zip(axes[1:], deformations.items()):
    viz.show_image(ax, patch, f"{name}: p0 + p_k + Δp_k", vmin=0, vmax=1)
    viz.draw_points(ax, centre + kernel_points, color="limegreen", size=30, alpha=0.6)
    viz.draw_offsets(ax, centre + kernel_points, offsets, color="deepskyblue", width=0.008)
    viz.draw_points(ax, centre + deformed_grids[name], color="navy", size=60, edgecolors="white")
key = [plt.Line2D([], [], marker="o", ls="none", ms=8, mfc="limegreen", mec="black",
                  label="regular grid p0 + p_k"),
       plt.Line2D([], [], marker="o", ls="none", ms=8, mfc="navy", mec="white",
                  label="where the deformable conv samples, p0 + p_k + Δp_k"),
       plt.Line2D([], [], color="deepskyblue", lw=2, marker=">", ms=6,
                  label="offset Δp_k, to scale (1 px of arrow = 1 px)")]
fig.legend(handles=key, loc="outside lower center", ncol=1, fontsize=9)
fig.suptitle(f"DCN Figure 1 on a {height}×{width} px photograph patch: a 3×3 grid with dilation "
             f"{DILATION}\noffsets of (c) and (d) computed from the transformation, of (b) drawn at random",
             fontsize=10)
save_figure(fig, "04_figure1_sampling_grids.png")

# %% [markdown]
# ## 2. With zero offsets, a deformable convolution is a convolution
#
# `minidcn.nn.DeformConv2d` is a `Conv2d` (same `weight`, `bias` and geometry) plus an *offset
# predictor*: a plain convolution with the layer's geometry that reads the input and outputs
# the 18 offset channels. The predictor starts at zero, so a fresh layer samples the regular
# grid and must compute exactly what `conv2d` computes with its weights, for any stride,
# padding and dilation. We check three geometries on a batch of photograph patches with three
# channels each (the same patch, shifted), and also pass explicit zero offsets.

# %%
batch = np.stack([np.stack([photo[r + c:r + c + 40, 60 + c:100 + c] for c in range(3)])
                  for r in (40, 90, 140, 190)])  # (4, 3, 40, 40)
xb = Tensor(batch)
for stride, padding, dilation in ((1, 1, 1), (2, 1, 1), (1, 2, 2)):
    layer = nn.DeformConv2d(3, 5, 3, stride=stride, padding=padding, dilation=dilation,
                            generator=rng, dtype=np.float64)
    layer.record_sampling = True  # keep host copies of the positions each forward samples
    deformable = layer(xb)
    plain = F.conv2d(xb, layer.weight, layer.bias, stride, padding, dilation)
    zero = layer(xb, offset=np.zeros(deformable.shape[:1] + (18,) + deformable.shape[2:]))
    gap = max(np.abs(deformable.numpy() - plain.numpy()).max(),
              np.abs(zero.numpy() - plain.numpy()).max())
    print(f"stride {stride}, padding {padding}, dilation {dilation}: output {deformable.shape}, "
          f"max |DeformConv2d - conv2d| = {gap:.1e}")
    check(gap < 1e-12, f"zero offsets: DeformConv2d = conv2d (stride {stride}, dilation "
                       f"{dilation})")
    oy, ox = np.meshgrid(np.arange(deformable.shape[2]), np.arange(deformable.shape[3]),
                         indexing="ij")
    window_centres = np.stack([oy, ox], axis=-1) * stride - padding + dilation
    regular = window_centres[None] + dilation * unit_points[:, None, None, :]
    check(np.array_equal(layer.last_sampling_locations[0, 0], regular),
          "  and last_sampling_locations is the regular grid p0 + p_k")

# %% [markdown]
# ## 3. Learning the offsets of a transformation
#
# Now the offsets are *learned*. The experiment has a right answer, known exactly, so we can
# measure how close gradient descent gets to it.
#
# **The copy.** Let T be a 2×2 matrix with integer entries, and make a copy of the image x
# transformed by T, by bilinear interpolation:
#
#     x'(q) = x(T⁻¹ q)        (for every integer pixel q of the copy).
#
# Pixel T p0 of the copy shows the image at p0. We use
#
# * T = 2·I: the copy is the image enlarged twice;
# * T = [[2, -1], [1, 2]] = √5 · R(26.57°): the copy is rotated by atan(1/2) = 26.57°
#   counter-clockwise on screen and enlarged √5 ≈ 2.24 times.
#
# Integer entries keep T p0 on the copy's pixel grid, so nothing has to be interpolated twice.
#
# **The target.** A plain 3×3 convolution w on the copy, read at the pixel T p0 where p0 went:
#
#     y*(p0) = (w ⋆ x')(T p0) = Σ_k w_k x'(T p0 + p_k) = Σ_k w_k x(p0 + T⁻¹ p_k).
#
# **The true offsets.** The deformable layer on x, with the same weights w, computes
# Σ_k w_k x(p0 + p_k + Δp_k). The two are equal when
#
#     Δp_k = T⁻¹ p_k - p_k,
#
# the same for every p0: the plain filter on the enlarged, turned copy sees, in the original
# image, a grid shrunk by the enlargement and turned back. For T = 2I that is Δp_k = -p_k / 2;
# for the rotation, multiples of 1/5 of a pixel. All are shorter than a pixel (0.71 and
# 0.89 px at most), well inside the basin from which gradient descent found a shift in
# lesson 03.
#
# **What is learned.** Because the true offsets are the same at every pixel, the layer's
# offsets are one free parameter per kernel point, 9 × (dy, dx) = 18 numbers shared by all
# output pixels (broadcast to the (1, 18, H, W) layout and passed to the layer as `offset=`).
# Every pixel of the image then votes on the same 18 numbers, so the flat parts of the
# photograph, where a sample's position has no gradient, do not matter. The weights stay those
# of the plain convolution (we are learning *where* to look, not *what* to compute). The
# offsets start at zero, the regular grid, and are trained with Adam on the mean squared
# difference between the layer's output and y*; every gradient comes from `backward()`
# through `deform_conv2d`.

# %%
SIZE = 24 if quick() else 48
STEPS = 150 if quick() else 300
image = photo[100:100 + SIZE, 96:96 + SIZE]  # part of the face
transforms = {
    "scaled ×2": np.array([[2.0, 0.0], [0.0, 2.0]]),
    "rotated 26.6°, scaled ×√5": np.array([[2.0, -1.0], [1.0, 2.0]]),
}
pixels = np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij"),
                  axis=-1).reshape(-1, 2)  # every p0, integers


def transformed_copy(image, T):
    """x'(q) = x(T⁻¹ q) on every integer q the 3×3 windows around T p0 touch.

    Returns the copy and the integer position of its pixel [0, 0] in q coordinates."""
    moved = pixels @ T.T.astype(np.int64)
    first, last = moved.min(axis=0) - 1, moved.max(axis=0) + 1
    qy, qx = np.meshgrid(np.arange(first[0], last[0] + 1), np.arange(first[1], last[1] + 1),
                         indexing="ij")
    q = np.stack([qy, qx], axis=-1).astype(np.float64)
    read_at = q.reshape(1, -1, 2) @ np.linalg.inv(T).T
    copy = F.bilinear_sample(Tensor(image[None, None]), Tensor(read_at)).numpy()
    return copy.reshape(q.shape[:2]), first


def learn_offsets(name, T, layer):
    """Train 18 shared offsets so that layer(x) matches the plain conv on the copy x'.

    Returns the copy, the target, the offsets (9, 2) after each step, and the losses."""
    copy, first = transformed_copy(image, T)
    plain_on_copy = F.conv2d(Tensor(copy[None, None]), layer.weight, layer.bias).numpy()[0]
    at = pixels @ T.T.astype(np.int64) - first - 1  # index of T p0 in the padding-0 output
    target = plain_on_copy[:, at[:, 0], at[:, 1]].reshape(1, -1, SIZE, SIZE)

    true_offsets = unit_points @ np.linalg.inv(T).T - unit_points
    y_true = layer(Tensor(image[None, None]), offset=constant_offset_field(true_offsets, SIZE, SIZE))
    gap = np.abs(y_true.numpy() - target).max()
    print(f"  with the true offsets: max |DeformConv2d(x) - (w ⋆ x')(T p0)| = {gap:.1e}")
    check(gap < 1e-12, "  the true offsets reproduce the plain conv on the copy exactly")

    shared = Tensor(np.zeros((1, 18, 1, 1)), requires_grad=True)
    spread = Tensor(np.zeros((1, 18, SIZE, SIZE)))  # broadcasting shared + 0 copies it per pixel
    optimiser = minidcn.optim.Adam([shared], lr=0.05)
    x, y_star = Tensor(image[None, None]), Tensor(target)
    history, losses = [shared.numpy().reshape(9, 2).copy()], []
    for _ in tqdm(range(STEPS), desc=f"offsets, {name}", mininterval=1.0):
        optimiser.zero_grad()
        diff = layer(x, offset=shared + spread) - y_star
        loss = (diff * diff).mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        history.append(shared.numpy().reshape(9, 2).copy())
    return copy, target, np.array(history), np.array(losses), true_offsets


results = {}
for name, T in transforms.items():
    print(f"{name}: T = {T.tolist()}")
    layer = nn.DeformConv2d(1, 8, 3, padding=1, generator=np.random.default_rng(7),
                            dtype=np.float64)
    copy, target, history, losses, true_offsets = learn_offsets(name, T, layer)
    # one more forward with the final offsets, recording the locations it samples
    with minidcn.no_grad(), nn.recording_sampling(layer):
        layer(Tensor(image[None, None]), offset=constant_offset_field(history[-1], SIZE, SIZE))
    learned_points = layer.last_sampling_locations[0, 0]  # (9, H, W, 2): p0 + p_k + Δp_k
    learned = learned_points - pixels.reshape(1, SIZE, SIZE, 2) - unit_points[:, None, None, :]
    distance = np.linalg.norm(learned - true_offsets[:, None, None, :], axis=-1)
    start = np.linalg.norm(true_offsets, axis=-1)
    print("  true offsets   (dy, dx): " + " ".join(f"({a:+.3f},{b:+.3f})" for a, b in true_offsets))
    print("  learned offsets (dy, dx): " + " ".join(f"({a:+.3f},{b:+.3f})" for a, b in history[-1]))
    print(f"  loss {losses[0]:.2e} -> {losses[-1]:.2e} after {STEPS} steps")
    print(f"  |learned - true| over all {distance.size} sampling points: mean {distance.mean():.1e}"
          f" px, max {distance.max():.1e} px (at the start: mean {start.mean():.2f}, max "
          f"{start.max():.2f} px)")
    check(distance.max() < 0.01, f"{name}: every learned sampling point is within 0.01 px of the "
                                 "true one")
    check(losses[-1] < 1e-4 * losses[0], f"{name}: the loss fell by more than a factor 10⁴")
    results[name] = dict(T=T, copy=copy, history=history, losses=losses, true=true_offsets,
                         points=learned_points, distance=distance)

# %% [markdown]
# The figure, one row per transformation:
#
# * the copy x', and the same copy close up around T p0 for one output pixel p0, with the plain
#   convolution's regular 3×3 window there;
# * the image x close up around p0: the learned sampling points of that output pixel (read from
#   the layer's `last_sampling_locations`) over the true ones p0 + T⁻¹ p_k, and the path each
#   point took during training, from the regular grid;
# * the learned offsets against the true ones, kernel point by kernel point, as arrows from the
#   regular grid (to scale: one unit is one pixel);
# * the distance between learned and true offsets during training.

# %%
p0 = np.array([SIZE // 2, SIZE // 2])
fig, axes = plt.subplots(len(results), 5, figsize=(21, 4.3 * len(results)))
for row, (name, r) in zip(axes, results.items()):
    ax_copy, ax_window, ax_image, ax_kernel, ax_error = row
    copy_origin = (pixels @ r["T"].T.astype(np.int64)).min(axis=0) - 1
    window_centre = (r["T"] @ p0).astype(np.int64) - copy_origin  # T p0, in the copy's indices
    viz.show_image(ax_copy, r["copy"], f"copy x' ({name});\ngreen square: the close-up on its right",
                   vmin=0, vmax=1)
    viz.draw_box(ax_copy, [window_centre[1] - 5, window_centre[0] - 5, window_centre[1] + 6,
                           window_centre[0] + 6], color="limegreen")
    viz.show_image(ax_window, r["copy"], "x' close up (11×11 px):\nthe plain 3×3 window at T p0 (green)",
                   vmin=0, vmax=1)
    viz.draw_points(ax_window, window_centre + unit_points, color="limegreen", size=60,
                    edgecolors="black")
    ax_window.set_xlim(window_centre[1] - 5.5, window_centre[1] + 5.5)
    ax_window.set_ylim(window_centre[0] + 5.5, window_centre[0] - 5.5)

    viz.show_image(ax_image, image, "x close up (5×5 px around p0):\n"
                   "learned sampling points and their paths", vmin=0, vmax=1)
    paths = p0 + unit_points + r["history"]  # (steps + 1, 9, 2)
    for k in range(9):
        ax_image.plot(paths[:, k, 1], paths[:, k, 0], color="deepskyblue", lw=0.8)
    viz.draw_points(ax_image, p0 + unit_points, color="limegreen", size=14)
    viz.draw_points(ax_image, p0 + unit_points + r["true"], color="none", size=110,
                    edgecolors="white", linewidths=1.5)
    viz.draw_points(ax_image, r["points"][:, p0[0], p0[1]], color="navy", size=22)
    ax_image.set_xlim(p0[1] - 2.5, p0[1] + 2.5)
    ax_image.set_ylim(p0[0] + 2.5, p0[0] - 2.5)

    viz.draw_offsets(ax_kernel, unit_points, r["true"], color="lightgray", width=0.03,
                     label="true T⁻¹p_k - p_k")
    viz.draw_offsets(ax_kernel, unit_points, r["history"][-1], color="tab:red", width=0.008,
                     label="learned")
    viz.draw_points(ax_kernel, unit_points, color="limegreen", size=25, label="kernel point p_k")
    ax_kernel.set_xlim(-1.8, 1.8)
    ax_kernel.set_ylim(1.8, -1.8)
    ax_kernel.set_aspect("equal")
    ax_kernel.set_xlabel("x (px)")
    ax_kernel.set_ylabel("y (px)")
    ax_kernel.set_title("offset of each kernel point, arrows to scale;\n"
                        f"max error {r['distance'].max():.1e} px",
                        fontsize=9)
    ax_kernel.legend(fontsize=8, loc="lower right")

    errors = np.linalg.norm(r["history"] - r["true"], axis=-1)  # (steps + 1, 9)
    ax_error.semilogy(errors.mean(axis=1), label="mean over the 9 points")
    ax_error.semilogy(errors.max(axis=1), label="max")
    ax_error.set_xlabel("Adam step")
    ax_error.set_ylabel("|learned - true| (px)")
    ax_error.set_title("distance to the true offsets", fontsize=9)
    ax_error.legend(fontsize=8)
key = [plt.Line2D([], [], marker="o", ls="none", ms=4, mfc="limegreen", mec="limegreen",
                  label="regular grid p0 + p_k (where training starts)"),
       plt.Line2D([], [], color="deepskyblue", lw=1, label="the path of each point during training"),
       plt.Line2D([], [], marker="o", ls="none", ms=5, mfc="navy", mec="navy",
                  label="learned sampling point p0 + p_k + Δp_k"),
       plt.Line2D([], [], marker="o", ls="none", ms=10, mfc="none", mec="black",
                  label="true sampling point p0 + T⁻¹p_k (white ring)")]
fig.tight_layout()
fig.legend(handles=key, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=10,
           title="third column (x close up)", title_fontsize=10)
save_figure(fig, "04_learned_offsets.png")

# %% [markdown]
# ## What to take away
#
# * A deformable convolution is a convolution whose 3×3 grid moves: offset k moves kernel
#   point k, and `deform_conv2d` reads exactly p0 + p_k + Δp_k, with bilinear interpolation.
# * A scaling or a rotation of the window is one set of offsets, Δp_k = (A - I) p_k; an
#   integer scaling is a dilated convolution.
# * With zero offsets it is a plain convolution, which is how `DeformConv2d` starts.
# * Offsets are learned by gradient descent like any weight, because bilinear sampling has a
#   gradient with respect to position. Asked to reproduce a plain convolution on an enlarged
#   or turned copy, the layer found the offsets of the inverse transformation, to well under
#   a thousandth of a pixel (the distances printed above).
# * Lesson 05 adds a second learned quantity per point: how much it counts.

# %% [markdown]
# ## Down the layers
#
# The trained layer is three layers of code, each a plain call to the next: the module (`nn/`)
# holds the weights and calls the functional op; the functional op (`functional/`) checks the
# arguments and records the call for autograd; the kernel (`backends/`) does the arithmetic,
# forward and backward. Below, the last trained layer and its learned offsets are run once
# more, then the same numbers are recomputed one layer down at a time, with the layer's own
# parameters, and checked equal; each step prints the file to open next. The kernel the layer
# ran is the active backend's (compiled with numba); the reference backend computes the same
# numbers in plain NumPy, and its `deform_conv2d_backward` writes out the gradient that moved
# the offsets in section 3, grad_Δp_k = Σ_c u_c · dv_c/dp (its docstring is printed below).

# %%
import inspect

from minidcn.backends import kernels, reference
from minidcn.lessons_support import defined_at

x = Tensor(image[None, None], requires_grad=True)
offset = Tensor(constant_offset_field(history[-1], SIZE, SIZE), requires_grad=True)
layer.zero_grad()
y = layer(x, offset=offset)
grad_y = rng.standard_normal(y.shape)
y.backward(grad_y)  # L = Σ grad_y · y
print("1. module:     ", defined_at(nn.DeformConv2d.forward))
y_functional = F.deform_conv2d(x, offset, layer.weight, layer.bias, layer.stride, layer.padding,
                               layer.dilation)
check(np.array_equal(y_functional.numpy(), y.numpy()),
      "F.deform_conv2d with the layer's weight, bias and geometry gives the layer's output")
print("2. functional: ", defined_at(F.deform_conv2d))
inputs = x.numpy(), offset.numpy(), None, layer.weight.numpy()  # x, offset, mask, weight
geometry = layer.stride, layer.padding, layer.dilation, 1, 1  # ..., groups, offset_groups
autograd = x.grad, offset.grad, layer.weight.grad, layer.bias.grad
for ops in (kernels(), reference):
    print("3. kernel:     ", defined_at(ops.deform_conv2d_forward))
    print("               ", defined_at(ops.deform_conv2d_backward))
    y_kernel = ops.deform_conv2d_forward(*inputs, layer.bias.numpy(), *geometry)
    grad_x, grad_offset, _, grad_w, grad_b = ops.deform_conv2d_backward(grad_y, *inputs, *geometry)
    gap = max(np.abs(a - b.numpy()).max() / np.abs(b.numpy()).max()
              for a, b in zip((y_kernel, grad_x, grad_offset, grad_w, grad_b), (y, *autograd)))
    check(gap < 1e-12, f"{ops.__name__}: same output and gradients for x, offset, weight, bias "
                       f"(largest gap {gap:.0e} of the largest value)")
print(inspect.getdoc(reference.deform_conv2d_backward))
