# %% [markdown]
# # 02 convolution from scratch: loops, im2col + GEMM, Numba, and a CUDA kernel
#
# A deformable convolution is an ordinary convolution whose kernel points have moved. So before
# anything moves, this lesson builds the ordinary one four ways and checks that they agree:
#
# 1. seven nested Python loops, straight from the formula;
# 2. im2col + GEMM: gather every window into a column, then one matrix product (the NumPy
#    `reference` backend);
# 3. the `numba` backend, minidcn's default on the CPU: im2col again, built by Numba loops in
#    the layout BLAS multiplies fastest (and, on the way, shifted products: kh·kw matrix
#    products that read the padded input in place through shifted views, no copy at all);
# 4. a `numba.cuda` kernel (the `cuda` backend), run here in Numba's CUDA simulator unless a
#    GPU is present;
#
# then times them and draws where im2col puts each input pixel.
#
# Run it with `minidcn lesson 2` or `python lessons/02_convolution.py` (`MINIDCN_QUICK=1`
# for the short version). Every claim is checked with `check(...)`.

# %% [markdown]
# ## 0. The CUDA simulator must be chosen before Numba is imported
#
# `numba.cuda` decides when it is first imported whether it talks to a real GPU or to its
# simulator, which runs every CUDA thread as a Python thread on the CPU. The switch is the
# environment variable `NUMBA_ENABLE_CUDASIM=1`, and it is read **once**, at import: setting it
# later does nothing. So this cell runs before anything imports Numba (importing `minidcn` does
# not; its Numba kernels load on first use).
#
# We turn the simulator on unless the machine shows an NVIDIA driver, or you ask for the real
# device with `MINIDCN_REAL_GPU=1`. The simulator runs the very kernel a GPU would run, so
# its numbers are the real kernel's numbers; only its speed means nothing.

# %%
import os
import shutil

real_gpu_wanted = os.environ.get("MINIDCN_REAL_GPU") == "1" or shutil.which("nvidia-smi") is not None
if not real_gpu_wanted:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
print("NUMBA_ENABLE_CUDASIM =", os.environ.get("NUMBA_ENABLE_CUDASIM", "(unset: real GPU)"))

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

import minidcn
from minidcn import Tensor
from minidcn import functional as F
from minidcn.backends.reference.conv import im2col
from minidcn.bench.timing import best_time
from minidcn.lessons_support import check, quick, save_figure

rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The formula, as seven loops
#
# A 2-D convolution layer (in deep learning, a cross-correlation: the kernel is not flipped)
# with stride s, padding p and dilation d computes, for image n, output channel o and output
# pixel (i, j),
#
#     y[n, o, i, j] = b[o] + Σ_c Σ_u Σ_v  w[o, c, u, v] · x[n, c, i·s - p + u·d, j·s - p + v·d],
#
# where x reads as 0 outside the image (zero padding), and the output has
# H_out = (H + 2p - d·(kh - 1) - 1) // s + 1 rows. Written as loops, with nothing hidden
# (groups are left out here; the library handles them):

