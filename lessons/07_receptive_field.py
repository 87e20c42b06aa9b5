# %% [markdown]
# # 07 receptive field of stacked deformable layers: the DCN paper's Figure 5
#
# One deformable layer reads 9 points. Stack three, and the unit on top reads 9 points of
# the layer below, each of which read 9 points of the layer below that: 9³ = 729 sampling
# locations, each moved by offsets the network computed from the image. The DCN paper draws
# them for a unit on the background, on a small object and on a large object (its Figure 5),
# and reports that the spread of the points adapts to the object's size. This lesson:
#
# 1. trains a small network whose last three layers are 3×3 deformable convolutions, on
#    scenes with one digit of varied size on a textured background (`data.scenes`);
# 2. back-tracks the 729 sampling locations of one unit through the three layers, and
#    checks the procedure on the regular grid, where the answer is known exactly;
# 3. draws Figure 5 from the trained model's own offsets;
# 4. measures the spread of the 729 points over the whole test set, for units on small and
#    on large objects, and reports the ratio, whatever it turns out to be.
#
# Run it with `minidcn lesson 7` or `python lessons/07_receptive_field.py` (`--quick` or
# `MINIDCN_QUICK=1` for a short run). Lesson 06's DCN is a classifier of one centred digit
# with two deformable layers on a 7×7 map, too small a map for this question, so this
# lesson trains its own model; it runs on its own.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

from minidcn import Tensor, data, nn, no_grad, optim, viz
from minidcn import functional as F
from minidcn.lessons_support import check, quick, save_figure

QUICK = quick()
IMAGE_SIZE = 48
OBJECT_SIZE = (6.0, 40.0)  # the digit's longer side, log-uniform, in pixels
STRIDE = 4  # two 2x2 max-pools before the deformable layers
MAP_SIZE = IMAGE_SIZE // STRIDE  # 12 x 12 units in each deformable layer
N_TRAIN = 800 if QUICK else 3000
N_TEST = 200 if QUICK else 600
EPOCHS = 3 if QUICK else 5
BATCH = 16
LEARNING_RATE = 2e-3
SEED = 7
print(f"{'quick' if QUICK else 'full'} run: {N_TRAIN} training scenes, {EPOCHS} epochs, "
      f"{N_TEST} test scenes")

# %% [markdown]
# ## 1. Scenes with objects of varied size, and a task that needs the whole object
#
# `data.scenes` puts one digit, whose longer side is drawn log-uniformly between 6 and 40
# pixels, anywhere in a 48×48 image over smooth random clutter, and returns its box.
#
# The network must label every unit of its 12×12 output map: a unit whose 4×4 pixel block
# has its centre inside the digit's box must name the digit (classes 1..10), every other
# unit says background (class 0). A unit on a large digit sees only a piece of it through a
# regular 3-layer stack of 3×3 filters, so naming the digit rewards looking further; a unit
# on a small digit has all it needs close by. Objects cover few units, so the loss weighs
# the object units and the background units of each batch equally (each half of the loss).

# %%
train = data.scenes(N_TRAIN, image_size=IMAGE_SIZE, object_size=OBJECT_SIZE, seed=SEED)
test = data.scenes(N_TEST, image_size=IMAGE_SIZE, object_size=OBJECT_SIZE, seed=SEED + 1)
UNIT_CENTRES = STRIDE * np.arange(MAP_SIZE) + (STRIDE - 1) / 2  # pixel (y or x) of unit u


def unit_labels(scenes):
    """(N, 12, 12) int64: digit + 1 for units whose block centre lies in the box, else 0.

    Boxes are [x1, y1, x2, y2] with pixel j spanning [j, j + 1), so pixel centre c sits at
    box coordinate c + 0.5."""
    at = UNIT_CENTRES + 0.5
    x1, y1, x2, y2 = (scenes.boxes[:, k, None, None] for k in range(4))
    inside = ((y1 <= at[:, None]) & (at[:, None] <= y2) & (x1 <= at[None, :]) & (at[None, :] <= x2))
    return np.where(inside, scenes.labels[:, None, None] + 1, 0).astype(np.int64)


