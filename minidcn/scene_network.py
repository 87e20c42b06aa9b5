"""Lesson 07's network: three stacked 3×3 deformable layers that label every unit of a scene.

The scenes are :func:`minidcn.data.scenes`: one digit, 6 to 40 px on its longer side, anywhere
in a 48×48 image over smooth clutter.  The network

    conv 3×3, 1→8 · ReLU · max-pool 2          48×48 → 24×24
    conv 3×3, 8→16 · ReLU · max-pool 2         24×24 → 12×12
    3 × [DeformConv2d 3×3, 32 channels · ReLU] 12×12, stride 1, padding 1
    conv 1×1, 32→11                            one score per class and unit

names, for every unit of its 12×12 map, the digit under the unit's 4×4 pixel block (classes
1..10) or background (class 0).  Lesson 07 trains it with several seeds and measures its
sampling locations; ``minidcn explore`` trains one and draws them in a web page
(:mod:`minidcn.explorer`).
"""

from __future__ import annotations

import math
import os

import numpy as np
from tqdm import tqdm

from . import data, nn, optim
from . import functional as F
from .tensor import Tensor

__all__ = ["IMAGE_SIZE", "OBJECT_SIZE", "STRIDE", "MAP_SIZE", "BATCH", "LEARNING_RATE",
           "DATA_SEED", "UNIT_CENTRES", "training_size", "make_scenes", "unit_labels",
           "build_network", "balanced_loss", "train", "trained"]

IMAGE_SIZE = 48
OBJECT_SIZE = (6.0, 40.0)  # the digit's longer side, log-uniform, in pixels
STRIDE = 4  # two 2x2 max-pools before the deformable layers
MAP_SIZE = IMAGE_SIZE // STRIDE  # 12 x 12 units in each deformable layer
BATCH = 16
LEARNING_RATE = 2e-3
DATA_SEED = 7  # the scenes: the same for every training seed
UNIT_CENTRES = STRIDE * np.arange(MAP_SIZE) + (STRIDE - 1) / 2  # pixel (y or x) of unit u


def training_size(quick: bool) -> tuple[int, int]:
    """(training scenes, epochs): (1200, 3) for a quick run, else (3000, 5)."""
    return (1200, 3) if quick else (3000, 5)


def make_scenes(n: int, *, test: bool):
    """``n`` training scenes (seed ``DATA_SEED``) or test scenes (the next seed)."""
    return data.scenes(n, image_size=IMAGE_SIZE, object_size=OBJECT_SIZE,
                       seed=DATA_SEED + int(test))


def unit_labels(scenes) -> np.ndarray:
    """(N, 12, 12) int64: digit + 1 for units whose block centre lies in the box, else 0.

    Boxes are [x1, y1, x2, y2] with pixel j spanning [j, j + 1), so pixel centre c sits at
    box coordinate c + 0.5."""
    at = UNIT_CENTRES + 0.5
    x1, y1, x2, y2 = (scenes.boxes[:, k, None, None] for k in range(4))
    inside = ((y1 <= at[:, None]) & (at[:, None] <= y2) & (x1 <= at[None, :]) & (at[None, :] <= x2))
    return np.where(inside, scenes.labels[:, None, None] + 1, 0).astype(np.int64)


def build_network(seed: int) -> nn.Sequential:
    """The network above; its initial weights come from ``seed`` (one generator per layer).

    The offset predictors start at zero and learn at the full learning rate
    (``offset_lr_mult=1``)."""
    def init(layer_index):
        return np.random.default_rng([seed, layer_index])

    deformable = [nn.DeformConv2d(16 if i == 0 else 32, 32, 3, padding=1, offset_lr_mult=1.0,
                                  generator=init(2 + i)) for i in range(3)]
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, generator=init(0)), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, generator=init(1)), nn.ReLU(), nn.MaxPool2d(2),
        deformable[0], nn.ReLU(), deformable[1], nn.ReLU(), deformable[2], nn.ReLU(),
        nn.Conv2d(32, 11, 1, generator=init(5)),
    )


