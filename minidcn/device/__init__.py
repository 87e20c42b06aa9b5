"""The device array runtime: CudaArray and the generic numba.cuda kernels behind it.

``array.py`` holds :class:`~minidcn.device.array.CudaArray`, the C-contiguous device array a
tensor holds after ``t.to("cuda")``.  It answers NumPy's dispatch protocols, so the general
ops of ``minidcn.functional`` (arith, reduction, shape, linalg, activation, loss), written
once as NumPy code, run on the device unchanged.  Behind it sit a few generic kernels that
read their operands as strided views (``strided.py``): ``elementwise.py``, ``reduce.py``,
``matmul.py`` and ``copy.py``.  ``launch.py`` picks the grid of every kernel, these and the
op kernels alike.

Users: ``minidcn.tensor`` (the device move) creates CudaArrays, and the op kernels in
``minidcn.backends.cuda`` take and return them.  This package imports nothing from the
backends, so it is the layer below them.
"""
