"""Export a minidcn model to ONNX, from the graph the autograd engine records.

``export(model, example_inputs, path)`` is shaped like ``torch.onnx.export(model, args, f)``:
it runs the model once on the example inputs, each made to require a gradient, so that
every op downstream of them is recorded (:class:`minidcn.function.Node` keeps the op, its
tensor arguments and its keyword parameters).  That recorded graph *is* the trace: walking
it from the output back to the inputs gives each op with everything it was called with.
Each op becomes one ONNX node (or a few, for group normalisation and roi_align), every
other tensor the graph reads (parameters, buffers, constants) becomes an initializer, each
example input a graph input and the model's output the graph output.

The shapes are those of the example inputs (the graph is exported for them); the values
of everything that is not an input are baked in.  An op with no ONNX equivalent
(``deform_roi_pool``, ``deform_ps_roi_pool``, ``bilinear_sample``, ``dcnv3``, ``dcnv4``,
``multi_scale_deform_attn``, indexing) raises
NotImplementedError naming it; nothing is written then.

The ONNX operators used and how each minidcn op maps (opset 19):

=================================  ==========================================================
minidcn op                         ONNX
=================================  ==========================================================
conv2d                             Conv
deform_conv2d (mask or not)        DeformConv (torchvision's offset and mask layouts)
matmul / linear                    MatMul (+ Add for the bias; the weight's .T is Transpose)
relu, sigmoid, tanh                Relu, Sigmoid, Tanh
gelu                               Mul, Erf, Add, Mul (the exact form: ½ x (1 + erf(x/√2)))
softmax, log_softmax               Softmax, LogSoftmax
max_pool2d, avg_pool2d             MaxPool, AveragePool (count_include_pad carried over)
group_norm (and layer/instance)    Reshape to (N, G, -1), ReduceMean, Sub, Mul, Add, Sqrt,
                                   Div, Reshape back, then per-channel Mul and Add (exact;
                                   opset 18's GroupNormalization has per-group affine)
batch_norm, evaluation mode        BatchNormalization
add sub mul div pow neg exp log    Add Sub Mul Div Pow Neg Exp Log; cast: Cast
sum, mean                          ReduceSum (mean: ReduceSum then Div by the count)
reshape, flatten, permute/.T       Reshape, Reshape, Transpose
roi_align                          RoiAlign, mode avg; aligned=True: half_pixel,
                                   aligned=False: output_half_pixel; sampling_ratio <= 0: 0
roi_pool                           MaxRoiPool
=================================  ==========================================================
"""

from __future__ import annotations

import os

import numpy as np

from .grad_mode import is_grad_enabled
from .tensor import Tensor

__all__ = ["export", "MAPPED_OPS", "REFUSED_OPS"]

# Ops that exist in minidcn but not in ONNX: refused by name.
REFUSED_OPS = {
    "DeformRoIPool": "deformable RoI pooling (deform_roi_pool) has no ONNX operator",
    "DeformPSRoIPool": "deformable position-sensitive RoI pooling (deform_ps_roi_pool) has no "
                       "ONNX operator",
    "BilinearSample": "bilinear_sample at arbitrary points is not mapped (GridSample differs "
                      "in its coordinates)",
    "GetItem": "indexing (getitem) is not mapped",
    "ToDevice": "a move between devices has no ONNX meaning; run the model on one device",
    "DCNv3Core": "DCNv3's core (dcnv3) has no ONNX operator (DeformConv has a weight and "
                 "no softmax-normalised groups)",
    "DCNv4Core": "DCNv4's core (dcnv4) has no ONNX operator",
    "MultiScaleDeformAttn": "multi-scale deformable attention (multi_scale_deform_attn) has no "
                            "ONNX operator",
}


def _import_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError("minidcn.onnx.export needs the onnx package: pip install onnx "
                          "(or pip install \"minidcn[onnx]\")") from None
    return onnx, helper, numpy_helper