# %%
def conv2d_loops(x, w, b, stride=1, padding=0, dilation=1):
    """y[n, o, i, j] = b[o] + Σ_{c,u,v} w[o, c, u, v] x[n, c, i s - p + u d, j s - p + v d]."""
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = w.shape
    out_h = (height + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    y = np.zeros((batch, out_channels, out_h, out_w), dtype=x.dtype)
    for n in range(batch):
        for o in range(out_channels):
            for i in range(out_h):
                for j in range(out_w):
                    total = b[o]
                    for c in range(channels):
                        for u in range(kh):
                            for v in range(kw):
                                row = i * stride - padding + u * dilation
                                col = j * stride - padding + v * dilation
                                if 0 <= row < height and 0 <= col < width:
                                    total += w[o, c, u, v] * x[n, c, row, col]
                    y[n, o, i, j] = total
    return y


# %% [markdown]
# Two checks straight from the definition. A 3×3 kernel that is 1 at its centre and 0
# elsewhere, with padding 1, returns the image unchanged. A kernel that is 1 at its top-left
# point (u, v) = (0, 0) reads x[i - 1, j - 1]: the image moves **down and right**. A true
# convolution would flip the kernel and move it up and left; deep-learning libraries (torch,
# and so minidcn) compute the cross-correlation.

# %%
image = rng.standard_normal((1, 1, 6, 7))
centre, corner = np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 3, 3))
centre[0, 0, 1, 1] = 1.0
corner[0, 0, 0, 0] = 1.0
no_bias = np.zeros(1)
same = conv2d_loops(image, centre, no_bias, padding=1)
moved = conv2d_loops(image, corner, no_bias, padding=1)
check(np.array_equal(same, image), "a centred delta kernel with padding 1 is the identity")
check(np.array_equal(moved[..., 1:, 1:], image[..., :-1, :-1]) and not moved[..., 0, :].any(),
      "a top-left delta kernel moves the image down and right by one pixel (cross-correlation)")

# %% [markdown]
# ## 2. im2col + GEMM
#
# The loops do C·kh·kw multiply-adds per output value, one Python step at a time. im2col
# reorganises the same arithmetic into one matrix product. For each kernel point (u, v) and
# channel c, collect the input pixel that point reads for *every* output pixel:
#
#     cols[n, c, u, v, i, j] = x_pad[n, c, u·d + i·s, v·d + j·s].
#
# Flatten (c, u, v) into K = C·kh·kw rows and (i, j) into L = H_out·W_out columns: column l is
# the window of output pixel l, unrolled. The weights, flattened the same way, are an O×K
# matrix, and the whole layer is
#
#     y[n] (O × L) = W (O × K) · cols[n] (K × L)  (+ bias),
#
# one GEMM that BLAS runs at near the machine's peak. The price is memory: every input pixel
# is copied kh·kw times. `im2col` below is the reference backend's (read it in
# `minidcn/backends/reference/conv.py`: each kernel point is one strided slice).

# %%
def conv2d_im2col(x, w, b, stride=1, padding=0, dilation=1):
    """The same y, as W (O x K) @ cols (K x L) per image."""
    out_channels, _, kh, kw = w.shape
    cols = im2col(x, (kh, kw), (stride, stride), (padding, padding), (dilation, dilation))
    batch, out_h, out_w = x.shape[0], cols.shape[4], cols.shape[5]
    y = w.reshape(out_channels, -1) @ cols.reshape(batch, -1, out_h * out_w)
    return y.reshape(batch, out_channels, out_h, out_w) + b.reshape(1, -1, 1, 1)


# %% [markdown]
# Here is the layout on a tiny input: 2 channels of 4×4 pixels, each pixel holding its own
# number, a 3×3 kernel, no padding, so 2×2 outputs, K = 2·9 = 18 rows and L = 4 columns.
# Because the pixels hold their numbers, the matrix `im2col` returns shows where each pixel
# went. Pixels in the middle of the image sit in every window, so they appear four times.

# %%
labels = np.arange(2 * 4 * 4, dtype=np.float64).reshape(1, 2, 4, 4)
layout = im2col(labels, (3, 3), (1, 1), (0, 0), (1, 1)).reshape(18, 4)
print("cols (K = 18 rows, L = 4 columns), entries are pixel numbers:")
print(layout.astype(int).T)
for l, (i, j) in enumerate(np.ndindex(2, 2)):
    window = labels[0, :, i:i + 3, j:j + 3].reshape(-1)
    check(np.array_equal(layout[:, l], window),
          f"column {l} is the (c, u, v)-unrolled window of output ({i}, {j})")
copies = np.bincount(layout.astype(int).ravel(), minlength=32)
check(copies.max() == 4 and copies.min() == 1, "centre pixels are copied 4 times, corners once")

