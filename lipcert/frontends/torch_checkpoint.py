"""PyTorch front-end: a checkpoint into the internal graph.

Safe formats: safetensors, or a state_dict saved with torch.save and read with
weights_only=True, built into a module by `--arch package.module:factory` (or
`path/to/file.py:factory`). Formats that can run code when read (a pickled module, TorchScript,
a torch.export `.pt2`) are read only with `--trust-model`.

The module is put in eval mode, its parametrizations (spectral norm, Björck, deel-torchlip's
normalisations) are evaluated once into plain weights, and it is exported to ONNX in memory.
That export goes through the same ONNX front-end, so bounds are computed on one kind of graph;
a module whose Python code branches on its input's values is refused first (the trace would
keep one branch), and the export is checked against the module's own outputs on probe
batches before anything is certified with it.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import sys
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from lipcert.errors import ModelLoadError, UnsafeModelError, UsageError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadedModel, LoadOptions, check_sample_shape, metadata_input_shape

_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_EXPORT_OPSET = 20  # Gelu is an op from opset 20 (before, an erf product)
# The export must reproduce the module: logits may differ by float32 reassociation only.
_EXPORT_TOLERANCE = 1e-4
# Samples per kind of random input in that check.
_CHECK_BATCH = 4

_TRUST_HINT = (
    "pass trust=True (--trust-model) only if you trust the file's author, or save a "
    "state_dict (torch.save(model.state_dict(), ...)) or a safetensors file and pass arch= "
    "(--arch)"
)


def load_model(path: str | Path, options: LoadOptions) -> LoadedModel:
    """Read a PyTorch checkpoint into a LoadedModel (graph for bounds, ONNX for the runtime)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no model file at {str(path)!r}")
    # The module's own code (import, factory, forward) may print: stdout is lipcert's (--json).
    with redirect_stdout(sys.stderr):
        module, metadata = _read_module(path, options)
        input_shape = options.input_shape or _shape_from_metadata(metadata, path)
        loaded = _load_module(module, input_shape, path)
    loaded.metadata = metadata
    return loaded


def load_module(module: Any, input_shape: tuple[int, ...], source: str = "<module>") -> LoadedModel:
    """A torch module in memory into a LoadedModel, the way a checkpoint's module goes.

    The module itself is not touched: a copy is put in eval mode, its parametrizations are
    evaluated into plain weights, and that copy is exported and checked. `source` names the
    model in messages.
    """
    import copy

    module = _unwrapped(module)
    try:
        duplicate = copy.deepcopy(module, _detached_hook_products(module))
    except Exception as exc:
        raise ModelLoadError(
            f"cannot copy the module {source!r}: {type(exc).__name__}: {_one_line(exc)}"
        ) from None
    _own_parametrized_classes(duplicate)
    # The module's forward may print: library code writes nothing on stdout (as load_model).
    with redirect_stdout(sys.stderr):
        return _load_module(duplicate, input_shape, Path(source))


def _detached_hook_products(module: Any) -> dict[int, Any]:
    """A deepcopy memo giving each non-leaf tensor attribute of a submodule a detached copy.

    torch.nn.utils.spectral_norm and weight_norm (the forward pre-hook APIs) keep the weight
    they last computed as a plain attribute; after a step with gradients it is a non-leaf
    tensor, which deepcopy refuses. Its value is kept (the hook recomputes it at every call,
    and the removal of spectral_norm from the copy recomputes it in eval mode).
    """
    import torch

    memo: dict[int, Any] = {}
    for submodule in module.modules() if isinstance(module, torch.nn.Module) else ():
        for value in vars(submodule).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return memo


def _own_parametrized_classes(module: Any) -> None:
    """Give every parametrized submodule of a copy a class of its own.

    torch keeps a parametrization's property on a class made for the module, which a deep
    copy shares with the original; removing the parametrization deletes the property from
    that class, and the original module would lose its weight. A clone of the class (same
    bases, its own attributes) keeps the removal to the copy.
    """
    from torch.nn.utils import parametrize

    for submodule in module.modules():
        if parametrize.is_parametrized(submodule):
            cls = type(submodule)
            attributes = {
                k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")
            }
            submodule.__class__ = type(cls.__name__, cls.__bases__, attributes)


