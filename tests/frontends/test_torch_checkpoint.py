"""The PyTorch front-end: weights with --arch, formats that run code, the export and its check.

Factories come from archs.py, passed as `--arch archs:<factory>` with this folder on sys.path,
or as `path/to/archs.py:<factory>`. Every refusal is checked from the library and from
`lipcert verify` (see refusals.py).
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import archs
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx_models import run
from refusals import assert_one_line_error, load, load_refused, verify
from safetensors.torch import save_file

from lipcert.bounds.compose import analyse
from lipcert.errors import LipcertError, ModelLoadError, UnsafeModelError, UsageError
from lipcert.frontends import load_model
from lipcert.frontends.torch_checkpoint import checkpoint_kind
from lipcert.model import LoadOptions
from lipcert.runtime import OnnxRuntimeEvaluator

HERE = Path(__file__).resolve().parent
SHAPE = archs.INPUT_SHAPE
WITH_ARCH = LoadOptions(input_shape=SHAPE, arch="archs:small_net")
TRUSTED = LoadOptions(input_shape=SHAPE, trust_model=True)


@pytest.fixture(autouse=True)
def archs_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture(scope="module")
def reference_bound(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The bound of small_net, loaded from its state_dict."""
    path = tmp_path_factory.mktemp("reference") / "small_net.pt"
    torch.save(archs.small_net().state_dict(), path)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(HERE))
        return analyse(load(path, WITH_ARCH).graph).spec.lipschitz_bound


def _bound(path: Path, options: LoadOptions) -> float:
    return analyse(load(path, options).graph).spec.lipschitz_bound


def _inputs(batch: int, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.rand((batch, *shape), generator=torch.Generator().manual_seed(1))


# --- weights and --arch --------------------------------------------------------------------


def test_safetensors_with_arch_and_recorded_input_shape(
    tmp_path: Path, reference_bound: float
) -> None:
    module = archs.small_net().eval()
    path = tmp_path / "net.safetensors"
    save_file(module.state_dict(), str(path), metadata={"input_shape": "1,6,6"})
    loaded = load(path, LoadOptions(arch="archs:small_net"))
    assert loaded.format == "pytorch"
    assert loaded.metadata == {"input_shape": "1,6,6"}
    assert loaded.graph.input_shape == SHAPE
    assert isinstance(loaded.torch_module, torch.nn.Module)
    assert _bound(path, LoadOptions(arch="archs:small_net")) == pytest.approx(
        reference_bound, rel=1e-12
    )
    x = _inputs(3)
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(run(loaded.onnx_bytes, x.numpy()), want, rtol=1e-5, atol=1e-6)


def _plain(state: dict[str, torch.Tensor]) -> Any:
    return state


def _under_state_dict(state: dict[str, torch.Tensor]) -> Any:
    return {"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}}


def _under_model(state: dict[str, torch.Tensor]) -> Any:
    return {"model": state}


def _data_parallel(state: dict[str, torch.Tensor]) -> Any:
    return {f"module.{key}": value for key, value in state.items()}


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(_plain, id="state_dict"),
        pytest.param(_under_state_dict, id="nested_state_dict"),
        pytest.param(_under_model, id="nested_model"),
        pytest.param(_data_parallel, id="module_prefix"),
    ],
)
def test_state_dict_checkpoints(
    tmp_path: Path, reference_bound: float, wrap: Callable[[dict[str, torch.Tensor]], Any]
) -> None:
    path = tmp_path / "net.pt"
    torch.save(wrap(archs.small_net().state_dict()), path)
    assert _bound(path, WITH_ARCH) == pytest.approx(reference_bound, rel=1e-12)


def test_arch_as_a_file_path(tmp_path: Path, reference_bound: float) -> None:
    path = tmp_path / "net.pt"
    torch.save(archs.small_net().state_dict(), path)
    options = LoadOptions(input_shape=SHAPE, arch=f"{HERE / 'archs.py'}:small_net")
    assert _bound(path, options) == pytest.approx(reference_bound, rel=1e-12)


