# %% [markdown]
# # 12 deformable attention: a query reads a few learned points on every level of a pyramid
#
# A transformer's attention compares each query with every key: for one 48×48 image and
# its feature pyramid that is hundreds of keys per query, and the cost grows with the square
# of the number of positions. Deformable DETR (Zhu et al., ICLR 2021) keeps what attention
# does, a weighted sum of values chosen by the query, but lets each query read only a few
# points: it has a **reference point**, and from its own feature it predicts, for every
# head m, every level l of the pyramid and every one of P points k,
#
# * an offset Δp_{mlk} from the reference point, and
# * an attention weight A_{mlk}, a softmax over the L·P points of the head,
#
# and returns Σ_l Σ_k A_{mlk} · x_l(p̂_l + Δp_{mlk}), head by head, where x_l(·) reads
# level l at a fractional position. That reading is the bilinear sampling G(q, p) of lesson
# 03, the offsets are those of lesson 04, and the weights play the part of lesson 05's
# masks. This lesson:
#
# 1. checks that with one level and one point, `functional.multi_scale_deform_attn` *is*
#    `functional.bilinear_sample` at the converted pixel position, and that the general op is
#    the weighted sum of such samples;
# 2. builds a small feature pyramid of four levels on lesson 07's scenes and puts
#    `nn.MultiScaleDeformableAttention` on top, one query per unit of the 12×12 level;
# 3. trains it to find the digit and name it, and reports what it measures;
# 4. draws one query's sampling points on every level, coloured by attention weight,
#    before training (the module's directional starting pattern) and after.
#
# Run it with `minidcn lesson 12` or `python lessons/12_deformable_attention.py` (`--quick`
# or `MINIDCN_QUICK=1` for a short run).

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from minidcn import Tensor, nn, no_grad, viz
from minidcn import functional as F
from minidcn.lessons_support import check, quick, save_figure
from minidcn.scene_network import IMAGE_SIZE, MAP_SIZE, make_scenes, unit_labels
from minidcn.scene_network import train as train_steps

QUICK = quick()
N_TRAIN, EPOCHS = (1200, 4) if QUICK else (3000, 8)
N_TEST = 300 if QUICK else 600
SEED = 7  # initial weights and the order of the batches
print(f"{'quick' if QUICK else 'full'} run: {N_TRAIN} training scenes, {EPOCHS} epochs, "
      f"{N_TEST} test scenes")

# %% [markdown]
# ## 1. One level, one point: bilinear sampling
#
# `functional.multi_scale_deform_attn(value, spatial_shapes, sampling_locations,
# attention_weights)` is the op without any learned part (mmcv's name and argument order):
#
# * `value` (N, S, M, D): the L levels' maps, each flattened row by row (channels last) and
#   joined, S = Σ_l H_l W_l positions; M heads of D channels each;
# * `spatial_shapes` (L, 2): the (H_l, W_l) of each level, so the op can cut `value` back
#   into maps;
# * `sampling_locations` (N, Q, M, L, P, 2): **normalised (x, y)**, 0 to 1 across every
#   level: a location means the same place in the image on every level;
# * `attention_weights` (N, Q, M, L, P).
#
# A normalised (u, v) on a level of H × W pixels reads the pixel position
# x = u W - 0.5, y = v H - 0.5: u = 0 is the left edge of the map, the centre of pixel 0 sits
# at u = 0.5 / W (torch's `grid_sample` with `align_corners=False`). With one level, one head,
# one point and weight 1, the op is lesson 03's bilinear sampling at that position; we check
# it on a random 5×7 map with 3 channels, at points inside and outside the map.

# %%
rng = np.random.default_rng(12)
H, W, C, Q = 5, 7, 3, 8
feature = rng.standard_normal((1, H, W, C))  # one channels-last map
uv = rng.uniform(-0.2, 1.2, (1, Q, 2))  # Q normalised (x, y) locations, some off the map
attended = F.multi_scale_deform_attn(
    feature.reshape(1, H * W, 1, C),  # S = H W positions, one head of C channels
    np.array([[H, W]]), uv.reshape(1, Q, 1, 1, 1, 2), np.ones((1, Q, 1, 1, 1))).numpy()
pixel_yx = np.stack([uv[..., 1] * H - 0.5, uv[..., 0] * W - 0.5], axis=-1)  # (1, Q, 2)
sampled = F.bilinear_sample(feature.transpose(0, 3, 1, 2), pixel_yx).numpy()  # (1, C, Q)
print(f"largest difference: {np.abs(attended - sampled.transpose(0, 2, 1)).max():.1e}")
check(np.allclose(attended, sampled.transpose(0, 2, 1), rtol=0, atol=1e-12),
      "one level, one point, weight 1: multi_scale_deform_attn = bilinear_sample at "
      "x = u W - 0.5, y = v H - 0.5 (float64, to 1e-12)")

