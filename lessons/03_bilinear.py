# %% [markdown]
# # 03 bilinear interpolation G(q, p): reading an image between its pixels
#
# A deformable convolution reads its input at p0 + p_k + Δp_k, and the offsets Δp_k are real
# numbers. An image only has values at integer pixels, so something must say what the image
# is *between* them. DCN uses bilinear interpolation,
#
#     x(p) = Σ_q G(q, p) x(q),    G(q, p) = g(q_y, p_y) · g(q_x, p_x),    g(a, b) = max(0, 1 - |a - b|),
#
# and the offsets can be learned only because x(p) has a gradient with respect to p. This
# lesson:
#
# 1. draws the kernel g as a surface and G(q, p) over a neighbourhood of pixels;
# 2. samples a real image at fractional points;
# 3. computes the gradient of the sampled value with respect to the position, with autograd,
#    as a vector field over an image, and uses it to learn a shift by gradient descent;
# 4. shows what happens at integer coordinates, where g has a kink.
#
# Run it with `minidcn lesson 3` or `python lessons/03_bilinear.py`. Coordinates are
# `(y, x)` pixel indices: row 0 and column 0 are the centres of the first pixels.

# %%
import matplotlib.cbook as cbook
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np

import minidcn
from minidcn import Tensor, data, viz
from minidcn import functional as F
from minidcn.lessons_support import check, quick, save_figure

rng = np.random.default_rng(3)

# %% [markdown]
# ## 1. The kernel
#
# g(a, b) is a tent: 1 where a = b, falling linearly to 0 one pixel away. G(q, p) multiplies
# two tents, one per axis, so as a function of p it is a pyramid on the pixel q (left below).
# For a given p, only the four pixels around it, {⌊p_y⌋, ⌊p_y⌋ + 1} × {⌊p_x⌋, ⌊p_x⌋ + 1},
# have a non-zero weight (right below, for a p drawn at random). The weights are the areas of the
# four rectangles that p cuts the pixel square into, taken from the opposite corner.
#
# `minidcn.functional.bilinear_kernel(q, p)` evaluates G itself, for any arrays of q and p
# that broadcast.

# %%
grid_1d = np.linspace(-1.6, 1.6, 81)
py, px = np.meshgrid(grid_1d, grid_1d, indexing="ij")
pyramid = F.bilinear_kernel(np.zeros(2), np.stack([py, px], axis=-1))  # G((0, 0), p) for every p

p = rng.uniform(0.0, 3.0, size=2)  # one random position inside the 4x4 neighbourhood below
neighbourhood = np.stack(np.meshgrid(np.arange(-1, 5), np.arange(-1, 5), indexing="ij"), axis=-1)
weights = F.bilinear_kernel(neighbourhood, p)
print("p =", np.round(p, 3))
print("G(q, p) for q_y = -1..4 (rows), q_x = -1..4 (columns):")
print(np.round(weights, 3))

corner = np.floor(p).astype(int)
nonzero = np.argwhere(weights > 0) - 1  # back to q coordinates
check(len(nonzero) == 4 and set(map(tuple, nonzero)) == {tuple(corner + d) for d in np.ndindex(2, 2)},
      "exactly the four integer neighbours of p have a non-zero weight")
check(abs(weights.sum() - 1) < 1e-15, "the weights sum to 1")
centroid = (weights[..., None] * neighbourhood).sum(axis=(0, 1))
check(np.allclose(centroid, p, atol=1e-14),
      "Σ_q G(q, p) q = p: interpolating the coordinates gives p back")
check(pyramid.max() == 1.0 and pyramid[np.abs(py) + np.abs(px) > 2].max() == 0.0 and pyramid.min() == 0.0,
      "G((0, 0), p) peaks at 1 on the pixel and vanishes beyond one pixel on each axis")

# many random points, not just the one drawn: the same three facts
many = rng.uniform(-0.5, 3.5, size=(500, 2))
w_many = F.bilinear_kernel(neighbourhood[:, :, None, :], many)  # (6, 6, 500)
check(np.allclose(w_many.sum(axis=(0, 1)), 1) and ((w_many > 0).sum(axis=(0, 1)) <= 4).all(),
      "for 500 random points: at most four non-zero weights, summing to 1")
