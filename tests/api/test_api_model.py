"""lipcert.load / lipcert.from_torch and Model.certify, against independent ground truth."""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
from api_models import TAU8, fashion, linear_2d, points_2d, relu_2d
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

import lipcert
from lipcert.errors import LipcertError, ModelLoadError, UsageError


@pytest.fixture(scope="module")
def tau8() -> lipcert.Model:
    return lipcert.load(TAU8)


def test_public_names_are_exported() -> None:
    for name in ("load", "from_torch", "certify_dataset", "CertifiedAccuracy", "compare_models"):
        assert name in lipcert.__all__ and callable(getattr(lipcert, name))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lipcert.nope  # noqa: B018


def test_no_argument_lets_a_caller_pass_an_allowance() -> None:
    for function in (
        lipcert.Model.certify,
        lipcert.certify_dataset,
        lipcert.CertifiedAccuracy.__init__,
        lipcert.CertifiedAccuracy.update,
        lipcert.compare_models,
    ):
        names = " ".join(inspect.signature(function).parameters)
        assert "allowance" not in names and "logits" not in names


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_linear_model_radius_is_the_exact_distance_to_the_boundary(precision: str) -> None:
    # f = W x + b: the decision region of class p is {z: (w_p - w_j) z + b_p - b_j > 0 for all
    # j}, a convex polytope, so the distance from x to its boundary is the smallest distance
    # to one of those hyperplanes, (f_p - f_j) / ||w_p - w_j||.
    module = linear_2d(seed=3, classes=4)
    model = lipcert.from_torch(module, (2,))
    x, _ = points_2d(300, seed=1, classes=4)
    result = model.certify(x, precision=precision)  # type: ignore[arg-type]
    weight = module.weight.detach().double().numpy()
    bias = module.bias.detach().double().numpy()
    logits = x @ weight.T + bias
    prediction = logits.argmax(axis=1)
    exact = np.array(
        [
            min(
                (logits[i, p] - logits[i, j]) / np.linalg.norm(weight[p] - weight[j])
                for j in range(4)
                if j != p
            )
            for i, p in enumerate(prediction)
        ]
    )
    assert np.array_equal(result.prediction, prediction)
    assert np.all(result.radius <= exact)
    certified = result.status == "certified"
    # tight: only the rounding allowance (relative to the logits' size) is taken off
    slack = 1e-4 if precision == "float32" else 1e-9
    assert np.all(result.radius[certified] >= exact[certified] - slack)
    assert certified.mean() > 0.95


def test_relu_model_radius_never_exceeds_a_found_boundary_point() -> None:
    module = relu_2d(seed=2)
    model = lipcert.from_torch(module, (2,))
    x, _ = points_2d(16, seed=5)
    result = model.certify(x)
    angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    steps = np.linspace(0, 4, 2001)[1:]
    reference = copy.deepcopy(module).double()
    with torch.no_grad():
        for i, point in enumerate(x):
            rays = point[None, None, :] + steps[None, :, None] * directions[:, None, :]
            classes = reference(torch.as_tensor(rays.reshape(-1, 2))).argmax(dim=1).numpy()
            changed = classes.reshape(len(angles), len(steps)) != result.prediction[i]
            hits = changed.any(axis=1)
            if not hits.any():
                continue
            # a point of another class at this distance: the true distance is at most that
            first = steps[changed[hits].argmax(axis=1)]
            assert result.radius[i] <= first.min(), i


def test_radius_is_below_the_exact_margin_over_the_pairwise_bound(tau8: lipcert.Model) -> None:
    # exact margins from the safetensors weights run in float64 by torch (not by lipcert)
    from safetensors.torch import load_file

    from lipcert.zoo import fashion_mnist_lipnet

    net = fashion_mnist_lipnet()
    net.load_state_dict(load_file(str(TAU8.with_suffix(".safetensors"))))
    net = net.double().eval()
    x, y = fashion(64)
    with torch.no_grad():
        logits = net(torch.as_tensor(x, dtype=torch.float64)).numpy()
    result = tau8.certify(x, y)
    assert np.array_equal(result.prediction, logits.argmax(axis=1))
    spec = tau8.spec
    for i, p in enumerate(result.prediction):
        for j in range(10):
            if j != p:
                bound = (logits[i, p] - logits[i, j]) / spec.pair_bound(p, j)
                assert result.radius[i] <= bound + 1e-9
    assert np.all(result.allowance > 0)
    assert np.array_equal(result.correct, result.prediction == y)


