"""``python -m minidcn.bench [section ...]``: per-backend timings beside installed peers.

Each section is a module of this package with a ``run(repeat)`` function that times its op
on the shape its issue names and prints one table.  Peers (torch, torchvision) are timed
only when importable; they are never required.
"""

SECTIONS = {
    "conv2d": "conv",
    "deform_conv2d": "deform",
    "roi": "roi",
    "norm": "norm",
}
