# %% [markdown]
# # 10 the GPU variants: threads, atomics, and the same numbers on the cuda backend
#
# minidcn's `cuda` backend (`minidcn/backends/cuda/`) runs every op as `numba.cuda` kernels:
# thousands of threads, each computing a few elements. This lesson looks at three things a
# GPU kernel has to get right that a loop on the CPU does not:
#
# 1. **which thread computes which element**: the launch configuration `grid_for(n)` and the
#    grid-stride loop every kernel is written as, drawn over a real output map;
# 2. **why the deformable convolution's backward pass uses atomic additions**: the sampling
#    points of different output pixels share input pixels, counted on a real layer; and what
#    that does to determinism, since float addition is not associative;
# 3. **that the cuda backend computes the same numbers as the CPU**: one layer, forward and
#    every gradient, to float64 round-off.
#
# No GPU is needed: where there is none, Numba's CUDA *simulator* runs the very same kernels,
# every CUDA thread as a Python thread. Where a GPU exists, the lesson runs on it.
#
# Run it with `minidcn lesson 10` or `python lessons/10_gpu_variants.py` (`MINIDCN_QUICK=1`
# for the short version). Every claim is checked with `check(...)`.

# %% [markdown]
# ## 0. Simulator or GPU? Decide before Numba is imported
#
# `numba.cuda` chooses between a real GPU and the simulator once, when it is first imported,
# from the environment variable `NUMBA_ENABLE_CUDASIM`. To know whether a GPU is usable we
# must ask `numba.cuda.is_available()`, but asking imports `numba.cuda`, and after that the
# choice is made. So we ask in a *child* Python process, with the simulator switched off
# there, and decide for this process from its answer. (Lesson 02 looks for `nvidia-smi`
# instead, which is quicker but only sees the driver, not whether Numba can use it.)
#
# If you set `NUMBA_ENABLE_CUDASIM` yourself (to `1` or `0`), the lesson keeps your choice.

# %%
import os
import subprocess
import sys
import time

lesson_start_wall, lesson_start_cpu = time.perf_counter(), time.process_time()


def numba_sees_a_gpu() -> tuple[bool, str]:
    """Ask a child Python, with the simulator off, whether numba.cuda finds a usable GPU."""
    env = {name: value for name, value in os.environ.items() if name != "NUMBA_ENABLE_CUDASIM"}
    probe = "from numba import cuda; print(cuda.is_available())"
    try:
        answer = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                                text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return False, "the probe timed out"
    lines = answer.stdout.strip().splitlines()
    if answer.returncode != 0 or not lines:
        return False, f"the probe failed: {answer.stderr.strip()[-300:]}"
    return lines[-1] == "True", f"numba.cuda.is_available() printed {lines[-1]}"


if "NUMBA_ENABLE_CUDASIM" in os.environ:
    print("NUMBA_ENABLE_CUDASIM was set by you:", os.environ["NUMBA_ENABLE_CUDASIM"])
else:
    start = time.perf_counter()
    has_gpu, reason = numba_sees_a_gpu()
    print(f"GPU probe in a child process ({time.perf_counter() - start:.1f} s): {reason}")
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0" if has_gpu else "1"
SIMULATED = os.environ["NUMBA_ENABLE_CUDASIM"] == "1"
print("the cuda backend runs on:", "the CUDA simulator (CPU)" if SIMULATED else "a real GPU")

# %%
import contextlib
import inspect
import math
import re

import matplotlib
import matplotlib.pyplot as plt
import numba
import numpy as np
from numba import cuda

import minidcn
from minidcn import Tensor
from minidcn import functional as F
from minidcn import nn, viz
from minidcn.backends.cuda import deform_conv as cuda_deform_conv
from minidcn.device.launch import MAX_BLOCKS, THREADS_PER_BLOCK, grid_for
from minidcn.lessons_support import check, quick, save_figure

rng = np.random.default_rng(10)
check(cuda.is_available(), "numba.cuda is usable here (the simulator is always available)")

# %% [markdown]
# ## 1. One thread per element, in a grid-stride loop
#
# A CUDA kernel is one function that the GPU runs in many threads at once. The threads come
# in **blocks** (here `THREADS_PER_BLOCK` = 128 threads each); the blocks form the **grid**.
# Inside the kernel, `cuda.grid(1)` = blockIdx · blockDim + threadIdx is the thread's global
# number and `cuda.gridsize(1)` the number of threads in the grid. Every minidcn kernel is
# written as a *grid-stride loop* over its n work items:
#
#     for i in range(cuda.grid(1), n, cuda.gridsize(1)):
#         ... compute element i ...
#
# Thread t computes items t, t + T, t + 2T, ... (T threads in all), so the kernel is correct
# for *any* grid, and `minidcn.device.launch.grid_for(n)` only picks a good one:
# enough blocks of 128 to give every item its own thread, but at most `MAX_BLOCKS` = 4096
# of them. Beyond 4096 · 128 = 524,288 items the grid stops growing and each thread loops.
#
# An item is whatever the kernel makes one of: for the deformable convolution's output
# kernel, one output value y[n, o, oy, ox], numbered in C order
# i = ((n · C_out + o) · H_out + oy) · W_out + ox.
#
# Rather than trust the formula, we ask the device. The kernel below has exactly the
# library's loop, and each thread writes down, for every item it handles, its block, its
# thread number in the block and the pass of the loop.

# %%
@cuda.jit
def record_owner(block_of, thread_of, pass_of):
    """For every item i: the block and thread (in the block) that handled it, and on which pass."""
    first, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(first, block_of.size, stride):
        block_of[i] = cuda.blockIdx.x
        thread_of[i] = cuda.threadIdx.x
        pass_of[i] = (i - first) // stride


