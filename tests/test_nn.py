"""Module, Parameter, state_dict through .npz, and the general layers."""

import numpy as np
import pytest

import minidcn
import minidcn.functional as F
from minidcn import Tensor, nn


class TwoLayer(nn.Module):
    def __init__(self, generator=None):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4, generator=generator), nn.ReLU())
        self.head = nn.Linear(4, 2, generator=generator)
        self.scale = nn.Parameter(np.ones(1, dtype=np.float32), lr_mult=0.1)
        self.register_buffer("seen", np.zeros(2))
        self.note = "not state"

    def forward(self, x):
        return self.head(self.body(x)) * self.scale


def test_registration_and_named_parameters_order():
    m = TwoLayer()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["scale", "body.0.weight", "body.0.bias", "head.weight", "head.bias"]
    assert [n for n, _ in m.named_buffers()] == ["seen"]
    assert [n for n, _ in m.named_modules()] == ["", "body.", "body.0.", "body.1.", "head."]
    assert len(list(m.parameters())) == 5
    assert list(m.children()) == [m.body, m.head]
    assert "note" not in dict(m.named_parameters()) and m.note == "not state"


def test_shared_parameters_are_listed_once():
    lin = nn.Linear(2, 2)
    seq = nn.Sequential(lin, nn.Tanh(), lin)
    assert len(list(seq.parameters())) == 2


def test_reassigning_changes_the_registry():
    m = nn.Module()
    m.w = None
    m.w = nn.Parameter(np.ones(2))  # a plain attribute must not hide the parameter
    assert isinstance(m.w, nn.Parameter) and "w" in dict(m.named_parameters())
    m.w = 3
    assert m.w == 3 and not list(m.parameters())
    m.register_buffer("stat", np.zeros(2))
    m.stat = np.ones(2)  # assigning to a buffer keeps it a buffer
    np.testing.assert_array_equal(m.state_dict()["stat"], [1.0, 1.0])


def test_module_needs_super_init():
    class Forgot(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.ones(1))

    with pytest.raises(RuntimeError, match="call super\\(\\).__init__\\(\\) first"):
        Forgot()


def test_train_and_eval_reach_every_submodule():
    m = TwoLayer()
    assert all(s.training for s in m.modules())
    assert m.eval() is m
    assert not any(s.training for s in m.modules())
    m.train()
    assert all(s.training for s in m.modules())


def test_zero_grad_clears_parameter_gradients():
    m = TwoLayer()
    m(Tensor(np.ones((2, 3), np.float32))).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_state_dict_round_trip_through_npz(tmp_path):
    a, b = TwoLayer(np.random.default_rng(1)), TwoLayer(np.random.default_rng(2))
    a.register_buffer("seen", np.array([3.0, 4.0]))
    path = tmp_path / "model.npz"
    a.save(path)
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted(a.state_dict())
    b.load_state_dict(path)
    for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(va, vb, err_msg=name)
    x = Tensor(np.random.default_rng(3).standard_normal((2, 3)), dtype=np.float32)
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())


def test_state_dict_holds_copies():
    m = nn.Linear(2, 2)
    state = m.state_dict()
    state["weight"][:] = 0
    assert np.any(m.weight.numpy() != 0)


def test_loading_keeps_parameter_identity_and_dtype():
    m = nn.Linear(2, 3)
    w = m.weight
    state = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
    m.load_state_dict(state)
    assert m.weight is w and m.weight.dtype == np.float32


def test_missing_unexpected_and_misshaped_keys_are_named():
    m = TwoLayer()
    state = m.state_dict()
    missing = dict(state)
    del missing["head.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['head.bias'\]"):
        m.load_state_dict(missing)
    extra = dict(state, **{"head.gamma": np.ones(2)})
    with pytest.raises(ValueError, match=r"unexpected keys \['head.gamma'\]"):
        m.load_state_dict(extra)
    wrong = dict(state, **{"body.0.weight": np.ones((3, 4))})
    with pytest.raises(ValueError, match=r"key 'body.0.weight' has shape \(3, 4\), expected \(4, 3\)"):
        m.load_state_dict(wrong)