check(np.allclose(np.einsum("yxp,yxk->pk", w_many, neighbourhood), many),
      "for 500 random points: Σ_q G(q, p) q = p")

# %%
fig = plt.figure(figsize=(12, 4.8))
ax3d = fig.add_subplot(1, 2, 1, projection="3d")
ax3d.plot_surface(px, py, pyramid, cmap="viridis", linewidth=0, antialiased=True, vmin=0, vmax=1)
ax3d.set_xlabel("p_x (pixels)")
ax3d.set_ylabel("p_y (pixels)")
ax3d.set_zlabel("weight G((0,0), p)")
ax3d.set_xticks([-1, 0, 1])
ax3d.set_yticks([-1, 0, 1])
ax3d.set_title("the weight of pixel q = (0, 0) for every position p:\n"
               "G((0,0), p) = g(0, p_y) g(0, p_x), a pyramid of base 2×2 pixels", fontsize=10)
ax = fig.add_subplot(1, 2, 2)
shown = ax.imshow(weights, cmap="viridis", extent=(-1.5, 4.5, 4.5, -1.5), vmin=0, vmax=1)
for (r, c), value in np.ndenumerate(weights):
    ax.text(c - 1, r - 1, f"{value:.2f}", ha="center", va="center", fontsize=8,
            color="black" if value > 0.5 else "white")
viz.draw_points(ax, p, color="tab:red", size=60, marker="x")
ax.set_xticks(range(-1, 5))
ax.set_yticks(range(-1, 5))
ax.set_xlabel("q_x, pixel column")
ax.set_ylabel("q_y, pixel row")
ax.set_title(f"the weight of every pixel q for one random p (red ×),\n"
             f"p = (y, x) = ({p[0]:.2f}, {p[1]:.2f}); cell colour and number: G(q, p)", fontsize=10)
fig.colorbar(shown, ax=ax, fraction=0.046, label="weight G(q, p)")
fig.subplots_adjust(wspace=0.35)
save_figure(fig, "03_bilinear_kernel.png")

# %% [markdown]
# ## 2. Sampling a real image at fractional points
#
# matplotlib ships a photograph of Grace Hopper in its sample data, so we need no download.
# We make it gray and average 4×4 blocks, giving a 150×128 image in [0, 1].
#
# `minidcn.functional.bilinear_sample(x, points)` reads a (B, C, H, W) map at (B, P, 2)
# positions. At integer positions it returns the pixels themselves; in between, the G-weighted
# mix of the four neighbours. Outside the image it reads zeros, with one rule at the border: a
# point contributes only when -1 < y < H and -1 < x < W, and inside that band a missing
# neighbour counts as 0. So y = -0.5 gives half of row 0.

# %%
with cbook.get_sample_data("grace_hopper.jpg") as file:
    rgb = mpimg.imread(file, format="jpg")
gray = rgb.astype(np.float64).mean(axis=2) / 255.0
photo = gray.reshape(150, 4, 128, 4).mean(axis=(1, 3))  # (150, 128)
height, width = photo.shape
photo_t = Tensor(photo[None, None])  # (1, 1, H, W), float64


def sample(image, points):
    """image (H, W) Tensor-ready array sampled at points (..., 2) -> values (...)."""
    pts = np.asarray(points, dtype=np.float64)
    out = F.bilinear_sample(Tensor(image[None, None]), Tensor(pts.reshape(1, -1, 2)))
    return out.numpy().reshape(pts.shape[:-1])


integer_points = np.stack([rng.integers(0, height, 200), rng.integers(0, width, 200)], axis=-1)
check(np.array_equal(sample(photo, integer_points), photo[integer_points[:, 0], integer_points[:, 1]]),
      "at 200 random integer points the samples are exactly the pixels")

fractional = np.stack([rng.uniform(0, height - 1, 200), rng.uniform(0, width - 1, 200)], axis=-1)
y0, x0 = np.floor(fractional).astype(int).T
ly, lx = (fractional - np.floor(fractional)).T
by_hand = ((1 - ly) * (1 - lx) * photo[y0, x0] + (1 - ly) * lx * photo[y0, x0 + 1]
           + ly * (1 - lx) * photo[y0 + 1, x0] + ly * lx * photo[y0 + 1, x0 + 1])