def _load_module(module: Any, input_shape: tuple[int, ...] | None, path: Path) -> LoadedModel:
    """Eval mode, plain weights, export, check: changes `module` in place."""
    import torch

    module = _unwrapped(module)
    switchable = _eval_mode(module, path)
    if switchable:
        _refuse_training_behaviour(module, path)
    _materialise_parametrizations(module)
    if input_shape is None:
        raise UsageError(
            "a PyTorch checkpoint does not record its input shape: pass input_shape= "
            f"(--input-shape C,H,W) for {str(path)!r}"
        )
    _refuse_non_finite_weights(module, path)
    with torch.no_grad():
        batched = _runs_batched(module, input_shape)
        state = _state_snapshot(module)  # after a first call, which may fill a cache
        if switchable:
            _refuse_value_branches(module, input_shape, path)
        proto = _export(module, input_shape, path, switchable=switchable, batched=batched)
        _check_export(module, proto, input_shape, path, batched=batched)
        _refuse_changed_state(module, state, path)
    import onnx

    loaded = load_from_proto(
        onnx.load_from_string(proto),
        LoadOptions(input_shape=input_shape),
        source=str(path),
        fmt="pytorch",
    )
    loaded.torch_module = module
    return loaded


# --- reading -------------------------------------------------------------------------------


def _read_module(path: Path, options: LoadOptions) -> tuple[Any, dict[str, str]]:
    kind = checkpoint_kind(path)
    if kind == "safetensors":
        state, metadata = _read_safetensors(path)
        # A sample model names its lipcert.zoo factory in its metadata: lipcert's own code,
        # so it is used when --arch is not given. Any other named factory needs --arch.
        recorded = metadata.get("arch")
        zoo = recorded if recorded and recorded.startswith("lipcert.zoo:") else None
        return _build(options.arch or zoo, state, path, recorded), metadata
    if kind in ("torchscript", "exported_program"):
        if not options.trust_model:
            what = "TorchScript archive" if kind == "torchscript" else "torch.export program"
            raise UnsafeModelError(
                f"{str(path)!r} is a {what}, which can run code when loaded; {_TRUST_HINT}"
            )
        return _read_trusted_program(path, kind)
    state_or_module = _read_pickle(path, options.trust_model)
    import torch

    if isinstance(state_or_module, torch.nn.Module):
        if options.arch is not None:
            raise UsageError(
                f"{str(path)!r} holds a whole module; arch= (--arch) is for state_dicts"
            )
        return state_or_module, {}
    return _build(options.arch, _state_dict(state_or_module, path), path), {}