# %% [markdown]
# Everything else is a weighted sum. Head m's channels of the output are
#
#     out[q, m] = Σ_l Σ_k A[q, m, l, k] · x_l,m(y, x)   at the location (u, v)[q, m, l, k],
#
# so the same check holds for any number of levels, heads and points: below, three levels of
# different sizes, two heads of 4 channels, three points per level, the weights a softmax
# over each head's L·P = 9 points, against a loop of `bilinear_sample` calls.

# %%
SHAPES = np.array([[6, 8], [3, 4], [2, 2]])
M, D, L, P = 2, 4, len(SHAPES), 3
levels = [rng.standard_normal((1, h, w, M, D)) for h, w in SHAPES]
value = np.concatenate([level.reshape(1, -1, M, D) for level in levels], axis=1)
locations = rng.uniform(0.0, 1.0, (1, Q, M, L, P, 2))
logits = rng.standard_normal((1, Q, M, L * P))
weights = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).reshape(1, Q, M, L, P)
out = F.multi_scale_deform_attn(value, SHAPES, locations, weights).numpy()  # (1, Q, M·D)

by_hand = np.zeros((1, Q, M, D))
for l, (h, w) in enumerate(SHAPES):
    for m in range(M):
        for k in range(P):
            u, v = locations[:, :, m, l, k, 0], locations[:, :, m, l, k, 1]
            read = F.bilinear_sample(levels[l][..., m, :].transpose(0, 3, 1, 2),
                                     np.stack([v * h - 0.5, u * w - 0.5], -1)).numpy()
            by_hand[:, :, m] += weights[:, :, m, l, k, None] * read.transpose(0, 2, 1)
check(np.allclose(out, by_hand.reshape(1, Q, M * D), rtol=0, atol=1e-12),
      f"{L} levels, {M} heads, {P} points: the op is the attention-weighted sum of bilinear "
      "samples")

# %% [markdown]
# ## 2. The task: lesson 07's scenes, one query per unit
#
# The scenes are lesson 07's (`minidcn.scene_network`): one digit, 6 to 40 px on its longer
# side, anywhere in a 48×48 image over smooth clutter, and the same target for each unit of a
# 12×12 map (one unit = a 4×4 pixel block): the digit under the unit if the block's centre lies
# in the digit's box (classes 1..10 for digits 0..9), else background (class 0). Lesson 07
# draws them (`07_data.png`).
#
# Here every unit is a **query** of the attention, with its block's centre as reference
# point. A unit must say what lies under it, and a large digit covers far more than the
# unit's own feature sees; the attention lets it read where it needs, on every level. From
# the 144 answers of a scene we also read off a detection: the unit most sure that it is
# *not* background is where the network **finds** the digit, and its class is the digit it
# **names**.

# %%
train, test = make_scenes(N_TRAIN, test=False), make_scenes(N_TEST, test=True)
train_targets, test_targets = unit_labels(train), unit_labels(test)
PIXEL_MEAN, PIXEL_STD = float(train.images.mean()), float(train.images.std())
object_fraction = float((test_targets > 0).mean())
print(f"object sizes {train.sizes.min():.1f}..{train.sizes.max():.1f} px; object units: "
      f"{object_fraction:.1%} of the test units")
check((test_targets > 0).any(axis=(1, 2)).mean() > 0.9,
      "almost every test scene has at least one object unit")


def network_input(images):
    """Images in [0, 1] -> the standardised Tensor the network reads."""
    return Tensor((images - PIXEL_MEAN) / PIXEL_STD)

# %% [markdown]
# ## 3. A four-level pyramid, and the attention on top
#
#     conv 3×3, 1→16 · ReLU · max-pool 2        48×48 → 24×24   level 0 (after a 1×1 conv to 32)
#     conv 3×3, 16→32 · ReLU · max-pool 2       24×24 → 12×12
#     conv 3×3, 32→32 · ReLU                    12×12           level 1, and the queries
#     conv 3×3, 32→32 · ReLU · max-pool 2       12×12 → 6×6     level 2
#     max-pool 2                                6×6 → 3×3       level 3
#
# Level l has stride 2^(l+1) pixels: 24×24, 12×12, 6×6 and 3×3 positions, 765 in all, each
# with 32 channels. Flattened row by row and joined (`functional.cat`), they are the `value`
# (N, 765, 32). The 144 positions of level 1 are the queries (N, 144, 32); query (i, j) has
# the reference point of its unit's centre, ((j + 0.5) / 12, (i + 0.5) / 12) in normalised
# (x, y).
#
# `nn.MultiScaleDeformableAttention(32, num_heads=4, num_levels=4, num_points=4)` then gives
# each query 4 heads × 4 levels × 4 points = 64 sampling points. After it, as in a
# transformer block, the query's own feature is added back (a residual) and a small
# two-layer perceptron turns the result into 11 scores, one per class.
#
# The network is trained with lesson 07's loop (`scene_network.train`: Adam with a cosine
# schedule, batches of 16, a loss that weighs object units and background units equally).

