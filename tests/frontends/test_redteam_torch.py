"""Red team of the PyTorch front-end: modules whose eval-mode function lipcert must not misread.

Ground truth is the module itself, in float64 eval mode: a point within a certified radius
where its decision changes, or a refusal where the export cannot stand for the module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import lipcert
from lipcert.errors import ModelLoadError

SHAPE = (1, 4, 4)


def _pixels(n: int, seed: int) -> np.ndarray:
    """Images as certify feeds them: multiples of 1/255 in [0, 1], some pixels 0, some 1."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *SHAPE)) / 255.0
    x[rng.random(x.shape) < 0.2] = 0.0
    x[rng.random(x.shape) < 0.1] = 1.0
    return x.astype(np.float32)


class RawPixelBranch(nn.Module):
    """Standardises its input when the batch looks like raw pixels (all >= 0, some > 0.5).

    A trace at the zero input keeps the other branch; so does a probe batch that mixes
    positive and negative inputs. On images (what certify feeds) the module computes
    fc((x - 0.5) / 0.05): 20 times the Lipschitz constant of the traced fc(x). The condition
    is read from the tensor, from a numpy copy, or from a plain tensor made by as_subclass
    (which the front-end's marking of the input cannot follow: only the probes see it).
    """

    def __init__(self, read: str = "tensor") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3)
        self.read = read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.read == "numpy":
            values = x.detach().numpy()
            raw = bool(values.min() >= 0 and values.max() > 0.5)
        elif self.read == "as_subclass":
            plain = x.as_subclass(torch.Tensor)
            raw = bool(plain.min() >= 0 and plain.max() > 0.5)
        else:
            raw = bool(x.min() >= 0 and x.max() > 0.5)
        if raw:
            x = (x - 0.5) / 0.05
        return self.fc(x)


def _decision_change_within(module: nn.Module, x: np.ndarray, radius: float) -> bool:
    """Whether the module (float64, eval, one sample a batch) changes decision within radius.

    The module is affine on the images (one branch), so the nearest point of another decision
    along each class pair's margin gradient is found by one step; it must stay an image.
    """
    reference = module.double().eval()
    x0 = torch.tensor(x, dtype=torch.float64)[None]
    with torch.no_grad():
        logits = reference(x0)[0]
    predicted = int(logits.argmax())
    for other in range(logits.numel()):
        if other == predicted:
            continue
        point = x0.clone().requires_grad_(True)
        out = reference(point)[0]
        margin = out[predicted] - out[other]
        (gradient,) = torch.autograd.grad(margin, point)
        step = -(float(margin.detach()) / float(gradient.norm()) ** 2) * 1.001 * gradient
        candidate = (x0 + step).clamp(0.0, 1.0)
        distance = float((candidate - x0).norm())
        with torch.no_grad():
            moved = int(reference(candidate)[0].argmax())
        if moved != predicted and distance < radius:
            return True
    return False


_READ_AT = "the module of '<torch module>' reads its input's values in Python"


@pytest.mark.parametrize(
    ("read", "refusal"),
    [
        ("tensor", f"{_READ_AT} (__bool__) at test_redteam_torch.py:"),
        ("numpy", f"{_READ_AT} (numpy) at test_redteam_torch.py:"),
        (
            "as_subclass",
            "the ONNX export of '<torch module>' disagrees with the module (max difference ",
        ),
    ],
)
def test_branch_on_raw_pixels_is_not_certified(read: str, refusal: str) -> None:
    """The trace froze the zero input's branch, and the one mixed probe batch took it too:
    lipcert bounded fc alone (0.83) for a 16.6-Lipschitz function on images, and certified
    18 of 64 images beyond the module's own float64 decision boundary. Now the read of the
    input's values is named; where it escapes, the probe batch of images takes the branch."""
    module = RawPixelBranch(read).eval()
    x = _pixels(64, seed=1)
    try:
        model = lipcert.from_torch(module, SHAPE)
    except ModelLoadError as exc:
        assert str(exc).startswith(refusal)
        assert "\n" not in str(exc)
        if read == "as_subclass":
            assert "on images in [0, 1]); lipcert cannot certify" in str(exc)
        return
    result = model.certify(x, np.zeros(len(x), dtype=np.int64))
    broken = [
        i
        for i in range(len(x))
        if result.radius[i] > 0
        and _decision_change_within(RawPixelBranch(read), x[i], result.radius[i])
    ]
    assert not broken, f"{len(broken)} samples certified beyond the module's decision boundary"


