# %% [markdown]
# # 01 autograd: the graph, its topological order, reuse, and finite-difference checks
#
# Every later lesson trains something, a deformable convolution's offsets, a mask, a RoI head, by
# gradient descent. The gradients come from minidcn's small autograd engine, so this lesson opens
# it up:
#
# 1. build a small graph and look at it;
# 2. sort it topologically, and run the backward pass by hand in that order;
# 3. the reuse case `b = a + a; c = b + b`, where dc/da = 4;
# 4. gradients accumulate across `backward()` calls;
# 5. check a gradient against central finite differences, by hand and with `minidcn.gradcheck`,
#    and see why the check runs in float64.
#
# Run it with `minidcn lesson 1` or `python lessons/01_autograd.py`. Every claim is checked
# with `check(...)`, so the script stops if one of them stops being true.

# %%
import matplotlib.pyplot as plt
import numpy as np

import minidcn
from minidcn import Tensor
from minidcn.function import Function
from minidcn.lessons_support import check, figures_dir, quick, save_figure
from minidcn.tensor import _topological_order

# %% [markdown]
# ## 1. A small graph
#
# Take L = (x·y + x)² at x = 2, y = -3. Each op returns a new Tensor that remembers its
# `_node`: which `Function` made it, the inputs it was applied to, and a context `ctx` with what
# the backward pass will need. The leaves, x and y, have no node.
#
# By hand: a = x·y = -6, b = a + x = -4, L = b² = 16, and
# dL/dx = 2b·(y + 1) = 16, dL/dy = 2b·x = -16.

# %%
x = Tensor(2.0, requires_grad=True)
y = Tensor(-3.0, requires_grad=True)
a = x * y
b = a + x
L = b * b
names = {id(x): "x", id(y): "y", id(a): "a", id(b): "b", id(L): "L"}

for t in (x, y, a, b, L):
    made_by = t._node.fn.__name__ if t._node else "leaf"
    inputs = [names[id(p)] for p in t._node.parents()] if t._node else []
    print(f"{names[id(t)]} = {t.item():6.1f}   made by {made_by:5s} from {inputs}")
check(L.item() == 16.0, "L = (x*y + x)^2 = 16 at x = 2, y = -3")

# %% [markdown]
# ## 2. The topological order, and the backward pass by hand
#
# `backward()` needs an order in which every tensor comes after all the tensors it was computed
# from. Walked in reverse, from L back to the leaves, each tensor is reached only after **every**
# use of it has sent its share of the gradient. The engine finds that order with an iterative
# depth-first search (`minidcn.tensor._topological_order`; iterative, so a graph thousands of
# ops deep does not hit Python's recursion limit).

# %%
order = _topological_order(L)
print("topological order:", [names[id(t)] for t in order])
position = {id(t): i for i, t in enumerate(order)}
for t in order:
    for p in dict.fromkeys(t._node.parents() if t._node else []):
        check(position[id(p)] < position[id(t)],
              f"{names[id(p)]} comes before {names[id(t)]}, which is computed from it")

# %% [markdown]
# Now the whole backward pass, by hand. `pending` maps each tensor to the sum of the gradients
# its uses have sent so far. Walking the order backwards, a tensor's gradient is complete
# when we reach it; we hand it to its node's `backward`, which returns one gradient per input,
# and add those into `pending`. This is what `Tensor.backward` does (it also checks each
# gradient's shape and dtype).

# %%
pending = {id(L): np.ones((), dtype=np.float32)}  # dL/dL = 1
grads_by_hand = {}
for t in reversed(order):
    g = pending.pop(id(t))
    grads_by_hand[names[id(t)]] = float(g)
    if t._node is None:
        continue  # a leaf: its gradient is final
    node = t._node
    input_grads = node.fn.backward(node.ctx, g)
    if not isinstance(input_grads, tuple):
        input_grads = (input_grads,)
    for inp, gi in zip(node.inputs, input_grads):
        pending[id(inp)] = pending.get(id(inp), 0) + gi
for name, g in grads_by_hand.items():
    print(f"dL/d{name} = {g:6.1f}")

L.backward()
print("engine: x.grad =", x.grad.item(), " y.grad =", y.grad.item())
check(x.grad.item() == grads_by_hand["x"] == 16.0, "dL/dx = 2b(y + 1) = 16, by hand and by the engine")
check(y.grad.item() == grads_by_hand["y"] == -16.0, "dL/dy = 2bx = -16, by hand and by the engine")
check(a.grad is None and b.grad is None, "only leaves keep .grad; a and b were intermediate")

# %% [markdown]
# ## 3. Reuse: b = a + a; c = b + b
#
# A tensor used twice gets the sum of both uses' gradients. With `b = a + a` and `c = b + b`,
# dc/db = 2 and db/da = 2, so dc/da = 4. An engine that passed b's gradient on as soon as the
# first use reported it would send 1 (or 2, or 6) to a instead: the topological order is what
# makes it wait for both.

