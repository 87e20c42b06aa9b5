"""Opt-in host copies of what a deformable layer sampled, for plots and lessons.

A deformable layer (DeformConv2d, DeformRoIPool) can keep, after a forward, host NumPy
copies of where it sampled: positions, offsets, masks.  Copying them costs time and memory
on every call, and training needs none of it, so a layer records only when asked:

* ``layer.record_sampling = True`` (False by default), or
* ``with recording_sampling(model): model(x)`` for every such layer in a model.

A forward without recording forgets the last recording (so no plot shows a stale one), and
reading a recorded attribute then raises a RuntimeError that says how to turn recording on.
"""

from __future__ import annotations

from contextlib import contextmanager

from .module import Module

__all__ = ["recording_sampling"]


class RecordsSampling:
    """Mixin for a layer that records what it sampled: ``record_sampling`` and the
    recorded values, read through :meth:`_recorded_item`."""

    record_sampling = False
    _recorded = None  # {attribute name: host array or None} of the last forward

    def _keep(self, make_record) -> None:
        """After a forward: ``make_record()`` (the dict of host copies) when recording,
        else forget the previous recording."""
        self._recorded = make_record() if self.record_sampling else None

    def _recorded_item(self, name):
        if self._recorded is None:
            raise RuntimeError(
                f"{type(self).__name__}: {name} is kept only by a forward run with recording "
                f"on; set layer.record_sampling = True (or run the model inside "
                f"`with minidcn.nn.recording_sampling(model):`) before calling the layer")
        return self._recorded[name]


@contextmanager
def recording_sampling(model):
    """Inside the block, every recording layer in ``model`` (DeformConv2d, DeformRoIPool; the
    model itself or any layer it holds) records what it sampled at each forward; afterwards
    the flags are what they were and the last recordings stay readable.

        with recording_sampling(model):
            model(x)
        points = layer.last_sampling_locations
    """
    if not isinstance(model, Module):
        raise TypeError(f"recording_sampling: model must be a Module (a deformable layer or a "
                        f"model holding some), got {type(model).__name__}")
    layers = [m for m in model.modules() if isinstance(m, RecordsSampling)]
    before = [layer.record_sampling for layer in layers]
    for layer in layers:
        layer.record_sampling = True
    try:
        yield model
    finally:
        for layer, flag in zip(layers, before):
            layer.record_sampling = flag