def test_init_is_reproducible_with_a_generator_and_with_manual_seed():
    w1 = nn.Linear(5, 3, generator=np.random.default_rng(7)).weight.numpy()
    w2 = nn.Linear(5, 3, generator=np.random.default_rng(7)).weight.numpy()
    w3 = nn.Linear(5, 3, generator=np.random.default_rng(8)).weight.numpy()
    np.testing.assert_array_equal(w1, w2)
    assert np.any(w1 != w3)
    minidcn.manual_seed(11)
    s1 = nn.Linear(5, 3).weight.numpy()
    minidcn.manual_seed(11)
    np.testing.assert_array_equal(s1, nn.Linear(5, 3).weight.numpy())
    with pytest.raises(TypeError, match="generator must be a numpy.random.Generator, got int"):
        nn.Linear(2, 2, generator=3)


def test_linear_init_follows_torchs_bound():
    lin = nn.Linear(400, 300, generator=np.random.default_rng(0))
    bound = 1 / np.sqrt(400)
    for p in (lin.weight.numpy(), lin.bias.numpy()):
        assert p.min() >= -bound and p.max() <= bound
        assert p.max() > 0.95 * bound and p.min() < -0.95 * bound  # the whole interval is used
    assert lin.weight.shape == (300, 400) and lin.bias.shape == (300,)
    assert lin.weight.dtype == np.float32 and lin.weight.requires_grad


def test_linear_forward_backward_and_options():
    lin = nn.Linear(3, 2, generator=np.random.default_rng(0), dtype=np.float64)
    assert lin.weight.dtype == np.float64
    x = Tensor(np.random.default_rng(1).standard_normal((4, 3)), requires_grad=True)
    expected = x.numpy() @ lin.weight.numpy().T + lin.bias.numpy()
    np.testing.assert_allclose(lin(x).numpy(), expected, rtol=1e-14)
    assert minidcn.gradcheck(lambda t, w, b: F.linear(t, w, b), [x, lin.weight, lin.bias])
    no_bias = nn.Linear(3, 2, bias=False)
    assert no_bias.bias is None and [n for n, _ in no_bias.named_parameters()] == ["weight"]
    assert repr(no_bias) == "Linear(in_features=3, out_features=2, bias=False)"


@pytest.mark.parametrize("kwargs, error, piece", [
    (dict(in_features=0, out_features=2), ValueError, "Linear: in_features must be >= 1, got 0"),
    (dict(in_features=2, out_features=2.0), TypeError, "Linear: out_features must be an int"),
    (dict(in_features=2, out_features=2, dtype=np.int32), TypeError,
     "Linear: dtype must be float32 or float64, got int32"),
])
def test_linear_argument_errors(kwargs, error, piece):
    with pytest.raises(error, match=piece):
        nn.Linear(**kwargs)


def test_activations_and_flatten():
    x = Tensor(np.array([[-1.0, 0.5], [2.0, -3.0]]))
    np.testing.assert_array_equal(nn.ReLU()(x).numpy(), [[0, 0.5], [2, 0]])
    np.testing.assert_allclose(nn.Sigmoid()(x).numpy(), 1 / (1 + np.exp(-x.numpy())), rtol=1e-14)
    np.testing.assert_allclose(nn.Tanh()(x).numpy(), np.tanh(x.numpy()), rtol=1e-15)
    img = Tensor(np.zeros((2, 3, 4, 5)))
    assert nn.Flatten()(img).shape == (2, 60)
    assert nn.Flatten(2)(img).shape == (2, 3, 20)
    with pytest.raises(TypeError, match="Flatten: start_dim must be an int"):
        nn.Flatten(1.5)


