"""The cuda kernels; every backend exports the same names (see minidcn.backends)."""

from .conv import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403
from .bilinear import *  # noqa: F401,F403
from .deform_conv import *  # noqa: F401,F403
from .roi_pool import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
from .dcnv3 import *  # noqa: F401,F403