train_targets, test_targets = unit_labels(train), unit_labels(test)
PIXEL_MEAN, PIXEL_STD = float(train.images.mean()), float(train.images.std())
print(f"object sizes {train.sizes.min():.1f}..{train.sizes.max():.1f} px; "
      f"object units: {(train_targets > 0).mean():.1%} of all units; "
      f"pixels: mean {PIXEL_MEAN:.3f}, standard deviation {PIXEL_STD:.3f}")
check((train_targets > 0).any(axis=(1, 2)).mean() > 0.9,
      "almost every scene has at least one object unit")


def network_input(images):
    """Images in [0, 1] -> the standardised Tensor the network reads."""
    return Tensor((images - PIXEL_MEAN) / PIXEL_STD)


fig, axes = plt.subplots(2, 6, figsize=(11, 4))
for col in range(6):
    viz.show_image(axes[0, col], test.images[col],
                   title=f"'{test.labels[col]}', {test.sizes[col]:.0f} px")
    viz.draw_box(axes[0, col], test.boxes[col], color="tab:orange", linewidth=1)
    viz.show_image(axes[1, col], test_targets[col], cmap="tab20", vmin=0, vmax=19,
                   title="target map (12×12)")
fig.suptitle("test scenes (top) and the units' targets: background or the digit (bottom)")
save_figure(fig, "07_data.png")

# %% [markdown]
# ## 2. The network: a plain stem, then three stacked 3×3 deformable layers
#
#     conv 3×3, 1→8 · ReLU · max-pool 2          48×48 → 24×24
#     conv 3×3, 8→16 · ReLU · max-pool 2         24×24 → 12×12
#     3 × [DeformConv2d 3×3, 32 channels · ReLU] 12×12
#     conv 1×1, 32→11                            one score per class and unit
#
# The deformable layers have stride 1 and padding 1, like the paper's conv5 stage. Their
# offset predictors start at zero and here learn at the network's full learning rate (the
# DCN paper's default multiplier is 1; lesson 06 used 0.1): this short run is far from the
# paper's, and the offsets are what we want to study.

# %%
def build_network(seed: int) -> nn.Sequential:
    def init(layer_index):
        return np.random.default_rng([seed, layer_index])

    deformable = [nn.DeformConv2d(16 if i == 0 else 32, 32, 3, padding=1, offset_lr_mult=1.0,
                                  generator=init(2 + i)) for i in range(3)]
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, generator=init(0)), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, generator=init(1)), nn.ReLU(), nn.MaxPool2d(2),
        deformable[0], nn.ReLU(), deformable[1], nn.ReLU(), deformable[2], nn.ReLU(),
        nn.Conv2d(32, 11, 1, generator=init(5)),
    )


model = build_network(SEED)
deform_layers = [m for m in model if isinstance(m, nn.DeformConv2d)]
print(model)
check(len(deform_layers) == 3, "three stacked deformable layers")


def balanced_loss(scores, targets):
    """Cross-entropy per unit, weighted so that object units and background units each make
    half of the batch's loss."""
    per_unit = F.cross_entropy(scores, targets, reduction="none")  # (B, 12, 12)
    on_object = targets > 0
    weights = np.where(on_object, 0.5 / max(on_object.sum(), 1),
                       0.5 / max((~on_object).sum(), 1)).astype(np.float32)
    return (per_unit * Tensor(weights)).sum()


def predict(images, batch=100):
    """The predicted class of every unit, (N, 12, 12)."""
    with no_grad():
        return np.concatenate([model(network_input(images[i:i + batch])).numpy().argmax(axis=1)
                               for i in range(0, len(images), batch)])


def unit_accuracy(images, targets):
    predicted = predict(images)
    on_object = targets > 0
    return (float((predicted[on_object] == targets[on_object]).mean()),
            float((predicted[~on_object] == 0).mean()))