error = np.abs(sample(photo, fractional) - by_hand).max()
print(f"200 random fractional points: max |bilinear_sample - four-neighbour formula| = {error:.1e}")
check(error < 1e-14, "at fractional points bilinear_sample is the four-neighbour formula")

columns = rng.integers(0, width, 5)
edge = sample(photo, np.stack([np.full(5, -0.5), columns], axis=-1))
beyond = sample(photo, np.stack([np.full(5, -1.0), columns], axis=-1))
check(np.allclose(edge, 0.5 * photo[0, columns]) and not beyond.any(),
      "y = -0.5 reads half of row 0 (zero padding); y = -1 reads 0")

# %% [markdown]
# Zooming in on an eye: 12×12 pixels, sampled on a grid 8 times finer. The fine grid is a
# stated transformation (a scaling), so each sampled point is where the zoom puts it. Nearest
# neighbour shows the pixels as blocks; bilinear sampling fills each square between four pixel
# centres with the bilinear surface through them.

# %%
crop_y, crop_x, crop = 52, 46, 12
zoom = 8
fine = np.arange(crop * zoom) / zoom - 0.5 + 0.5 / zoom  # sub-pixel positions covering the crop
fine_y, fine_x = np.meshgrid(crop_y + fine, crop_x + fine, indexing="ij")
bilinear_zoom = sample(photo, np.stack([fine_y, fine_x], axis=-1))
nearest_zoom = photo[np.clip(np.round(fine_y), 0, height - 1).astype(int),
                     np.clip(np.round(fine_x), 0, width - 1).astype(int)]
corners = [photo[np.clip(np.floor(fine_y) + dy, 0, height - 1).astype(int),
                  np.clip(np.floor(fine_x) + dx, 0, width - 1).astype(int)] for dy, dx in np.ndindex(2, 2)]
lowest, highest = np.min(corners, axis=0), np.max(corners, axis=0)
check(((lowest - 1e-12 <= bilinear_zoom) & (bilinear_zoom <= highest + 1e-12)).all(),
      f"each of the {bilinear_zoom.size} zoomed samples lies between its four neighbours (a convex mix)")

fig, axes = plt.subplots(1, 3, figsize=(12, 4.3), layout="constrained")
viz.show_image(axes[0], photo, f"the image ({height}×{width} px); red: the {crop}×{crop} px crop",
               vmin=0, vmax=1)
viz.draw_box(axes[0], [crop_x, crop_y, crop_x + crop, crop_y + crop], color="tab:red")
viz.show_image(axes[1], nearest_zoom, f"the crop, nearest pixel, {zoom} samples per pixel",
               vmin=0, vmax=1)
shown = viz.show_image(axes[2], bilinear_zoom, f"the crop, bilinear_sample, {zoom} samples per pixel",
                       vmin=0, vmax=1)
fig.colorbar(shown, ax=axes, fraction=0.02, label="grey value (0 black, 1 white)")
save_figure(fig, "03_fractional_sampling.png")

# %% [markdown]
# ## 3. The gradient with respect to the position
#
# Inside one pixel square the sampled value is a bilinear function of p, so it has a gradient,
#
#     ∂x(p)/∂p_y = (1 - l_x)(x[y0+1, x0] - x[y0, x0]) + l_x (x[y0+1, x0+1] - x[y0, x0+1]),
#
# with l_x = p_x - x0, and the same form for p_x. It is the image's local slope, blended
# across the square. Nobody writes it by hand in a network: `bilinear_sample` is an op of the
# autograd engine, so `backward()` hands `points.grad` back like any other gradient.
#
# Below, on a glyph from `minidcn.data` and on the photograph: points at every pixel-square
# centre (p + 0.5, away from the kinks of section 4), the value summed, `backward()`, and the
# gradient drawn as an arrow at each point (in pixels, times the factor in the title; the key
# under each panel gives the length of one round gradient). The
# arrows point uphill: across the glyph's strokes toward the ink, across the face toward the
# light.

# %%
def position_gradient(image, points):
    """Autograd: d sample(image, p) / dp at each point; returns (values, gradients)."""
    pts = Tensor(np.asarray(points, np.float64).reshape(1, -1, 2), requires_grad=True)
    values = F.bilinear_sample(Tensor(image[None, None].astype(np.float64)), pts)
    values.sum().backward()  # each value depends on its own point only
    return values.numpy().reshape(points.shape[:-1]), pts.grad.numpy().reshape(points.shape)