# %%
a = Tensor(1.0, requires_grad=True)
b = a + a
c = b + b
c.backward()
print("c =", c.item(), " dc/da =", a.grad.item())
check(a.grad.item() == 4.0, "b = a + a; c = b + b gives dc/da = 4")

# %% [markdown]
# ## 4. Gradients accumulate
#
# A second `backward()` through the same graph **adds** to the leaves' `.grad`: that is how a
# loss split into pieces, or a batch split into chunks, sums its gradient. It is also why an
# optimiser calls `zero_grad()` before each step.

# %%
c.backward()
print("after a second backward: dc/da =", a.grad.item())
check(a.grad.item() == 8.0, "a second backward adds another 4")
a.zero_grad()
(a * a * a).backward()
print("after zero_grad, d(a^3)/da at a = 1:", a.grad.item())
check(a.grad.item() == 3.0, "after zero_grad the gradient starts again from nothing")

# %% [markdown]
# ## 5. Is backward the derivative of forward? Central differences
#
# For a function f of one number, (f(x + ε) - f(x - ε)) / 2ε = f'(x) + O(ε²): the error of the
# estimate shrinks with ε², until the rounding error of f itself, about u·|f| with u the unit
# round-off, divided by 2ε, takes over. In float64 (u ≈ 1e-16) the sweet spot is ε ≈ 1e-5 and
# the estimate agrees with the exact derivative to about 1e-11. In float32 (u ≈ 6e-8) the best
# it can do is about 1e-5, which is why gradient checks run in float64.
#
# Take f(x) = Σ tanh(x_i) x_i², whose derivative is f'(x) = 2 x tanh x + x² (1 - tanh² x).

# %%
def f(t):
    return (t.tanh() * t * t).sum()


def exact_derivative(v):
    return 2 * v * np.tanh(v) + v**2 * (1 - np.tanh(v) ** 2)


point = 0.7
sweep = 10.0 ** -np.arange(1, 13 if not quick() else 10)
errors = {}
for dtype in (np.float64, np.float32):
    errors[dtype] = []
    for eps in sweep:
        up = f(Tensor([point + eps], dtype=dtype)).item()
        down = f(Tensor([point - eps], dtype=dtype)).item()
        errors[dtype].append(abs((up - down) / (2 * eps) - exact_derivative(point)))
print(" eps        float64 error   float32 error")
for eps, e64, e32 in zip(sweep, errors[np.float64], errors[np.float32]):
    print(f" {eps:8.0e}   {e64:12.2e}   {e32:12.2e}")
best64, best32 = min(errors[np.float64]), min(errors[np.float32])
check(best64 < 1e-9, f"float64 central differences reach {best64:.1e} of the exact derivative")
check(best32 > 1e3 * best64, f"float32 cannot do better than {best32:.1e}")

# %% [markdown]
# The same check on a vector, entry by entry, against what backward computed: perturb one entry
# at a time by ±ε and difference.

# %%
x = Tensor(np.array([-1.3, -0.4, 0.2, 0.9, 1.7]), requires_grad=True, dtype=np.float64)
f(x).backward()
analytic = x.grad.numpy()
eps = 1e-6
numeric = np.zeros_like(analytic)
for i in range(x.shape[0]):
    step = np.zeros(x.shape)
    step[i] = eps
    numeric[i] = (f(Tensor(x.numpy() + step)).item() - f(Tensor(x.numpy() - step)).item()) / (2 * eps)
print("analytic:", np.array2string(analytic, precision=8))
print("numeric: ", np.array2string(numeric, precision=8))
print("largest difference:", np.abs(analytic - numeric).max())
check(np.allclose(analytic, numeric, rtol=1e-7, atol=1e-9), "backward agrees with central differences")
check(np.allclose(analytic, exact_derivative(x.numpy()), rtol=1e-12), "and with the formula")

# %% [markdown]
# `minidcn.gradcheck` does this for any function of any number of tensors (it is a public tool:
# use it on your own ops). It projects the outputs onto a fixed random vector so that one
# backward pass gives every derivative, checks every entry of a small input, and random
# directions of a large one.
#
# To see it catch a mistake, write a `Function` whose backward forgets the factor 2 of
# d(u²)/du = 2u. The report names the input, the worst entry, and both values.

# %%
check(minidcn.gradcheck(f, [x]) is True, "gradcheck passes for f")