# %%
fig, (ax_in, ax_cols) = plt.subplots(1, 2, figsize=(11, 6), gridspec_kw={"width_ratios": [2.2, 1]},
                                     layout="constrained")
window_colours = ["tab:red", "tab:blue", "tab:green", "tab:orange"]
gap = 1  # columns of white space between the two channels
canvas = np.full((4, 4 * 2 + gap), np.nan)
canvas[:, :4], canvas[:, 4 + gap:] = labels[0, 0], labels[0, 1]
channel_colour = np.where(np.isnan(canvas), np.nan, (canvas >= 16).astype(float))
ax_in.imshow(channel_colour, cmap="Pastel1", vmin=0, vmax=8)
for (r, c), value in np.ndenumerate(canvas):
    if not np.isnan(value):
        ax_in.text(c, r, int(value), ha="center", va="center", fontsize=11)
for l, (i, j) in enumerate(np.ndindex(2, 2)):
    for channel_left in (0, 4 + gap):
        inset = 0.06 * (l + 1)
        ax_in.add_patch(plt.Rectangle((channel_left + j - 0.5 + inset, i - 0.5 + inset), 3 - 2 * inset,
                                      3 - 2 * inset, fill=False, ec=window_colours[l], lw=2))
for channel, left in enumerate((0, 4 + gap)):
    ax_in.text(left + 1.5, 3.75, f"channel c{channel}", ha="center", va="top", fontsize=10)
ax_in.set_title("input x: 2 channels of 4×4 pixels, each holding its own number;\n"
                "each coloured square is the 3×3 window of one output pixel", fontsize=10)
shade = plt.get_cmap("Pastel1")
key = [plt.Rectangle((0, 0), 1, 1, fill=False, ec=colour, lw=2, label=f"window of output pixel {ij}")
       for colour, ij in zip(window_colours, np.ndindex(2, 2))]
key += [plt.Rectangle((0, 0), 1, 1, fc=shade(c / 8), label=f"channel c{c}") for c in (0, 1)]
ax_in.legend(handles=key, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8,
             title="right: each number is coloured as its output pixel's window, shaded as its channel",
             title_fontsize=8, frameon=False)
ax_in.set_xticks([])
ax_in.set_yticks([])
ax_cols.imshow((layout >= 16).astype(float), cmap="Pastel1", vmin=0, vmax=8, aspect="auto")
for (k, l), value in np.ndenumerate(layout):
    ax_cols.text(l, k, int(value), ha="center", va="center", fontsize=9, color=window_colours[l])
ax_cols.set_xticks(range(4), [f"({i},{j})" for i, j in np.ndindex(2, 2)])
ax_cols.set_yticks(range(18), [f"c{c} u{u} v{v}" for c, u, v in np.ndindex(2, 3, 3)], fontsize=7)
ax_cols.set_xlabel("column l = output pixel (i, j)")
for tick, colour in zip(ax_cols.get_xticklabels(), window_colours):
    tick.set_color(colour)
ax_cols.set_title("cols = im2col(x): K × L; y (O × L) = W (O × K) · cols\n"
                  "row k: channel c, kernel point (u, v)", fontsize=10)
save_figure(fig, "02_im2col_layout.png")

# %% [markdown]
# ## 2b. The same sum without the copies: shifted products
#
# im2col writes a matrix kh·kw times the size of the input, then reads it back. Shifted
# products avoid that: they keep the sum over the kernel points as a sum of kh·kw smaller
# products, each reading the input where it lies (minidcn's `numba` backend once worked this
# way; the take-aways at the end say why it no longer does):
#
#     y[n] (O × L) = Σ_{u, v}  W[:, :, u, v] (O × C) · (x_pad shifted by (u, v)) (C × L).
#
# The trick that makes "shifted" free: lay the padded images end to end, one row per channel
# (`flat[c, (n·H_p + r)·W_p + q] = x_pad[n, c, r, q]`). With stride 1, output pixel (i, j)
# reads padded pixel (i + u·d, j + v·d) for kernel point (u, v), which sits exactly
# u·d·W_p + v·d places after position (n, i, j) in `flat`. So the operand of kernel point
# (u, v) is the *view* `flat[:, shift : shift + N]`: no copy at all. The product is computed
# at every position of the padded grid, and the positions whose window runs off the image
# are thrown away at the end. (With stride s, split the padded input into s×s "phase" images
# of every s-th pixel first; each kernel point then reads one phase, shifted.)

