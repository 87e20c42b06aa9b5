# %% [markdown]
# # 05 modulated deformable convolution (DCN v2): a learned weight for every sampling point
#
# DCN v2 gives each sampling point, besides its offset, a *modulation scalar* Δm_k in [0, 1]:
#
#     y(p0) = Σ_k w_k · x(p0 + p_k + Δp_k) · Δm_k.
#
# Like the offsets, the masks are predicted from the input, one per kernel point and output
# pixel, by a small convolution followed by a sigmoid. The offsets say *where* to look; the
# mask says *how much* each look counts, so a point that lands on something irrelevant can be
# turned down. This lesson:
#
# 1. shows that the mask is a per-point weight: mask = 1 is DCN v1, the output is linear in
#    each mask value, a mask of 0 removes a point, and the mask's gradient is the point's
#    contribution;
# 2. trains a modulated `DeformConv2d` on a task where some sampling points see distractors,
#    and measures the masks it learns on useful and on distracting points;
# 3. draws the trained model's sampling points, sized and coloured by their mask.
#
# Run it with `minidcn lesson 5` or `python lessons/05_modulated_deformable_conv.py`.

# %%
import matplotlib.cbook as cbook
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

import minidcn
from minidcn import Tensor, data, nn, viz
from minidcn import functional as F
from minidcn.lessons_support import check, quick, save_figure

rng = np.random.default_rng(5)

# %% [markdown]
# ## 1. The mask is a weight on each sampling point
#
# A 40×40 patch of matplotlib's photograph of Grace Hopper, four random 3×3 filters, and
# random offsets (N(0, 0.7²) pixels, a different one for every kernel point and output pixel):
# a DCN v1 layer in general position. The mask has one channel per kernel point,
# `(B, 9, H_out, W_out)`, channel k = i·3 + j for kernel point (i, j).
#
# Write c_k(p0) = w_k · x(p0 + p_k + Δp_k) for the contribution of point k (one image per
# output channel). Then y = Σ_k Δm_k · c_k, which we check piece by piece:
#
# * Δm = 1 everywhere gives DCN v1 (`mask=None`);
# * the contributions are what a one-hot mask (1 on point k, 0 elsewhere) returns, and for any
#   mask the output is Σ_k Δm_k c_k: linear in every mask value, point by point;
# * Δm_k = 0 is the same as deleting point k from the filter (w_k = 0);
# * the gradient of the output with respect to Δm_k(p0) is c_k(p0): during training, a point
#   is turned down when its contribution pushes the output away from the target.

# %%
with cbook.get_sample_data("grace_hopper.jpg") as file:
    rgb = mpimg.imread(file, format="jpg")
photo = (rgb.astype(np.float64).mean(axis=2) / 255.0).reshape(300, 2, 256, 2).mean(axis=(1, 3))
patch = Tensor(photo[100:140, 90:130][None, None])  # (1, 1, 40, 40)
size = patch.shape[-1]
weight = Tensor(rng.normal(size=(4, 1, 3, 3)))
offset = Tensor(rng.normal(0.0, 0.7, size=(1, 18, size, size)))


def modulated(mask, w=weight):
    return F.deform_conv2d(patch, offset, w, padding=1, mask=mask)


v1 = F.deform_conv2d(patch, offset, weight, padding=1)
gap = np.abs(modulated(np.ones((1, 9, size, size))).numpy() - v1.numpy()).max()
print(f"max |mask = 1  -  DCN v1| = {gap:.1e}")
check(gap == 0.0, "a mask of ones gives exactly DCN v1")

one_hot = np.eye(9).reshape(9, 1, 9, 1, 1) * np.ones((1, 1, 9, size, size))
contributions = np.stack([modulated(one_hot[k]).numpy()[0] for k in range(9)])  # (9, 4, H, W)
mask = rng.uniform(0.0, 1.0, size=(1, 9, size, size))
recombined = np.einsum("khw,kchw->chw", mask[0], contributions)
gap = np.abs(modulated(mask).numpy()[0] - recombined).max()
print(f"random mask in [0, 1]: max |y(Δm) - Σ_k Δm_k c_k| = {gap:.1e}")
check(gap < 1e-12, "for a random mask, y = Σ_k Δm_k c_k at every pixel: linear in each mask value")

