"""numba_cpu/chunks.py: chunks of images within the memory budget, aimed at the cache."""

from minidcn.backends.numba_cpu.chunks import equal_chunks


def sizes(chunks):
    return [stop - start for start, stop in chunks]


def test_chunks_cover_the_batch_in_order():
    for batch in (1, 2, 7, 8, 33):
        chunks = equal_chunks(batch, image_bytes=10, budget_bytes=35, cache_bytes=25)
        assert chunks[0][0] == 0 and chunks[-1][1] == batch
        assert all(stop == start for (_, stop), (start, _) in zip(chunks, chunks[1:]))
        assert max(sizes(chunks)) - min(sizes(chunks)) <= 1


def test_the_budget_bounds_every_chunk():
    assert sizes(equal_chunks(8, image_bytes=10, budget_bytes=35, cache_bytes=1000)) == [3, 3, 2]
    assert sizes(equal_chunks(3, image_bytes=10, budget_bytes=5, cache_bytes=1000)) == [1, 1, 1]


def test_chunks_aim_at_the_cache_but_hold_two_images_where_the_budget_allows():
    assert sizes(equal_chunks(8, image_bytes=10, budget_bytes=1000, cache_bytes=40)) == [4, 4]
    assert sizes(equal_chunks(8, image_bytes=10, budget_bytes=1000, cache_bytes=5)) == [2, 2, 2, 2]
    assert sizes(equal_chunks(8, image_bytes=10, budget_bytes=15, cache_bytes=5)) == [1] * 8


def test_an_empty_batch_is_one_empty_chunk():
    assert equal_chunks(0, image_bytes=10, budget_bytes=100) == [(0, 0)]