glyph = data.glyphs(1, "mild", seed=11).images[0, 0].astype(np.float64)
glyph_points = np.stack(np.meshgrid(np.arange(27) + 0.5, np.arange(27) + 0.5, indexing="ij"), axis=-1)
_, glyph_grad = position_gradient(glyph, glyph_points)

patch = photo[40:76, 36:72]
patch_points = np.stack(np.meshgrid(np.arange(0, 35, 1.0) + 0.5, np.arange(0, 35, 1.0) + 0.5,
                                    indexing="ij"), axis=-1)
_, patch_grad = position_gradient(patch, patch_points)

# Check against central finite differences. At these points no coordinate is near an integer,
# so the value is smooth within ±eps and the two must agree to round-off.
eps = 1e-6
for name, image, points, grad in (("glyph", glyph, glyph_points, glyph_grad),
                                  ("photo", patch, patch_points, patch_grad)):
    numeric = np.stack([(sample(image, points + eps * e) - sample(image, points - eps * e)) / (2 * eps)
                        for e in np.eye(2)], axis=-1)
    error = np.abs(numeric - grad).max()
    n_points = points.shape[0] * points.shape[1]
    print(f"{name}: {n_points} points, max |autograd - central difference| = {error:.1e}")
    check(error < 1e-8, f"{name}: the autograd position gradient matches central finite differences")

# uphill: a small step along the gradient raises the sampled value wherever the gradient is not 0
steep = np.linalg.norm(glyph_grad, axis=-1) > 0.05
direction = glyph_grad / np.linalg.norm(glyph_grad, axis=-1, keepdims=True).clip(1e-12)
stepped = sample(glyph, glyph_points + 0.01 * direction)
check((stepped[steep] > sample(glyph, glyph_points)[steep]).all(),
      f"a step of 0.01 px along the gradient raises the value at all {steep.sum()} steep points")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 6.6), layout="constrained")
panels = ((axes[0], glyph, glyph_points, glyph_grad, "glyph from minidcn.data (27×27 px)"),
          (axes[1], patch, patch_points, patch_grad, "photograph, 36×36 px crop"))
for ax, image, points, grad, title in panels:
    # one stated factor per panel, so that the 99th-percentile arrow is 1.5 pixels long
    length99 = np.percentile(np.linalg.norm(grad, axis=-1), 99)
    factor = 1.5 / length99
    shown = viz.show_image(ax, image, f"{title}\narrow at each pixel-square centre p: "
                           f"∂x(p)/∂p by autograd, drawn × {factor:.1f} (a dot: zero gradient)",
                           vmin=0, vmax=1)
    arrows = viz.draw_offsets(ax, points, factor * grad, color="tab:orange", width=0.004)
    reference = float(f"{length99:.1g}")  # a round gradient near the longest arrows
    strip = image.shape[0] - 0.5 + 2.5  # a white strip under the image holds the key
    ax.set_ylim(strip, -0.5)
    ax.quiverkey(arrows, 2.0, strip - 1.25, factor * reference, f"key: a gradient of {reference:g} "
                 f"grey value per pixel, drawn {factor * reference:.1f} px long",
                 labelpos="E", coordinates="data", fontproperties={"size": 9})
fig.colorbar(shown, ax=axes, fraction=0.02, label="grey value x (0 black, 1 white)")
save_figure(fig, "03_position_gradient.png")

# %% [markdown]
# ### Why offsets can be learned
#
# That gradient is everything a deformable layer needs. Take the simplest offset there is: one
# shift Δp shared by every point of a grid. The target is the photograph read at the grid moved
# by a stated Δp* = (1.3, -0.7) pixels; we start from Δp = 0 and minimise the mean squared
# difference
#
#     L(Δp) = mean_p (x(p + Δp) - x(p + Δp*))²
#
# by plain gradient descent, every gradient coming from `backward()` through `bilinear_sample`.
# The loss, evaluated on a grid of shifts, has a basin around Δp* a couple of pixels wide (the
# image varies on that scale), with creases along integer shifts where g has its kinks. Inside
# the basin the descent walks to Δp* itself.

# %%
true_shift = np.array([1.3, -0.7])
grid = np.stack(np.meshgrid(np.arange(30, 90, dtype=np.float64), np.arange(34, 94, dtype=np.float64),
                            indexing="ij"), axis=-1).reshape(1, -1, 2)