halved = mask.copy()
halved[0, 4] *= 0.5  # halve the centre point's mask everywhere
change = modulated(halved).numpy()[0] - modulated(mask).numpy()[0]
gap = np.abs(change + 0.5 * mask[0, 4] * contributions[4]).max()
check(gap < 1e-12, "halving the centre point's mask takes away half of its contribution, no more")

for k in (0, 4, 8):
    without_k = weight.numpy().copy()
    without_k.reshape(4, 9)[:, k] = 0.0
    gap = np.abs(modulated(1.0 - one_hot[k]).numpy()
                 - F.deform_conv2d(patch, offset, Tensor(without_k), padding=1).numpy()).max()
    check(gap < 1e-12, f"Δm_{k} = 0 is the same as the filter without point {k} (w_{k} = 0)")

mask_t = Tensor(mask, requires_grad=True)
modulated(mask_t).sum().backward()
gap = np.abs(mask_t.grad.numpy()[0] - contributions.sum(axis=1)).max()
print(f"max |∂(Σ y)/∂Δm_k(p0) - Σ_channels c_k(p0)| = {gap:.1e}")
check(gap < 1e-12, "the gradient with respect to a mask value is that point's contribution")

# %% [markdown]
# The nine contributions for output channel 0, each drawn where its kernel point sits in the
# 3×3 grid, the random mask of two of the points, and the output: the sum of the
# contributions, each weighted pixel by pixel by its mask.

