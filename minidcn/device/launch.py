"""Launch configuration shared by every cuda kernel (the runtime's here and the ops' in backends/cuda).

Kernels are written as grid-stride loops::

    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        ...

so they are correct for any grid; ``grid_for(n)`` only picks a sensible size.
"""

from __future__ import annotations

THREADS_PER_BLOCK = 128
MAX_BLOCKS = 4096


def grid_for(n: int) -> tuple[int, int]:
    """(blocks, threads) covering ``n`` work items, at least one block."""
    blocks = max(1, min(MAX_BLOCKS, (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK))
    return blocks, THREADS_PER_BLOCK
