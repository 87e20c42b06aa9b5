"""Layers, named and built like torch.nn (torchvision.ops for the detection layers)."""

from .init import manual_seed
from .module import Module, Parameter
from .layers import *  # noqa: F401,F403  Linear, ReLU, GELU, Softmax, Sequential, Flatten
from .conv import *  # noqa: F401,F403  Conv2d, MaxPool2d, AvgPool2d
from .deform import *  # noqa: F401,F403  DeformConv2d
from .recording import recording_sampling
from .roi import *  # noqa: F401,F403  RoIAlign, RoIPool, DeformRoIPool, ...
from .norm import *  # noqa: F401,F403  GroupNorm, BatchNorm2d, LayerNorm, InstanceNorm2d
from .dcnv3 import *  # noqa: F401,F403  DCNv3, DCNv4
from .attention import *  # noqa: F401,F403  MultiScaleDeformableAttention
