"""Where a tensor's data lives: the host (a NumPy array, "cpu") or the device (a
:class:`~minidcn.device.array.CudaArray`, "cuda"), and the differentiable move
between the two (``Tensor.to``, the Function :class:`ToDevice`)."""

from __future__ import annotations

from .function import Function


def is_device_array(data) -> bool:
    """True for a CudaArray (checked by name: the cuda package is imported only when used)."""
    return type(data).__name__ == "CudaArray"


def common_device(op_name, args) -> str:
    """The one device all Tensor arguments live on; ValueError if they differ."""
    from .tensor import Tensor

    devices = {a.device for a in args if isinstance(a, Tensor)}
    if len(devices) > 1:
        raise ValueError(
            f"{op_name}: expected all tensors on one device, got {sorted(devices)}; "
            "move them with .to('cpu') or .to('cuda') first"
        )
    return devices.pop() if devices else "cpu"


class OnDevice:
    """Mixed into :class:`~minidcn.Tensor` (it reads ``self.data``): ``t.device``, ``t.to()``."""

    @property
    def device(self) -> str:
        return "cuda" if is_device_array(self.data) else "cpu"

    def to(self, device: str):
        """Move to ``"cpu"`` or ``"cuda"``; differentiable (the gradient moves back)."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"to(): device must be 'cpu' or 'cuda', got {device!r}")
        return self if device == self.device else ToDevice.apply(self, device=device)


class ToDevice(Function):
    """Copy between host and device; the gradient makes the return trip."""

    @staticmethod
    def forward(ctx, x, device):
        ctx.source = "cuda" if is_device_array(x) else "cpu"
        return _move(x, device)

    @staticmethod
    def backward(ctx, grad):
        return _move(grad, ctx.source)


def _move(arr, device):
    if device == "cpu":
        return arr.to_host() if is_device_array(arr) else arr
    from .device.array import CudaArray

    return arr if is_device_array(arr) else CudaArray.from_host(arr)