class ReadsWeightsAndInputShape(nn.Module):
    """Python conditions on a buffer, a weight and the input's shape: the same for every
    input of that shape, so the trace is the module; it must load."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3)
        self.register_buffer("initialised", torch.tensor(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialised:
            raise RuntimeError("not initialised")
        if self.fc.weight.abs().max() > 10 or x.shape[1] != 1:
            raise ValueError("unexpected weights or channels")
        return self.fc(x.flatten(1))


def test_conditions_on_weights_and_shapes_load() -> None:
    module = ReadsWeightsAndInputShape().eval()
    model = lipcert.from_torch(module, SHAPE)
    weight = module.fc.weight.detach().double().numpy()
    exact = float(np.linalg.svd(weight, compute_uv=False)[0])
    assert exact <= model.lipschitz_bound <= exact * (1 + 1e-6)


class CountsBrightPixels(nn.Module):
    """Scales its logits by 100 when more than 15 of the 16 pixels exceed 0.5, a count read
    from a shape made of the values (nonzero, a boolean mask, unique, one-argument where):
    no Python value is read from the input, yet the trace freezes the zero input's branch,
    and no probe batch has 16 bright pixels in one sample. It loaded with the bound of fc
    alone, 1/100 of the module's Lipschitz constant on bright images."""

    def __init__(self, read: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3)
        self.read = read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        bright = flat > 0.5
        if self.read == "nonzero":
            count = bright.nonzero().shape[0]
        elif self.read == "mask":
            count = flat[bright].numel()
        elif self.read == "where":
            count = len(torch.where(bright)[0])
        else:  # one value, True, among the flags and a True: every pixel is bright
            flags = torch.cat([bright.flatten(), torch.ones(1, dtype=torch.bool)])
            count = 16 * len(flat) if len(torch.unique(flags)) == 1 else 0
        logits = self.fc(flat)
        return 100.0 * logits if count > 15 * len(flat) else logits


@pytest.mark.parametrize("read", ["nonzero", "mask", "where", "unique"])
def test_count_read_from_a_shape_is_refused(read: str) -> None:
    module = CountsBrightPixels(read).eval()
    exact = float(np.linalg.svd(module.fc.weight.detach().double().numpy(), compute_uv=False)[0])
    with torch.no_grad():  # ground truth: 100 fc on the all-bright images
        assert torch.equal(module(torch.ones(1, *SHAPE)), 100.0 * module.fc(torch.ones(1, 16)))
    try:
        model = lipcert.from_torch(module, SHAPE)
    except ModelLoadError as exc:
        assert str(exc).startswith(f"{_READ_AT} (")
        assert "\n" not in str(exc)
        return
    assert model.lipschitz_bound >= 100.0 * exact