def test_sequential_indexing_iteration_and_names():
    layers = [nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3 and list(seq) == layers
    assert seq[0] is layers[0] and seq[-1] is layers[2]
    assert isinstance(seq[1:], nn.Sequential) and list(seq[1:]) == layers[1:]
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = Tensor(np.ones((5, 3), np.float32))
    np.testing.assert_array_equal(seq(x).numpy(), layers[2](layers[1](layers[0](x))).numpy())
    assert repr(seq).startswith("Sequential(\n  (0): Linear(in_features=3")
    with pytest.raises(IndexError, match="index 3 out of range for 3 modules"):
        seq[3]
    with pytest.raises(TypeError, match="Sequential: index must be an int or a slice"):
        seq["0"]
    with pytest.raises(TypeError, match="Sequential: argument 1 must be a Module, got function"):
        nn.Sequential(nn.ReLU(), F.relu)


def test_module_to_double_changes_parameters_in_place():
    m = TwoLayer()
    params = list(m.parameters())
    m.double()
    assert [id(p) for p in m.parameters()] == [id(p) for p in params]
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m(Tensor(np.ones((1, 3)), dtype=np.float64)).dtype == np.float64


# ---------------------------------------------------------------------------- malformed state
def _write(path, kind, state):
    """A file at ``path`` that is not a valid state file, of the given kind."""
    if kind == "npy":
        with open(path, "wb") as f:  # a file object: np.save would append ".npy" to the name
            np.save(f, state["weight"])
    elif kind == "pickle":
        import pickle
        path.write_bytes(pickle.dumps(state))
    elif kind == "text":
        path.write_text("weight: 1, 2, 3, 4\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "truncated":
        nn.Linear(2, 2).save(path)
        path.write_bytes(path.read_bytes()[:40])
    return path


@pytest.mark.parametrize("kind, message", [
    ("npy", "is an .npy file (one unnamed array), expected an .npz archive written by Module.save"),
    ("pickle", "is not an .npz archive (it starts with b'\\x80"),
    ("text", "is not an .npz archive (it starts with b'weig'), expected an .npz archive"),
    ("empty", "is empty (0 bytes), expected an .npz archive written by Module.save"),
    ("directory", "is a directory, expected an .npz archive written by Module.save"),
    ("truncated", "cannot be read (BadZipFile: File is not a zip file), expected an .npz archive"),
])
def test_a_file_that_is_not_a_state_file_is_named(tmp_path, kind, message):
    m = nn.Linear(2, 2)
    before = m.weight.numpy().copy()
    path = _write(tmp_path / "state.npz", kind, m.state_dict())
    with pytest.raises(ValueError) as info:
        m.load_state_dict(path)
    assert str(info.value).startswith(f"load_state_dict: {str(path)!r} ")
    assert message in str(info.value)
    np.testing.assert_array_equal(m.weight.numpy(), before)


def test_an_object_array_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, weight=np.array([[1, 2], [3, None]], dtype=object), bias=np.zeros(2))
    with pytest.raises(ValueError) as info:
        nn.Linear(2, 2).load_state_dict(path)
    assert str(info.value) == (
        f"load_state_dict: key 'weight' in {str(path)!r} holds Python objects (pickled data), "
        "which are never unpickled; expected a numeric array")


def test_paths_are_str_or_pathlike_and_a_missing_file_is_named(tmp_path):
    m = nn.Linear(2, 2)
    m.save(str(tmp_path / "model"))  # exactly that name: numpy.savez would add ".npz"
    assert (tmp_path / "model").is_file() and not (tmp_path / "model.npz").exists()
    m.load_state_dict(str(tmp_path / "model"))
    with pytest.raises(TypeError, match="load_state_dict: state must be a path as a str or "
                                        "os.PathLike \\(bytes paths are not accepted"):
        m.load_state_dict(bytes(tmp_path / "model"))
    with pytest.raises(TypeError, match="save: path must be a path as a str or os.PathLike"):
        m.save(bytes(tmp_path / "other"))
    with pytest.raises(TypeError, match="load_state_dict: state must be a dict of arrays or a "
                                        "path \\(str or os.PathLike\\) to an .npz file, got list"):
        m.load_state_dict([("weight", np.ones((2, 2)))])
    with pytest.raises(ValueError, match=f"load_state_dict: missing keys \\[.*\\], unexpected "
                                         f"keys \\['weight', 'bias'\\] in '{tmp_path}/model'"):
        TwoLayer().load_state_dict(tmp_path / "model")
    with pytest.raises(ValueError, match="save: path '.*' is a directory, expected a file name"):
        m.save(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        m.load_state_dict(tmp_path / "absent.npz")
    assert isinstance(info.value, ValueError)  # a refused argument, like every other one
    assert "load_state_dict: no such file" in str(info.value)
    assert str(tmp_path / "absent.npz") in str(info.value)


@pytest.mark.parametrize("value, error, message", [
    (np.ones((2, 2)) + 1j, TypeError, "key 'weight' in {file} has dtype complex128 (the "
     "imaginary part would be lost), expected real numbers (bool, int or float) for float32"),
    (np.array([["a", "b"], ["c", "d"]]), TypeError, "key 'weight' in {file} has dtype <U1, "
     "expected real numbers (bool, int or float) for float32"),
    (np.full((2, 2), 1e300), ValueError, "key 'weight' in {file} holds 1e+300, which overflows "
     "float32"),
    (np.ones((2, 3)), ValueError, "key 'weight' in {file} has shape (2, 3), expected (2, 2)"),
])
def test_a_value_that_would_change_on_loading_is_refused(tmp_path, value, error, message):
    m = nn.Linear(2, 2)
    before = m.weight.numpy().copy()
    path = tmp_path / "model.npz"
    np.savez(path, **dict(m.state_dict(), weight=value))
    with pytest.raises(error) as info:
        m.load_state_dict(path)
    assert str(info.value) == "load_state_dict: " + message.format(file=repr(str(path)))
    np.testing.assert_array_equal(m.weight.numpy(), before)


def test_a_dict_value_that_is_not_numbers_is_named():
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError) as info:
        m.load_state_dict({"weight": None, "bias": np.zeros(2)})
    assert str(info.value) == ("load_state_dict: key 'weight' has NoneType, expected real "
                               "numbers (bool, int or float) for float32")
    with pytest.raises(TypeError, match="load_state_dict: key 'weight' is not an array"):
        m.load_state_dict({"weight": [[1.0, 2.0], [3.0]], "bias": np.zeros(2)})


def test_integers_and_bools_load_into_float_parameters_exactly():
    m = nn.Linear(2, 2)
    m.load_state_dict({"weight": np.array([[1, 2], [3, 4]]), "bias": np.array([True, False])})
    np.testing.assert_array_equal(m.weight.numpy(), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(m.bias.numpy(), [1, 0])
    assert m.weight.dtype == np.float32 and m.bias.dtype == np.float32


@pytest.mark.parametrize("value, error, message", [
    (np.array(2.9), ValueError, "key 'num_batches_tracked' holds 2.9, expected whole numbers "
     "for int64"),
    (np.array(np.nan), ValueError, "key 'num_batches_tracked' holds nan, expected whole numbers"),
    (np.array(2.0**70), ValueError, "key 'num_batches_tracked' holds values in "
     "[1.1805916207174113e+21, 1.1805916207174113e+21], outside int64's range"),
    (np.array(-1), ValueError, "key 'num_batches_tracked' must be >= 0 (batches seen), got -1"),
])
def test_an_integer_buffer_takes_only_whole_numbers_that_fit(value, error, message):
    bn = nn.BatchNorm2d(2)
    with pytest.raises(error) as info:
        bn.load_state_dict(dict(bn.state_dict(), num_batches_tracked=value))
    assert str(info.value).startswith("load_state_dict: " + message)
    assert bn.num_batches_tracked == 0
    bn.load_state_dict(dict(bn.state_dict(), num_batches_tracked=np.array(7.0)))
    assert bn.num_batches_tracked == 7 and bn.num_batches_tracked.dtype == np.int64


def test_train_mode_must_be_a_bool():
    m = TwoLayer()
    with pytest.raises(TypeError, match="TwoLayer.train: mode must be a bool, got str 'no'"):
        m.train("no")
    assert m.training and m.eval().train(np.bool_(True)).training
