"""ONNX export, checked in ONNX Runtime: lesson 06's DCN, lesson 07's network, a network that
uses every mapped op, and the refusals.

Each exported graph runs in ONNX Runtime's CPU provider on the example input and must give
minidcn's own forward to 1e-4 (float32).  The deformable layers get non-zero offset and mask
predictors, so a wrong offset or mask layout would move the sampling points and fail.
"""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx; the test "
                                          "extra installs it)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install "
                                                "onnxruntime; the test extra installs it)")

import minidcn.onnx as monnx  # noqa: E402
from minidcn import Tensor, nn, no_grad  # noqa: E402
from minidcn import functional as F  # noqa: E402
from minidcn.scene_network import build_network  # noqa: E402

TOLERANCE = 1e-4


def onnx_vs_minidcn(model, inputs, path):
    """max |ONNX Runtime - minidcn| on ``inputs`` after exporting ``model`` to ``path``."""
    monnx.export(model, inputs, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: x for i, x in zip(session.get_inputs(), inputs)})[0]
    deformable = [m for m in getattr(model, "modules", list)() if isinstance(m, nn.DeformConv2d)]
    for layer in deformable:
        layer.record_sampling = True  # largest_offset reads what this forward sampled
    with no_grad():
        want = model(*[Tensor(x) for x in inputs]).numpy()
    assert got.shape == want.shape
    offsets = [largest_offset(m) for m in deformable]
    print(f"{path.name}: output up to {np.abs(want).max():.3g}, sampling offsets of the "
          f"deformable layers up to {[f'{o:.3g}' for o in offsets]} px")
    return float(np.abs(got - want).max())


def largest_offset(layer):
    """The largest |offset| (pixels) of a DeformConv2d's last forward."""
    loc = layer.last_sampling_locations
    b, g, k, h, w, _ = loc.shape
    grid = F.sampling_locations(np.zeros((b, 2 * g * k, h, w), np.float32), layer.kernel_size,
                                layer.stride, layer.padding, layer.dilation)
    return np.abs(loc - grid).max()


def randomise(model, rng, scale=0.05):
    """Offset and mask predictors (zero at initialisation) and biases drawn at random.

    The other weights keep their default initialisation, so activations stay of order 1 to
    10 and the offsets of order a pixel, as in a trained network.  (With every weight of
    standard deviation 0.3, lesson 06's DCN has offsets up to 36 px and outputs up to 58;
    ONNX Runtime then differs from minidcn by 1e-3, and so does minidcn's own float32
    forward from its float64 one (7e-4): float32 rounding, not the export.)
    """
    for name, p in model.named_parameters():
        if "offset_conv" in name or "mask_conv" in name or name.endswith("bias"):
            p.data = rng.normal(0.0, scale, p.shape).astype(np.float32)
    return model


def lesson06_dcn(rng):
    """Lesson 06's DCN: its last two 3x3 convolutions are DeformConv2d."""
    return randomise(nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.DeformConv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.DeformConv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    ), rng)


def lesson07_network(rng):
    """Lesson 07's network itself (minidcn.scene_network: three stacked DeformConv2d and a
    1x1 classifier per unit)."""
    return randomise(build_network(seed=7), rng)


class EveryOp(nn.Module):
    """A network that calls every op minidcn.onnx maps, each with non-default settings."""

    def __init__(self, rng):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=1, padding=1, dilation=1)
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=2)
        self.dcn2 = nn.DeformConv2d(8, 8, 3, padding=1, groups=2, offset_groups=2,
                                    modulated=True)
        self.dcn1 = nn.DeformConv2d(8, 8, 3, stride=2, padding=0, dilation=2, bias=False)
        self.gn = nn.GroupNorm(4, 8)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 2 * 2, 10)
        self.roi_fc = nn.Linear(3 * 8 * 2 * 2, 10)
        randomise(self, rng)
        self.bn.running_mean[...] = rng.normal(0.0, 0.5, 8)
        self.bn.running_var[...] = rng.uniform(0.5, 2.0, 8)
        self.bn.eval()

    def forward(self, x, rois):
        h = F.relu(self.conv(x))                                   # (2, 8, 16, 16)
        h = self.gn(F.sigmoid(self.strided(h)) * 2.0 - 0.5)        # (2, 8, 8, 8)
        h = self.bn(F.tanh(self.dcn2(h)) + h)
        h = h + 0.5 * F.instance_norm(h) - 0.25 * F.layer_norm(h)  # group norms, no affine
        crops = [F.roi_align(h, rois, 2, spatial_scale=0.5, sampling_ratio=0, aligned=True),
                 F.roi_align(h, rois, 2, spatial_scale=0.5, sampling_ratio=2, aligned=False),
                 F.roi_pool(h, rois, 2, spatial_scale=0.5)]           # (3, 8, 2, 2) each
        regions = F.reshape(F.permute(F.flatten(crops[0]) + F.flatten(crops[1])
                                      - F.flatten(crops[2]), (1, 0)), (1, -1))
        h = F.max_pool2d(h, 3, stride=1, padding=1, dilation=1)
        h = F.avg_pool2d(h, 3, stride=1, padding=1, count_include_pad=False)
        h = F.avg_pool2d(h, 2, stride=1, padding=1, count_include_pad=True)   # (2, 8, 9, 9)
        h = self.dcn1(h)                                           # (2, 8, 3, 3)
        h = F.max_pool2d(h, 2, stride=1)                           # (2, 8, 2, 2)
        scale = F.exp(F.neg(F.mean(h, dim=(2, 3), keepdim=True)))
        h = h / (1.0 + F.log(1.0 + scale ** 2))
        h = F.transpose(h, 2, 3) - F.sum(h, dim=1, keepdim=True) / 8.0
        out = self.fc(F.flatten(h)) + self.roi_fc(F.cast(F.cast(regions, np.float64),
                                                         np.float32))
        return F.log_softmax(out, 1)