# %%
def conv2d_shifted(x, w, b, padding=1, dilation=1):
    """The same y for stride 1, as Σ over kernel points of W_uv @ (a shifted view of x_pad)."""
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = w.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    rows, cols = x_pad.shape[2:]
    out_h, out_w = rows - dilation * (kh - 1), cols - dilation * (kw - 1)
    positions = batch * rows * cols
    farthest = dilation * (kh - 1) * cols + dilation * (kw - 1)
    flat = np.zeros((channels, positions + farthest))  # zeros after the end: the last shifts
    flat[:, :positions] = x_pad.transpose(1, 0, 2, 3).reshape(channels, -1)
    total = np.zeros((out_channels, positions))
    for u in range(kh):
        for v in range(kw):
            shift = u * dilation * cols + v * dilation
            total += w[:, :, u, v] @ flat[:, shift:shift + positions]  # a view: nothing copied
    grid = total.reshape(out_channels, batch, rows, cols)
    return grid[:, :, :out_h, :out_w].transpose(1, 0, 2, 3) + b.reshape(1, -1, 1, 1)


x = rng.standard_normal((2, 3, 7, 6))
w = rng.standard_normal((4, 3, 3, 3))
b = rng.standard_normal(4)
for dilation in (1, 2):
    shifted = conv2d_shifted(x, w, b, padding=2, dilation=dilation)
    looped = conv2d_loops(x, w, b, padding=2, dilation=dilation)
    check(np.abs(shifted - looped).max() < 1e-12,
          f"kh·kw shifted products give the loops' result (dilation {dilation})")
column_bytes = im2col(x, (3, 3), (1, 1), (2, 2), (1, 1)).nbytes
padded_bytes = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))).nbytes
print(f"memory read by the products here: im2col's columns {column_bytes} bytes, "
      f"the padded input behind the shifted views {padded_bytes} bytes")
check(column_bytes > 4 * padded_bytes, "the shifted views read a fraction of im2col's columns")


# %% [markdown]
# ## 3. The four implementations agree
#
# Now the library. `minidcn.functional.conv2d` validates its arguments and calls the kernels
# of the active backend: `with minidcn.backend("reference")` gives the NumPy im2col above,
# `"numba"` an im2col built by `@njit` loops, one row per output pixel, with BLAS for the
# products (`minidcn/backends/numba_cpu/conv.py` says what makes it fast). A tensor moved with
# `.to("cuda")` runs the `numba.cuda` kernel (`minidcn/backends/cuda/conv.py`), one GPU
# thread per output value in a grid-stride loop.
#
# We compare all four in float64 on a small problem, twice: with stride 1, padding 1, and with
# stride 2, padding 2, dilation 2. The simulator runs one Python thread per CUDA thread, so
# the cuda shape stays tiny.

# %%
import numba.cuda  # noqa: E402  (after the environment variable above)

cuda_available = numba.cuda.is_available()
print("cuda backend available:", cuda_available,
      "(simulator)" if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else "(real GPU)")


def library_conv(backend_name, x, w, b, **params):
    """minidcn.functional.conv2d on one backend, without building a graph."""
    device = "cuda" if backend_name == "cuda" else "cpu"
    host = "numba" if backend_name == "cuda" else backend_name
    with minidcn.no_grad(), minidcn.backend(host):
        out = F.conv2d(Tensor(x).to(device), Tensor(w).to(device), Tensor(b).to(device), **params)
    return out.to("cpu").numpy()