class SquareWithABug(Function):
    """out = u²; the correct backward is 2 u g, this one returns u g."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return u * u

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved
        return u * g  # wrong: should be 2 * u * g


try:
    minidcn.gradcheck(SquareWithABug.apply, [x], names=["u"])
    caught = None
except minidcn.GradcheckError as err:
    caught = str(err)
print(caught)
check(caught is not None and "u of shape (5,)" in caught, "gradcheck catches the missing factor 2")

# %% [markdown]
# ## The figure
#
# Left: the graph of section 1 with each tensor's value and gradient. Right: the error of the
# central difference against ε, in float64 and float32 (ε shrinks to the right): the truncation
# error falling as ε² on the left, the rounding error growing as 1/ε on the right.

# %%
# `order` and `names` still describe the graph of section 1 (`order` keeps its tensors alive).
depth = {}
for t in order:
    depth[id(t)] = 1 + max((depth[id(p)] for p in t._node.parents()), default=-1) if t._node else 0
rows = {}
place = {}
for t in order:
    d = depth[id(t)]
    place[id(t)] = (d, -rows.get(d, 0))
    rows[d] = rows.get(d, 0) + 1

fig, (ax_graph, ax_eps) = plt.subplots(1, 2, figsize=(12, 4.5))
boxes = {}
for t in order:
    op = t._node.fn.__name__ if t._node else "leaf"
    label = f"{names[id(t)]} = {t.item():g}\n{op}\ndL/d{names[id(t)]} = {grads_by_hand[names[id(t)]]:g}"
    boxes[id(t)] = ax_graph.text(*place[id(t)], label, ha="center", va="center", fontsize=9,
                                 bbox=dict(boxstyle="round", fc="#dde8f5" if t._node else "#f5e6c8"))
for t in order:
    for p in dict.fromkeys(t._node.parents()) if t._node else ():
        # an edge that jumps over a column arcs from the top of one box to the top of the other
        skips = depth[id(t)] - depth[id(p)] > 1
        ax_graph.annotate("", xy=(0.5, 1) if skips else (0, 0.5), xycoords=boxes[id(t)],
                          xytext=(0.5, 1) if skips else (1, 0.5), textcoords=boxes[id(p)],
                          arrowprops=dict(arrowstyle="->", color="0.3",
                                          connectionstyle=f"arc3,rad={-0.5 if skips else 0}"))
ax_graph.set_xlim(-0.6, max(depth.values()) + 0.6)
ax_graph.set_ylim(-1.6, 1.0)
ax_graph.axis("off")
ax_graph.set_title("L = (x·y + x)²: values, ops and gradients")
ax_graph.legend(handles=[plt.Rectangle((0, 0), 1, 1, fc="#f5e6c8", ec="black", label="leaf (an input)"),
                         plt.Rectangle((0, 0), 1, 1, fc="#dde8f5", ec="black",
                                       label="made by an op (its Function's name)"),
                         plt.Line2D([], [], color="0.3", marker=">",
                                    label="input → the tensor made from it")],
                loc="lower right", fontsize=8, title="box: name = value, op, dL/d(name)",
                title_fontsize=8)
for dtype, style in ((np.float64, "o-"), (np.float32, "s--")):
    ax_eps.loglog(sweep, np.maximum(errors[dtype], 1e-17), style, label=np.dtype(dtype).name)
ax_eps.set_xlabel("finite-difference step ε\n(larger ε: truncation error ∝ ε²;  smaller ε: rounding "
                  "error ∝ u/ε, u the unit round-off)", fontsize=9)
ax_eps.set_ylabel("|central difference - f'(x)|  (absolute error)")
ax_eps.set_title(f"central differences of f(x) = Σ tanh(x) x² at x = {point}", fontsize=10)
ax_eps.invert_xaxis()
ax_eps.grid(True, which="both", alpha=0.3)
ax_eps.axhline(abs(exact_derivative(point)), color="gray", lw=0.8, ls=":",
               label=f"|f'(x)| = {abs(exact_derivative(point)):.2f}: the error of an estimate of 0 "
                     "(f(x + ε), f(x - ε) rounded equal)")
ax_eps.set_ylim(top=1e5)  # room for the key above the curves
ax_eps.legend(fontsize=8, loc="upper left")
save_figure(fig, "01_autograd.png")
check((figures_dir() / "01_autograd.png").stat().st_size > 0, "the figure was written")

# %% [markdown]
# ## Where next
#
# Everything else in minidcn is built from these pieces: an op is a `Function` with a
# `forward` and a `backward`, and `gradcheck` proves the backward right.
#
# - 02 convolution from scratch: loops, im2col + GEMM, Numba, and the cuda kernel, all agreeing;
# - 03 bilinear interpolation G(q, p), and why its gradient lets offsets be learned;
# - 04 deformable convolution (v1), learning offsets that undo a rotation or a scaling;
# - 05 modulated deformable convolution (v2) and its mask;
# - 06 training a small DCN against a plain CNN on deformed glyphs;
# - 07 the receptive field of stacked deformable layers;
# - 08 deformable RoI pooling;
# - 09 group normalization against batch normalization at small batch sizes;
# - 10 the GPU variants.
#
# `minidcn lessons` lists the ones installed; `minidcn tour --quick` runs them all.