def test_lesson06_dcn_runs_in_onnx_runtime(tmp_path):
    rng = np.random.default_rng(6)
    model = lesson06_dcn(rng)
    x = rng.normal(size=(4, 1, 28, 28)).astype(np.float32)
    diff = onnx_vs_minidcn(model, (x,), tmp_path / "dcn06.onnx")
    print(f"lesson 06 DCN: max |ORT - minidcn| = {diff:.3g}")
    assert diff <= TOLERANCE


def test_lesson07_network_runs_in_onnx_runtime(tmp_path):
    rng = np.random.default_rng(7)
    model = lesson07_network(rng)
    x = rng.normal(size=(2, 1, 48, 48)).astype(np.float32)
    diff = onnx_vs_minidcn(model, (x,), tmp_path / "net07.onnx")
    print(f"lesson 07 network: max |ORT - minidcn| = {diff:.3g}")
    assert diff <= TOLERANCE


def test_every_mapped_op_runs_in_onnx_runtime(tmp_path):
    rng = np.random.default_rng(0)
    model = EveryOp(rng)
    x = rng.normal(size=(2, 3, 16, 16)).astype(np.float32)
    rois = np.array([[0, 1.0, 2.0, 9.0, 12.0], [1, 3.5, 0.5, 15.0, 7.0],
                     [1, 6.0, 6.0, 6.5, 6.2]], np.float32)
    path = tmp_path / "every_op.onnx"
    diff = onnx_vs_minidcn(model, (x, rois), path)
    print(f"every-op network: max |ORT - minidcn| = {diff:.3g}")
    assert diff <= TOLERANCE
    exported = {n.op_type for n in onnx.load(str(path)).graph.node}
    for op in ("Conv", "DeformConv", "MatMul", "Relu", "Sigmoid", "Tanh", "LogSoftmax",
               "MaxPool", "AveragePool", "ReduceMean", "BatchNormalization", "Add", "Sub",
               "Mul", "Div", "Pow", "Neg", "Exp", "Log", "Cast", "ReduceSum", "Reshape",
               "Transpose", "RoiAlign", "MaxRoiPool"):
        assert op in exported, op
    # The rois are a graph input, not a constant: other boxes give other, still equal, results.
    other = rois.copy()
    other[:, 1:] += np.float32(1.25)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x, "input_1": other})[0]
    with no_grad():
        want = model(Tensor(x), Tensor(other)).numpy()
    assert np.abs(got - want).max() <= TOLERANCE


def test_modulated_layout_error_would_be_caught(tmp_path):
    """The check can fail: the same export with the mask predictor's channels reversed in
    the ONNX graph gives a different result."""
    rng = np.random.default_rng(1)
    layer = randomise(nn.DeformConv2d(4, 4, 3, padding=1, modulated=True), rng)
    x = rng.normal(size=(1, 4, 6, 6)).astype(np.float32)
    path = tmp_path / "dcn.onnx"
    assert onnx_vs_minidcn(layer, (x,), path) <= TOLERANCE
    proto = onnx.load(str(path))
    for init in proto.graph.initializer:
        if init.name == "mask_conv.weight":
            w = onnx.numpy_helper.to_array(init)[::-1].copy()
            init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    with no_grad():
        want = layer(Tensor(x)).numpy()
    assert np.abs(session.run(None, {"input": x})[0] - want).max() > 1e-2