def owners(shape, launch):
    """Run ``record_owner`` with ``launch`` = (blocks, threads) over an array of ``shape``."""
    n = int(np.prod(shape))
    recorded = [cuda.to_device(np.full(n, -1, np.int32)) for _ in range(3)]
    record_owner[launch](*recorded)
    return [r.copy_to_host().reshape(shape) for r in recorded]


# %% [markdown]
# The output map: a deformable layer with 2 output channels on a 12 × 12 input (3 × 3
# kernel, padding 1) gives y of shape (1, 2, 12, 12), n = 288 values. `grid_for(288)` asks
# for 3 blocks of 128 = 384 threads; the last 96 find no item and do nothing. Then the same
# map with a deliberately small grid of 2 blocks × 32 threads, to watch the loop go round.

# %%
layer_for_map = nn.DeformConv2d(1, 2, 3, padding=1, generator=rng)
with minidcn.no_grad():
    y_map = layer_for_map(Tensor(rng.standard_normal((1, 1, 12, 12)).astype(np.float32)))
map_shape = y_map.shape
n_map = int(np.prod(map_shape))
map_launch = grid_for(n_map)
small_launch = (2, 32)
print(f"output y {map_shape}: n = {n_map}, grid_for(n) = {map_launch} "
      f"(blocks, threads per block) -> {map_launch[0] * map_launch[1]} threads")

block_of, thread_of, pass_of = owners(map_shape, map_launch)
small_block, small_thread, small_pass = owners(map_shape, small_launch)

flat = np.arange(n_map).reshape(map_shape)
check(map_launch == (3, 128), "grid_for(288) launches 3 blocks of 128 threads")
check(np.array_equal(block_of * 128 + thread_of, flat) and not pass_of.any(),
      "with grid_for(n), item i is computed by thread i (block i // 128, thread i % 128), in one pass")