target = F.bilinear_sample(photo_t, Tensor(grid + true_shift)).detach()


def shift_loss(shift):
    diff = F.bilinear_sample(photo_t, Tensor(grid) + shift.reshape(1, 1, 2)) - target
    return (diff * diff).mean()


shift = Tensor(np.zeros(2), requires_grad=True)
optimiser = minidcn.optim.SGD([shift], lr=50.0)
path, losses = [shift.numpy().copy()], []
steps = 40 if quick() else 80
for step in range(steps):
    optimiser.zero_grad()
    loss = shift_loss(shift)
    loss.backward()
    optimiser.step()
    losses.append(loss.item())
    path.append(shift.numpy().copy())
path = np.array(path)
print(f"after {steps} steps: Δp = {np.round(shift.numpy(), 6)}, true Δp* = {true_shift}, "
      f"loss {losses[-1]:.2e}")
print("loss every 10 steps:", " ".join(f"{v:.1e}" for v in losses[::10]))
check(np.abs(shift.numpy() - true_shift).max() < 1e-4,
      "gradient descent through bilinear_sample recovers the shift to 1e-4 px")
check(losses[-1] < 1e-3 * losses[0], "the loss fell by more than a factor 1000")

# the landscape: every shift of a grid, all sampled in one call
n_side = 21 if quick() else 61
shifts = np.stack(np.meshgrid(np.linspace(-1.5, 3.5, n_side), np.linspace(-3.2, 1.8, n_side),
                              indexing="ij"), axis=-1)
every_shifted_grid = grid[:, None, :, :] + shifts.reshape(1, -1, 1, 2)  # (1, shifts, P, 2)
with minidcn.no_grad():
    moved = F.bilinear_sample(photo_t, Tensor(every_shifted_grid.reshape(1, -1, 2)))
landscape = ((moved.numpy().reshape(-1, grid.shape[1]) - target.numpy().reshape(1, -1)) ** 2).mean(axis=1)
landscape = landscape.reshape(n_side, n_side)
best = shifts.reshape(-1, 2)[landscape.argmin()]
print(f"landscape on a {n_side}x{n_side} grid: lowest at {best}, loss {landscape.min():.2e}")
check(np.abs(best - true_shift).max() <= 5.0 / (n_side - 1) + 1e-9,
      "the landscape's lowest grid point is next to Δp*")

fig, (ax_land, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.5))
contours = ax_land.contourf(shifts[..., 1], shifts[..., 0], landscape, levels=30, cmap="viridis")
ax_land.plot(path[:, 1], path[:, 0], ".-", color="white", ms=3, lw=1,
             label="gradient descent from Δp = 0 (a dot per step)")
ax_land.plot(true_shift[1], true_shift[0], "r*", ms=14, label="Δp* (the stated shift)")
ax_land.set_xlabel("Δp_x (pixels)")
ax_land.set_ylabel("Δp_y (pixels)")
ax_land.invert_yaxis()
ax_land.set_title("L(Δp) over shifts Δp, and the path of gradient descent", fontsize=10)
ax_land.legend(fontsize=8, loc="lower left", facecolor="0.45", labelcolor="white")
fig.colorbar(contours, ax=ax_land, fraction=0.046, label="L(Δp), mean squared difference (grey value²)")
ax_loss.semilogy(losses)
ax_loss.set_xlabel("gradient-descent step")
ax_loss.set_ylabel("L, mean squared difference (grey value²)")
ax_loss.set_title(f"L during descent: {losses[0]:.1e} → {losses[-1]:.1e}", fontsize=10)
fig.tight_layout()
save_figure(fig, "03_learning_a_shift.png")

# %% [markdown]
# ## 4. At integer coordinates: one-sided, toward +1
#
# g(a, b) = max(0, 1 - |a - b|) has a corner at b = a, so along a pixel column the sampled value
# is a broken line with corners at the pixel centres, and at a pixel centre its derivative does
# not exist. An implementation must still return something. minidcn, like torchvision, uses
# y0 = floor(y) and the formula of section 3, so at an integer y it returns the slope of the
# segment *above*, toward y + 1:
#
#     ∂x/∂y at y = y0 (integer x)  =  x[y0 + 1, x] - x[y0, x]        (forward difference),
#
# while just below, at y0 - ε, it is the slope of the segment below, x[y0, x] - x[y0 - 1, x].
# A central finite difference straddles the corner and returns the average of the two, which
# matches neither. That is why gradient tests draw positions away from integers, and why this
# convention gets a test of its own.
#
# We check it at every interior pixel of the photograph's crop, not at one chosen point.