def test_an_op_with_no_onnx_equivalent_is_refused_by_name(tmp_path):
    path = tmp_path / "refused.onnx"
    x = np.random.default_rng(2).normal(size=(1, 2, 5, 5)).astype(np.float32)
    rois = np.array([[0, 0.0, 0.0, 3.0, 3.0]], np.float32)
    offset = np.full((1, 2, 2, 2), 0.1, np.float32)
    with pytest.raises(NotImplementedError, match="op DeformRoIPool has no ONNX equivalent"):
        monnx.export(lambda t: F.deform_roi_pool(t, rois, offset, 2), (x,), path)
    assert not path.exists()
    with pytest.raises(NotImplementedError, match="op GetItem"):
        monnx.export(lambda t: t[0], (x,), path)
    assert not path.exists()


def test_gelu_softmax_and_channels_last_layer_norm_run_in_onnx_runtime(tmp_path):
    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.LayerNorm(5, channels_last=True), nn.GELU(), nn.Linear(5, 5),
                          nn.Softmax(-1))
    model[0].weight.data[...] = rng.normal(1.0, 0.3, 5)
    model[0].bias.data[...] = rng.normal(0.0, 0.3, 5)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    path = tmp_path / "gelu_softmax.onnx"
    diff = onnx_vs_minidcn(model, (x,), path)
    assert diff <= TOLERANCE
    exported = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Erf", "Softmax", "ReduceMean"} <= exported


def test_cat_runs_in_onnx_runtime_as_concat(tmp_path):
    """Lesson 12 joins its pyramid's levels with F.cat; three parts of unequal size, so a
    Concat on the wrong axis or in the wrong order would not match."""
    rng = np.random.default_rng(4)
    layer = nn.Linear(4, 4)
    randomise(layer, rng)

    def model(x, y):
        return F.cat([layer(x), F.relu(y), y * 2.0], dim=1)

    x = rng.normal(size=(2, 2, 4)).astype(np.float32)
    y = rng.normal(size=(2, 5, 4)).astype(np.float32)
    path = tmp_path / "cat.onnx"
    assert onnx_vs_minidcn(model, (x, y), path) <= TOLERANCE
    assert "Concat" in {n.op_type for n in onnx.load(str(path)).graph.node}


def test_the_modern_deformable_ops_are_refused_by_name(tmp_path):
    """dcnv3, dcnv4 and multi_scale_deform_attn have no ONNX operator: NotImplementedError
    naming the op, and nothing written."""
    rng = np.random.default_rng(4)
    path = tmp_path / "modern.onnx"
    x = rng.normal(size=(1, 3, 3, 4)).astype(np.float32)
    for model, op in ((nn.DCNv3(4, group=2), "DCNv3Core"), (nn.DCNv4(4, group=2), "DCNv4Core")):
        with pytest.raises(NotImplementedError, match=f"op {op} has no ONNX equivalent"):
            monnx.export(model, (x,), path)
        assert not path.exists()
    attention = nn.MultiScaleDeformableAttention(4, num_heads=2, num_levels=1, num_points=2)
    query = rng.normal(size=(1, 3, 4)).astype(np.float32)
    reference = rng.uniform(0, 1, size=(1, 3, 2)).astype(np.float32)
    value = rng.normal(size=(1, 6, 4)).astype(np.float32)
    with pytest.raises(NotImplementedError,
                       match="op MultiScaleDeformAttn has no ONNX equivalent"):
        monnx.export(lambda q, r, v: attention(q, r, v, [(2, 3)]), (query, reference, value),
                     path)
    assert not path.exists()


def test_export_refuses_untraceable_calls(tmp_path):
    x = np.zeros((1, 1, 4, 4), np.float32)
    conv = nn.Conv2d(1, 1, 3)
    with no_grad(), pytest.raises(ValueError, match="no_grad"):
        monnx.export(conv, (x,), tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="does not depend on example input 'input_1'"):
        monnx.export(lambda a, b: conv(a), (x, x), tmp_path / "a.onnx")
    bn = nn.BatchNorm2d(1)
    with pytest.raises(ValueError, match="training mode .*model.eval()"):
        monnx.export(bn, (np.full((2, 1, 2, 2), 3.0, np.float32),), tmp_path / "a.onnx")
    assert bn.running_mean[0] == 0.0 and int(bn.num_batches_tracked) == 0  # nothing ran
    mean, var = np.zeros(1, np.float32), np.ones(1, np.float32)
    with pytest.raises(ValueError, match="batch_norm ran in training mode"):
        monnx.export(lambda t: F.batch_norm(t, mean, var, training=True),
                     (np.ones((2, 1, 2, 2), np.float32),), tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="opset_version"):
        monnx.export(conv, (x,), tmp_path / "a.onnx", opset_version=17)
    assert not (tmp_path / "a.onnx").exists()