def checkpoint_kind(path: Path) -> str:
    """safetensors, torchscript, exported_program, zip (torch.save) or pickle (legacy)."""
    with path.open("rb") as handle:
        head = handle.read(16)
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except Exception as exc:  # BadZipFile, and UnicodeDecodeError, EOFError on mangled names
            raise ModelLoadError(
                f"{str(path)!r} looks like a zip archive but cannot be read: "
                f"{type(exc).__name__}: {_one_line(exc)}"
            ) from None
        if any(n.endswith("serialized_exported_program.json") or "/models/" in n for n in names):
            return "exported_program"
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    raise ModelLoadError(
        f"{str(path)!r} is not a PyTorch checkpoint (safetensors, torch.save zip or pickle)"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            for key in handle.keys():  # noqa: SIM118 (safe_open has keys() but no iteration)
                tensors[key] = handle.get_tensor(key)
    except Exception as exc:
        raise ModelLoadError(f"{str(path)!r} is not a readable safetensors file: {exc}") from None
    return tensors, metadata


def _read_pickle(path: Path, trust_model: bool) -> Any:
    import pickle

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_model:
            raise UnsafeModelError(
                f"{str(path)!r} holds pickled Python objects beyond tensors (a whole module?), "
                f"which can run code when loaded; {_TRUST_HINT}"
            ) from None
    except Exception as exc:
        raise ModelLoadError(f"{str(path)!r} is not a readable PyTorch checkpoint: {exc}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {str(path)!r}: {type(exc).__name__}: {exc}") from None


def _eval_mode(module: Any, path: Path) -> bool:
    """Switch to inference behaviour (dropout off, batch-norm running statistics).

    Returns False for the module of a torch.export program, which refuses eval() and train():
    its graph was fixed at export time and runs as it was exported, so there is nothing to
    switch; its flags are set to eval so that the ONNX exporter treats it as inference.
    """
    import torch

    try:
        module.eval()
    except NotImplementedError:
        if not isinstance(module, torch.fx.GraphModule):
            raise ModelLoadError(f"the module of {str(path)!r} has no eval mode") from None
        for submodule in module.modules():
            submodule.training = False
        return False
    except Exception as exc:
        raise ModelLoadError(
            f"the module of {str(path)!r} fails to switch to eval mode: {type(exc).__name__}: {exc}"
        ) from None
    return True


def _refuse_training_behaviour(module: Any, path: Path) -> None:
    """Submodules that still compute as in training after eval(): their output for a sample
    depends on the rest of its batch (batch statistics) or on chance (dropout)."""
    import torch

    for name, submodule in module.named_modules():
        label = name or "the top module"
        if isinstance(submodule, torch.nn.modules.batchnorm._BatchNorm) and (
            submodule.running_mean is None or submodule.running_var is None
        ):
            raise ModelLoadError(
                f"{type(submodule).__name__} {label!r} of {str(path)!r} has no running statistics "
                "(track_running_stats=False): in eval mode it normalises with its batch's "
                "statistics, so a sample's logits depend on the other samples"
            )
        if submodule.training:
            raise ModelLoadError(
                f"{type(submodule).__name__} {label!r} of {str(path)!r} is still in training mode "
                "after eval() (an eval or train method that does not reach it): its dropout or "
                "batch statistics would not be those of inference"
            )


def _read_trusted_program(path: Path, kind: str) -> tuple[Any, dict[str, str]]:
    """The module, and for a torch.export program the input shape it records."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            if kind == "torchscript":
                return torch.jit.load(str(path), map_location="cpu"), {}
            program = torch.export.load(str(path))
            batch = _exported_batch(program)
            if batch is not None and batch != 1:
                raise ModelLoadError(
                    f"{str(path)!r} is a torch.export program for batches of exactly {batch}; "
                    "lipcert runs a batch of 1 or any: export it with an example batch of 1, or "
                    "with a dynamic batch (dynamic_shapes naming torch.export.Dim for axis 0)"
                )
            shape = _exported_input_shape(program)
            metadata = {"input_shape": ",".join(map(str, shape))} if shape else {}
            return program.module(), metadata
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load {str(path)!r}: {type(exc).__name__}: {exc}") from None


def _first_input_shape(program: Any) -> tuple[Any, ...] | None:
    """The shape a torch.export program records for its first input (symbolic axes as such)."""
    inputs = list(getattr(program.graph_signature, "user_inputs", ()))
    if not inputs:
        return None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == inputs[0]:
            value = node.meta.get("val")
            return tuple(getattr(value, "shape", ()))
    return None


def _exported_batch(program: Any) -> int | None:
    """The batch size a torch.export program fixes, or None when its batch axis is symbolic."""
    shape = _first_input_shape(program)
    if not shape or type(shape[0]) is not int:
        return None
    return int(shape[0])


def _exported_input_shape(program: Any) -> tuple[int, ...] | None:
    """The per-sample shape of a torch.export program's first input, when it is static.

    The program records the example input's shape on its placeholder; the batch axis (which
    may be symbolic) is dropped. None when another axis is symbolic or nothing is recorded.
    """
    shape = _first_input_shape(program)
    if shape is not None and len(shape) >= 2 and all(type(d) is int for d in shape[1:]):
        return tuple(int(d) for d in shape[1:])
    return None


def _state_dict(obj: Any, path: Path) -> dict[str, Any]:
    import torch

    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            inner = obj.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                return inner
    raise ModelLoadError(
        f"{str(path)!r} holds neither a state_dict nor a module (found {type(obj).__name__}); "
        f"expected a dict of tensors, possibly under one of {list(_STATE_DICT_KEYS)!r}"
    )


def _build(arch: str | None, state: dict[str, Any], path: Path, recorded: str | None = None) -> Any:
    if arch is None:
        raise UsageError(
            f"{str(path)!r} holds weights only: pass arch= (--arch) package.module:factory "
            "(or path/to/file.py:factory) naming a function that builds the module"
        )
    factory = resolve_arch(arch)
    try:
        module = factory()  # its prints go to stderr: load_model redirects stdout
    except Exception as exc:
        raise ModelLoadError(
            f"arch {arch!r} failed to build a module: {type(exc).__name__}: {exc}"
        ) from None
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"arch {arch!r} returned {type(module).__name__}, not a torch.nn.Module"
        )
    state = _strip_prefix(state, module)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        hint = (
            f"; the file's metadata names arch {recorded!r}"
            if recorded is not None and recorded != arch
            else ""
        )
        raise ModelLoadError(
            f"the weights of {str(path)!r} do not fit arch {arch!r}{hint}: {detail}"
        ) from None
    return module


# Prefixes that wrappers put before every key: DataParallel and DistributedDataParallel
# ('module.'), torch.compile ('_orig_mod.'), training frameworks ('model.'), nested as saved.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def _strip_prefix(state: dict[str, Any], module: Any) -> dict[str, Any]:
    """Drop the prefixes wrappers left on every key when the module has none.

    Only when the stripped keys are exactly the module's: a partial match is left for
    load_state_dict (strict) to refuse.
    """
    expected = set(module.state_dict())
    current = state
    for _ in range(len(_WRAPPER_PREFIXES) + 1):
        if set(current) == expected:
            return current
        prefix = next(
            (p for p in _WRAPPER_PREFIXES if current and all(k.startswith(p) for k in current)),
            None,
        )
        if prefix is None:
            break
        current = {k[len(prefix) :]: v for k, v in current.items()}
    return state


def _unwrapped(module: Any) -> Any:
    """The module inside torch.compile's OptimizedModule and (Distributed)DataParallel, which
    compute what it computes and which the ONNX exporter cannot trace."""
    import torch

    # Exact classes only: a subclass (or a class of the user's named OptimizedModule) may
    # compute more than its inner module, and so may a wrapper with hooks of its own.
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    for _ in range(8):
        if not isinstance(module, torch.nn.Module) or _has_own_hooks(module):
            break
        kind = type(module)
        if kind in wrappers:
            module = module.module
        elif (
            kind.__module__ == "torch._dynamo.eval_frame"
            and kind.__qualname__ == "OptimizedModule"
            and isinstance(getattr(module, "_orig_mod", None), torch.nn.Module)
        ):
            module = module._orig_mod
        else:
            break
    return module


def _has_own_hooks(module: Any) -> bool:
    return any(
        getattr(module, name, None)
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")
    )


def resolve_arch(arch: str) -> Any:
    """The factory named by 'package.module:factory' or 'path/to/file.py:factory'."""
    target, _, attribute = arch.rpartition(":")
    if not target or not attribute:
        raise UsageError(f"expected arch like package.module:factory but got {arch!r}")
    try:
        if target.endswith(".py"):
            file = Path(target)
            if not file.is_file():
                raise UsageError(f"arch {arch!r} names {target!r}, which is not a file")
            spec = importlib.util.spec_from_file_location(f"lipcert_arch_{file.stem}", file)
            if spec is None or spec.loader is None:
                raise UsageError(f"cannot import {target!r}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)  # the user's code: load_model redirects its prints
        else:
            module = _import_from_working_folder(target)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(
            f"cannot import {target!r} for arch {arch!r}: {type(exc).__name__}: {exc}"
        ) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise UsageError(f"arch {arch!r}: {target!r} has no callable {attribute!r}")
    return factory


def _import_from_working_folder(name: str) -> Any:
    """Import `name` with the working folder searched first, for this import only: left on
    sys.path, a file there could stand in for a module lipcert imports later (onnxruntime)."""
    folder = str(Path.cwd())
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        if added:
            sys.path.remove(folder)


def _shape_from_metadata(metadata: dict[str, str], path: Path) -> tuple[int, ...] | None:
    text = metadata.get("input_shape")
    if text is None:
        return None
    try:
        return metadata_input_shape(text)
    except UsageError:
        raise ModelLoadError(f"{str(path)!r} records an unusable input_shape {text!r}") from None


# --- plain weights, export and its check ---------------------------------------------------


def _materialise_parametrizations(module: Any) -> None:
    """Evaluate every weight parametrization once, in eval mode, into a plain parameter.

    Certificates must hold for the weights the model computes with at inference, so they are
    taken as they are, not as the constraint the layer claims.
    """
    import torch
    from torch.nn.utils import parametrize
    from torch.nn.utils.spectral_norm import SpectralNorm as SpectralNormHook

    for submodule in module.modules():
        if parametrize.is_parametrized(submodule):
            for name in list(submodule.parametrizations.keys()):
                parametrize.remove_parametrizations(submodule, name, leave_parametrized=True)
        # torch's own spectral_norm hook only: a hook class of the user's that has its name
        # stays a hook, run by the trace like any other code of the module.
        for hook in list(getattr(submodule, "_forward_pre_hooks", {}).values()):
            if isinstance(hook, SpectralNormHook):
                torch.nn.utils.remove_spectral_norm(submodule, name=hook.name)


def _refuse_non_finite_weights(module: Any, path: Path) -> None:
    """A NaN or infinite weight makes every bound meaningless: name it rather than fail later."""
    import torch

    for name, tensor in module.state_dict().items():
        if torch.nn.parameter.is_lazy(tensor):
            raise ModelLoadError(
                f"tensor {name!r} of {str(path)!r} is not initialised (a lazy module never "
                "run): its first call would draw its weights; run the module once, or load "
                "its weights, before bounding it"
            )
        if (
            isinstance(tensor, torch.Tensor)
            and tensor.is_floating_point()
            and not bool(torch.isfinite(tensor).all())
        ):
            raise ModelLoadError(f"tensor {name!r} of {str(path)!r} holds NaN or Inf values")


def _state_snapshot(module: Any) -> dict[str, Any]:
    import torch

    # Non-persistent buffers too, which state_dict leaves out.
    tensors = (*module.named_parameters(), *module.named_buffers())
    return {
        name: tensor.detach().clone()
        for name, tensor in tensors
        if isinstance(tensor, torch.Tensor)
    }


def _refuse_changed_state(module: Any, before: dict[str, Any], path: Path) -> None:
    """A module whose weights or buffers change as it runs in eval mode computes another
    function at each call: the export holds the one of the trace, not the module's."""
    import torch

    after = _state_snapshot(module)
    for name in sorted(set(before) | set(after)):
        if name not in before or name not in after or not torch.equal(before[name], after[name]):
            raise ModelLoadError(
                f"tensor {name!r} of {str(path)!r} changes when the module runs in eval mode: "
                "each call computes another function, and the export holds only one"
            )