# %%
rows, cols = np.meshgrid(np.arange(41, 75), np.arange(37, 71), indexing="ij")
at_pixels = np.stack([rows, cols], axis=-1).astype(np.float64)
_, grad_at = position_gradient(photo, at_pixels)
_, grad_below = position_gradient(photo, at_pixels - np.array([1e-9, 0.0]))
forward = photo[rows + 1, cols] - photo[rows, cols]
backward = photo[rows, cols] - photo[rows - 1, cols]
central = (sample(photo, at_pixels + [eps, 0]) - sample(photo, at_pixels - [eps, 0])) / (2 * eps)
gaps = {
    "autograd at y0      - forward difference": np.abs(grad_at[..., 0] - forward).max(),
    "autograd at y0-1e-9 - backward difference": np.abs(grad_below[..., 0] - backward).max(),
    "central difference  - (forward + backward)/2": np.abs(central - (forward + backward) / 2).max(),
    "autograd at y0      - central difference": np.abs(grad_at[..., 0] - central).max(),
}
print(f"{rows.size} pixel centres, largest gap over all of them:")
for what, gap in gaps.items():
    print(f"  max |{what}| = {gap:.1e}")
check(gaps["autograd at y0      - forward difference"] < 1e-15,
      "at integer y, ∂x/∂y is the forward difference x[y0+1] - x[y0]")
check(gaps["autograd at y0-1e-9 - backward difference"] < 1e-15,
      "just below, it is the backward difference")
check(gaps["central difference  - (forward + backward)/2"] < 1e-8,
      "a central difference gives their average")
check(gaps["autograd at y0      - central difference"] > 1e-2,
      "so at integers autograd and central differences disagree")

# %% [markdown]
# One of those pixels drawn: the one where the two one-sided slopes differ most (a stated rule,
# so the picture shows the largest corner in the crop). The dots are `bilinear_sample` along the
# column; the lines have the slopes autograd returns at y0 and just below it, and the slope of
# the central difference.

# %%
worst = np.unravel_index(np.abs(forward - backward).argmax(), forward.shape)
y_star, x_star = rows[worst], cols[worst]
ys = np.linspace(y_star - 1.5, y_star + 1.5, 61)
profile = sample(photo, np.stack([ys, np.full_like(ys, x_star)], axis=-1))
v_star = photo[y_star, x_star]
fig, ax = plt.subplots(figsize=(7, 4.3))
ax.plot(ys, profile, "k.", ms=4, label=f"x(y, {x_star}) by bilinear_sample")
lines = ((grad_at[worst][0], "tab:red", (0.0, 0.9), "autograd at y0: forward slope"),
         (grad_below[worst][0], "tab:blue", (-0.9, 0.0), "autograd at y0 - 1e-9: backward slope"),
         (central[worst], "tab:green", (-0.9, 0.9), "central difference"))
for slope, colour, side, label in lines:
    segment = np.array(side)
    ax.plot(y_star + segment, v_star + slope * segment, color=colour, lw=2,
            label=f"{label} ({slope:+.3f} grey value per px)")
ax.axvline(y_star, color="gray", lw=0.5, label=f"the pixel centre y0 = {y_star}")
ax.set_xlabel(f"y (pixels), along column x = {x_star}")
ax.set_ylabel("sampled grey value (0 black, 1 white)")
ax.set_title(f"the corner at the pixel centre y0 = {y_star}")
ax.legend(fontsize=8)
save_figure(fig, "03_integer_convention.png")

# %% [markdown]
# ## What to take away
#
# * G(q, p) spreads a point over its four neighbouring pixels with weights that sum to 1 and
#   reproduce p; sampling is exact on pixels and a convex mix in between.
# * The sampled value has a gradient with respect to the position, the image's local slope, and
#   autograd delivers it through `bilinear_sample`: that is what lets gradient descent move
#   sampling points, and so learn offsets (lesson 04).
# * At integer coordinates the gradient is one-sided, toward +1, by convention.