implementations = {
    "python loops": conv2d_loops,
    "numpy im2col + GEMM": conv2d_im2col,
    "numba backend": lambda x, w, b, **p: library_conv("numba", x, w, b, **p),
}
if cuda_available:
    implementations["cuda backend"] = lambda x, w, b, **p: library_conv("cuda", x, w, b, **p)

# %% [markdown]
# Numba compiles a kernel the first time it is called with new argument types, and caches the
# machine code on disk (`cache=True`), so the first call in a fresh process either compiles
# (seconds) or loads the cache (a fraction of a second). Here is this process's first call:

# %%
x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
start = time.perf_counter()
library_conv("numba", x, w, np.zeros(3, np.float32), padding=1)
print(f"first numba conv2d call in this process (compile or cache load): "
      f"{time.perf_counter() - start:.2f} s")

# %%
agreement_shape = (2, 3, 5, 6)  # 2 x 5 x 5 x 6 = 300 output values: few enough for the simulator
for params in ({"stride": 1, "padding": 1, "dilation": 1}, {"stride": 2, "padding": 2, "dilation": 2}):
    x = rng.standard_normal(agreement_shape)
    w = rng.standard_normal((5, agreement_shape[1], 3, 3))
    b = rng.standard_normal(5)
    results = {name: impl(x, w, b, **params) for name, impl in implementations.items()}
    reference = library_conv("reference", x, w, b, **params)
    print(f"\n{params}, x {x.shape}, output {reference.shape}")
    for name, y in list(results.items())[1:]:
        error = np.abs(y - results["python loops"]).max()
        print(f"  {name:<22} max |y - loops| = {error:.1e}")
        check(error < 1e-12, f"{name} agrees with the loops to 1e-12 in float64 ({params})")
    check(np.abs(reference - results["numpy im2col + GEMM"]).max() < 1e-12,
          "the reference backend is the im2col + GEMM above")

# %% [markdown]
# In float32 they agree only to float32 round-off: the products are summed in a different order
# (the loops one at a time, BLAS in blocks), and each order rounds differently.

# %%
x32 = rng.standard_normal(agreement_shape).astype(np.float32)
w32 = rng.standard_normal((5, agreement_shape[1], 3, 3)).astype(np.float32)
b32 = np.zeros(5, np.float32)
exact = conv2d_loops(x32.astype(np.float64), w32.astype(np.float64), b32.astype(np.float64), padding=1)
for name, impl in implementations.items():
    error = np.abs(impl(x32, w32, b32, padding=1) - exact).max() / np.abs(exact).max()
    print(f"  float32 {name:<22} relative error against float64: {error:.1e}")
    check(error < 1e-5, f"float32 {name} is within float32 round-off of the float64 result")

# %% [markdown]
# ## 4. How fast is each one?
#
# Best wall time of several runs (float32, 3×3 kernel, padding 1), after a warm-up run that
# absorbs Numba's compilation. The best, not the mean, is the time least disturbed by whatever
# else the machine is doing. The loops run only on the small shapes (they would take minutes
# on the larger ones), and the CUDA *simulator* only on the tiny one: its time measures
# Python threads, not a GPU. On a busy machine the parallel Numba loops and multithreaded
# BLAS wait for free cores, so their times there can be many times slower than on a quiet
# one; the table reports what this run measured.

# %%
def measure(fn, slow):
    """One run for the slow ones; else a warm-up, then the best of enough runs to fill a budget."""
    if slow:
        return best_time(fn, repeat=1, warmup=0)
    once = best_time(fn, repeat=1, warmup=1)
    budget = 0.1 if quick() else 0.3
    return best_time(fn, repeat=int(np.clip(budget / once, 5, 200)), warmup=0)