threads_in_small = small_launch[0] * small_launch[1]
check(np.array_equal(small_block * small_launch[1] + small_thread, flat % threads_in_small)
      and np.array_equal(small_pass, flat // threads_in_small),
      "with 64 threads, item i is computed by thread i % 64 on pass i // 64 of the grid-stride loop")
print(f"idle threads with grid_for: {map_launch[0] * map_launch[1] - n_map}; "
      f"passes with the 2 × 32 grid: {small_pass.max() + 1}")

# %% [markdown]
# How big does the grid get? Here are the launches that one forward and backward pass of
# the deformable convolution makes (`backends/cuda/deform_conv.py`), as n per kernel. Each
# kernel's docstring says what its items are; section 5 checks these counts against the
# launches the library really makes. For a layer the size of ResNet-50's last stage in a
# detector (batch 2, 512 → 512 channels, 3 × 3, the 25 × 38 feature map of an 800 × 1216
# image at stride 32), the big kernels exceed 524,288 items, and their threads go round the
# loop many times.

# %%
def deform_conv_launches(batch, in_channels, out_channels, offset_groups, kernel_points,
                         out_pixels, groups=1):
    """(kernel, its item, n) of every launch of one cuda deform_conv2d forward + backward."""
    sampling_points = batch * offset_groups * kernel_points * out_pixels
    return [
        ("_im2col_kernel", "sampling point", sampling_points),
        ("_output_kernel", "output value", batch * out_channels * out_pixels),
        ("_im2col_kernel", "sampling point (backward recomputes the columns)", sampling_points),
        ("_grad_weight_kernel", "weight", out_channels * in_channels // groups * kernel_points),
        ("_grad_bias_kernel", "bias", out_channels),
        ("_grad_cols_kernel", "column entry", batch * in_channels * kernel_points * out_pixels),
        ("_col2im_kernel", "sampling point", sampling_points),
    ]


resnet_stage5 = deform_conv_launches(2, 512, 512, 1, 9, 25 * 38)
print(f"{'kernel':<21}{'one item is a':<51}{'n':>10}{'blocks':>8}{'threads':>8}{'passes':>7}")
for kernel, item, n in resnet_stage5:
    blocks, threads = grid_for(n)
    print(f"{kernel:<21}{item:<51}{n:>10,}{blocks:>8}{threads:>8}{math.ceil(n / (blocks * threads)):>7}")
check(grid_for(10**9) == (MAX_BLOCKS, THREADS_PER_BLOCK), "the grid stops growing at 4096 blocks")

# %%
fig = plt.figure(figsize=(13, 7.6))
layout = fig.add_gridspec(2, 2, height_ratios=[1, 1.25], hspace=0.25)
top_left, top_right = fig.add_subplot(layout[0, 0]), fig.add_subplot(layout[0, 1])
bottom = fig.add_subplot(layout[1, :])


def side_by_side(per_channel):
    """(1, 2, H, W) -> one (H, 2W + 1) canvas, the two channels apart by a NaN column."""
    height = per_channel.shape[2]
    gap = np.full((height, 1), np.nan)
    return np.hstack([per_channel[0, 0].astype(float), gap, per_channel[0, 1].astype(float)])


def draw_owner_map(ax, colour_by, labels, colours, title, key_name):
    """Each output value coloured by ``colour_by`` and labelled with its thread number; a key
    says which colour is which value of ``colour_by`` (``key_name`` 0, 1, ...)."""
    canvas = side_by_side(colour_by)
    ax.imshow(canvas, cmap=matplotlib.colors.ListedColormap(colours), vmin=-0.5,
              vmax=len(colours) - 0.5, interpolation="nearest")
    for (row, col), value in np.ndenumerate(side_by_side(labels)):
        if not np.isnan(value):
            ax.text(col, row, int(value), ha="center", va="center", fontsize=4.6)
    height, width = colour_by.shape[2:]
    for channel in (0, 1):
        ax.text(channel * (width + 1) + (width - 1) / 2, height - 0.3, f"y[0, {channel}]",
                ha="center", va="top", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    used = np.unique(colour_by)
    ax.legend(handles=[matplotlib.patches.Patch(color=colours[v], label=f"{key_name} {v}") for v in used],
              loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=len(used), fontsize=8, frameon=False)


draw_owner_map(top_left, block_of, thread_of, ["#fbb4ae", "#b3cde3", "#ccebc5"],
               f"y of shape {tuple(map_shape)}, one cell per value: grid_for({n_map}) = "
               f"{map_launch[0]} blocks × {map_launch[1]} threads\n"
               "colour: the block; number: the thread in its block (one value each)", "block")
draw_owner_map(top_right, small_pass, small_block * small_launch[1] + small_thread,
               ["#fbb4ae", "#b3cde3", "#ccebc5", "#decbe4", "#fed9a6"],
               "the same y with a small grid, 2 blocks × 32 threads\n"
               "colour: the pass of the grid-stride loop; number: the thread (of 64)", "pass")
sizes = np.unique(np.logspace(0, 8, 400).astype(np.int64))
grids = np.array([grid_for(int(n)) for n in sizes])
threads_launched = grids[:, 0] * grids[:, 1]
bottom.loglog(sizes, threads_launched, label="threads launched = blocks × 128")
bottom.loglog(sizes, np.ceil(sizes / threads_launched), label="passes = items per thread (at most)")
bottom.loglog(sizes, sizes, ":", color="gray", label="n (one thread per item)")
for n in sorted({n for _, _, n in resnet_stage5}):
    kernels_of_n = sorted({kernel for kernel, _, size in resnet_stage5 if size == n})
    passes = math.ceil(n / np.prod(grid_for(n)))
    bottom.plot(n, passes, "o", color="tab:red", label="passes of the kernels of one ResNet-50 stage-5 "
                "DCN layer (n of each launch)" if n == min(size for _, _, size in resnet_stage5) else None)
    bottom.annotate(", ".join(kernels_of_n), (n, passes), fontsize=7, rotation=30, xytext=(3, 3),
                    textcoords="offset points")
bottom.axvline(MAX_BLOCKS * THREADS_PER_BLOCK, color="gray", lw=0.8,
               label=f"n = {MAX_BLOCKS} blocks × {THREADS_PER_BLOCK} "
                     f"= {MAX_BLOCKS * THREADS_PER_BLOCK:,}")
bottom.set_xlabel("n, the items of one launch")
bottom.set_ylabel("threads launched, or passes\n(both log scale)")
bottom.set_title("grid_for(n): the grid grows with n up to 4096 blocks of 128 threads, "
                 "then each thread loops over several items", fontsize=9)
bottom.legend(fontsize=8, loc="upper left")
save_figure(fig, "10_thread_map.png")

# %% [markdown]
# ## 2. Why the backward pass needs atomics
#
# The forward pass is a *gather*: the thread of a sampling point (image n, offset group g,
# kernel point k, output pixel p) reads the four input pixels around its point, and writes
# its own column entry. Nobody else writes there. The backward pass for the input runs the
# same threads the other way round, a *scatter*: each sends w_i · m · grad_col to the four
# pixels around its point,
#
#     grad_x[n, c, q_i] += m · w_i · grad_cols[n, c·K + k, p]      (i = 0..3, every c in g).
#
# If two threads add to the same q_i at the same time, a plain `grad_x[q] += v` loses one of
# the two (both read the old value, both write old + their own). `cuda.atomic.add` makes
# the read-add-write indivisible. Is it really needed? Let us count, for a real layer, how
# many additions land on each input pixel.
#
# The layer: a `DeformConv2d` with 4 → 8 channels, 3 × 3, padding 1, 2 offset groups and a
# mask (DCNv2), on a batch of 2 images of 16 × 16 with random values. Its offsets are drawn
# at random, N(0, 1) pixels for dy and dx (seed 10), its mask uniformly in (0, 1).
#
# For comparison, the plain convolution on the cuda backend (`backends/cuda/conv.py`) needs
# no atomics: with a fixed grid, input pixel q knows exactly which outputs read it, so its
# own thread can *gather* its gradient. With learned offsets, any output may read any
# pixel, and finding a pixel's readers would mean searching every sampling point.

# %%
BATCH, IN_CHANNELS, OUT_CHANNELS, SIZE, OFFSET_GROUPS = 2, 4, 8, 16, 2
layer = nn.DeformConv2d(IN_CHANNELS, OUT_CHANNELS, 3, padding=1, offset_groups=OFFSET_GROUPS,
                        generator=rng)
kh, kw = layer.kernel_size
points_per_window = kh * kw
x_host = rng.standard_normal((BATCH, IN_CHANNELS, SIZE, SIZE)).astype(np.float32)
offset_host = rng.normal(0.0, 1.0, (BATCH, 2 * OFFSET_GROUPS * points_per_window, SIZE, SIZE)
                         ).astype(np.float32)
mask_host = rng.uniform(0.0, 1.0, (BATCH, OFFSET_GROUPS * points_per_window, SIZE, SIZE)
                        ).astype(np.float32)
grad_y_host = rng.standard_normal((BATCH, OUT_CHANNELS, SIZE, SIZE)).astype(np.float32)

with minidcn.no_grad(), nn.recording_sampling(layer):
    layer(Tensor(x_host), offset=Tensor(offset_host), mask=Tensor(mask_host))
locations = layer.last_sampling_locations  # (B, G_off, K, H_out, W_out, 2), the points sampled
print("sampling locations:", locations.shape)


def corner_adds(points, height, width):
    """The additions the backward scatter makes for sampling points (..., 2) of (y, x).

    Following SEMANTICS.md: a point takes part if -1 < y < H and -1 < x < W; corner i is
    (y0 + i // 2, x0 + i % 2) with y0 = floor(y), x0 = floor(x), ly = y - y0, lx = x - x0, and
    weight w = ((1-ly)(1-lx), (1-ly) lx, ly (1-lx), ly lx); corners outside the image are
    skipped.  Returns (target, weight), each (..., 4): target = qy · W + qx, or -1 where
    nothing is added.
    """
    y, x = points[..., 0].astype(np.float64), points[..., 1].astype(np.float64)
    inside = (y > -1) & (y < height) & (x > -1) & (x < width)
    y0, x0 = np.floor(np.where(inside, y, 0)), np.floor(np.where(inside, x, 0))
    ly, lx = y - y0, x - x0
    weight = np.stack([(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx], axis=-1)
    qy, qx = y0[..., None] + np.array([0, 0, 1, 1]), x0[..., None] + np.array([0, 1, 0, 1])
    adds = inside[..., None] & (qy >= 0) & (qy < height) & (qx >= 0) & (qx < width)
    return np.where(adds, qy * width + qx, -1).astype(np.int64), np.where(adds, weight, 0.0)


def hits_per_pixel(target, weight, height, width):
    """For each (image, offset group) plane: the additions of non-zero weight per input pixel,
    and from how many different output pixels they come.  target, weight (B, G, K, H_o, W_o, 4)."""
    batch, groups = target.shape[:2]
    out_pixel = np.broadcast_to(np.arange(np.prod(target.shape[3:5])).reshape(1, 1, 1, *target.shape[3:5], 1),
                                target.shape)
    counts = np.zeros((batch, groups, height * width), np.int64)
    readers = np.zeros_like(counts)
    for n, g in np.ndindex(batch, groups):
        real = weight[n, g] != 0
        counts[n, g] = np.bincount(target[n, g][real], minlength=height * width)
        pairs = np.unique(np.stack([target[n, g][real], out_pixel[n, g][real]]), axis=1)
        readers[n, g] = np.bincount(pairs[0], minlength=height * width)
    return counts.reshape(batch, groups, height, width), readers.reshape(batch, groups, height, width)


target, corner_weight = corner_adds(locations, SIZE, SIZE)
counts, readers = hits_per_pixel(target, corner_weight, SIZE, SIZE)
plain_target, plain_weight = corner_adds(
    F.sampling_locations(np.zeros_like(offset_host), 3, padding=1), SIZE, SIZE)
plain_counts, plain_readers = hits_per_pixel(plain_target, plain_weight, SIZE, SIZE)

planes = BATCH * OFFSET_GROUPS
shared = int((counts > 1).sum())
shared_between_outputs = int((readers > 1).sum())
print(f"{planes} (image, offset group) planes of {SIZE}×{SIZE} = {counts.size} input pixels; "
      f"each addition is repeated for the {IN_CHANNELS // OFFSET_GROUPS} channels of its group")
print(f"random offsets: additions per input pixel: min {counts.min()}, mean {counts.mean():.1f}, "
      f"max {counts.max()}")
print(f"  pixels receiving more than one addition:      {shared} of {counts.size}")
print(f"  pixels read by more than one output pixel:     {shared_between_outputs} of {counts.size}")
print(f"  pixels nobody reads (gradient stays 0):        {int((counts == 0).sum())}")
print(f"zero offsets (a plain 3×3 grid): max {plain_counts.max()} additions, "
      f"{int((plain_readers > 1).sum())} pixels read by more than one output pixel")
check(shared_between_outputs > counts.size // 2,
      "most input pixels receive additions from more than one output pixel: threads collide")
check(int(counts.sum()) == int((corner_weight != 0).sum()),
      "the histogram counts every non-zero addition once")
check(plain_readers[..., 1:-1, 1:-1].min() == 9 and plain_readers.max() == 9,
      "a plain 3×3 grid: every interior pixel is read by exactly 9 output pixels")

# %% [markdown]
# The picture: how many additions land on each input pixel of one plane (left), and, for the
# busiest pixel, every sampling point that adds into it, with an arrow from the centre of the
# window it belongs to (with stride 1 and padding 1, output pixel (oy, ox) has its window
# centred on input pixel (oy, ox)). The points are the layer's own `last_sampling_locations`,
# for the offsets stated above. Right: the same count for zero offsets.

# %%
busiest = np.unravel_index(np.argmax(counts), counts.shape)
n_busy, g_busy, qy_busy, qx_busy = (int(v) for v in busiest)
busy_flat = qy_busy * SIZE + qx_busy
touching = np.argwhere((target[n_busy, g_busy] == busy_flat) & (corner_weight[n_busy, g_busy] != 0))
k_t, oy_t, ox_t = touching[:, 0], touching[:, 1], touching[:, 2]  # kernel point, output pixel
points_t = locations[n_busy, g_busy, k_t, oy_t, ox_t]
centres_t = np.stack([oy_t, ox_t], axis=-1).astype(np.float64)
print(f"busiest pixel: image {n_busy}, offset group {g_busy}, (y, x) = ({qy_busy}, {qx_busy}): "
      f"{counts[busiest]} additions from {readers[busiest]} output pixels")
check(len(touching) == counts[busiest], "each of those additions comes from its own sampling point")

fig, (ax_count, ax_plain) = plt.subplots(1, 2, figsize=(12, 6.4), layout="constrained")
shown = viz.show_image(ax_count, counts[n_busy, g_busy], cmap="magma", vmin=0, vmax=counts.max(),
                       title=f"random offsets: colour = additions into each input pixel\n"
                             f"({SIZE}×{SIZE} px plane: image {n_busy}, offset group {g_busy})")
viz.draw_offsets(ax_count, centres_t, points_t - centres_t, color="tab:cyan", width=0.003, alpha=0.8,
                 label=f"the {len(touching)} sampling points (of {readers[busiest]} output pixels) that "
                       f"add into ({qy_busy}, {qx_busy}),\neach with an arrow from its window's centre")
viz.draw_points(ax_count, points_t, color="tab:cyan", size=8)
ax_count.plot(qx_busy, qy_busy, "s", mfc="none", mec="white", ms=13, mew=2,
              label=f"the busiest pixel, ({qy_busy}, {qx_busy}): {counts[busiest]} additions")
ax_count.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), fontsize=8, facecolor="0.55")
shown = viz.show_image(ax_plain, plain_counts[0, 0], cmap="magma", vmin=0, vmax=counts.max(),
                       title=f"zero offsets (a plain 3×3 grid): additions into each input pixel\n"
                             f"(the same {SIZE}×{SIZE} px plane; at most {plain_counts.max()})")
fig.colorbar(shown, ax=[ax_count, ax_plain], fraction=0.03,
             label="additions into the pixel's gradient (count, same scale in both)")
save_figure(fig, "10_atomic_collisions.png")

# %% [markdown]
# ## 3. Atomics fix the race, not the order
#
# An atomic addition cannot lose an update, but the GPU does not promise *which* thread adds
# first. Thread scheduling varies from run to run, so the additions into one pixel happen
# in a different order each time. In exact arithmetic that would not matter. In floating
# point it does: every addition rounds to the nearest representable number, and so
# (a + b) + c and a + (b + c) round differently.

# %%
print(f"float64: (0.1 + 0.2) + 0.3 = {(0.1 + 0.2) + 0.3!r}, 0.1 + (0.2 + 0.3) = {0.1 + (0.2 + 0.3)!r}")
a, b, c = np.float32(0.1), np.float32(0.7), np.float32(0.6)
print(f"float32: (0.1 + 0.7) + 0.6 = {float((a + b) + c)!r}, 0.1 + (0.7 + 0.6) = {float(a + (b + c))!r}")
check((0.1 + 0.2) + 0.3 != 0.1 + (0.2 + 0.3) and (a + b) + c != a + (b + c),
      "float64 and float32 addition are not associative")
big, one = np.float32(1e8), np.float32(1.0)
print(f"float32: (1e8 + 1) - 1e8 = {float((big + one) - big)}, (1e8 - 1e8) + 1 = {float((big - big) + one)}")
check((big + one) - big != (big - big) + one, "a small term can vanish next to a large one")

# %% [markdown]
# Now the real thing: the additions into the busiest pixel above, for one channel, with the
# values the backward pass adds, m · w_i · grad_cols (float32, for a random gradient of the
# output). We add them up one after the other, as atomics do, in many random orders, and
# compare with their exact sum (`math.fsum` is exact, then rounded once).
#
# grad_cols[n, c·K + k, p] = Σ_o w[o, c, k] · grad_y[n, o, p] is the gradient that reaches
# the sampled value of channel c, kernel point k, at output pixel p (one weight group here).

# %%
weight_host = layer.weight.numpy()  # (C_out, C_in, kh, kw), float32
grad_cols = np.einsum("ocij,nop->ncijp", weight_host, grad_y_host.reshape(BATCH, OUT_CHANNELS, -1),
                      optimize=True).reshape(BATCH, IN_CHANNELS, points_per_window, SIZE * SIZE)
per_group = IN_CHANNELS // OFFSET_GROUPS
group_of_channel = np.arange(IN_CHANNELS) // per_group


def scatter_contributions():
    """Every addition of the backward scatter: (flat index into grad_x, value), in the order
    (image, channel, kernel point, output pixel, corner); values in float32."""
    target_bg = target.reshape(BATCH, OFFSET_GROUPS, points_per_window, SIZE * SIZE, 4)
    weight_bg = corner_weight.reshape(target_bg.shape)
    mask_bg = mask_host.reshape(BATCH, OFFSET_GROUPS, points_per_window, SIZE * SIZE, 1)
    tgt = target_bg[:, group_of_channel]  # (B, C_in, K, P, 4): channel c uses its group's points
    scale = (mask_bg * weight_bg).astype(np.float32)[:, group_of_channel]
    values = scale * grad_cols[..., None]
    plane = (np.arange(BATCH)[:, None] * IN_CHANNELS + np.arange(IN_CHANNELS)[None, :])
    flat_index = plane[:, :, None, None, None] * SIZE * SIZE + tgt
    real = tgt >= 0
    return flat_index[real], values[real]


flat_index, values = scatter_contributions()
channel_busy = g_busy * per_group  # the first channel of the busiest pixel's offset group
pixel_index = (n_busy * IN_CHANNELS + channel_busy) * SIZE * SIZE + busy_flat
into_busy = values[(flat_index == pixel_index) & (values != 0)]
exact = math.fsum(into_busy.astype(np.float64))
shuffles = 500 if quick() else 5000
orders = np.argsort(rng.random((shuffles, into_busy.size)), axis=1)
sums = np.cumsum(into_busy[orders], axis=1, dtype=np.float32)[:, -1]  # one add after another
ulp = np.spacing(np.float32(abs(exact)))
off_by = (sums.astype(np.float64) - exact) / ulp
distinct = np.unique(sums)
print(f"{into_busy.size} additions into grad_x[{n_busy}, {channel_busy}, {qy_busy}, {qx_busy}]; "
      f"exact sum {exact:.9g}; one float32 ulp there = {ulp:.3g}")
print(f"{shuffles} random orders give {distinct.size} different float32 results, from "
      f"{off_by.min():+.0f} to {off_by.max():+.0f} ulp of the exact sum "
      f"(relative spread {(sums.max() - sums.min()) / abs(exact):.1e})")
check(distinct.size > 1, "different orders of the same float32 additions give different sums")
check(np.abs(off_by).max() < into_busy.size,
      "every order stays within one ulp per addition of the exact sum")

# %% [markdown]
# The same for the whole of grad_x. `np.add.at(grad, index, values)` performs the additions
# one by one in the order given, like atomics that happened to run in that order. First,
# to be sure these are the right additions: in their natural order they reproduce the CPU
# backend's grad_x, to float32 round-off. Then, several random orders.

# %%
def scatter_in_order(order):
    """grad_x built by performing the additions in ``order`` (float32, one at a time)."""
    grad = np.zeros(BATCH * IN_CHANNELS * SIZE * SIZE, np.float32)
    np.add.at(grad, flat_index[order], values[order])
    return grad.reshape(BATCH, IN_CHANNELS, SIZE, SIZE)


def cpu_grad_input(dtype):
    """grad_x of the layer's deform_conv2d on the numba backend, for the random grad_y."""
    with minidcn.backend("numba"):
        x_t = Tensor(x_host, dtype=dtype, requires_grad=True)
        y = F.deform_conv2d(x_t, Tensor(offset_host, dtype=dtype), Tensor(weight_host, dtype=dtype),
                            Tensor(layer.bias.numpy(), dtype=dtype), padding=1,
                            mask=Tensor(mask_host, dtype=dtype))
        y.backward(Tensor(grad_y_host, dtype=dtype))
    return x_t.grad.numpy()


natural = scatter_in_order(np.arange(values.size))
library = cpu_grad_input(np.float32)
scale_of_grad = np.abs(library).max()
error = np.abs(natural - library).max() / scale_of_grad
print(f"emulated scatter against the numba backend's grad_x: relative difference {error:.1e}")
check(error < 1e-5, "the emulated additions reproduce the library's grad_x to float32 round-off")

repeats = 5 if quick() else 20
emulated = [scatter_in_order(rng.permutation(values.size)) for _ in range(repeats)]
differs = np.mean([np.mean(e != emulated[0]) for e in emulated[1:]])
spread = max(np.abs(e - emulated[0]).max() for e in emulated[1:]) / scale_of_grad
print(f"{repeats} random orders of all {values.size} additions: on average {100 * differs:.0f}% "
      f"of grad_x's {natural.size} entries differ from the first order in their last bits; "
      f"largest difference {spread:.1e} of max |grad_x|")
check(differs > 0.1, "with random atomic orders, a good part of grad_x changes in its last bits")
check(spread < 1e-5, "the changes stay at float32 round-off")

# %%
fig, (ax_hist, ax_orders) = plt.subplots(1, 2, figsize=(12, 4.2))
bins = np.arange(np.floor(off_by.min()) - 0.5, np.ceil(off_by.max()) + 1.5)
ax_hist.hist(off_by, bins=bins, color="tab:blue")
ax_hist.axvline(0, color="black", lw=1, label="the exact sum (math.fsum)")
ax_hist.legend(fontsize=8)
ax_hist.set_xlabel("float32 sum minus exact sum (ulp: the float32 spacing at the sum)")
ax_hist.set_ylabel(f"random orders (of {shuffles})")
ax_hist.set_title(f"{into_busy.size} additions into one pixel of grad_x, summed in {shuffles} "
                  "random orders", fontsize=9)
between = (emulated[1][n_busy, channel_busy].astype(np.float64) - emulated[0][n_busy, channel_busy])
between *= 1e7 / scale_of_grad
shown = viz.show_image(ax_orders, between, cmap="coolwarm", vmin=-np.abs(between).max(),
                       vmax=np.abs(between).max(),
                       title=f"grad_x[{n_busy}, {channel_busy}] ({SIZE}×{SIZE} px) from two random "
                             "orders of the atomic additions:\ntheir difference per pixel "
                             f"({100 * np.mean(between != 0):.0f}% of the pixels differ; grey: equal)")
fig.colorbar(shown, ax=ax_orders, fraction=0.046,
             label="difference / max |grad_x|, in units of 1e-7")
save_figure(fig, "10_summation_order.png")

# %% [markdown]
# ## 4. The CPU backend is deterministic by construction
#
# The `numba` backend (`backends/numba_cpu/deform_conv.py`) parallelises the same scatter
# over (image, offset group): one thread owns all of that group's channels of grad_x and walks
# its sampling points in a fixed order. No two threads write the same number, so it needs
# no atomics, and every sum runs in the same order on every run and for any number of
# threads. (The price: at most B · G_off threads, where the GPU runs one per sampling point.)
# We check it bitwise, in float32, where any change of order would show.

# %%
reruns = [cpu_grad_input(np.float32) for _ in range(3)]
all_threads = numba.get_num_threads()
numba.set_num_threads(1)
one_thread = cpu_grad_input(np.float32)
numba.set_num_threads(all_threads)
print(f"numba threads: {all_threads} and 1; tasks in the scatter: {BATCH * OFFSET_GROUPS}")
check(all(np.array_equal(r, library) for r in reruns),
      "the numba backend's grad_x is bitwise the same on every run")
check(np.array_equal(one_thread, library),
      f"and bitwise the same with 1 thread as with {all_threads}")

# %% [markdown]
# ## 5. The cuda backend computes the same numbers
#
# Now the layer itself on the cuda backend: `deform_conv2d` with a mask, every input moved to
# the device with `.to("cuda")`, forward and backward, against the CPU (`numba` backend), in
# float64. Tiny shapes, because the simulator runs each CUDA thread as a Python thread.
#
# While it runs, we listen in on the launches: the kernel module looks up `grid_for` in its
# own namespace at every launch, so for the duration of the run we put a recording wrapper
# there, which notes n and reads the kernel's name from the line that called it.

# %%
@contextlib.contextmanager
def recorded_launches(module):
    """Record (kernel, n, grid) for every ``grid_for(n)`` that ``module`` calls in the block."""
    launches, original = [], module.grid_for

    def recording_grid_for(n):
        caller = inspect.getframeinfo(inspect.currentframe().f_back).code_context[0]
        kernel = re.search(r"(\w+)\[grid_for", caller)
        launches.append((kernel.group(1) if kernel else "?", n, original(n)))
        return original(n)

    module.grid_for = recording_grid_for
    try:
        yield launches
    finally:
        module.grid_for = original


def deform_layer(device, arrays, params):
    """Forward and backward of deform_conv2d (with mask) on ``device``; host float64 results."""
    x, offset, mask, weight, bias, grad_y = (Tensor(a, dtype=arrays["x"].dtype).to(device)
                                             for a in arrays.values())
    for t in (x, offset, mask, weight, bias):
        t.requires_grad_(True)
    y = F.deform_conv2d(x, offset, weight, bias, mask=mask, **params)
    y.backward(grad_y)
    named = {"y": y, "grad x": x.grad, "grad offset": offset.grad, "grad mask": mask.grad,
             "grad weight": weight.grad, "grad bias": bias.grad}
    return {name: t.to("cpu").numpy() for name, t in named.items()}


def random_problem(batch, in_channels, out_channels, size, offset_groups, groups, params, dtype):
    """Random inputs (and output gradient) of one deform_conv2d, 3 × 3 kernel."""
    stride, padding = params["stride"], params["padding"]
    out_size = (size + 2 * padding - 3) // stride + 1
    shapes = {
        "x": (batch, in_channels, size, size),
        "offset": (batch, 2 * offset_groups * 9, out_size, out_size),
        "mask": (batch, offset_groups * 9, out_size, out_size),
        "weight": (out_channels, in_channels // groups, 3, 3),
        "bias": (out_channels,),
        "grad_y": (batch, out_channels, out_size, out_size),
    }
    arrays = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    arrays["offset"] *= 1.5
    arrays["mask"] = rng.uniform(0.0, 1.0, shapes["mask"])
    return {name: a.astype(dtype) for name, a in arrays.items()}


problems = {  # name: (batch, C_in, C_out, size, offset groups, weight groups, geometry)
    "1×2→3 5×5, 2 offset groups": (1, 2, 3, 5, 2, 1, {"stride": 1, "padding": 1}),
}
if not quick():
    problems["2×4→4 6×6, groups 2, stride 2"] = (2, 4, 4, 6, 2, 2, {"stride": 2, "padding": 1})

agreement = {}
for name, (batch, c_in, c_out, size, g_off, groups, params) in problems.items():
    arrays = random_problem(batch, c_in, c_out, size, g_off, groups, params, np.float64)
    with minidcn.backend("numba"):
        on_cpu = deform_layer("cpu", arrays, params)
    start = time.perf_counter()
    with recorded_launches(cuda_deform_conv) as launches:
        on_cuda = deform_layer("cuda", arrays, params)
    print(f"\n{name}: forward + backward on cuda took {time.perf_counter() - start:.1f} s "
          f"({'simulated' if SIMULATED else 'GPU'})")
    out_pixels = on_cpu["y"].shape[2] * on_cpu["y"].shape[3]
    expected = deform_conv_launches(batch, c_in, c_out, g_off, 9, out_pixels, groups)
    print(f"  {'launch':<22}{'n':>7}  grid_for(n)")
    for kernel, n, grid in launches:
        print(f"  {kernel:<22}{n:>7}  {grid}")
    check(sorted(n for _, n, _ in launches) == sorted(n for _, _, n in expected),
          "the launches have exactly the item counts of section 1 (one thread per sampling point, "
          "output value, column entry, weight, bias)")
    for quantity, cpu_value in on_cpu.items():
        agreement[name, quantity] = np.abs(on_cuda[quantity] - cpu_value).max()
        print(f"  {quantity:<12} max |cuda - cpu| = {agreement[name, quantity]:.1e}   "
              f"(max |value| {np.abs(cpu_value).max():.2f})")
        check(agreement[name, quantity] < 1e-10, f"{quantity}: cuda agrees with the CPU to 1e-10")

# %% [markdown]
# The same through the module: a modulated `DeformConv2d` whose offset and mask predictors
# (plain convolutions, zero at initialisation) get random weights so that its offsets are
# not zero. `layer.to("cuda")` moves its parameters; the predictors then run as cuda conv2d
# kernels, the sigmoid on the device arrays. Every parameter's gradient must agree.

# %%
def module_run(module, x, grad_y, device):
    """Forward + backward of ``module`` on ``device``: output and every parameter's gradient."""
    module.zero_grad()
    module.to(device)
    x_t = Tensor(x).to(device).requires_grad_(True)
    y = module(x_t)
    y.backward(Tensor(grad_y).to(device))
    results = {"y": y.to("cpu").numpy(), "grad x": x_t.grad.to("cpu").numpy()}
    for pname, p in module.named_parameters():
        results["grad " + pname] = p.grad.to("cpu").numpy()
    return results


if not quick():
    dcn = nn.DeformConv2d(2, 3, 3, padding=1, offset_groups=2, modulated=True, generator=rng,
                          dtype=np.float64)
    dcn.record_sampling = True  # the print below reads the cuda forward's offsets and mask
    for predictor in (dcn.offset_conv, dcn.mask_conv):
        predictor.weight.data = rng.normal(0.0, 0.25, predictor.weight.shape)
    x_small = rng.standard_normal((1, 2, 5, 5))
    grad_small = rng.standard_normal((1, 3, 5, 5))
    with minidcn.backend("numba"):
        module_cpu = module_run(dcn, x_small, grad_small, "cpu")
    start = time.perf_counter()
    module_cuda = module_run(dcn, x_small, grad_small, "cuda")
    print(f"DeformConv2d(2, 3, 3, offset_groups=2, modulated=True): cuda forward + backward "
          f"{time.perf_counter() - start:.1f} s")
    regular_grid = F.sampling_locations(np.zeros((1, 2 * 2 * 9, 5, 5)), 3, padding=1)
    print(f"  the predicted offsets: std {(dcn.last_sampling_locations - regular_grid).std():.2f} "
          f"pixels; the mask: from {dcn.last_mask.min():.2f} to {dcn.last_mask.max():.2f}")
    for quantity, cpu_value in module_cpu.items():
        agreement["DeformConv2d module", quantity] = np.abs(module_cuda[quantity] - cpu_value).max()
        print(f"  {quantity:<24} max |cuda - cpu| = {agreement['DeformConv2d module', quantity]:.1e}")
        check(agreement["DeformConv2d module", quantity] < 1e-10,
              f"module {quantity}: cuda agrees with the CPU to 1e-10")
else:
    print("quick mode: the DeformConv2d module comparison runs in the full lesson only")

# %% [markdown]
# Last, determinism on the cuda backend, in float32. Only grad_x is built by atomics; every
# other output is a sum that one thread owns and adds up in a fixed order, so it must be
# bitwise the same on every run, on a GPU as in the simulator. grad_x may differ in its last
# bits on a real GPU. The simulator runs the threads of a block as Python threads, so its
# order of atomics can vary too; we report what this run saw.

# %%
name = next(iter(problems))
batch, c_in, c_out, size, g_off, groups, params = problems[name]
arrays32 = random_problem(batch, c_in, c_out, size, g_off, groups, params, np.float32)
runs32 = [deform_layer("cuda", arrays32, params) for _ in range(2 if quick() else 3)]
for quantity in runs32[0]:
    same = all(np.array_equal(run[quantity], runs32[0][quantity]) for run in runs32[1:])
    print(f"  float32 {quantity:<12} bitwise identical over {len(runs32)} cuda runs: {same}")
    if quantity != "grad x":
        check(same, f"{quantity} (no atomics) is bitwise reproducible on the cuda backend")
spread_x = max(np.abs(run["grad x"] - runs32[0]["grad x"]).max() for run in runs32[1:])
check(spread_x <= 1e-5 * np.abs(runs32[0]["grad x"]).max(),
      "grad x (atomics) agrees between runs to float32 round-off at least")

# %%
fig, ax = plt.subplots(figsize=(10, 4.4))
errors = np.array(list(agreement.values()))
compared = list(dict.fromkeys(name for name, _ in agreement))  # the problems, in order
problem_colours = dict(zip(compared, ("tab:green", "tab:blue", "tab:purple", "tab:brown")))
exact = errors == 0
for name in compared:
    bars = [i for i, (problem, _) in enumerate(agreement) if problem == name]
    ax.bar(bars, np.where(exact[bars], 1e-18, errors[bars]), color=problem_colours[name],
           hatch=["//" if e else "" for e in exact[bars]], label=name)
ax.axhline(1e-10, color="tab:red", lw=1, label="the 1e-10 the lesson requires")
ax.axhline(np.finfo(np.float64).eps, color="gray", lw=1, ls=":", label="float64 epsilon")
ax.set_yscale("log")
ax.set_xticks(range(len(errors)), [quantity for _, quantity in agreement], fontsize=8, rotation=60,
              ha="right")
ax.set_xlabel("output or gradient compared" + (" (hatched: no difference at all, drawn at 1e-18)"
                                               if exact.any() else ""))
ax.set_ylabel("largest |cuda - cpu| over its\nentries (absolute, log scale)")
ax.set_title("the cuda backend" + (" (simulated)" if SIMULATED else " (GPU)")
             + " against the numba CPU backend, float64", fontsize=9)
ax.legend(fontsize=8, loc="center right", title="bar colour: the problem compared (batch × in → out "
          "channels, input size)", title_fontsize=8)
save_figure(fig, "10_cuda_agreement.png")

# %% [markdown]
# ## What to take away
#
# * A CUDA kernel is one thread per item in a grid-stride loop; `grid_for(n)` gives each item
#   its own thread up to 524,288 of them, and beyond that each thread takes several.
# * Forward passes gather, so each thread owns what it writes. The deformable convolution's
#   input gradient is a scatter whose targets depend on the learned offsets, and many
#   threads add into the same pixels: it needs `cuda.atomic.add`.
# * Atomics make the sum correct but leave its order to the hardware, and float addition is
#   not associative: on a GPU, grad_x may change in its last bits from run to run. The CPU
#   backend gives each thread its own outputs and a fixed order, and is bitwise reproducible.
# * Up to that round-off, the cuda kernels compute exactly the CPU's numbers: forward and every
#   gradient agree to float64 round-off.

# %%
print(f"lesson 10: wall {time.perf_counter() - lesson_start_wall:.1f} s, "
      f"CPU {time.process_time() - lesson_start_cpu:.1f} s (this process)")