class _Graph:
    """The ONNX nodes, initializers and names built while walking the minidcn graph."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers, self.names = [], [], {}
        self.used = set()

    def fresh(self, stem: str) -> str:
        name, k = stem, 1
        while name in self.used:
            k += 1
            name = f"{stem}_{k}"
        self.used.add(name)
        return name

    def constant(self, array, stem="const") -> str:
        name = self.fresh(stem)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, stem=None, **attrs) -> str:
        out = self.fresh(stem or op.lower())
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], **attrs))
        return out


# ---------------------------------------------------------------------------- op converters
# Each converter gets the graph, the recorded node, the ONNX names of its positional inputs
# (None where an optional one was absent) and the recorded tensors, and returns the ONNX
# name of the op's output.

def _conv(g, node, x, w, b):
    (sh, sw), (ph, pw), (dh, dw) = (node.params[k] for k in ("stride", "padding", "dilation"))
    kh, kw = node.inputs[1].shape[2:]
    return g.node("Conv", [x, w] + ([b] if b else []), kernel_shape=[kh, kw], strides=[sh, sw],
                  pads=[ph, pw, ph, pw], dilations=[dh, dw], group=node.params["groups"])


def _deform_conv(g, node, x, offset, mask, w, b):
    p = node.params
    (sh, sw), (ph, pw), (dh, dw) = p["stride"], p["padding"], p["dilation"]
    kh, kw = node.inputs[3].shape[2:]
    inputs = [x, w, offset] + ([b or "", mask] if mask else [b] if b else [])
    return g.node("DeformConv", inputs, kernel_shape=[kh, kw], strides=[sh, sw],
                  pads=[ph, pw, ph, pw], dilations=[dh, dw], group=p["groups"],
                  offset_group=p["offset_groups"])


def _unary(op):
    return lambda g, node, a: g.node(op, [a])


def _binary(op):
    return lambda g, node, a, b: g.node(op, [a, b])


def _cast(g, node, a):
    to = 1 if np.dtype(node.params["dtype"]) == np.float32 else 11  # FLOAT, DOUBLE
    return g.node("Cast", [a], to=to)


def _log_softmax(g, node, a):
    return g.node("LogSoftmax", [a], axis=int(node.params["axis"]))


def _softmax(g, node, a):
    return g.node("Softmax", [a], axis=int(node.params["axis"]))


def _gelu(g, node, a):
    """½ x (1 + erf(x / √2)) with Erf (opset 19 has no Gelu; opset 20 added it)."""
    dtype = node.inputs[0].dtype
    erf = g.node("Erf", [g.node("Mul", [a, g.constant(np.array(np.sqrt(0.5), dtype), "c")])])
    one_plus = g.node("Add", [erf, g.constant(np.array(1.0, dtype), "one")])
    return g.node("Mul", [g.node("Mul", [a, g.constant(np.array(0.5, dtype), "half")]),
                          one_plus])


def _max_pool(g, node, x):
    p = node.params
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (p[k] for k in ("kernel_size", "stride",
                                                           "padding", "dilation"))
    return g.node("MaxPool", [x], kernel_shape=[kh, kw], strides=[sh, sw],
                  pads=[ph, pw, ph, pw], dilations=[dh, dw])


def _avg_pool(g, node, x):
    p = node.params
    (kh, kw), (sh, sw), (ph, pw) = p["kernel_size"], p["stride"], p["padding"]
    return g.node("AveragePool", [x], kernel_shape=[kh, kw], strides=[sh, sw],
                  pads=[ph, pw, ph, pw], count_include_pad=int(p["count_include_pad"]))


def _per_channel(g, node, value, x_tensor):
    """A (C,) affine parameter reshaped to (C, 1, ..., 1) to broadcast over (N, C, *)."""
    shape = (x_tensor.shape[1],) + (1,) * (x_tensor.ndim - 2)
    return g.node("Reshape", [value, g.constant(np.array(shape, np.int64), "channel_shape")])


def _group_norm(g, node, x, w, b):
    """(x - mean) / sqrt(var + eps) per (n, group), then weight[c] * . + bias[c]."""
    t = node.inputs[0]
    dtype = t.dtype
    grouped = g.node("Reshape", [x, g.constant(np.array([0, node.params["num_groups"], -1],
                                                        np.int64), "group_shape")])
    axes = g.constant(np.array([2], np.int64), "axes")
    mean = g.node("ReduceMean", [grouped, axes], keepdims=1)
    centred = g.node("Sub", [grouped, mean])
    var = g.node("ReduceMean", [g.node("Mul", [centred, centred]), axes], keepdims=1)
    eps = g.constant(np.array(node.params["eps"], dtype), "eps")
    normed = g.node("Div", [centred, g.node("Sqrt", [g.node("Add", [var, eps])])])
    y = g.node("Reshape", [normed, g.node("Shape", [x])])
    if w:
        y = g.node("Mul", [y, _per_channel(g, node, w, t)])
    if b:
        y = g.node("Add", [y, _per_channel(g, node, b, t)])
    return y


def _batch_norm(g, node, x, w, b):
    p = node.params
    if p["training"]:
        raise ValueError("minidcn.onnx.export: batch_norm ran in training mode (batch "
                         "statistics); call model.eval() before exporting")
    channels, dtype = node.inputs[0].shape[1], node.inputs[0].dtype
    w = w or g.constant(np.ones(channels, dtype), "bn_weight")
    b = b or g.constant(np.zeros(channels, dtype), "bn_bias")
    mean = g.array_name(p["mean"], "running_mean")
    var = g.array_name(p["var"], "running_var")
    return g.node("BatchNormalization", [x, w, b, mean, var], epsilon=float(p["eps"]))


def _sum(g, node, a):
    axes = node.params["axes"]
    if not axes:
        return g.node("Identity", [a])
    return g.node("ReduceSum", [a, g.constant(np.array(axes, np.int64), "axes")],
                  keepdims=int(node.params["keepdim"]))


def _reshape(g, node, a):
    shape = g.constant(np.array(node.params["shape"], np.int64), "shape")
    return g.node("Reshape", [a, shape], allowzero=1)


def _permute(g, node, a):
    return g.node("Transpose", [a], perm=[int(d) for d in node.params["dims"]])


def _cat(g, node, *parts):
    return g.node("Concat", list(parts), axis=int(node.params["dim"]))


def _split_rois(g, rois):
    """(K, 5) rows [batch_index, x1, y1, x2, y2] -> boxes (K, 4) and int64 indices (K,)."""
    boxes = g.node("Slice", [rois, g.constant(np.array([1], np.int64), "starts"),
                             g.constant(np.array([5], np.int64), "ends"),
                             g.constant(np.array([1], np.int64), "axes")])
    index = g.node("Gather", [rois, g.constant(np.array(0, np.int64), "index")], axis=1)
    return boxes, g.node("Cast", [index], to=7)  # INT64


def _roi_align(g, node, x):
    p = node.params
    boxes, index = _split_rois(g, g.array_name(p["rois"], "rois"))
    ph, pw = p["output_size"]
    mode = "half_pixel" if p["aligned"] else "output_half_pixel"
    return g.node("RoiAlign", [x, boxes, index], mode="avg", output_height=ph,
                  output_width=pw, sampling_ratio=max(int(p["sampling_ratio"]), 0),
                  spatial_scale=float(p["spatial_scale"]),
                  coordinate_transformation_mode=mode)


def _roi_pool(g, node, x):
    p = node.params
    return g.node("MaxRoiPool", [x, g.array_name(p["rois"], "rois")],
                  pooled_shape=list(p["output_size"]), spatial_scale=float(p["spatial_scale"]))


CONVERTERS = {
    "Conv2d": _conv, "DeformConv2d": _deform_conv, "MatMul": _binary("MatMul"),
    "ReLU": _unary("Relu"), "Sigmoid": _unary("Sigmoid"), "Tanh": _unary("Tanh"),
    "LogSoftmax": _log_softmax, "Softmax": _softmax, "GELU": _gelu,
    "MaxPool2d": _max_pool, "AvgPool2d": _avg_pool,
    "GroupNorm": _group_norm, "BatchNorm": _batch_norm,
    "Add": _binary("Add"), "Sub": _binary("Sub"), "Mul": _binary("Mul"),
    "Div": _binary("Div"), "Pow": _binary("Pow"), "Neg": _unary("Neg"),
    "Exp": _unary("Exp"), "Log": _unary("Log"), "Cast": _cast,
    "Sum": _sum, "Reshape": _reshape, "Permute": _permute, "Cat": _cat,
    "RoIAlign": _roi_align, "RoIPool": _roi_pool,
}
MAPPED_OPS = tuple(sorted(CONVERTERS))


# ---------------------------------------------------------------------------- the walk
def _as_inputs(example_inputs) -> list:
    items = list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [
        example_inputs]
    if not items:
        raise ValueError("minidcn.onnx.export: example_inputs must hold at least one input, "
                         "got an empty sequence")
    inputs = []
    for i, item in enumerate(items):
        if isinstance(item, Tensor) and item.device != "cpu":
            raise ValueError(f"minidcn.onnx.export: example input {i} is on {item.device}; "
                             "export runs on the host: move the model and inputs with "
                             ".to('cpu')")
        if not isinstance(item, (Tensor, np.ndarray)):
            raise TypeError(f"minidcn.onnx.export: example input {i} must be a Tensor or a "
                            f"numpy array, got {type(item).__name__}")
        data = item.numpy() if isinstance(item, Tensor) else item
        # A fresh leaf that wants a gradient, so every op reading it is recorded.
        inputs.append(Tensor(np.array(data, copy=True), requires_grad=True,
                             dtype=data.dtype if data.dtype == np.float64 else np.float32))
    return inputs


def _walk(output: Tensor) -> list:
    """The recorded tensors from the inputs to ``output``, each after its arguments."""
    order, seen, stack = [], {id(output)}, [(output, iter(output._node.inputs))]
    while stack:
        t, args = stack[-1]
        for a in args:
            if isinstance(a, Tensor) and a._node is not None and id(a) not in seen:
                seen.add(id(a))
                stack.append((a, iter(a._node.inputs)))
                break
        else:
            stack.pop()
            order.append(t)
    return order


def _tensor_type(dtype):
    return {np.dtype(np.float32): 1, np.dtype(np.float64): 11}[np.dtype(dtype)]


def export(model, example_inputs, path, opset_version: int = 19, input_names=None,
           output_name: str = "output"):
    """Write ``model`` as an ONNX file at ``path`` and return the ``onnx.ModelProto``.

    Args:
        model: a callable (usually a :class:`minidcn.nn.Module`) taking the example inputs
            as positional arguments and returning one Tensor.  BatchNorm layers must be in
            evaluation mode (``model.eval()``).
        example_inputs: a Tensor or numpy array, or a tuple of them; host, float32 or
            float64.  A (K, 5) rois array passed to roi_align/roi_pool as an input becomes a
            graph input too.
        path: where to write the ``.onnx`` file (str or path-like).
        opset_version: the ONNX opset, >= 19 (DeformConv appeared in opset 19).
        input_names: names of the graph inputs (default ``input``, ``input_1``, ...).
        output_name: name of the graph output.

    Raises:
        ImportError: onnx is not installed.
        NotImplementedError: the model uses an op with no ONNX equivalent (named).
        ValueError: bad arguments, an untraced model (run under no_grad, or an output that
            does not depend on an input), or batch_norm in training mode.
    """
    onnx, helper, numpy_helper = _import_onnx()
    fn = "minidcn.onnx.export"
    if isinstance(opset_version, bool) or not isinstance(opset_version, (int, np.integer)):
        raise TypeError(f"{fn}: opset_version must be an int, got {opset_version!r}")
    newest = onnx.defs.onnx_opset_version()
    if not 19 <= opset_version <= newest:
        raise ValueError(f"{fn}: opset_version must be in [19, {newest}] (DeformConv needs 19; "
                         f"{newest} is the newest this onnx knows), got {opset_version}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: path must be a str or path-like, got {type(path).__name__}")
    if not is_grad_enabled():
        raise ValueError(f"{fn}: called inside no_grad: the graph is only recorded when "
                         "gradients are enabled; call export outside the no_grad block")
    inputs = _as_inputs(example_inputs)
    names = ["input" if i == 0 else f"input_{i}" for i in range(len(inputs))] \
        if input_names is None else list(input_names)
    if len(names) != len(inputs) or len(set(names)) != len(names) or not all(
            isinstance(n, str) and n for n in names):
        raise ValueError(f"{fn}: input_names must be {len(inputs)} distinct non-empty strings, "
                         f"got {input_names!r}")

    if hasattr(model, "modules"):  # refuse before the forward pass updates any statistics
        from .nn.norm import BatchNorm2d

        for m in model.modules():
            if isinstance(m, BatchNorm2d) and m.training:
                raise ValueError(f"{fn}: {m!r} is in training mode (batch statistics, running "
                                 "statistics updated); call model.eval() before exporting")
    output = model(*inputs)
    if not isinstance(output, Tensor):
        raise TypeError(f"{fn}: the model must return one Tensor, got {type(output).__name__}")
    if output._node is None:
        raise ValueError(f"{fn}: the model's output was not recorded by the autograd engine "
                         "(did it run under no_grad, or detach its result?)")
    order = _walk(output)

    g = _Graph(helper, numpy_helper)
    g.used.update(names + [output_name])
    known = {id(t): n for t, n in zip(inputs, names)}
    by_array = {id(t.data): n for t, n in zip(inputs, names)}
    labels = {}
    if hasattr(model, "named_parameters"):
        labels.update({id(p): n for n, p in model.named_parameters()})
        labels.update({id(b): n for n, b in model.named_buffers()})

    def array_name(array, stem):
        """The name of a recorded array: an input's, or a new initializer's."""
        if id(array) in by_array:
            return by_array[id(array)]
        host = np.asarray(array)
        by_array[id(array)] = g.constant(host.copy(), labels.get(id(array), stem))
        return by_array[id(array)]

    g.array_name = array_name

    def name_of(t):
        if t is None:
            return None
        if id(t) not in known:  # a leaf: a parameter, a buffer or a constant
            known[id(t)] = g.constant(t.numpy().copy(), labels.get(id(t), "const"))
        return known[id(t)]

    for t in order:
        node = t._node
        op = node.fn.__name__
        if not node.fn.__module__.startswith("minidcn."):
            raise NotImplementedError(f"{fn}: op {op} (from {node.fn.__module__}) is not a "
                                      "minidcn op; it cannot be exported")
        if op in REFUSED_OPS:
            raise NotImplementedError(f"{fn}: op {op} has no ONNX equivalent: {REFUSED_OPS[op]}")
        if op not in CONVERTERS:
            raise NotImplementedError(f"{fn}: op {op} is not mapped to ONNX (mapped: "
                                      f"{', '.join(MAPPED_OPS)})")
        known[id(t)] = CONVERTERS[op](g, node, *(name_of(a) for a in node.inputs))

    used = {n for node in g.nodes for n in node.input}
    for t, n in zip(inputs, names):
        if n not in used:
            raise ValueError(f"{fn}: the output does not depend on example input {n!r} "
                             f"(shape {t.shape}) in the recorded graph: an op ran under "
                             "no_grad or on detached data, so it would be exported as a "
                             "constant")
    g.nodes.append(helper.make_node("Identity", [known[id(output)]], [output_name]))
    graph = helper.make_graph(
        g.nodes, "minidcn",
        [helper.make_tensor_value_info(n, _tensor_type(t.dtype), list(t.shape))
         for t, n in zip(inputs, names)],
        [helper.make_tensor_value_info(output_name, _tensor_type(output.dtype),
                                       list(output.shape))],
        initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset_version)],
                              producer_name="minidcn")
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, os.fspath(path))
    return proto
