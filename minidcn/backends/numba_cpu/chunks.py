"""Splitting a batch into chunks of images whose scratch buffers fit in a memory budget."""

from __future__ import annotations

__all__ = ["equal_chunks"]


def equal_chunks(batch: int, image_bytes: int, budget_bytes: int) -> list:
    """[(start, stop), ...]: as few chunks of images as the budget allows, of equal sizes.

    A chunk holds at most ``budget_bytes // image_bytes`` images (at least one: an image
    larger than the budget is processed alone).  The chunks are then made as even as
    possible, so 8 images that fit 5 at a time run as 4 + 4, not 5 + 3: the scratch buffers
    are sized for the first chunk, the largest.  An empty batch is one empty chunk,
    [(0, 0)], so callers still size their buffers from the first chunk.
    """
    if batch == 0:
        return [(0, 0)]
    most = max(1, budget_bytes // max(image_bytes, 1))
    n_chunks = -(-batch // most)
    size = -(-batch // n_chunks)
    return [(start, min(start + size, batch)) for start in range(0, batch, size)]
