"""conv2d benchmark: float32, B=8, C=64->64, 32x32, 3x3 kernel, padding 1 (issue 2).

Rows: the reference and numba host backends, the cuda backend when a real GPU is present
(never the simulator, whose timings mean nothing), and torch.nn.functional.conv2d when torch
imports.  "forward" runs without building a graph; "fwd+bwd" runs the forward that records
the graph and the backward for input, weight and bias.  Each time is the best over rounds
that interleave the implementations (``timing.best_over_rounds``).
"""

from __future__ import annotations

import os

from .timing import best_over_rounds, optional, print_table, rng_array

BATCH, C_IN, C_OUT, SIZE, KERNEL, PADDING = 8, 64, 64, 32, 3, 1
TARGET_RATIO = 3.0  # issue 2: numba forward+backward within 3x of torch
ROUNDS = 3


def _arrays():
    x = rng_array((BATCH, C_IN, SIZE, SIZE), seed=0)
    w = rng_array((C_OUT, C_IN, KERNEL, KERNEL), seed=1) * 0.05
    b = rng_array((C_OUT,), seed=2)
    grad_y = rng_array((BATCH, C_OUT, SIZE, SIZE), seed=3)
    return x, w, b, grad_y


def _real_gpu() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    cuda = optional("numba.cuda")
    return cuda is not None and cuda.is_available()


def _minidcn_ops(backend_name: str, device: str):
    """(forward, forward+backward) closures of minidcn's conv2d on a backend and device."""
    import minidcn
    from minidcn import Tensor, functional as F

    x, w, b, grad_y = (Tensor(a).to(device) for a in _arrays())
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()

    def forward():
        with minidcn.no_grad(), minidcn.backend(backend_name):
            out = F.conv2d(x, w, b, padding=PADDING)
        out.to("cpu")  # waits for the device, if any

    def forward_backward():
        x.grad = w.grad = b.grad = None
        with minidcn.backend(backend_name):
            F.conv2d(x, w, b, padding=PADDING).backward(grad_y)
        x.grad.to("cpu")

    return forward, forward_backward


def _torch_ops(torch):
    x, w, b, grad_y = (torch.from_numpy(a) for a in _arrays())
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    conv2d = torch.nn.functional.conv2d

    def forward():
        with torch.no_grad():
            conv2d(x, w, b, padding=PADDING)

    def forward_backward():
        x.grad = w.grad = b.grad = None
        conv2d(x, w, b, padding=PADDING).backward(grad_y)

    return forward, forward_backward


def run(repeat: int = 5) -> None:
    ops = {"minidcn reference (NumPy)": _minidcn_ops("reference", "cpu"),
           "minidcn numba": _minidcn_ops("numba", "cpu")}
    if _real_gpu():
        ops["minidcn cuda"] = _minidcn_ops("numba", "cuda")
    torch = optional("torch")
    peer = None
    if torch is not None:
        peer = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
        ops[peer] = _torch_ops(torch)
    best = best_over_rounds(ops, repeat, ROUNDS)
    title = (f"conv2d float32, B={BATCH}, C={C_IN}->{C_OUT}, {SIZE}x{SIZE}, "
             f"{KERNEL}x{KERNEL}, padding {PADDING} (best of {ROUNDS} x {repeat})")
    print_table(title, [(name, *times) for name, times in best.items()], baseline=peer)
    if peer is not None:
        ratio = best["minidcn numba"][1] / best[peer][1]
        verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
        print(f"  numba fwd+bwd time / torch fwd+bwd time = {ratio:.2f} "
              f"(target <= {TARGET_RATIO:.0f}: {verdict})")