def test_arch_from_the_working_folder_leaves_sys_path_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left on sys.path, the working folder could shadow a module lipcert imports later."""
    (tmp_path / "folder_arch.py").write_text("from archs import small_net\n")
    path = tmp_path / "net.pt"
    torch.save(archs.small_net().state_dict(), path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "folder_arch", raising=False)
    before = list(sys.path)
    assert str(tmp_path) not in before
    load(path, LoadOptions(input_shape=SHAPE, arch="folder_arch:small_net"))
    assert sys.path == before
    monkeypatch.delitem(sys.modules, "folder_arch")


def test_missing_arch(tmp_path: Path) -> None:
    path = tmp_path / "net.pt"
    torch.save(archs.small_net().state_dict(), path)
    load_refused(
        path,
        LoadOptions(input_shape=SHAPE),
        UsageError,
        r"'.*net\.pt' holds weights only: pass arch= \(--arch\) package\.module:factory \(or "
        r"path/to/file\.py:factory\)",
    )


@pytest.mark.parametrize(
    ("arch", "error", "match"),
    [
        pytest.param(
            "small_net",
            UsageError,
            r"expected arch like package\.module:factory but got 'small_net'",
            id="no_colon",
        ),
        pytest.param(
            "no_such_module:small_net",
            UsageError,
            r"cannot import 'no_such_module' for arch 'no_such_module:small_net': "
            r"ModuleNotFoundError",
            id="module_not_found",
        ),
        pytest.param(
            "/nowhere/archs.py:small_net",
            UsageError,
            r"arch '/nowhere/archs\.py:small_net' names '/nowhere/archs\.py', which is not a file",
            id="file_not_found",
        ),
        pytest.param(
            "archs:no_such_factory",
            UsageError,
            r"'archs' has no callable 'no_such_factory'",
            id="attribute_missing",
        ),
        pytest.param(
            "archs:raising",
            ModelLoadError,
            r"arch 'archs:raising' failed to build a module: RuntimeError: no such architecture",
            id="factory_raises",
        ),
        pytest.param(
            "archs:not_a_module",
            ModelLoadError,
            r"arch 'archs:not_a_module' returned dict, not a torch\.nn\.Module",
            id="not_a_module",
        ),
        pytest.param(
            "archs:named_net",
            ModelLoadError,
            r"the weights of '.*net\.pt' do not fit arch 'archs:named_net': .*"
            r'Missing key\(s\) in state_dict: "conv\.weight", .*'
            r'Unexpected key\(s\) in state_dict: "0\.weight"',
            id="keys_differ",
        ),
        pytest.param(
            "archs:wider_net",
            ModelLoadError,
            r"do not fit arch 'archs:wider_net': .*size mismatch for 0\.weight",
            id="shapes_differ",
        ),
    ],
)
def test_wrong_arch(tmp_path: Path, arch: str, error: type[LipcertError], match: str) -> None:
    path = tmp_path / "net.pt"
    torch.save(archs.small_net().state_dict(), path)
    load_refused(path, LoadOptions(input_shape=SHAPE, arch=arch), error, match)


def test_non_finite_weights(tmp_path: Path) -> None:
    state = archs.small_net().state_dict()
    state["3.weight"][1, 2] = float("nan")
    path = tmp_path / "net.pt"
    torch.save(state, path)
    load_refused(
        path,
        WITH_ARCH,
        ModelLoadError,
        r"tensor '3\.weight' of '.*net\.pt' holds NaN or Inf values",
    )


# --- formats that run code -----------------------------------------------------------------


class _OpensForWriting:
    """Unpickling this creates the file at `target` (builtins.open in write mode)."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.target, "w"))


class _Touches:
    """Unpickling this creates the file at `target` (pathlib.Path.touch)."""

    def __init__(self, target: Path) -> None:
        self.target = pathlib.Path(target)

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.target,))