def balanced_loss(scores, targets):
    """Cross-entropy per unit, weighted so that object units and background units each make
    half of the batch's loss."""
    per_unit = F.cross_entropy(scores, targets, reduction="none")  # (B, 12, 12)
    on_object = targets > 0
    weights = np.where(on_object, 0.5 / max(on_object.sum(), 1),
                       0.5 / max((~on_object).sum(), 1)).astype(np.float32)
    return (per_unit * Tensor(weights)).sum()


def train(model, inputs: np.ndarray, targets: np.ndarray, *, epochs: int, seed: int,
          batch: int = BATCH, learning_rate: float = LEARNING_RATE, on_epoch=None,
          label: str = "") -> list[float]:
    """Adam with a cosine schedule over ``epochs`` passes of ``inputs`` (N, 1, 48, 48, already
    standardised) against ``targets`` (N, 12, 12), batches in an order drawn from ``seed``.

    ``on_epoch(epoch, mean_loss)`` is called after each epoch (epoch counted from 1).
    Returns the mean training loss of every epoch."""
    if epochs < 1 or batch < 1 or len(inputs) < batch or len(inputs) != len(targets):
        raise ValueError(f"train: need epochs >= 1, 1 <= batch <= len(inputs) and as many "
                         f"targets as inputs; got epochs={epochs}, batch={batch}, "
                         f"{len(inputs)} inputs, {len(targets)} targets")
    optimiser = optim.Adam(optim.param_groups(model, lr=learning_rate), lr=learning_rate)
    base_rates = [group["lr"] for group in optimiser.param_groups]
    order = np.random.default_rng(seed)
    steps_per_epoch = len(inputs) // batch
    step, total_steps = 0, epochs * steps_per_epoch
    epoch_losses = []
    for epoch in range(epochs):
        permutation = order.permutation(len(inputs))
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"{label}epoch {epoch + 1}/{epochs}",
                   leave=False, mininterval=1.0)
        for b in bar:
            for group, rate in zip(optimiser.param_groups, base_rates):  # cosine schedule
                group["lr"] = rate * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            index = permutation[b * batch:(b + 1) * batch]
            loss = balanced_loss(model(Tensor(inputs[index])), targets[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            step += 1
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        epoch_losses.append(float(np.mean(losses)))
        if on_epoch is not None:
            on_epoch(epoch + 1, epoch_losses[-1])
    return epoch_losses


def trained(*, quick: bool, seed: int = 7, cache=None):
    """Lesson 07's network trained with ``seed`` (:func:`training_size` scenes and epochs),
    with the pixel mean and standard deviation it
    standardises its input by: ``(model, mean, std)``.

    With ``cache`` (an ``.npz`` path), loads the weights from it when it exists, and writes
    them there after training otherwise."""
    n_train, epochs = training_size(quick)
    model = build_network(seed)
    if cache is not None and os.path.exists(cache):
        with np.load(cache, allow_pickle=False) as stored:
            state = {k: stored[k] for k in stored.files}
        mean, std = float(state.pop("pixel_mean")), float(state.pop("pixel_std"))
        model.load_state_dict(state)
        print(f"loaded the trained network from {cache}")
        return model, mean, std
    train_scenes = make_scenes(n_train, test=False)
    mean, std = float(train_scenes.images.mean()), float(train_scenes.images.std())
    print(f"training lesson 07's network (seed {seed}): {n_train} scenes, {epochs} epochs")
    train(model, (train_scenes.images - mean) / std, unit_labels(train_scenes), epochs=epochs,
          seed=seed, label=f"seed {seed} ",
          on_epoch=lambda epoch, loss: print(f"epoch {epoch}: mean training loss {loss:.3f}"))
    if cache is not None:
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        np.savez(cache, pixel_mean=mean, pixel_std=std, **model.state_dict())
        print(f"saved the trained network to {cache}")
    return model, mean, std