optimiser = optim.Adam(optim.param_groups(model, lr=LEARNING_RATE), lr=LEARNING_RATE)
base_rates = [group["lr"] for group in optimiser.param_groups]
order = np.random.default_rng(SEED)
steps_per_epoch = N_TRAIN // BATCH
step, total_steps = 0, EPOCHS * steps_per_epoch
for epoch in range(EPOCHS):
    permutation = order.permutation(N_TRAIN)
    losses = []
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{EPOCHS}", leave=False,
               mininterval=1.0)
    for b in bar:
        for group, rate in zip(optimiser.param_groups, base_rates):  # cosine schedule
            group["lr"] = rate * 0.5 * (1 + math.cos(math.pi * step / total_steps))
        index = permutation[b * BATCH:(b + 1) * BATCH]
        loss = balanced_loss(model(network_input(train.images[index])), train_targets[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        step += 1
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    on_object, on_background = unit_accuracy(test.images, test_targets)
    print(f"epoch {epoch + 1}: mean training loss {np.mean(losses):.3f}; test accuracy on "
          f"object units {on_object:.3f}, on background units {on_background:.3f}")
check(np.mean(losses) < 0.7 * math.log(11),
      f"the training loss fell to {np.mean(losses):.3f}, below 0.7 ln 11 (a uniform guess)")
check(on_background > 0.8, f"the network says background on {on_background:.1%} of the "
                           "background units")
if QUICK:
    print(f"(quick run: it names the digit on only {on_object:.1%} of the object units, chance "
          "being 10%; the full run learns the digits)")
else:
    check(on_object > 0.5, f"it names the digit on {on_object:.1%} of the object units "
                           "(chance: 10%)")

# %% [markdown]
# ## 3. Back-tracking the sampling locations through three layers
#
# Each deformable layer here has stride 1 and padding 1, so its unit q (a position of its
# output map) reads its input at
#
#     q + p_k + Δp_k(q),    p_k ∈ {-1, 0, 1}²,  k = 0..8,
#
# and its input is the output map of the layer below. Start from one unit of the top layer:
# its 9 points are positions in the middle layer's map, usually between units. There we need
# the middle layer's offsets at a **fractional** position; we take them by bilinear
# interpolation of the offsets of the four surrounding units, with the same G(q, p) the layer
# uses to read its input (`functional.bilinear_sample`, lesson 03). A position outside the
# map reads the offsets at the nearest point of the map's edge (we clamp the position into
# the map for that lookup only; the point itself stays where it is). Each of the 9 points becomes
# 9 points of the bottom layer's map, and each of those 9 more: 729 points in the
# coordinates of the bottom deformable layer's input, the 12×12 stem output.
# Two 2×2 max-pools lie below, so stem unit u covers pixels 4u .. 4u + 3 and we draw it at
# 4u + 1.5.
#
# The offsets Δp_k come from the layers themselves: each `DeformConv2d` keeps the absolute
# positions it sampled in `last_sampling_locations`, and the offsets are those positions
# minus the regular grid q + p_k (`functional.sampling_locations` of zero offsets).

# %%
KERNEL_GRID = np.array([(i - 1, j - 1) for i in range(3) for j in range(3)], np.float64)  # p_k
REGULAR = F.sampling_locations(np.zeros((1, 18, MAP_SIZE, MAP_SIZE)), 3, padding=1)[:, 0]


def sampling_locations(images, batch=100):
    """Run the model on ``images``; return each deformable layer's sampling locations,
    bottom first, as arrays (N, 9, 12, 12, 2): the absolute (y, x) that kernel point k of
    unit (y, x) read (the layers' ``last_sampling_locations``, one chunk at a time)."""
    per_layer = [[] for _ in deform_layers]
    with no_grad():
        for i in range(0, len(images), batch):
            model(network_input(images[i:i + batch]))
            for kept, layer in zip(per_layer, deform_layers):
                kept.append(layer.last_sampling_locations[:, 0].astype(np.float64))
    return [np.concatenate(kept) for kept in per_layer]


def backtrack(offsets, units):
    """The sampling locations of one top-layer unit per image, through all the layers.

    ``offsets``: per layer, bottom first, (N, 9, H, W, 2); ``units``: (N, 2) integer (y, x).
    Going down one layer, every point q becomes the 9 points q + p_k + Δp_k(q), where
    Δp_k(q) = Σ_r G(r, clamp(q)) Δp_k(r) interpolates the layer's offsets bilinearly.
    Returns (N, 9 ** len(offsets), 2) positions in the bottom layer's input map.
    """
    points = np.asarray(units, np.float64)[:, None, :]  # (N, 1, 2)
    for offset in reversed(offsets):
        n, kernel_points, height, width, _ = offset.shape
        maps = offset.transpose(0, 1, 4, 2, 3).reshape(n, 2 * kernel_points, height, width)
        lookup = np.clip(points, 0, [height - 1, width - 1])
        delta = F.bilinear_sample(maps, lookup).numpy()  # (N, 18, P): dy, dx per kernel point
        delta = delta.reshape(n, kernel_points, 2, -1).transpose(0, 3, 1, 2)  # (N, P, 9, 2)
        points = (points[:, :, None, :] + KERNEL_GRID + delta).reshape(n, -1, 2)
    return points


def to_image(feature_points):
    return STRIDE * feature_points + (STRIDE - 1) / 2


def spread(points):
    """RMS distance of each set of points from its centroid: sqrt(mean |p - p̄|²)."""
    centred = points - points.mean(axis=-2, keepdims=True)
    return np.sqrt((centred**2).sum(axis=-1).mean(axis=-1))


# %% [markdown]
# First, the procedure on the regular grid, where the answer is known: with every offset
# zero, the 729 points are the sums of three independent steps in {-1, 0, 1}² from the unit.
# Along one axis, the sum of three such steps is -3..3 with multiplicities 1, 3, 6, 7, 6,
# 3, 1 (the coefficients of (1 + t + t²)³), so the points cover a 7×7 block with the outer
# product of those counts, and their RMS spread is sqrt(2 · 3 · 2/3) = 2 units: 8 pixels.

# %%
zero = [np.zeros((1, 9, MAP_SIZE, MAP_SIZE, 2)) for _ in range(3)]
centre_unit = np.array([[6, 6]])
regular_points = backtrack(zero, centre_unit)[0]
values, counts = np.unique(regular_points - centre_unit, axis=0, return_counts=True)
per_axis = np.array([1, 3, 6, 7, 6, 3, 1])
check(regular_points.shape == (729, 2), "three layers of 3x3 give 9^3 = 729 points")
check(np.array_equal(values, np.stack(np.meshgrid(np.arange(-3, 4), np.arange(-3, 4),
                                                  indexing="ij"), -1).reshape(-1, 2))
      and np.array_equal(counts, np.outer(per_axis, per_axis).ravel()),
      "with zero offsets the points fill a 7x7 block with multiplicities (1,3,6,7,6,3,1)^2")
REGULAR_SPREAD = STRIDE * spread(regular_points)
check(abs(REGULAR_SPREAD - 8.0) < 1e-12, "and their RMS spread is 2 units = 8 pixels")

# %% [markdown]
# Now the trained model, on the test set. For each scene we pick two units:
#
# * **on the object**: the unit whose 4×4 block holds the digit's centre (the affine map's
#   translation);
# * **on the background**: among the units whose block centre lies at least 8 pixels (2
#   units) outside the digit's box, the one nearest the centre of the map (so that it is
#   away from the border where it can be).
#
# One more check: the first step of the back-tracking must give exactly the 9 points the top
# layer itself reports for that unit.

# %%
locations = sampling_locations(test.images)
offsets = [where - REGULAR for where in locations]  # Δp_k = p - (q + p_k)
centres = test.affines[:, :, 2]  # (y, x) of each digit's centre, in pixels
object_units = np.clip(np.floor((centres + 0.5) / STRIDE), 0, MAP_SIZE - 1).astype(int)
grid = np.stack(np.meshgrid(np.arange(MAP_SIZE), np.arange(MAP_SIZE), indexing="ij"), -1)
cell_centres = UNIT_CENTRES[grid]  # (12, 12, 2) pixel (y, x) of each unit
x1, y1, x2, y2 = (test.boxes[:, k, None, None] - 0.5 for k in range(4))  # pixel-centre coords
outside_by = np.maximum(
    np.maximum(y1 - cell_centres[..., 0], cell_centres[..., 0] - y2),
    np.maximum(x1 - cell_centres[..., 1], cell_centres[..., 1] - x2))  # (N, 12, 12)
from_middle = ((grid - (MAP_SIZE - 1) / 2) ** 2).sum(-1)
has_background = (outside_by >= 8).any(axis=(1, 2))
background_units = np.array([np.unravel_index(
    np.where(far, from_middle, np.inf).argmin(), far.shape) for far in outside_by >= 8])

object_points = to_image(backtrack(offsets, object_units))  # (N, 729, 2)
background_points = to_image(backtrack(offsets, background_units))
first_step = backtrack(offsets[-1:], object_units)  # (N, 9, 2) in the middle map
reported = locations[-1][np.arange(N_TEST), :, object_units[:, 0], object_units[:, 1]]
check(np.allclose(first_step, reported, rtol=0, atol=1e-12),
      "one step of back-tracking gives the top layer's own 9 sampling points")
check(object_points.shape == (N_TEST, 729, 2) and np.isfinite(object_points).all()
      and np.isfinite(background_points).all(), "729 finite points for every unit")
print(f"{has_background.sum()} of {N_TEST} scenes have a background unit 8+ px from the box")

# %% [markdown]
# ## 4. Figure 5: background, small object, large object
#
# Top row: the trained DCN's 729 points (red) for a unit (green) on the background, on a
# small digit and on a large digit. Bottom row: the same units with all offsets zero, the
# regular 3×3 convolutions, whose 729 points always fill the same 7×7-unit block (drawn with
# the point size growing with multiplicity). Every red point comes from the model's offsets
# for that image.

# %%
small_scene = int(np.argmin(np.abs(test.sizes - np.quantile(test.sizes, 0.1))
                            + np.where(has_background, 0, np.inf)))
large_scene = int(np.argmin(np.abs(test.sizes - np.quantile(test.sizes, 0.9))))
panels = [("background", small_scene, background_points[small_scene],
           background_units[small_scene]),
          (f"small object ({test.sizes[small_scene]:.0f} px)", small_scene,
           object_points[small_scene], object_units[small_scene]),
          (f"large object ({test.sizes[large_scene]:.0f} px)", large_scene,
           object_points[large_scene], object_units[large_scene])]
fig, axes = plt.subplots(2, 3, figsize=(10, 7))
for col, (name, scene, points, unit) in enumerate(panels):
    for row, shown in enumerate((points, to_image(backtrack(zero, unit[None])[0]))):
        ax = axes[row, col]
        viz.show_image(ax, test.images[scene], title=f"{name}: spread {spread(shown):.1f} px"
                       if row == 0 else f"regular grid: spread {spread(shown):.1f} px")
        unique, multiplicity = np.unique(shown, axis=0, return_counts=True)
        viz.draw_points(ax, unique, size=3.0 * multiplicity ** 0.5 if row else 3.0,
                        color="tab:red", alpha=0.7, linewidths=0)
        viz.draw_points(ax, to_image(unit.astype(float)), color="lime", size=40, marker="o",
                        edgecolors="black")
        ax.set_xlim(-0.5, IMAGE_SIZE - 0.5)
        ax.set_ylim(IMAGE_SIZE - 0.5, -0.5)
fig.suptitle("729 sampling locations of three stacked 3×3 deformable layers (top) "
             "against regular convolutions (bottom)")
fig.tight_layout()
save_figure(fig, "07_receptive_field.png")

# %% [markdown]
# ## 5. Does the spread adapt to the object's size?
#
# The spread of a unit's 729 points is their RMS distance from their centroid, in pixels; the
# regular grid's is 8 pixels for every unit. We split the test scenes into thirds by object
# size and compare the units on the largest third with those on the smallest third. As a
# control for position (small digits can sit near the border, large ones cannot), the same
# ratio is computed on the scenes whose digit centre lies within 8 pixels of the image centre.

# %%
object_spread = spread(object_points)
background_spread = spread(background_points[has_background])
sizes = test.sizes
small_cut, large_cut = np.quantile(sizes, [1 / 3, 2 / 3])
small, large = sizes <= small_cut, sizes >= large_cut
medium = ~small & ~large
central = (np.abs(centres - (IMAGE_SIZE - 1) / 2) <= 8).all(axis=1)
rows = [("regular grid (any unit)", np.array([REGULAR_SPREAD])),
        ("background units", background_spread),
        (f"small objects (<= {small_cut:.0f} px)", object_spread[small]),
        ("medium objects", object_spread[medium]),
        (f"large objects (>= {large_cut:.0f} px)", object_spread[large])]
print("| units | count | spread of the 729 points, mean ± std (px) |")
print("|---|---|---|")
for name, values in rows:
    print(f"| {name} | {len(values)} | {values.mean():.2f} ± {values.std():.2f} |")
ratio = object_spread[large].mean() / object_spread[small].mean()
ratio_central = (object_spread[large & central].mean() / object_spread[small & central].mean()
                 if (large & central).any() and (small & central).any() else float("nan"))
correlation = float(np.corrcoef(sizes, object_spread)[0, 1])
print(f"spread ratio, large / small objects: {ratio:.2f} "
      f"(central digits only: {ratio_central:.2f}, "
      f"{(small & central).sum()} small and {(large & central).sum()} large)")
print(f"correlation of object size and spread over all {N_TEST} object units: {correlation:.2f}")
check(np.isfinite(object_spread).all() and np.isfinite(background_spread).all()
      and math.isfinite(ratio), "every spread, and the ratio, is a finite number")
ranked = sorted([("background", background_spread.mean()), ("small", object_spread[small].mean()),
                 ("medium", object_spread[medium].mean()),
                 ("large", object_spread[large].mean())], key=lambda item: item[1])
print("mean spread, from smallest to largest: " + " < ".join(name for name, _ in ranked))
# Seen with every seed we tried while writing the lesson (ratios 1.3 quick, 1.7-1.8 full):
least = 1.1 if QUICK else 1.3
check(ratio > least and ratio_central > least,
      f"units on large objects spread their 729 points more than units on small ones: ratio "
      f"{ratio:.2f} > {least} (central digits: {ratio_central:.2f})")

fig, ax = plt.subplots(figsize=(6.5, 4))
ax.scatter(sizes, object_spread, s=10, alpha=0.6, label="unit on the object")
ax.axhline(REGULAR_SPREAD, color="black", linestyle=":", label="regular 3×3 convolutions")
ax.axhline(background_spread.mean(), color="tab:green", linestyle="--",
           label="background units, mean")
ax.set_xscale("log")
ax.set_xticks([6, 10, 20, 40], ["6", "10", "20", "40"])
ax.minorticks_off()
ax.set_xlabel("object size (px, log scale)")
ax.set_ylabel("spread of the 729 points (px)")
ax.set_title(f"large / small objects: spread ratio {ratio:.2f}")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
save_figure(fig, "07_spread.png")

# %% [markdown]
# ## What we saw
#
# The numbers above are this run's. The regular stack reads the same 7×7-unit block for
# every unit, whatever lies under it. The deformable stack's 729 points move with the image:
# trained only to name what lies under each unit, the units on large digits spread their
# points further than the units on small digits (the ratio above), also when small and large
# digits alike sit near the image centre. That is the adaptation the DCN paper reports for its
# detection and segmentation networks. The paper also finds the background units' spread
# between those of medium and large objects; the ranking printed above says where this
# run's background units fall.