@pytest.mark.parametrize(
    "payload",
    [pytest.param(_OpensForWriting, id="open_w"), pytest.param(_Touches, id="path_touch")],
)
@pytest.mark.parametrize(
    "nested", [pytest.param(False, id="alone"), pytest.param(True, id="in_state_dict")]
)
def test_pickle_payload_is_not_run(tmp_path: Path, payload: type, nested: bool) -> None:
    marker = tmp_path / "pwned"
    evil = payload(marker)
    state = {**archs.small_net().state_dict(), "extra": evil} if nested else evil
    path = tmp_path / "net.pt"
    torch.save(state, path)
    for options in (WITH_ARCH, LoadOptions(input_shape=SHAPE)):
        load_refused(
            path,
            options,
            UnsafeModelError,
            r"'.*net\.pt' holds pickled Python objects beyond tensors .*which can run code when "
            r"loaded; pass trust=True \(--trust-model\) only if you trust",
        )
    assert not marker.exists()
    # The payload is live: unpickling without restrictions does run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_pickled_module(tmp_path: Path, reference_bound: float) -> None:
    path = tmp_path / "net.pt"
    torch.save(archs.small_net(), path)
    load_refused(
        path,
        LoadOptions(input_shape=SHAPE),
        UnsafeModelError,
        r"'.*net\.pt' holds pickled Python objects beyond tensors \(a whole module\?\), "
        "which can run code",
    )
    assert _bound(path, TRUSTED) == pytest.approx(reference_bound, rel=1e-12)


def _torchscript_scripted(module: torch.nn.Module, path: Path) -> None:
    torch.jit.save(torch.jit.script(module), str(path))


def _torchscript_traced(module: torch.nn.Module, path: Path) -> None:
    torch.jit.save(torch.jit.trace(module, torch.zeros((1, *SHAPE))), str(path))


def _exported_program(module: torch.nn.Module, path: Path) -> None:
    torch.export.save(torch.export.export(module, (torch.zeros((1, *SHAPE)),)), str(path))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize(
    ("save_program", "name", "what"),
    [
        pytest.param(_torchscript_scripted, "net.pt", "TorchScript archive", id="jit_script"),
        pytest.param(_torchscript_traced, "net.pt", "TorchScript archive", id="jit_trace"),
        pytest.param(_exported_program, "net.pt2", "torch.export program", id="torch_export"),
    ],
)
def test_programs_need_trust(
    tmp_path: Path,
    reference_bound: float,
    save_program: Callable[[torch.nn.Module, Path], None],
    name: str,
    what: str,
) -> None:
    module = archs.small_net().eval()
    path = tmp_path / name
    save_program(module, path)
    load_refused(
        path,
        LoadOptions(input_shape=SHAPE),
        UnsafeModelError,
        rf"'.*{name}' is a {what}, which can run code when loaded; "
        r"pass trust=True \(--trust-model\) only",
    )
    loaded = load(path, TRUSTED)
    assert analyse(loaded.graph).spec.lipschitz_bound == pytest.approx(reference_bound, rel=1e-12)
    # Whatever batch the program takes, the runtime gets the module's logits for a batch of 5.
    x = _inputs(5)
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(
        OnnxRuntimeEvaluator(loaded).logits(x.numpy()), want, rtol=1e-5, atol=1e-6
    )


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_checkpoint_kinds(tmp_path: Path) -> None:
    module = archs.small_net().eval()
    files = {
        "safetensors": tmp_path / "a.safetensors",
        "zip": tmp_path / "b.pt",
        "pickle": tmp_path / "c.pt",
        "torchscript": tmp_path / "d.pt",
        "exported_program": tmp_path / "e.pt2",
    }
    save_file(module.state_dict(), str(files["safetensors"]))
    torch.save(module.state_dict(), files["zip"])
    torch.save(module.state_dict(), files["pickle"], _use_new_zipfile_serialization=False)
    _torchscript_scripted(module, files["torchscript"])
    _exported_program(module, files["exported_program"])
    assert {kind: checkpoint_kind(path) for kind, path in files.items()} == {k: k for k in files}