def _runs_batched(module: Any, input_shape: tuple[int, ...]) -> bool:
    """Whether the module takes a batch of 2 (a torch.export program may fix a batch of 1)."""
    import torch

    check_sample_shape(input_shape, what="input_shape")
    try:
        module(torch.zeros((2, *input_shape)))
    except Exception:
        return False
    return True


class _ValueRead(BaseException):
    """A Python value read from the input's data (a BaseException: `except Exception` in the
    module's code does not swallow it)."""


def _refuse_value_branches(module: Any, input_shape: tuple[int, ...], path: Path) -> None:
    """Refuse a module whose Python code reads its input's values (to branch on them).

    The TorchScript trace runs the module once, at the zero input, and keeps the branches it
    took: `if x.min() >= 0: x = (x - 0.5) / 0.05` is frozen either way, and the export then
    stands for the module only where the condition comes out as at zero. Here the module
    runs once on an input marked as a tensor subclass: every torch operation on it returns a
    marked tensor, and turning a marked tensor into a Python value (bool, item, float, int,
    index, tolist, numpy, equal, allclose, `in`), or making a shape of them (nonzero, a
    boolean mask, unique, masked_select, bincount, one-argument where), names the line that
    does it. Weights and buffers are not marked: a condition on them is the same for every
    input. Data that leaves torch unmarked (as_subclass, torch.tensor(x) copies, storages)
    escapes this; the probes of `_check_export` remain.
    """
    import traceback

    import torch

    if not isinstance(module, torch.nn.Module) or isinstance(module, torch.jit.ScriptModule):
        return
    reads: list[tuple[str, str]] = []
    concrete = {
        torch.Tensor.__bool__,
        torch.Tensor.__float__,
        torch.Tensor.__int__,
        torch.Tensor.__index__,
        torch.Tensor.__complex__,
        torch.Tensor.__contains__,
        torch.Tensor.__array__,
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.numpy,
        torch.Tensor.equal,
        torch.Tensor.allclose,
        torch.Tensor.is_nonzero,
        torch.equal,
        torch.allclose,
        torch.is_nonzero,
        # Results whose shape is read from the values: `nonzero().shape[0] > k` is a branch.
        torch.nonzero,
        torch.Tensor.nonzero,
        torch.argwhere,
        torch.Tensor.argwhere,
        torch.masked_select,
        torch.Tensor.masked_select,
        torch.unique,
        torch.Tensor.unique,
        torch.unique_consecutive,
        torch.Tensor.unique_consecutive,
        torch.bincount,
        torch.Tensor.bincount,
    }
    torch_folder = Path(torch.__file__).resolve().parent
    this_file = Path(__file__).resolve()

    class Marked(torch.Tensor):
        @classmethod
        def __torch_function__(
            cls, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            if (
                func in concrete
                or (func is torch.Tensor.__getitem__ and _marked_mask(args[1:], cls))
                or (func is torch.where and len(args) + len(kwargs or {}) == 1)
            ):
                frames = [
                    frame
                    for frame in traceback.extract_stack()
                    if not Path(frame.filename).resolve().is_relative_to(torch_folder)
                    and Path(frame.filename).resolve() != this_file
                ]
                where = (
                    f"{Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].line})"
                    if frames
                    else ""
                )
                reads.append((getattr(func, "__name__", str(func)), where))
                raise _ValueRead
            return super().__torch_function__(func, types, args, kwargs or {})

    marked = torch.zeros((1, *input_shape)).as_subclass(Marked)
    try:
        with _quietly():
            module(marked)
    except _ValueRead:
        pass
    except Exception:
        pass  # the module cannot run on a subclass: the probes remain its check
    if reads:
        name, where = reads[0]
        at = f" at {where}" if where else ""
        raise ModelLoadError(
            f"the module of {str(path)!r} reads its input's values in Python ({name}){at}: a "
            "trace keeps the branch the zero input takes, not the function the module "
            "computes; use torch.where or compute both branches"
        )


def _marked_mask(index: Any, marked: type) -> bool:
    """Whether an index holds a boolean mask computed from the input (the result's shape is
    its count); a mask from weights or buffers is the same for every input."""
    import torch

    if isinstance(index, (tuple, list)):
        return any(_marked_mask(part, marked) for part in index)
    return (
        isinstance(index, torch.Tensor)
        and isinstance(index, marked)
        and index.dtype in (torch.bool, torch.uint8)
    )


@contextmanager
def _quietly() -> Iterator[None]:
    """The user's module runs without its warnings and prints reaching the user."""
    with (
        warnings.catch_warnings(),
        redirect_stdout(io.StringIO()),
        redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


def _export(
    module: Any,
    input_shape: tuple[int, ...],
    path: Path,
    *,
    switchable: bool = True,
    batched: bool = True,
) -> bytes:
    import torch

    # The module is in eval mode already; one that cannot switch modes must not be asked to.
    mode = torch.onnx.TrainingMode.EVAL if switchable else torch.onnx.TrainingMode.PRESERVE
    # A module that runs one sample at a time is exported with a static batch of 1, which the
    # runtime then respects.
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if batched else None

    check_sample_shape(input_shape, what="input_shape")
    example = torch.zeros((1, *input_shape))
    buffer = io.BytesIO()
    try:
        with _quietly():
            torch.onnx.export(
                module,
                (example,),
                buffer,  # type: ignore[arg-type]  # the TorchScript exporter takes file objects
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes=dynamic_axes,
                opset_version=_EXPORT_OPSET,
                do_constant_folding=True,
                training=mode,
                dynamo=False,
            )
    except Exception as exc:
        raise ModelLoadError(
            f"cannot trace the module of {str(path)!r} at input shape {input_shape}: "
            f"{type(exc).__name__}: {_one_line(exc)}"
        ) from None
    return buffer.getvalue()


def _probe_batches(input_shape: tuple[int, ...]) -> list[tuple[str, Any]]:
    """Named batches of inputs on which the export must compute what the module computes.

    Each kind is a batch of its own, so that a Python branch on a whole batch's values (its
    min, max or norm) sees inputs of one kind, as it does in certify: images (pixels in
    [0, 1], multiples of 1/255 with black and white pixels), uniform noise of either sign,
    and Gaussian noise at two scales (standardised inputs and beyond). Then the kinds mixed
    in one batch, and samples one at a time (a batch of 1, as the trace).
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    shape = (_CHECK_BATCH, *input_shape)
    images = torch.randint(0, 256, shape, generator=generator).double() / 255.0
    images[torch.rand(shape, generator=generator) < 0.2] = 0.0
    images[torch.rand(shape, generator=generator) < 0.1] = 1.0
    kinds = [
        ("images in [0, 1]", images.float()),
        ("uniform inputs in [0, 1)", torch.rand(shape, generator=generator)),
        ("uniform inputs in (-1, 0]", -torch.rand(shape, generator=generator)),
        ("Gaussian inputs", torch.randn(shape, generator=generator)),
        ("Gaussian inputs of scale 8", 8.0 * torch.randn(shape, generator=generator)),
    ]
    mixed = ("inputs of every kind in one batch", torch.cat([batch for _, batch in kinds]))
    single = [(f"one of the {name}", batch[:1]) for name, batch in kinds]
    return [*kinds, mixed, *single]


def _check_export(
    module: Any, proto: bytes, input_shape: tuple[int, ...], path: Path, *, batched: bool = True
) -> None:
    """The exported graph must compute what the module computes.

    A trace keeps only the branches of the module's Python code that the zero input takes;
    the probes (`_probe_batches`: images as certify feeds them, inputs of both signs and
    several scales, batches of one kind, mixed, and of one sample) are meant to take any
    other branch at least once. They cannot prove there is none: a branch on a condition no
    probe meets stays unseen.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(
            f"onnxruntime cannot run the ONNX export of {str(path)!r}: {_one_line(exc)}"
        ) from None
    for kind, batch in _probe_batches(input_shape):
        chunks = [batch] if batched else list(batch.split(1))
        try:
            expected = np.concatenate([_first_output(module(chunk), path) for chunk in chunks])
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"the module of {str(path)!r} fails on {kind} of shape {input_shape}: "
                f"{type(exc).__name__}: {_one_line(exc)}"
            ) from None
        try:
            got = np.concatenate(
                [session.run(None, {"input": chunk.numpy()})[0] for chunk in chunks]
            ).astype(np.float64)
        except Exception as exc:
            raise ModelLoadError(
                f"onnxruntime cannot run the ONNX export of {str(path)!r}: {_one_line(exc)}"
            ) from None
        if got.shape != expected.shape:
            raise ModelLoadError(
                f"the ONNX export of {str(path)!r} gives outputs of shape {got.shape}, "
                f"the module {expected.shape}"
            )
        if not np.all(np.isfinite(expected)):
            raise ModelLoadError(
                f"the module of {str(path)!r} computes NaN or Inf on {kind} of shape {input_shape}"
            )
        scale = max(float(np.max(np.abs(expected))), 1.0)
        error = float(np.max(np.abs(got - expected)))
        if not error <= _EXPORT_TOLERANCE * scale:
            raise ModelLoadError(
                f"the ONNX export of {str(path)!r} disagrees with the module (max difference "
                f"{error:.3g} on {kind}); lipcert cannot certify a graph that is not the model"
            )


def _first_output(output: Any, path: Path) -> np.ndarray:
    import torch

    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise ModelLoadError(
            f"the module of {str(path)!r} returns {type(output).__name__}, not a tensor of logits"
        )
    if output.ndim == 0 or output.numel() == 0:
        raise ModelLoadError(
            f"the module of {str(path)!r} returns a tensor of shape {tuple(output.shape)} for a "
            "batch: expected logits, one row per sample"
        )
    return output.detach().double().numpy()


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:297] + "..." if len(text) > 300 else text
