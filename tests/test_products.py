"""numba_cpu/products.py: matrix products by pieces of rows, on several threads, reproducibly."""

import numba
import numpy as np
import pytest

from minidcn.backends.numba_cpu import conv as numba_conv
from minidcn.backends.numba_cpu import deform_conv as numba_deform_conv
from minidcn.backends.numba_cpu import products


def operands(rows=23, seed=0):
    """a (2, M, K), b (2, K, N), c (2, M, N) in float64: two stacked groups."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((2, rows, 5)), rng.standard_normal((2, 5, 3)),
            rng.standard_normal((2, rows, 3)))


def with_threads(count, fn):
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(count)
        return fn()
    finally:
        numba.set_num_threads(previous)


@pytest.mark.parametrize("piece_rows", [1, 4, 7, 23, 100])
def test_pieces_give_the_products(monkeypatch, piece_rows):
    monkeypatch.setattr(products, "PIECE_ROWS", piece_rows)
    a, b, c = operands()
    out = np.full((2, 23, 3), np.nan)
    products.matmul_rows(a, b, out)
    np.testing.assert_allclose(out, a @ b, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(products.sum_of_products(a, c), a.transpose(0, 2, 1) @ c,
                               rtol=1e-13, atol=1e-13)


def test_pieces_cover_the_rows_in_order():
    for rows in (0, 1, 2047, 2048, 2049, 10_000):
        pieces = products._pieces(rows)
        assert pieces[0][0] == 0 and pieces[-1][1] == rows
        assert all(stop == start for (_, stop), (start, _) in zip(pieces, pieces[1:]))
        assert all(stop - start <= products.PIECE_ROWS for start, stop in pieces)


@pytest.mark.parametrize("blas_threads", ["1", "2"])
def test_results_do_not_depend_on_the_number_of_threads(monkeypatch, blas_threads):
    """Pieces of 4 rows on 1 thread and on every thread (or, with multithreaded BLAS, on the
    calling thread): the same bits, for the products and for both convolutions."""
    if numba.config.NUMBA_NUM_THREADS == 1:
        pytest.skip("numba has a single thread here: nothing to compare")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", blas_threads)
    monkeypatch.setattr(products, "PIECE_ROWS", 4)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    offset = rng.standard_normal((2, 18, 6, 5)).astype(np.float32)
    mask = rng.uniform(0, 1, (2, 9, 6, 5)).astype(np.float32)
    grad_y = rng.standard_normal((2, 4, 6, 5)).astype(np.float32)
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    a, b, c = operands(rows=30)

    def everything():
        out = np.empty((2, 30, 3))
        products.matmul_rows(a, b, out)
        return [out, products.sum_of_products(a, c),
                numba_conv.conv2d_forward(x, w, None, *geometry),
                *numba_conv.conv2d_backward(grad_y, x, w, *geometry),
                numba_deform_conv.deform_conv2d_forward(x, offset, mask, w, None, *geometry, 1),
                *numba_deform_conv.deform_conv2d_backward(grad_y, x, offset, mask, w, *geometry, 1)]

    one = with_threads(1, everything)
    many = with_threads(numba.config.NUMBA_NUM_THREADS, everything)
    for got, expected in zip(many, one):
        np.testing.assert_array_equal(got, expected)