# %%
fig, axes = plt.subplots(3, 5, figsize=(11, 7.4), layout="constrained")
limit = np.abs(contributions[:, 0]).max()
value_range = {"cmap": "coolwarm", "vmin": -limit, "vmax": limit}
for k in range(9):
    viz.show_image(axes[k // 3, k % 3], contributions[k, 0],
                   f"c_{k}: point (i, j) = ({k // 3}, {k % 3})", **value_range)
for ax, k in zip(axes[:2, 3], (0, 4)):
    mask_shown = viz.show_image(ax, mask[0, k], f"Δm_{k}: a random mask", cmap="viridis", vmin=0,
                                vmax=1)
axes[2, 3].set_axis_off()
masked = modulated(mask).numpy()[0, 0]
viz.show_image(axes[0, 4], recombined[0], "Σ_k Δm_k c_k, by hand", **value_range)
viz.show_image(axes[1, 4], masked, "deform_conv2d(..., mask)\n"
               f"(differs by {np.abs(masked - recombined[0]).max():.0e})", **value_range)
value_shown = viz.show_image(axes[2, 4], v1.numpy()[0, 0], "mask = 1 (DCN v1)", **value_range)
fig.colorbar(value_shown, ax=axes[:, 4], fraction=0.08, label="c_k and output, channel 0 (one scale)")
fig.colorbar(mask_shown, ax=axes[2, 3], location="top", fraction=0.2, label="mask Δm_k")
fig.suptitle("the mask weights each sampling point's contribution, pixel by pixel "
             f"({size}×{size} px patch, random offsets)\n"
             "left: c_k(p0) = w_k · x(p0 + p_k + Δp_k), one map per kernel point (i, j), red = positive",
             fontsize=10)
save_figure(fig, "05_mask_is_a_weight.png")

# %% [markdown]
# ## 2. Learning to ignore distractors
#
# **The images.** Each one holds a bright digit (the *object*, from `minidcn.data.glyphs`, ink
# 1 on 0) and three small digits, turned at random and placed anywhere, drawn *dark* (ink -1): the
# *distractors*. Where the object's ink covers a distractor, the object wins:
#
#     x = object - distractors · (1 - object).
#
# **The target.** A fixed bank of four 3×3 filters w (dilation 2, so the footprint is 5×5
# pixels) applied to the object alone, as if the distractors were not there:
#
#     y* = w ⋆ object.
#
# Near the digit, a unit's nine sampling points split into *useful* ones, on the object's ink,
# which the target depends on, and *distracting* ones, on a dark digit, which it does not.
#
# **Why a mask is needed.** A convolution is linear in x: it cannot respond to the bright
# strokes and ignore the dark ones. A mask predicted from x can: it is a per-point factor that
# depends on what the point lands on.
#
# **The models**, trained the same way (full batch, Adam, same steps and learning rate, same
# initial weights):
#
# * a plain `Conv2d(1, 4, 3, dilation=2)`: a linear filter, trained to do its best;
# * a modulated `DeformConv2d(..., modulated=True)`: its filter weights and its mask predictor
#   (a 3×3 convolution with the layer's geometry, then a sigmoid) are trained. We pass it
#   `offset=0` instead of using its offset predictor, so the points stay on the regular grid
#   and the mask is the only new thing the layer can use.
#
# The mask predictor starts at zero, so every mask starts at sigmoid(0) = 1/2.

# %%
IMAGE_SIZE = 24 if quick() else 32
N_TRAIN, N_TEST = (12, 12) if quick() else (32, 32)
STEPS = 100 if quick() else 250
DILATION = 2
small_digits = data.Distortion(scale=(0.22, 0.3), aspect=1.2, rotation=180.0, shear=0.2, shift=1.0)


def make_images(n, seed):
    """(x, object, distractors), each (n, 1, S, S) float64; x = object - distractors·(1 - object)."""
    draw = np.random.default_rng(seed)
    objects = data.glyphs(n, "mild", image_size=IMAGE_SIZE, seed=draw).images.astype(np.float64)
    marks = np.zeros_like(objects)
    for _ in range(3):
        marks = np.maximum(marks, data.glyphs(n, small_digits, image_size=IMAGE_SIZE, seed=draw).images)
    distractors = marks * (1.0 - objects)
    return objects - distractors, objects, distractors


train_x, train_objects, _ = make_images(N_TRAIN, seed=1)
test_x, test_objects, test_distractors = make_images(N_TEST, seed=2)
filters = Tensor(np.random.default_rng(6).normal(size=(4, 1, 3, 3)))


def target(objects):
    return F.conv2d(Tensor(objects), filters, padding=DILATION, dilation=DILATION)


train_target, test_target = target(train_objects), target(test_objects)
print(f"{N_TRAIN} training and {N_TEST} test images of {IMAGE_SIZE}×{IMAGE_SIZE}; "
      f"distractor ink covers {np.mean(test_distractors > 0.5):.1%} of the test pixels, "
      f"object ink {np.mean(test_objects > 0.5):.1%}")

plain = nn.Conv2d(1, 4, 3, padding=DILATION, dilation=DILATION, bias=False,
                  generator=np.random.default_rng(7), dtype=np.float64)
dcn = nn.DeformConv2d(1, 4, 3, padding=DILATION, dilation=DILATION, bias=False, modulated=True,
                      generator=np.random.default_rng(7), dtype=np.float64)
check(np.array_equal(plain.weight.numpy(), dcn.weight.numpy()), "both models start from the same filters")


def plain_forward(x):
    return plain(Tensor(x))


def dcn_forward(x):
    """The modulated layer with zero offsets and the mask its predictor computes from x."""
    return dcn(Tensor(x), offset=np.zeros((x.shape[0], 18) + x.shape[2:]))


with minidcn.no_grad(), nn.recording_sampling(dcn):  # keep the mask this forward uses
    dcn_forward(test_x)
check(np.all(dcn.last_mask == 0.5), "before training every mask is sigmoid(0) = 1/2")


def mean_squared_error(forward, x, y_star):
    diff = forward(x) - y_star
    return (diff * diff).mean()


def train(forward, parameters, label):
    optimiser = minidcn.optim.Adam(parameters, lr=0.1)
    losses = []
    for _ in tqdm(range(STEPS), desc=label, mininterval=1.0):
        optimiser.zero_grad()
        loss = mean_squared_error(forward, train_x, train_target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    with minidcn.no_grad():
        test_loss = mean_squared_error(forward, test_x, test_target).item()
    return np.array(losses), test_loss


plain_losses, plain_test = train(plain_forward, plain.parameters(), "plain conv")
dcn_losses, dcn_test = train(dcn_forward, [dcn.weight, *dcn.mask_conv.parameters()], "modulated DCN")
target_power = (test_target.numpy() ** 2).mean()
print(f"mean squared error on the test images (the target's mean square is {target_power:.3f}):")
print(f"  plain conv:          train {plain_losses[-1]:.4f}, test {plain_test:.4f}")
print(f"  modulated DCN:       train {dcn_losses[-1]:.4f}, test {dcn_test:.4f}")
check(dcn_test < plain_test / 3, "the modulated layer's test error is less than a third of the "
                                  "plain convolution's")

# %% [markdown]
# ## 3. What the mask learned
#
# Run the trained layer on the test images, recording what it samples
# (`nn.recording_sampling`), and read, for every sampling point, its mask
# (`last_mask`) and where it lands (`last_sampling_locations`). The offsets are zero, so every
# point lands on a pixel; we sort the points by what is under them:
#
# * *useful*: object ink (object > 0.5, no distractor);
# * *distracting*: distractor ink (distractor > 0.5, no object);
# * *empty*: neither (both < 0.05). There x = 0, so the mask there changes nothing and
#   receives no gradient; whatever it is, it is not learned.
#
# Points in the zero padding outside the image are left out.

# %%
with minidcn.no_grad(), nn.recording_sampling(dcn):
    dcn_forward(test_x)
points = dcn.last_sampling_locations[:, 0]  # (N, 9, H, W, 2), integer-valued here
masks = dcn.last_mask[:, 0]  # (N, 9, H, W)
inside = ((points >= 0) & (points <= IMAGE_SIZE - 1)).all(axis=-1)
rows = np.clip(points[..., 0], 0, IMAGE_SIZE - 1).astype(np.int64)
cols = np.clip(points[..., 1], 0, IMAGE_SIZE - 1).astype(np.int64)
image_index = np.arange(N_TEST)[:, None, None, None]
under_object = test_objects[image_index, 0, rows, cols]
under_distractor = test_distractors[image_index, 0, rows, cols]
kinds = {
    "useful": inside & (under_object > 0.5) & (under_distractor < 0.05),
    "distracting": inside & (under_distractor > 0.5) & (under_object < 0.05),
    "empty": inside & (under_object < 0.05) & (under_distractor < 0.05),
}
stats = {}
print("learned masks on the test images, by what the point lands on:")
for name, where in kinds.items():
    values = masks[where]
    stats[name] = values
    print(f"  {name:12s} {values.size:6d} points: mean {values.mean():.3f}, median "
          f"{np.median(values):.3f}, 10th-90th percentile {np.percentile(values, 10):.3f}-"
          f"{np.percentile(values, 90):.3f}")
useful, distracting = stats["useful"].mean(), stats["distracting"].mean()
check(distracting < useful, "distracting points have a lower mask than useful ones")
check(distracting < 0.25 and useful > 0.75,
      f"and by far: mean mask {distracting:.3f} on distractors against {useful:.3f} on the object")
check(np.percentile(stats["distracting"], 90) < np.percentile(stats["useful"], 10),
      "90% of the distracting points have a lower mask than 90% of the useful ones")

# %% [markdown]
# The figure. Top: four test images, and in each the unit whose footprint mixes the most
# distracting points with at least three useful ones (a stated rule, applied to the model's
# own masks), close up; its nine sampling points, as the layer reports them, are filled with
# area and colour by their mask, printed below each in cyan (blue rings show where all nine
# are, so a point with mask near 0 is still visible). Bottom: the mask of the centre point over
# each whole image (the mask is a map, one per kernel point; the blue box is the close-up),
# next to the distribution of all masks by kind and the training curves. The grey levels of
# the images are their values: black -1 (distractor ink), grey 0 (background), white +1
# (object ink).

# %%
useful_count = kinds["useful"].sum(axis=1)  # (N, H, W): useful points per unit
distracting_count = kinds["distracting"].sum(axis=1)
ZOOM = 6  # the top row shows 13×13 pixels around the unit
POINT_SIZE = 420  # marker area (pt²) of a point with mask 1
fig = plt.figure(figsize=(19, 10), layout="constrained")
grid = fig.add_gridspec(2, 5, width_ratios=(1, 1, 1, 1, 1.5), height_ratios=(1.1, 1))
image_axes, map_axes = [], []
for i in range(4):
    score = np.where(useful_count[i] >= 3, distracting_count[i], -1)
    uy, ux = (int(v) for v in np.unravel_index(score.argmax(), score.shape))
    unit_points, unit_masks = points[i, :, uy, ux], masks[i, :, uy, ux]
    ax = fig.add_subplot(grid[0, i])
    image_axes.append(ax)
    image_shown = viz.show_image(ax, test_x[i, 0], f"test image {i}, close-up of unit ({uy}, {ux}):\n"
                                 f"{distracting_count[i, uy, ux]} distracting, "
                                 f"{useful_count[i, uy, ux]} useful points", cmap="gray", vmin=-1, vmax=1)
    viz.draw_points(ax, unit_points, color="none", size=POINT_SIZE, edgecolors="deepskyblue",
                    linewidths=1.0)  # where the nine points are, whatever their mask
    points_shown = viz.draw_points(ax, unit_points, unit_masks, size=POINT_SIZE, cmap="plasma")
    for (py, px), value in zip(unit_points, unit_masks):
        ax.text(px, py + 0.75, f"{value:.2f}", ha="center", va="top", fontsize=7, color="cyan",
                bbox={"fc": "black", "alpha": 0.6, "pad": 0.4, "lw": 0})
    # the close-up: 13×13 pixels around the unit, moved inside the image where the unit is near
    # its border (so that nothing outside the image shows)
    cy, cx = (int(np.clip(v, ZOOM, IMAGE_SIZE - 1 - ZOOM)) for v in (uy, ux))
    ax.set_xlim(cx - ZOOM - 0.5, cx + ZOOM + 0.5)
    ax.set_ylim(cy + ZOOM + 0.5, cy - ZOOM - 0.5)
    ax_map = fig.add_subplot(grid[1, i])
    map_axes.append(ax_map)
    viz.show_image(ax_map, masks[i, 4], f"test image {i}: the centre point's\nmask Δm_4(p0) at every "
                   "unit p0", cmap="plasma", vmin=0, vmax=1)
    viz.draw_box(ax_map, [cx - ZOOM, cy - ZOOM, cx + ZOOM + 1, cy + ZOOM + 1], color="deepskyblue")
colorbar = fig.colorbar(image_shown, ax=image_axes, fraction=0.02, pad=0.01, label="image value")
colorbar.set_ticks([-1, 0, 1], labels=["-1 distractor ink", "0 background", "+1 object ink"])
colorbar.ax.yaxis.set_label_position("left")
fig.colorbar(points_shown, ax=map_axes, fraction=0.02, pad=0.01,
             label="mask Δm (colour of the points above and of these maps)")
key = [plt.Line2D([], [], marker="o", ls="none", ms=np.sqrt(POINT_SIZE * m), mfc=plt.cm.plasma(m),
                  mec="deepskyblue", label=f"mask {m:g}") for m in (0.25, 0.5, 1.0)]
key.append(plt.Line2D([], [], color="cyan", marker="$0.9$", ls="none", ms=14,
                      label="its mask, printed under it"))
key.append(plt.Line2D([], [], color="deepskyblue", marker="s", mfc="none", ls="none", ms=14,
                      label="blue box: the close-up above"))
fig.legend(handles=key, loc="outside lower left", ncol=len(key), fontsize=9, columnspacing=2.5,
           title="top row: a sampling point's filled area and colour are its mask; its blue ring "
                 "shows where it is (a point with mask 0 keeps only the ring)", title_fontsize=9)

ax_hist = fig.add_subplot(grid[0, 4])
bins = np.linspace(0, 1, 41)
for name, colour in zip(stats, ("tab:green", "tab:red", "tab:gray")):
    ax_hist.hist(stats[name], bins=bins, density=True, alpha=0.6, color=colour,
                 label=f"{name}: {stats[name].size} points, mean {stats[name].mean():.2f}")
ax_hist.set_xlabel("learned mask Δm")
ax_hist.set_ylabel("density (each histogram has area 1)")
ax_hist.set_title("every sampling point of the test images, by what it lands on", fontsize=9)
ax_hist.legend(fontsize=8)

ax_loss = fig.add_subplot(grid[1, 4])
ax_loss.semilogy(plain_losses, label=f"plain conv (test {plain_test:.3f})")
ax_loss.semilogy(dcn_losses, label=f"modulated DCN (test {dcn_test:.3f})")
ax_loss.set_xlabel("Adam step")
ax_loss.set_ylabel("training mean squared error")
ax_loss.set_title("training curves; in brackets the error on the test images", fontsize=9)
ax_loss.legend(fontsize=8)
save_figure(fig, "05_learned_masks.png")

# %% [markdown]
# ## What to take away
#
# * The mask is a weight on each sampling point, at each output pixel: the output is linear in
#   it, mask 1 is DCN v1 and mask 0 deletes the point.
# * Its gradient is the point's contribution, so training turns down the points whose
#   contributions hurt.
# * Trained on images where some points land on distractors, the mask predictor learned to
#   read what is under each point: the masks on distractors fell far below those on the object,
#   and the layer beat the best plain convolution by a wide margin, something no choice of
#   weights can do, because a convolution is linear in its input.

# %% [markdown]
# ## Down the layers
#
# As at the end of lesson 04, the trained layer is recomputed one layer of code down at a time,
# module (`nn/`) → functional op (`functional/`) → kernel (`backends/`), with the layer's own
# parameters, and checked equal at each step; this time the mask is in play. To receive a
# gradient of its own, the mask the predictor computes is passed in as an input here. The
# reference kernel states the mask's gradient as the sum it is, grad_Δm_k = Σ_c u_c · v_c:
# the sampled values v_c weighted by u_c = Σ_o w[o, c, k] grad_y[o], the gradient that reaches
# them through the filter (the lines that say so are printed below).

# %%
import inspect

from minidcn.backends import kernels, reference
from minidcn.lessons_support import defined_at

x = Tensor(test_x[:2], requires_grad=True)
offset = Tensor(np.zeros((2, 18) + test_x.shape[2:]), requires_grad=True)  # as in training
with minidcn.no_grad():
    mask = Tensor(dcn.mask_conv(x).sigmoid().numpy(), requires_grad=True)
dcn.zero_grad()
y = dcn(x, offset=offset, mask=mask)
grad_y = rng.standard_normal(y.shape)
y.backward(grad_y)  # L = Σ grad_y · y
print("1. module:     ", defined_at(nn.DeformConv2d.forward))
y_functional = F.deform_conv2d(x, offset, dcn.weight, None, dcn.stride, dcn.padding, dcn.dilation,
                               mask)
check(np.array_equal(y_functional.numpy(), y.numpy()),
      "F.deform_conv2d with the layer's weight, geometry and mask gives the layer's output")
print("2. functional: ", defined_at(F.deform_conv2d))
inputs = x.numpy(), offset.numpy(), mask.numpy(), dcn.weight.numpy()
geometry = dcn.stride, dcn.padding, dcn.dilation, 1, 1  # ..., groups, offset_groups
autograd = x.grad, offset.grad, mask.grad, dcn.weight.grad
for ops in (kernels(), reference):
    print("3. kernel:     ", defined_at(ops.deform_conv2d_backward))
    y_kernel = ops.deform_conv2d_forward(*inputs, None, *geometry)
    gradients = ops.deform_conv2d_backward(grad_y, *inputs, *geometry)[:4]  # no bias
    gap = max(np.abs(a - b.numpy()).max() / np.abs(b.numpy()).max()
              for a, b in zip((y_kernel, *gradients), (y, *autograd)))
    check(gap < 1e-12, f"{ops.__name__}: same output and gradients for x, offset, mask, weight "
                       f"(largest gap {gap:.0e} of the largest value)")
source = inspect.getsource(reference.deform_conv2d_backward).splitlines()
print(*(line for line in source if "grad_Δm_k" in line or "grad_mask[:, k]" in line), sep="\n")