# %%
EMBED, HEADS, LEVELS, POINTS = 32, 4, 4, 4
LEVEL_SHAPES = np.array([[24, 24], [12, 12], [6, 6], [3, 3]])  # (H_l, W_l)
LEVEL_STRIDES = IMAGE_SIZE // LEVEL_SHAPES[:, 0]  # 2, 4, 8, 16 pixels
unit = (np.arange(MAP_SIZE) + 0.5) / MAP_SIZE
REFERENCE_POINTS = np.stack(np.meshgrid(unit, unit, indexing="xy"), -1).reshape(1, -1, 2)


class PyramidAttention(nn.Module):
    """The network above: scores (N, 11, 12, 12) for images (N, 1, 48, 48)."""

    def __init__(self, seed: int):
        super().__init__()

        def init(layer_index):
            return np.random.default_rng([seed, layer_index])

        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, generator=init(0))
        self.conv2 = nn.Conv2d(16, EMBED, 3, padding=1, generator=init(1))
        self.conv3 = nn.Conv2d(EMBED, EMBED, 3, padding=1, generator=init(2))
        self.conv4 = nn.Conv2d(EMBED, EMBED, 3, padding=1, generator=init(3))
        self.lateral0 = nn.Conv2d(16, EMBED, 1, generator=init(4))
        self.pool = nn.MaxPool2d(2)
        self.attention = nn.MultiScaleDeformableAttention(EMBED, HEADS, LEVELS, POINTS,
                                                          generator=init(5))
        self.hidden = nn.Linear(EMBED, 64, generator=init(6))
        self.classify = nn.Linear(64, 11, generator=init(7))

    def pyramid(self, images):
        """The four levels, (N, 32, H_l, W_l) each, finest first."""
        stride2 = self.pool(F.relu(self.conv1(images)))
        level1 = F.relu(self.conv3(self.pool(F.relu(self.conv2(stride2)))))
        level2 = self.pool(F.relu(self.conv4(level1)))
        return [self.lateral0(stride2), level1, level2, self.pool(level2)]

    def queries_and_value(self, images):
        """query (N, 144, 32): level 1's positions; value (N, 765, 32): all levels, joined."""
        flat = [F.permute(F.flatten(level, 2), (0, 2, 1)) for level in self.pyramid(images)]
        return flat[1], F.cat(flat, 1)

    def forward(self, images):
        n = images.shape[0]
        query, value = self.queries_and_value(images)
        reference = np.broadcast_to(REFERENCE_POINTS, (n,) + REFERENCE_POINTS.shape[1:])
        read = self.attention(query, reference.astype(np.float32), value, LEVEL_SHAPES)
        scores = self.classify(F.relu(self.hidden(F.relu(query + read))))  # (N, 144, 11)
        return F.reshape(F.permute(scores, (0, 2, 1)), (n, 11, MAP_SIZE, MAP_SIZE))


model = PyramidAttention(SEED)
print(model)
print(f"{sum(p.numel() for p in model.parameters())} parameters, of which the attention "
      f"has {sum(p.numel() for p in model.attention.parameters())}")
check(sum(h * w for h, w in LEVEL_SHAPES) == 765, "the value has 24² + 12² + 6² + 3² = 765 "
      "positions")

# %% [markdown]
# ## 4. Training, and what the network finds and names
#
# Three numbers on the test scenes, after every epoch:
#
# * **units**: the share of object units that name their digit (chance: 10%) and of
#   background units that say background;
# * **found**: the share of scenes whose most object-like unit (the lowest background
#   probability) lies on the digit, that is, its target is not background. A unit drawn at
#   random would be on it as often as object units are among all units (printed above);
# * **named**: the share of scenes where the digit with the most probability summed over all
#   144 units is the scene's digit (chance: 10%).

# %%
def predict(network, images, batch=100):
    """Class probabilities of every unit, (N, 11, 12, 12)."""
    with no_grad():
        scores = np.concatenate([network(network_input(images[i:i + batch])).numpy()
                                 for i in range(0, len(images), batch)])
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    return scores / scores.sum(axis=1, keepdims=True)


def evaluate(network, scenes, targets):
    """The measures above, and each scene's found unit (row, column) and named digit."""
    probabilities = predict(network, scenes.images)
    on_object = targets > 0
    predicted = probabilities.argmax(axis=1)
    n = len(scenes.images)
    found = (probabilities[:, 0].reshape(n, -1).argmin(axis=1))
    found_unit = np.stack(np.unravel_index(found, (MAP_SIZE, MAP_SIZE)), -1)
    named = probabilities[:, 1:].sum(axis=(2, 3)).argmax(axis=1)
    return {"object units": float((predicted[on_object] == targets[on_object]).mean()),
            "background units": float((predicted[~on_object] == 0).mean()),
            "found": float(on_object.reshape(n, -1)[np.arange(n), found].mean()),
            "named": float((named == scenes.labels).mean()),
            "found unit": found_unit, "named digit": named}


history = []


def report(epoch, loss):
    history.append((loss, evaluate(model, test, test_targets)))
    measured = history[-1][1]
    print(f"epoch {epoch}: mean training loss {loss:.3f}; test: object units "
          f"{measured['object units']:.3f}, background units {measured['background units']:.3f}, "
          f"found {measured['found']:.3f}, named {measured['named']:.3f}")
