"""The differentiable ops, named and called like ``torch.nn.functional`` / ``torchvision.ops``.

Each op validates its arguments, picks the kernels for the tensors' device and the active
backend, and records one :class:`~minidcn.function.Function` in the graph.
"""

from .activation import gelu, log_softmax, relu, sigmoid, softmax, tanh
from .arith import add, cast, div, exp, log, mul, neg, pow, sub
from .linalg import linear, matmul
from .loss import cross_entropy
from .reduction import mean, sum
from .shape import cat, flatten, getitem, permute, reshape, transpose
from .conv import *  # noqa: F401,F403  conv2d
from .pooling import *  # noqa: F401,F403  max_pool2d, avg_pool2d
from .bilinear import *  # noqa: F401,F403  bilinear_kernel, bilinear_sample
from .deform_conv import *  # noqa: F401,F403  deform_conv2d, sampling_locations
from .roi import *  # noqa: F401,F403  roi_pool, roi_align, deform_roi_pool, deform_ps_roi_pool
from .norm import *  # noqa: F401,F403  group_norm, batch_norm, layer_norm, instance_norm
from .dcnv3 import *  # noqa: F401,F403  dcnv3, dcnv4
from .multi_scale_deform_attn import *  # noqa: F401,F403  multi_scale_deform_attn