shapes = {  # name: (batch, in channels, out channels, height = width)
    "tiny 1x2->4 6x6": (1, 2, 4, 6),
    "small 2x4->8 16x16": (2, 4, 8, 16),
    "medium 8x16->32 32x32": (8, 16, 32, 32),
}
if not quick():
    shapes["large 8x64->64 32x32"] = (8, 64, 64, 32)
runs_on = {"python loops": {"tiny 1x2->4 6x6", "small 2x4->8 16x16"}, "cuda backend": {"tiny 1x2->4 6x6"}}

timings = {}  # (implementation, shape name) -> seconds
for shape_name, (batch, c_in, c_out, size) in shapes.items():
    x = rng.standard_normal((batch, c_in, size, size)).astype(np.float32)
    w = (rng.standard_normal((c_out, c_in, 3, 3)) * 0.1).astype(np.float32)
    b = np.zeros(c_out, np.float32)
    for name, impl in implementations.items():
        slow = name in runs_on  # only on the shapes listed for it
        if slow and shape_name not in runs_on[name]:
            continue
        timings[name, shape_name] = measure(lambda: impl(x, w, b, padding=1), slow)

print(f"\n{'implementation':<22}" + "".join(f"{s:>24}" for s in shapes))
for name in implementations:
    cells = [f"{1e3 * timings[name, s]:>21.3f} ms" if (name, s) in timings else f"{'not run':>24}"
             for s in shapes]
    print(f"{name:<22}" + "".join(cells))

small = "small 2x4->8 16x16"
for name in ("numpy im2col + GEMM", "numba backend"):
    speedup = timings["python loops", small] / timings[name, small]
    check(speedup > 10, f"{name} is {speedup:.0f}x faster than the loops on {small}")

# %%
fig, ax = plt.subplots(figsize=(9, 4.2))
bar_width = 0.8 / len(implementations)
for k, name in enumerate(implementations):
    positions = [i + k * bar_width for i, s in enumerate(shapes) if (name, s) in timings]
    values = [1e3 * timings[name, s] for s in shapes if (name, s) in timings]
    bars = ax.bar(positions, values, bar_width, label=name + (" (simulator)" if name == "cuda backend"
                                                              and not real_gpu_wanted else ""))
    ax.bar_label(bars, [f"{v:.3g}" for v in values], fontsize=7, rotation=90, padding=2)
ax.set_yscale("log")
ax.set_xticks([i + 0.4 - bar_width / 2 for i in range(len(shapes))], list(shapes), fontsize=8)
ax.set_xlabel("layer: name, batch × in channels -> out channels, height × width of the input\n"
              "(no bar: not run there; the Python loops would take minutes, the simulator times no GPU)",
              fontsize=8)
ax.set_ylabel("best time (ms, log scale; the number on each bar)")
ax.set_title("conv2d forward, float32, 3×3 kernel, padding 1 (measured in this run)")
ax.legend(fontsize=8)
ax.set_ylim(top=ax.get_ylim()[1] * 20)
save_figure(fig, "02_conv_timings.png")

# %% [markdown]
# ## What to take away
#
# * A convolution is a sum over a window; the four implementations compute the same sum, and
#   agree to float64 round-off.
# * im2col turns the sum into one matrix product, trading memory (each pixel copied kh·kw
#   times) for speed. Shifted products (2b) keep kh·kw smaller products and read the input in
#   place, but each of those products sums only C terms, and BLAS runs short sums far below
#   its peak: with few channels the one big im2col product wins. minidcn's `numba` backend
#   used shifted products until an im2col built by Numba loops (runs of channels copied into
#   one row per output pixel, the layout BLAS reads fastest) beat them forward and backward
#   at every shape we measured, 16 and 64 channels alike. How the copies are made matters as
#   much as how many there are. Measure before you believe either.
# * The deformable convolution of lesson 04 keeps this plan and changes one thing: the column
#   entry for kernel point k is no longer the pixel at p0 + p_k but the bilinear sample at
#   p0 + p_k + Δp_k (lesson 03).