class SelectsByABuffer(nn.Module):
    """The look-alike: a boolean mask from a buffer selects the same pixels for every input;
    it must load, with the bound of fc on the selected pixels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.keep: torch.Tensor
        self.register_buffer("keep", torch.arange(16) % 2 == 0)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)[:, self.keep])


def test_mask_from_a_buffer_loads() -> None:
    module = SelectsByABuffer().eval()
    model = lipcert.from_torch(module, SHAPE)
    exact = float(np.linalg.svd(module.fc.weight.detach().double().numpy(), compute_uv=False)[0])
    assert exact * (1 - 1e-9) <= model.lipschitz_bound <= exact * (1 + 1e-6)


class AlwaysStandardised(nn.Module):
    """The look-alike without the branch: it must load, with the bound of 4 W (0.25 is exact
    in float32, as the export's constant is)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x.flatten(1) - 0.5) / 0.25)


def test_standardising_without_a_branch_loads() -> None:
    module = AlwaysStandardised().eval()
    model = lipcert.from_torch(module, SHAPE)
    weight = module.fc.weight.detach().double().numpy() * 4.0
    exact = float(np.linalg.svd(weight, compute_uv=False)[0])
    assert exact <= model.lipschitz_bound <= exact * (1 + 1e-6)
    x = _pixels(64, seed=1)
    result = model.certify(x, np.zeros(len(x), dtype=np.int64))
    assert (result.radius > 0).any()
    for i in np.flatnonzero(result.radius > 0):
        assert not _decision_change_within(AlwaysStandardised(), x[i], float(result.radius[i]))


class HookNormalised(nn.Module):
    """torch.nn.utils.spectral_norm and weight_norm, the forward pre-hook APIs (not the
    parametrizations): after a training step their weight is a non-leaf tensor."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.utils.spectral_norm(nn.Conv2d(1, 4, 3, padding=1))
        self.fc = nn.utils.weight_norm(nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _trained_hook_module() -> HookNormalised:
    module = HookNormalised().train()
    optimiser = torch.optim.SGD(module.parameters(), lr=0.1)
    for step in range(3):
        optimiser.zero_grad()
        module(
            torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(step))
        ).sum().backward()
        optimiser.step()
    module(torch.rand(8, *SHAPE))  # the weights the module holds as a user hands it over
    return module


def test_hook_normalised_module_from_torch() -> None:
    """from_torch used to refuse it ('cannot copy the module': deepcopy of a non-leaf tensor).

    The bound must be that of the weights the module computes with in eval mode (the hooks'
    stored u, v; no power iteration), and the user's module is left as it was."""
    module = _trained_hook_module()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    model = lipcert.from_torch(module, SHAPE)
    assert module.training
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert not module.conv.weight.is_leaf  # still the hook's product

    reference = _trained_hook_module().double().eval()
    x = torch.rand(5, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        np.testing.assert_allclose(
            model.logits(x.float().numpy()), reference(x).numpy(), rtol=1e-5, atol=1e-5
        )
        conv = reference.conv.weight.clone()  # the eval weight: weight_orig / (u^T W v)
        fc = reference.fc.weight.clone()
    # Dense operator of the zero-padded conv (ReLU is 1-Lipschitz), times the head's norm.
    basis = torch.eye(16, dtype=torch.float64).reshape(16, *SHAPE)
    operator = torch.nn.functional.conv2d(basis, conv, padding=1).reshape(16, 64).T
    exact_conv = float(torch.linalg.matrix_norm(operator, 2))
    exact_fc = float(torch.linalg.matrix_norm(fc, 2))
    assert exact_conv * exact_fc * (1 - 1e-6) <= model.lipschitz_bound
    jacobian = torch.autograd.functional.jacobian(reference, x[:1]).reshape(3, 16)
    assert float(torch.linalg.matrix_norm(jacobian, 2)) <= model.lipschitz_bound


class SpectralNorm:
    """A user's own forward pre-hook that shares the name of torch's spectral_norm hook class
    (here a Frobenius normalisation): it crashed lipcert with AttributeError ('name')."""

    def __call__(self, module: nn.Module, inputs: object) -> None:
        weight_orig: torch.Tensor = module.weight_orig  # type: ignore[assignment]
        module.weight = weight_orig / weight_orig.norm()


class OwnHook(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3)
        weight = self.fc.weight.detach()
        del self.fc._parameters["weight"]
        self.fc.weight_orig = nn.Parameter(weight * 5.0)
        self.fc.weight = weight
        self.fc.register_forward_pre_hook(SpectralNorm())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_own_hook_named_like_torchs_spectral_norm() -> None:
    module = OwnHook().eval()
    model = lipcert.from_torch(module, SHAPE)
    weight_orig: torch.Tensor = module.fc.weight_orig  # type: ignore[assignment]
    weight = weight_orig.detach().double()
    exact = float(torch.linalg.matrix_norm(weight / weight.norm(), 2))
    assert exact * (1 - 1e-6) <= model.lipschitz_bound <= exact * (1 + 1e-5)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _save_program(path: Path, batch: int, dynamic: bool = False) -> None:
    module = ConvNet().eval()
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
    program = torch.export.export(module, (torch.rand(batch, *SHAPE),), dynamic_shapes=shapes)
    torch.export.save(program, str(path))


def test_program_of_a_fixed_batch_other_than_one(tmp_path: Path) -> None:
    """A .pt2 exported with an example batch of 8 runs batches of 8 only: it was refused with
    'cannot trace ... AssertionError: Guard failed: x.size()[0] == 8'; now one line that says
    what to do. Batches of 1 and a dynamic batch load, with the bound of the module's layers."""
    fixed = tmp_path / "batch8.pt2"
    _save_program(fixed, 8)
    with pytest.raises(ModelLoadError) as error:
        lipcert.load(str(fixed), trust=True)
    message = str(error.value)
    assert "\n" not in message
    assert "torch.export program for batches of exactly 8" in message

    module = ConvNet().eval()
    x = _pixels(8, seed=3)
    with torch.no_grad():
        expected = module(torch.tensor(x)).numpy()
    bounds = []
    for name, batch, dynamic in (("one.pt2", 1, False), ("any.pt2", 2, True)):
        path = tmp_path / name
        _save_program(path, batch, dynamic)
        model = lipcert.load(str(path), trust=True)
        assert model.input_shape == SHAPE
        np.testing.assert_allclose(model.logits(x), expected, rtol=1e-5, atol=1e-6)
        bounds.append(model.lipschitz_bound)
    assert bounds[0] == pytest.approx(bounds[1], rel=1e-12)


class Normalised(nn.Module):
    def __init__(self, track_running_stats: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2, track_running_stats=track_running_stats)
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class StaysTraining(nn.Module):
    """A train() override that forgets its children: the dropout stays active after eval()."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 3)

    def train(self, mode: bool = True) -> StaysTraining:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x.flatten(1)))


def _trained(module: nn.Module) -> nn.Module:
    module.train()
    for step in range(3):
        module(torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(step)))
    return module.eval()


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (
            lambda: _trained(Normalised(track_running_stats=False)),
            r"^BatchNorm2d 'bn' of '<torch module>' has no running statistics "
            r"\(track_running_stats=False\)",
        ),
        (
            lambda: StaysTraining().eval(),
            r"^Dropout 'drop' of '<torch module>' is still in training mode after eval\(\)",
        ),
    ],
    ids=["batchnorm_without_running_stats", "dropout_left_training"],
)
def test_training_behaviour_in_eval_mode_is_refused(factory: object, match: str) -> None:
    """Both were refused before, with messages from inside the exporter or the check
    ('AssertionError: batch_size and channel_size must be non-None', 'disagrees')."""
    with pytest.raises(ModelLoadError, match=match) as error:
        lipcert.from_torch(factory(), SHAPE)  # type: ignore[operator]
    assert "\n" not in str(error.value)


def test_batchnorm_with_running_statistics_loads() -> None:
    """The look-alike: running statistics, so each sample's logits are its own."""
    module = _trained(Normalised(track_running_stats=True))
    model = lipcert.from_torch(module, SHAPE)
    x = _pixels(8, seed=4)
    with torch.no_grad():
        expected = module.double()(torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(model.logits(x), expected, rtol=1e-5, atol=1e-6)
    one_at_a_time = np.concatenate([model.logits(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(one_at_a_time, expected, rtol=1e-5, atol=1e-6)


ARCHS = Path(__file__).resolve().parent / "archs.py"


def _small_net() -> nn.Sequential:
    import importlib.util

    spec = importlib.util.spec_from_file_location("redteam_archs", ARCHS)
    assert spec is not None and spec.loader is not None
    archs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(archs)
    return archs.small_net().eval()


def _dense_bound(module: nn.Sequential) -> float:
    """The product of the exact norms of small_net's conv (dense operator) and head."""
    conv: Any = module[0]
    head: Any = module[3]
    basis = torch.eye(36, dtype=torch.float64).reshape(36, 1, 6, 6)
    weight = conv.weight.detach().double()
    operator = torch.nn.functional.conv2d(basis, weight, padding=1).reshape(36, -1).T
    return float(
        torch.linalg.matrix_norm(operator, 2)
        * torch.linalg.matrix_norm(head.weight.detach().double(), 2)
    )


def test_wrapped_modules_and_their_state_dicts(tmp_path: Path) -> None:
    """torch.compile and DataParallel wrappers: from_torch could not trace them, and their
    state_dicts ('_orig_mod.', 'module._orig_mod.', '_orig_mod.module.') did not fit the arch."""
    module = _small_net()
    exact = _dense_bound(module)
    plain = lipcert.from_torch(module, (1, 6, 6)).lipschitz_bound
    assert exact * (1 - 1e-9) <= plain <= exact * 1.5
    compile_: Any = torch.compile  # typed as a function decorator
    wrapped: dict[str, Any] = {
        "compiled": compile_(module),
        "data_parallel": nn.DataParallel(module),
        "compiled_data_parallel": compile_(nn.DataParallel(module)),
        "data_parallel_compiled": nn.DataParallel(compile_(module)),
    }
    for name, wrapper in wrapped.items():
        assert lipcert.from_torch(wrapper, (1, 6, 6)).lipschitz_bound == plain, name
        path = tmp_path / f"{name}.pt"
        torch.save(wrapper.state_dict(), path)
        loaded = lipcert.load(str(path), arch=f"{ARCHS}:small_net", input_shape=(1, 6, 6))
        assert loaded.lipschitz_bound == plain, name

    # A partial match is not stripped: one key more, or one missing, is refused.
    state = compile_(module).state_dict()
    for name, changed in (
        ("extra", {**state, "_orig_mod.9.weight": torch.zeros(1)}),
        ("missing", {k: v for k, v in state.items() if not k.endswith("3.bias")}),
    ):
        path = tmp_path / f"{name}.pt"
        torch.save(changed, path)
        with pytest.raises(ModelLoadError, match="do not fit arch"):
            lipcert.load(str(path), arch=f"{ARCHS}:small_net", input_shape=(1, 6, 6))


class OptimizedModule(nn.Module):
    """A class of the user's that has torch.compile's wrapper's name and attribute."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1000.0 * self._orig_mod(x)


class ScaledDataParallel(nn.DataParallel):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1000.0 * self.module(x)


def test_wrapper_look_alikes_are_bounded_as_themselves() -> None:
    """Only torch's own wrapper classes are unwrapped: a look-alike computing 1000 times its
    inner module, or a real wrapper with a hook of its own, is bounded as what it computes or
    refused (the ONNX exporter refuses DataParallel itself)."""
    module = _small_net()
    exact = _dense_bound(module)
    hooked = nn.DataParallel(module)
    hooked.register_forward_hook(lambda _m, _i, out: 1000.0 * out)
    for name, wrapper in (
        ("named_optimized_module", OptimizedModule(module)),
        ("data_parallel_subclass", ScaledDataParallel(module)),
        ("data_parallel_with_hook", hooked),
    ):
        try:
            bound = lipcert.from_torch(wrapper, (1, 6, 6)).lipschitz_bound
        except ModelLoadError as exc:
            assert "DataParallel" in str(exc), name
            continue
        assert bound >= 1000.0 * exact * (1 - 1e-9), name


class Output(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x.flatten(1))
        return logits.sum() if self.how == "sum" else logits[:, :0]


@pytest.mark.parametrize(
    ("how", "shape"), [("sum", "()"), ("none", "(4, 0)")], ids=["scalar", "no_logits"]
)
def test_outputs_that_are_not_logits(how: str, shape: str) -> None:
    """No logits crashed with ValueError (zero-size array to reduction operation maximum);
    a sum over the batch was refused with numpy's 'zero-dimensional arrays cannot be
    concatenated'."""
    with pytest.raises(ModelLoadError) as error:
        lipcert.from_torch(Output(how).eval(), SHAPE)
    assert str(error.value) == (
        f"the module of '<torch module>' returns a tensor of shape {shape} "
        "for a batch: expected logits, one row per sample"
    )


def test_lazy_module_never_run() -> None:
    """Crashed with ValueError ('Attempted to use an uninitialized parameter'); had it gone
    on, its first call inside lipcert would have drawn the weights lipcert bounds, not those
    the user's module draws at its own first call."""
    module = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ModelLoadError, match=r"^tensor '1\.weight' of '<torch module>' is not "):
        lipcert.from_torch(module, SHAPE)
    assert isinstance(module[1].weight, nn.parameter.UninitializedParameter)
    module(torch.zeros(1, *SHAPE))  # once run, its weights are fixed: it loads
    weight = module[1].weight.detach().double().numpy()
    exact = float(np.linalg.svd(weight, compute_uv=False)[0])
    bound = lipcert.from_torch(module, SHAPE).lipschitz_bound
    assert exact <= bound <= exact * (1 + 1e-6)


class Annealing(nn.Module):
    """A temperature that anneals at every call, in eval mode too: each call is another
    function, and the drift over lipcert's calls is below the export check's tolerance."""

    def __init__(self, persistent: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3)
        self.register_buffer("temperature", torch.tensor(1.0), persistent=persistent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        temperature: torch.Tensor = self.temperature  # type: ignore[assignment]
        out = self.fc(x.flatten(1)) / temperature
        temperature.mul_(0.9999999)
        return out


@pytest.mark.parametrize("persistent", [True, False])
def test_state_that_changes_in_eval_mode(persistent: bool) -> None:
    """It loaded (the export, the function at the trace's call, passed the check); a
    non-persistent buffer, which state_dict leaves out, too."""
    module = Annealing(persistent).eval()
    with pytest.raises(ModelLoadError) as error:
        lipcert.from_torch(module, SHAPE)
    assert str(error.value) == (
        "tensor 'temperature' of '<torch module>' changes when the module runs in eval mode: "
        "each call computes another function, and the export holds only one"
    )
    assert float(module.temperature) == 1.0  # type: ignore[arg-type]  # the copy ran, not it