def test_inputs_are_left_as_given_and_torch_tensors_work(tau8: lipcert.Model) -> None:
    x, y = fashion(8)
    before = x.copy()
    from_numpy = tau8.certify(x, y)
    from_torch = tau8.certify(torch.from_numpy(x), torch.from_numpy(y))
    assert np.array_equal(x, before)
    assert np.array_equal(from_numpy.radius, from_torch.radius)
    one = tau8.certify(x[0])
    # alone or in a batch: the same certificate, up to float64 summation order
    assert len(one) == 1 and one.radius[0] == pytest.approx(from_numpy.radius[0], rel=1e-12)
    frame = from_numpy.to_pandas()
    assert list(frame.columns[:3]) == ["label", "prediction", "correct"]
    assert frame["radius"].tolist() == from_numpy.radius.tolist()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        pytest.param(lambda x, y: (x.astype(np.uint8), None), "floating-point inputs", id="uint8"),
        pytest.param(lambda x, y: (x[:, :, :20], None), r"shape \(N, 1, 28, 28\)", id="shape"),
        pytest.param(lambda x, y: (x, y + 10), r"labels in 0\.\.9", id="label_range"),
        pytest.param(lambda x, y: (x, y[:3]), "expected 8 labels", id="label_count"),
        pytest.param(lambda x, y: (x, y + 0.5), "integer class labels", id="label_float"),
    ],
)
def test_bad_inputs_are_refused(tau8: lipcert.Model, make, match: str) -> None:  # type: ignore[no-untyped-def]
    x, y = fashion(8)
    bad_x, bad_y = make(x, y)
    with pytest.raises(UsageError, match=match):
        tau8.certify(bad_x, bad_y)


def test_precision_and_certificate_are_checked(tau8: lipcert.Model) -> None:
    x, _ = fashion(2)
    with pytest.raises(UsageError, match="precision"):
        tau8.certify(x, precision="float16")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="certificate"):
        tau8.certify(x, certificate="best")  # type: ignore[arg-type]
    pairwise = tau8.certify(x, certificate="pairwise")
    global_ = tau8.certify(x, certificate="global")
    assert pairwise.method == "pairwise" and global_.method == "global"


def test_layers_frame_is_the_per_layer_table(tau8: lipcert.Model) -> None:
    frame = tau8.layers_frame()
    assert len(frame) == len(tau8.layers) > 5
    assert {"name", "op", "bound", "exact", "cumulative", "method"} <= set(frame.columns)
    assert frame["bound"].tolist() == [layer.bound for layer in tau8.layers]
    assert tau8.lipschitz_bound == tau8.spec.lipschitz_bound
    assert tau8.input_shape == (1, 28, 28) and tau8.num_classes == 10


def test_loading_leaves_the_loaded_graph_unfused() -> None:
    from lipcert.frontends import load_model

    loaded = load_model(TAU8)
    before = list(loaded.graph.nodes)
    constants = set(loaded.graph.constants)
    from lipcert.bounds.compose import analyse

    analysis = analyse(loaded.graph)
    assert loaded.graph.nodes == before and set(loaded.graph.constants) == constants
    assert "GroupSort" in {n.op for n in analysis.graph.nodes}
    assert "GroupSort" not in {n.op for n in before}


def _spectral_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(spectral_norm(nn.Linear(2, 8)), nn.ReLU(), spectral_norm(nn.Linear(8, 3)))
    with torch.no_grad():
        net(torch.randn(16, 2))  # a few power iterations in training mode
    return net


@pytest.mark.parametrize("training", [True, False], ids=["train_mode", "eval_mode"])
def test_from_torch_leaves_the_module_untouched(training: bool) -> None:
    net = _spectral_net()
    net.train(training)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    probe = torch.randn(5, 2)
    net.eval()
    with torch.no_grad():
        before = net(probe)
    net.train(training)
    lipcert.from_torch(net, (2,))
    # the module still computes (a parametrization's property lives on a class the copy
    # shares: removing it from the copy must not remove it from the module)
    mode = net.training
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(probe), before)
    net.train(mode)
    assert parametrize.is_parametrized(net[0], "weight")
    assert parametrize.is_parametrized(net[2], "weight")
    assert [m.training for m in net.modules()] == modes
    after = net.state_dict()
    assert set(after) == set(state)
    for key, value in state.items():
        assert torch.equal(after[key], value), key


def test_from_torch_bounds_the_weights_as_they_compute() -> None:
    # one layer: the bound is the largest singular value of the weight the layer computes
    # with (spectral_norm after its power iterations, not the 1 it aims at)
    torch.manual_seed(1)
    layer = spectral_norm(nn.Linear(6, 4), n_power_iterations=1)
    layer.eval()
    with torch.no_grad():
        weight = layer.weight.detach().double()
    sigma = float(torch.linalg.svdvals(weight)[0])
    model = lipcert.from_torch(layer, (6,))
    assert sigma <= model.lipschitz_bound <= sigma * (1 + 1e-9)


def test_from_torch_refuses_what_it_cannot_bound() -> None:
    class Squares(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * x

    with pytest.raises(LipcertError, match=r"Mul|product"):
        lipcert.from_torch(Squares(), (3,))
    with pytest.raises(UsageError, match="input_shape"):
        lipcert.from_torch(nn.Linear(2, 2), None)  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match="no model file"):
        lipcert.load("no/such/model.onnx")


def test_from_torch_writes_nothing_on_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    # library code never prints: a module whose forward prints (called by the batch probe
    # and the export check) has its output sent to stderr, as a checkpoint's module has
    class Chatty(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            print("forward called")  # noqa: T201  # the point of the test
            return self.linear(x)

    lipcert.from_torch(Chatty(), (2,))
    captured = capfd.readouterr()
    assert captured.out == ""
    assert "forward called" in captured.err