# --- deel-torchlip -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchlip_model_matches_its_vanilla_export(tmp_path: Path) -> None:
    from deel import torchlip

    model = archs.torchlip_net()
    state = model.state_dict()
    assert "0.parametrizations.weight.original" in state
    path = tmp_path / "lip.pt"
    torch.save(state, path)
    analysis = analyse(load(path, LoadOptions(input_shape=SHAPE, arch="archs:torchlip_net")).graph)

    vanilla = torchlip.vanilla_model(model.eval()).eval()
    onnx_path = tmp_path / "lip.onnx"
    torch.onnx.export(
        vanilla,
        (torch.zeros((1, *SHAPE)),),
        str(onnx_path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=18,
        dynamo=False,
    )
    exported = analyse(load(onnx_path).graph)
    assert analysis.spec.lipschitz_bound == pytest.approx(exported.spec.lipschitz_bound, rel=1e-9)

    spec = analysis.spec
    assert spec.pairwise_bounds is not None
    assert spec.pairwise_bounds.shape == (archs.NUM_CLASSES, archs.NUM_CLASSES)
    assert max(spec.logit_bounds) <= spec.lipschitz_bound


# --- the export and its check --------------------------------------------------------------


def test_data_dependent_branch_is_not_certified(tmp_path: Path) -> None:
    """The trace at the zero input keeps the negative branch; the check's inputs take the other.

    lipcert refuses before the export: the module's read of its input's values is named (the
    trace only warns). Reads that escape that mark are left to the export check
    (tests/frontends/test_redteam_torch.py)."""
    path = tmp_path / "branch.pt"
    torch.save(archs.sign_branch().state_dict(), path)
    load_refused(
        path,
        LoadOptions(input_shape=(4,), arch="archs:sign_branch"),
        ModelLoadError,
        r"the module of '.*branch\.pt' reads its input's values in Python \(__bool__\) at "
        r"archs\.py:\d+ \(if x\.sum\(\) > 0:\): a trace keeps the branch the zero input "
        "takes",
    )


def test_softmax_module_is_certified_on_its_logits(tmp_path: Path, reference_bound: float) -> None:
    module = archs.softmax_net().eval()
    path = tmp_path / "softmax.pt"
    torch.save(module.state_dict(), path)
    loaded = load(path, LoadOptions(input_shape=SHAPE, arch="archs:softmax_net"))
    assert any(note.startswith("Softmax at the output") for note in loaded.graph.notes)
    assert loaded.graph.nodes[-1].op == "Gemm"
    x = _inputs(4)
    with torch.no_grad():
        logits = module[0](x).numpy()
    np.testing.assert_allclose(run(loaded.onnx_bytes, x.numpy()), logits, rtol=1e-5, atol=1e-6)
    assert analyse(loaded.graph).spec.lipschitz_bound == pytest.approx(reference_bound, rel=1e-12)


# --- the input shape -----------------------------------------------------------------------


def test_input_shape_option_wins_over_metadata(tmp_path: Path) -> None:
    path = tmp_path / "net.safetensors"
    save_file(archs.small_net().state_dict(), str(path), metadata={"input_shape": "1,8,8"})
    assert load(path, WITH_ARCH).graph.input_shape == SHAPE
    # The recorded shape is used without the option (and small_net's Linear needs 6x6).
    load_refused(
        path,
        LoadOptions(arch="archs:small_net"),
        ModelLoadError,
        r"cannot trace the module of '.*net\.safetensors' at input shape \(1, 8, 8\)",
    )


def test_missing_input_shape(tmp_path: Path) -> None:
    path = tmp_path / "net.safetensors"
    save_file(archs.small_net().state_dict(), str(path))
    load_refused(
        path,
        LoadOptions(arch="archs:small_net"),
        UsageError,
        r"a PyTorch checkpoint does not record its input shape: pass input_shape= "
        r"\(--input-shape C,H,W\) for '.*net\.safetensors'",
    )


def test_unusable_recorded_input_shape(tmp_path: Path) -> None:
    path = tmp_path / "net.safetensors"
    save_file(archs.small_net().state_dict(), str(path), metadata={"input_shape": "1,six,6"})
    load_refused(
        path,
        LoadOptions(arch="archs:small_net"),
        ModelLoadError,
        r"'.*net\.safetensors' records an unusable input_shape '1,six,6'",
    )


# --- hostile files -------------------------------------------------------------------------


def _zip_with_mangled_name() -> bytes:
    """A zip archive whose member name is flagged as UTF-8 but is not."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data\u00e9.pkl", b"\x80\x02}q\x00.")
    data = bytearray(buffer.getvalue())
    start = data.rfind("\u00e9".encode())  # the central directory's copy of the name
    data[start + 1] = 0x28
    return bytes(data)


def _state_dict_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(archs.small_net().state_dict(), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        pytest.param(
            "empty.pt", lambda: b"", r"'.*empty\.pt' is not a PyTorch checkpoint", id="empty"
        ),
        pytest.param(
            "text.pt",
            lambda: b"not a checkpoint\n",
            r"'.*text\.pt' is not a PyTorch checkpoint",
            id="text",
        ),
        pytest.param(
            "half.pt",
            lambda: _state_dict_bytes()[: len(_state_dict_bytes()) // 2],
            r"'.*half\.pt' looks like a zip archive but cannot be read",
            id="truncated_zip",
        ),
        pytest.param(
            "names.pt",
            _zip_with_mangled_name,
            r"'.*names\.pt' looks like a zip archive but cannot be read: UnicodeDecodeError",
            id="zip_name_not_utf8",
        ),
        pytest.param(
            "half.safetensors",
            lambda: b"\x40\x00\x00\x00\x00\x00\x00\x00{" + b"\x00" * 10,
            r"'.*half\.safetensors' is not a readable safetensors file",
            id="truncated_safetensors",
        ),
    ],
)
def test_hostile_checkpoints(
    tmp_path: Path, name: str, make: Callable[[], bytes], match: str
) -> None:
    path = tmp_path / name
    path.write_bytes(make())
    load_refused(path, WITH_ARCH, ModelLoadError, match)


def _valid_checkpoints() -> Iterator[tuple[str, bytes]]:
    from safetensors.torch import save

    state = archs.small_net().state_dict()
    yield "net.pt", _state_dict_bytes()
    yield "net.safetensors", save(state, metadata={"input_shape": "1,6,6"})
    legacy = io.BytesIO()
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    yield "legacy.pt", legacy.getvalue()


_VALID = list(_valid_checkpoints())


@st.composite
def _mutated_checkpoint(draw: st.DrawFn) -> tuple[str, bytes]:
    name, valid = draw(st.sampled_from(_VALID))
    data = bytearray(valid)
    # Headers sit at the start, a zip archive's directory at its end.
    positions = st.one_of(
        st.integers(0, 63),
        st.integers(len(data) - 128, len(data) - 1),
        st.integers(0, len(data) - 1),
    )
    for position, value in draw(
        st.lists(st.tuples(positions, st.integers(0, 255)), min_size=1, max_size=4)
    ):
        data[position] = value
    end = draw(st.one_of(st.just(len(data)), st.integers(0, len(data))))
    return name, bytes(data[:end])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=_mutated_checkpoint())
def test_fuzz_checkpoints(tmp_path: Path, case: tuple[str, bytes]) -> None:
    """Mutated checkpoints load or raise a LipcertError, never another exception."""
    name, data = case
    path = tmp_path / name
    path.write_bytes(data)
    with contextlib.suppress(LipcertError):
        load_model(path, WITH_ARCH)


def test_trust_model_error_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "net.pt"
    torch.save(archs.small_net(), path)
    assert_one_line_error(
        verify(path, LoadOptions(input_shape=SHAPE)), UnsafeModelError, "--trust-model"
    )
    assert verify(path, TRUSTED, "--expect", "100").exit_code == 0
