"""Floating-point licences for the loops that sum (numba ``fastmath`` flags)."""

from __future__ import annotations

__all__ = ["REORDER"]

REORDER = {"reassoc", "contract", "nsz"}
"""The floating-point licences of the summing loops (numba ``fastmath``): norm, deform_conv, dcnv3.

A sum ``s += p[i]`` written as a loop must, by IEEE rules, add the values one after the
other; each addition waits for the previous one and the vector unit sits idle.
``reassoc`` lets the compiler keep several partial sums in one vector register and add
them together at the end (about 7x faster here); ``contract`` lets it fuse a multiply and
an add into one FMA; ``nsz`` lets it ignore the sign of zero.  The result is a different,
equally accurate, rounding of the same float64 sum.  It is still deterministic: the order
is fixed when the loop is compiled, not chosen at run time, so it does not depend on the
number of threads.  The licences that would change results on special values (``nnan``,
``ninf``: assume no NaN or infinity) are deliberately not given, so NaN and infinity
propagate exactly as without fastmath.
"""
