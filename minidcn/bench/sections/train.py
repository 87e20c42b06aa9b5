"""One SGD step of a small DCNv2 network, float32, batch 64 of 28x28 one-channel images:

    conv 3x3 1->8, ReLU, max-pool 2; conv 3x3 8->16, ReLU, max-pool 2;
    modulated deformable conv 3x3 16->32, ReLU; modulated deformable conv 3x3 32->32, ReLU;
    linear 32*7*7 -> 10; cross-entropy; SGD (lr 0.01, momentum 0.9).

Each deformable layer predicts its offsets and (through a sigmoid) its mask with its own
3x3 convolutions.  minidcn's ``nn`` modules against the same network written with torch and
``torchvision.ops.deform_conv2d``, both starting from the same weights (the offset
predictors' small but not zero, so that the offsets are fractional).  "forward" is the
network and loss without a graph; "fwd+bwd" is the whole step: zero the gradients,
forward, loss, backward, update.  The check compares the loss and every weight after the
first step.  The reference backend is left out (NumPy takes over a second per step).
"""

from __future__ import annotations

import numpy as np

from ..common import Case, Timed, require, rng_array

ORDER = 5
BATCH, SIZE, CLASSES, LR, MOMENTUM = 64, 28, 10, 0.01, 0.9
SMOKE_BATCH = 2
# (name, in, out) of the four 3x3 convolutions; "deform" ones carry offset and mask predictors
CONVS = [("conv1", 1, 8), ("conv2", 8, 16), ("deform1", 16, 32), ("deform2", 32, 32)]


def weights() -> dict:
    """The initial weights by name: torch's default uniform init, offset and mask
    predictors at a hundredth of it."""
    rng = np.random.default_rng(0)

    def uniform(shape, fan_in, scale=1.0):
        bound = scale / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, shape).astype(np.float32)

    w = {}
    for name, c_in, c_out in CONVS:
        w[f"{name}.weight"], w[f"{name}.bias"] = uniform((c_out, c_in, 3, 3), 9 * c_in), uniform((c_out,), 9 * c_in)
        if name.startswith("deform"):
            for predictor, channels in (("offset", 18), ("mask", 9)):
                w[f"{name}.{predictor}.weight"] = uniform((channels, c_in, 3, 3), 9 * c_in, 0.01)
                w[f"{name}.{predictor}.bias"] = uniform((channels,), 9 * c_in, 0.01)
    w["fc.weight"], w["fc.bias"] = uniform((CLASSES, 32 * 7 * 7), 32 * 7 * 7), uniform((CLASSES,), 32 * 7 * 7)
    return w


def data(batch):
    labels = np.random.default_rng(1).integers(0, CLASSES, batch)
    return rng_array((batch, 1, SIZE, SIZE), 2), labels


def _minidcn(batch) -> Timed:
    import minidcn
    from minidcn import Tensor, nn, optim
    from minidcn.functional import cross_entropy

    def conv(name, c_in, c_out):
        if name.startswith("deform"):
            return nn.DeformConv2d(c_in, c_out, 3, padding=1, modulated=True)
        return nn.Conv2d(c_in, c_out, 3, padding=1)

    layers = [conv(*CONVS[0]), nn.ReLU(), nn.MaxPool2d(2), conv(*CONVS[1]), nn.ReLU(), nn.MaxPool2d(2),
              conv(*CONVS[2]), nn.ReLU(), conv(*CONVS[3]), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 7 * 7, CLASSES)]
    model = nn.Sequential(*layers)
    index = {"conv1": 0, "conv2": 3, "deform1": 6, "deform2": 8, "fc": 11}
    ours = {}
    for key, value in weights().items():
        parts = key.split(".")
        parts[0] = str(index[parts[0]])
        if len(parts) == 3:
            parts[1] += "_conv"
        ours[".".join(parts)] = value
    model.load_state_dict(ours)
    optimizer = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    images, labels = data(batch)
    x = Tensor(images)

    def forward():
        with minidcn.no_grad():
            return cross_entropy(model(x), labels)

    def step():
        optimizer.zero_grad()
        loss = cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        return loss

    def outputs():
        loss = step().item()
        state = model.state_dict()
        names = {v: k for k, v in zip(weights(), ours)}
        return {"loss": np.float32(loss), **{f"{names[k]} after one step": v for k, v in state.items()}}

    return Timed(forward, step, outputs)


def _torch(batch) -> Timed:
    torch = require("torch")
    deform_conv2d = require("torchvision.ops").deform_conv2d

    w = {k: torch.nn.Parameter(torch.from_numpy(v)) for k, v in weights().items()}
    F = torch.nn.functional

    def deform(name, x):
        offset = F.conv2d(x, w[f"{name}.offset.weight"], w[f"{name}.offset.bias"], padding=1)
        mask = torch.sigmoid(F.conv2d(x, w[f"{name}.mask.weight"], w[f"{name}.mask.bias"], padding=1))
        return deform_conv2d(x, offset, w[f"{name}.weight"], w[f"{name}.bias"], padding=1, mask=mask)

    def model(x):
        for name in ("conv1", "conv2"):
            x = F.max_pool2d(F.relu(F.conv2d(x, w[f"{name}.weight"], w[f"{name}.bias"], padding=1)), 2)
        x = F.relu(deform("deform2", F.relu(deform("deform1", x))))
        return F.linear(x.flatten(1), w["fc.weight"], w["fc.bias"])

    optimizer = torch.optim.SGD(w.values(), lr=LR, momentum=MOMENTUM)
    images, labels = data(batch)
    x, target = torch.from_numpy(images), torch.from_numpy(labels)

    def forward():
        with torch.no_grad():
            return F.cross_entropy(model(x), target)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        return loss

    def outputs():
        loss = step().item()
        return {"loss": np.float32(loss), **{f"{k} after one step": p.detach().numpy() for k, p in w.items()}}

    return Timed(forward, step, outputs)


def cases(smoke: bool) -> list:
    batch = SMOKE_BATCH if smoke else BATCH
    return [Case(f"one SGD step of a small DCNv2 network (2 convs, 2 modulated deformable convs, linear), "
                 f"batch {batch}, {SIZE}x{SIZE}, float32",
                 {"minidcn numba": lambda: _minidcn(batch), "torch + torchvision": lambda: _torch(batch)},
                 peer="torch + torchvision", rtol=1e-4, atol=1e-5,
                 skipped={"minidcn reference": "left out: NumPy takes over a second per step"})]
