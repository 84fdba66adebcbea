"""The ONNX front-end: shapes, output activations, external data and hostile files.

Every refusal is checked twice (see refusals.py): the exact LipcertError subclass and its
message from the library, and one line on stderr with exit code 2 from `lipcert verify`.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx_models import (
    NUM_CLASSES,
    conv_net,
    initializer,
    make_model,
    replace_initializer,
    run,
    save,
)
from refusals import assert_one_line_error, load, load_refused, verify

from lipcert.bounds.compose import analyse
from lipcert.errors import (
    LipcertError,
    ModelLoadError,
    ShapeError,
    UnsupportedOpError,
    UsageError,
)
from lipcert.frontends import load_model
from lipcert.model import LoadOptions
from lipcert.runtime import OnnxRuntimeEvaluator

_RNG = np.random.default_rng(0)


def _images(batch: int, shape: tuple[int, ...] = (1, 8, 8)) -> np.ndarray:
    return _RNG.standard_normal((batch, *shape)).astype(np.float32)


# --- input shapes and batch axes -----------------------------------------------------------


def test_static_model_loads(tmp_path: Path) -> None:
    model = conv_net((1, 1, 8, 8))
    loaded = load(save(model, tmp_path / "net.onnx"))
    graph = loaded.graph
    assert (loaded.format, loaded.input_name, loaded.output_name) == ("onnx", "x", "logits")
    assert graph.input_shape == (1, 8, 8)
    assert graph.output_shape == (NUM_CLASSES,)
    assert graph.size_known
    assert graph.batch_size == 1
    assert graph.notes == []
    assert [node.op for node in graph.nodes] == [
        "Conv",
        "Relu",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
    ]
    np.testing.assert_array_equal(graph.constant("w"), initializer(model, "w"))
    x = _images(1)
    np.testing.assert_array_equal(run(loaded.onnx_bytes, x), run(model.SerializeToString(), x))


def test_static_batch_of_one_is_respected_by_the_runtime(tmp_path: Path) -> None:
    """onnxruntime refuses a batch of 5 for a model declaring a batch of 1: run one by one."""
    model = conv_net((1, 1, 8, 8))
    loaded = load(save(model, tmp_path / "net.onnx"))
    assert loaded.fixed_batch == 1
    x = _images(5)
    want = np.concatenate([run(model.SerializeToString(), x[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(OnnxRuntimeEvaluator(loaded).logits(x), want, rtol=1e-6)


def test_dynamic_batch_axis(tmp_path: Path) -> None:
    loaded = load(save(conv_net(("N", 1, 8, 8)), tmp_path / "net.onnx"))
    assert loaded.fixed_batch is None
    assert loaded.graph.batch_size == 1
    assert loaded.graph.input_shape == (1, 8, 8)
    assert run(loaded.onnx_bytes, _images(5)).shape == (5, NUM_CLASSES)


def test_fixed_batch_of_four(tmp_path: Path) -> None:
    model = conv_net((4, 1, 8, 8))
    loaded = load(save(model, tmp_path / "net.onnx"))
    assert loaded.graph.batch_size == 4
    assert loaded.fixed_batch == 4
    assert loaded.graph.shape("logits") == (4, NUM_CLASSES)
    x = _images(6)
    padded = np.concatenate([x[4:], np.zeros_like(x[:2])])
    want = np.concatenate(
        [run(model.SerializeToString(), x[:4]), run(model.SerializeToString(), padded)[:2]]
    )
    np.testing.assert_allclose(OnnxRuntimeEvaluator(loaded).logits(x), want, rtol=1e-6)


def test_symbolic_size_without_input_shape(tmp_path: Path) -> None:
    loaded = load(save(conv_net(("N", 1, "H", "W")), tmp_path / "net.onnx"))
    assert not loaded.graph.size_known
    assert any(
        "does not fix its input size" in note and "--input-shape" in note
        for note in loaded.graph.notes
    )


def test_symbolic_size_with_input_shape(tmp_path: Path) -> None:
    path = save(conv_net(("N", 1, "H", "W")), tmp_path / "net.onnx")
    loaded = load(path, LoadOptions(input_shape=(1, 8, 8)))
    assert loaded.graph.size_known
    assert loaded.graph.input_shape == (1, 8, 8)
    assert loaded.graph.notes == []
    # Without the size, the conv bound must hold at every size, so it cannot be tighter.
    unknown = analyse(load(path).graph).spec.lipschitz_bound
    assert analyse(loaded.graph).spec.lipschitz_bound <= unknown


def test_symbolic_channels_need_input_shape(tmp_path: Path) -> None:
    model = conv_net(("N", 1, "H", "W"))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "C"
    load_refused(
        save(model, tmp_path / "net.onnx"),
        LoadOptions(),
        UsageError,
        "leaves its channel count open",
    )


def test_input_shape_that_does_not_fit(tmp_path: Path) -> None:
    path = save(conv_net((1, 3, 32, 32)), tmp_path / "net.onnx")
    load_refused(
        path,
        LoadOptions(input_shape=(1, 28, 28)),
        ShapeError,
        r"input shape \(1, 28, 28\) does not fit the shape \(3, 32, 32\) declared by '.*net\.onnx'",
    )


# --- the output activation -----------------------------------------------------------------


@pytest.mark.parametrize("activation", ["Softmax", "LogSoftmax"])
def test_output_activation_dropped(tmp_path: Path, activation: str) -> None:
    model = conv_net(("N", 1, 8, 8), output_activation=activation)
    loaded = load(save(model, tmp_path / "net.onnx"))
    assert loaded.output_name == loaded.graph.output_name == "logits"
    assert [node.op for node in loaded.graph.nodes][-1] == "Gemm"
    assert any(note.startswith(f"{activation} at the output") for note in loaded.graph.notes)
    x = _images(3)
    logits = run(conv_net(("N", 1, 8, 8)).SerializeToString(), x)
    np.testing.assert_array_equal(run(loaded.onnx_bytes, x), logits)
    assert not np.allclose(run(model.SerializeToString(), x), logits)


# --- external data -------------------------------------------------------------------------


def _external_model(folder: Path) -> Path:
    """conv_net saved with every initializer in folder/weights.bin."""
    folder.mkdir()
    path = folder / "net.onnx"
    onnx.save_model(
        conv_net(), str(path), save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    return path


def _point_tensor_to(path: Path, tensor: str, **entries: str) -> Path:
    """A copy of the model at path whose tensor's external data entries are changed."""
    model = onnx.load(str(path), load_external_data=False)
    target = next(t for t in model.graph.initializer if t.name == tensor)
    merged = {e.key: e.value for e in target.external_data} | entries
    del target.external_data[:]
    for key, value in merged.items():
        target.external_data.add(key=key, value=value)
    return save(model, path.with_name("hostile.onnx"))


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    path = _external_model(tmp_path / "model")
    assert (tmp_path / "model" / "weights.bin").stat().st_size > 0
    loaded = load(path)
    for name in ("w", "fc", "b"):
        np.testing.assert_array_equal(loaded.graph.constant(name), initializer(conv_net(), name))


def _outside_location(folder: Path, outside: Path) -> str:
    return "../outside.bin"


def _absolute_location(folder: Path, outside: Path) -> str:
    return str(outside.resolve())


def _symlink_location(folder: Path, outside: Path) -> str:
    (folder / "link.bin").symlink_to(outside.resolve())
    return "link.bin"


def _folder_location(folder: Path, outside: Path) -> str:
    (folder / "sub.bin").mkdir()
    return "sub.bin"


@pytest.mark.parametrize(
    ("make_location", "match"),
    [
        pytest.param(
            _outside_location,
            r"tensor 'w': '\.\./outside\.bin' resolves to .*outside the model's folder",
            id="parent_folder",
        ),
        pytest.param(
            _absolute_location, r"tensor 'w': location '/.*outside\.bin' is absolute", id="absolute"
        ),
        pytest.param(
            _symlink_location,
            r"tensor 'w': 'link\.bin' resolves to '.*outside\.bin', outside the model's folder",
            id="symlink_out",
        ),
        pytest.param(
            _folder_location, r"tensor 'w': 'sub\.bin' is not a regular file", id="folder"
        ),
    ],
)
def test_external_data_outside_the_folder_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_location: Callable[[Path, Path], str],
    match: str,
) -> None:
    path = _external_model(tmp_path / "model")
    # The file outside holds exactly the right bytes: reading it would load a valid model.
    outside = tmp_path / "outside.bin"
    shutil.copyfile(path.parent / "weights.bin", outside)
    hostile = _point_tensor_to(path, "w", location=make_location(path.parent, outside))
    reads: list[str] = []
    real_reader = onnx.external_data_helper.load_external_data_for_model
    monkeypatch.setattr(
        onnx.external_data_helper,
        "load_external_data_for_model",
        lambda model, base: reads.append(base) or real_reader(model, base),
    )
    load_refused(hostile, LoadOptions(), ModelLoadError, match)
    assert reads == []  # refused before any external file is opened


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        pytest.param(
            {"offset": "100000"},
            r"external data of tensor 'w' reads past the end of 'weights\.bin' \(\d+ bytes\)",
            id="offset_past_end",
        ),
        pytest.param(
            {"length": "100000"},
            r"external data of tensor 'w' reads past the end of 'weights\.bin'",
            id="length_past_end",
        ),
        pytest.param({"offset": "-8"}, r"tensor 'w' has negative offset -8", id="negative_offset"),
        pytest.param(
            {"length": "many"}, r"tensor 'w' has length 'many', not an integer", id="length_not_int"
        ),
        pytest.param(
            {"location": ""}, r"tensor 'w' has external data without a location", id="no_location"
        ),
        pytest.param(
            {"location": "missing.bin"},
            r"tensor 'w': 'missing\.bin' is not a regular file",
            id="missing",
        ),
    ],
)
def test_external_data_entries_are_checked(
    tmp_path: Path, entries: dict[str, str], match: str
) -> None:
    path = _external_model(tmp_path / "model")
    load_refused(_point_tensor_to(path, "w", **entries), LoadOptions(), ModelLoadError, match)


def test_external_data_in_a_local_function_is_checked(tmp_path: Path) -> None:
    """Tensors inside model-local functions are read by onnx too: the same rules apply."""
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(np.ones(3, np.float32).tobytes())
    constant = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[3])
    constant.data_location = TensorProto.EXTERNAL
    constant.external_data.add(key="location", value="../outside.bin")
    function = helper.make_function(
        "local",
        "shift",
        ["X"],
        ["Y"],
        [
            helper.make_node("Constant", [], ["C"], value=constant),
            helper.make_node("Add", ["X", "C"], ["Y"]),
        ],
        [helper.make_opsetid("", 17)],
    )
    model = make_model(
        [helper.make_node("shift", ["x"], ["logits"], domain="local")], [], [1, 3], [1, 3]
    )
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local", 1))
    load_refused(
        save(model, folder / "net.onnx"),
        LoadOptions(),
        ModelLoadError,
        r"tensor 'c': '\.\./outside\.bin' resolves to .*outside the model's folder",
    )


def test_external_data_of_a_sparse_initializer_is_refused(tmp_path: Path) -> None:
    """onnx loads no sparse tensor's data; onnxruntime would read it from the working folder."""
    path = _external_model(tmp_path / "model")
    model = onnx.load(str(path), load_external_data=False)
    values = TensorProto(name="s", data_type=TensorProto.FLOAT, dims=[1])
    values.data_location = TensorProto.EXTERNAL
    values.external_data.add(key="location", value="weights.bin")
    values.external_data.add(key="length", value="4")
    sparse = model.graph.sparse_initializer.add()
    sparse.values.CopyFrom(values)
    sparse.indices.CopyFrom(numpy_helper.from_array(np.array([0], np.int64), "s_indices"))
    sparse.dims.extend([2])
    load_refused(
        save(model, path.with_name("sparse.onnx")),
        LoadOptions(),
        ModelLoadError,
        r"refusing external data of tensor 's' in '.*sparse\.onnx' \(location 'weights\.bin'\)",
    )


# --- hostile files -------------------------------------------------------------------------


def _valid_bytes() -> bytes:
    return conv_net().SerializeToString()


def _with_undefined_input() -> onnx.ModelProto:
    model = conv_net()
    model.graph.node[1].input[0] = "undefined"
    return model


def _with_type_clash() -> onnx.ModelProto:
    shift = numpy_helper.from_array(np.ones((1,), np.int64), "shift")
    return make_model(
        [helper.make_node("Add", ["x", "shift"], ["logits"])], [shift], [1, 3], [1, 3]
    )


def _with_two_inputs() -> onnx.ModelProto:
    model = conv_net()
    model.graph.input.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3]))
    return model


def _with_int_input() -> onnx.ModelProto:
    model = conv_net()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    model.graph.node.insert(0, helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
    model.graph.node[1].input[0] = "xf"
    return model


def _with_random_noise() -> onnx.ModelProto:
    model = conv_net()
    model.graph.node.insert(0, helper.make_node("RandomNormalLike", ["x"], ["noise"], name="noise"))
    model.graph.node.insert(1, helper.make_node("Add", ["x", "noise"], ["noisy"]))
    model.graph.node[2].input[0] = "noisy"
    return model


def _with_huge_constant() -> onnx.ModelProto:
    """A 200-byte file whose probe run would allocate 4 TiB."""
    size = numpy_helper.from_array(np.array([2**20, 2**20], np.int64), "size")
    nodes = [
        helper.make_node("ConstantOfShape", ["size"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Add", ["x", "total"], ["logits"]),
    ]
    return make_model(nodes, [size], [1, 3], [1, 3])


def _with_dims(*dims: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        model = conv_net((1, 1, 8, 8))
        for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, dims, strict=True):
            dim.dim_value = value
        return model

    return build


def _with_constant_output() -> onnx.ModelProto:
    value = numpy_helper.from_array(np.ones((1, 3), np.float32), "value")
    nodes = [helper.make_node("Identity", ["value"], ["logits"])]
    return make_model(nodes, [value], [1, 3], [1, 3])


HOSTILE_BYTES = [
    pytest.param(lambda: b"", r"'.*hostile\.onnx' is empty", id="empty"),
    pytest.param(
        lambda: _valid_bytes()[: len(_valid_bytes()) // 2],
        r"'.*hostile\.onnx' is not a readable ONNX model \(DecodeError",
        id="truncated",
    ),
    pytest.param(
        lambda: np.random.default_rng(1).bytes(600),
        r"'.*hostile\.onnx' is not a readable ONNX model",
        id="random_bytes",
    ),
    pytest.param(
        lambda: b"input: 1x28x28\nlayers: [conv, relu]\n",
        r"'.*hostile\.onnx' is not a readable ONNX model",
        id="text_file",
    ),
]

HOSTILE_MODELS = [
    pytest.param(
        _with_undefined_input,
        ModelLoadError,
        r"'.*hostile\.onnx' fails the ONNX checker: .*input 'undefined' of node: name: relu",
        id="checker_undefined_input",
    ),
    pytest.param(
        _with_type_clash,
        ModelLoadError,
        r"'.*hostile\.onnx' fails ONNX shape inference: .*Add.*inconsistent type tensor\(int64\)",
        id="shape_inference_type_clash",
    ),
    pytest.param(
        _with_dims(1, 1, 10**9, 8),
        ModelLoadError,
        r"expected dimensions up to 65536 in the shape of input 'x' declared by '.*hostile\.onnx' "
        r"but got \(1, 1000000000, 8\)",
        id="dim_1e9",
    ),
    pytest.param(
        _with_dims(1, 256, 2**16, 2**16),
        ModelLoadError,
        r"expected at most 268435456 values per sample in the shape of input 'x' declared by "
        r"'.*hostile\.onnx' but got 1099511627776",
        id="elements_2pow40",
    ),
    pytest.param(
        _with_dims(10**9, 1, 8, 8),
        ModelLoadError,
        r"expected a batch size from 1 to 4096 but '.*hostile\.onnx' fixes 1000000000 "
        r"for input 'x'",
        id="batch_1e9",
    ),
    pytest.param(
        _with_dims(-1, 1, 8, 8),
        ModelLoadError,
        r"expected a batch size from 1 to 4096 but '.*hostile\.onnx' fixes -1",
        id="negative_batch",
    ),
    pytest.param(
        _with_dims(1, 1, 0, 8),
        ModelLoadError,
        r"expected positive dimensions in the shape of input 'x'.* but got \(1, 0, 8\)",
        id="zero_dim",
    ),
    pytest.param(
        _with_huge_constant,
        ModelLoadError,
        r"tensor 'big' of '.*hostile\.onnx' would hold 1099511627776 values",
        id="huge_intermediate",
    ),
    pytest.param(
        _with_two_inputs,
        ModelLoadError,
        r"expected a model with one input but '.*hostile\.onnx' has \['x', 'y'\]",
        id="two_inputs",
    ),
    pytest.param(
        _with_int_input,
        ModelLoadError,
        r"expected a float input but '.*hostile\.onnx' has input 'x' of type INT64",
        id="int_input",
    ),
    pytest.param(
        _with_random_noise,
        UnsupportedOpError,
        r"node 'noise' \(RandomNormalLike\) draws random numbers",
        id="random_normal",
    ),
    pytest.param(
        _with_constant_output,
        ModelLoadError,
        r"the output 'logits' of '.*hostile\.onnx' does not depend on the input",
        id="constant_output",
    ),
]


@pytest.mark.parametrize(("make_bytes", "match"), HOSTILE_BYTES)
def test_hostile_bytes(tmp_path: Path, make_bytes: Callable[[], bytes], match: str) -> None:
    path = tmp_path / "hostile.onnx"
    path.write_bytes(make_bytes())
    load_refused(path, LoadOptions(), ModelLoadError, match)


@pytest.mark.parametrize(("make", "error", "match"), HOSTILE_MODELS)
def test_hostile_models(
    tmp_path: Path, make: Callable[[], onnx.ModelProto], error: type[LipcertError], match: str
) -> None:
    load_refused(save(make(), tmp_path / "hostile.onnx"), LoadOptions(), error, match)


@pytest.mark.parametrize(
    ("tensor", "value", "match"),
    [
        pytest.param(
            "w", np.nan, r"node 'conv' \(Conv\): its weight 'w' holds NaN or Inf", id="nan_conv"
        ),
        pytest.param(
            "fc", np.inf, r"node 'head' \(Gemm\): its weight B 'fc' holds NaN or Inf", id="inf_head"
        ),
        pytest.param(
            "b", -np.inf, r"node 'head' \(Gemm\): its bias 'b' holds NaN or Inf", id="inf_bias"
        ),
    ],
)
def test_non_finite_weights_are_refused_by_the_rules(
    tmp_path: Path, tensor: str, value: float, match: str
) -> None:
    """The file loads (it is well-formed); bounding it fails, naming the node and the tensor."""
    model = conv_net()
    weights = initializer(model, tensor).copy()
    weights.flat[0] = value
    replace_initializer(model, tensor, weights)
    path = save(model, tmp_path / "net.onnx")
    loaded = load(path)
    with pytest.raises(UnsupportedOpError, match=match) as info:
        analyse(loaded.graph)
    assert type(info.value) is UnsupportedOpError
    assert_one_line_error(verify(path, LoadOptions()), UnsupportedOpError, match)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    load_refused(
        tmp_path / "absent.onnx",
        LoadOptions(),
        ModelLoadError,
        r"no model file at '.*absent\.onnx'",
    )
    (tmp_path / "folder.onnx").mkdir()
    load_refused(
        tmp_path / "folder.onnx",
        LoadOptions(),
        ModelLoadError,
        r"'.*folder\.onnx' is not a regular file",
    )


def test_arch_is_refused_for_onnx(tmp_path: Path) -> None:
    path = save(conv_net(), tmp_path / "net.onnx")
    load_refused(
        path,
        LoadOptions(arch="archs:small_net"),
        UsageError,
        r"arch= \(--arch\) applies to PyTorch checkpoints",
    )


# --- fuzzing -------------------------------------------------------------------------------

_FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_VALID = conv_net(("N", 1, 8, 8), output_activation="Softmax").SerializeToString()


@st.composite
def _mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """valid with a few bytes replaced, maybe some cut out or inserted, maybe truncated."""
    data = bytearray(valid)
    for position, value in draw(
        st.lists(
            st.tuples(
                st.integers(0, len(data) - 1),
                st.one_of(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]), st.integers(0, 255)),
            ),
            min_size=1,
            max_size=6,
        )
    ):
        data[position] = value
    cut = draw(st.integers(0, len(data) - 1))
    data[cut : cut + draw(st.integers(0, 4))] = draw(st.binary(max_size=6))
    end = draw(st.one_of(st.just(len(data)), st.integers(0, len(data))))
    return bytes(data[:end])


@_FUZZ
@given(data=_mutated(_VALID))
def test_fuzz_bytes(tmp_path: Path, data: bytes) -> None:
    """Whatever the bytes, loading succeeds or raises a LipcertError, never anything else."""
    path = tmp_path / "fuzz.onnx"
    path.write_bytes(data)
    with contextlib.suppress(LipcertError):
        load_model(path)


# Small or absurd values only: a mid-sized one slipping past every check could allocate GiBs.
_ODD_INTS = st.sampled_from([0, 1, 2, 3, -1, -2, 7, 2**31 - 1, -(2**31), 2**40])
_ATTRIBUTES = st.sampled_from(
    ("strides", "pads", "dilations", "group", "axis", "kernel_shape", "transB", "keepdims")
)
_OPS = st.sampled_from(("Relu", "Conv", "MaxPool", "Softmax", "Gemm", "MatMul", "TopK", "If"))


@st.composite
def _mangled_model(draw: st.DrawFn) -> bytes:
    """conv_net with attributes, declared dims, op types, weight shapes or opset changed."""
    model = conv_net(
        (draw(st.sampled_from([1, 4, "N"])), 1, 8, 8),
        output_activation=draw(st.sampled_from([None, "Softmax"])),
    )
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["attribute", "dim", "op", "weight", "opset"]))
        node = model.graph.node[draw(st.integers(0, len(model.graph.node) - 1))]
        if kind == "attribute":
            value = draw(st.one_of(_ODD_INTS, st.lists(_ODD_INTS, min_size=1, max_size=4)))
            node.attribute.append(helper.make_attribute(draw(_ATTRIBUTES), value))
        elif kind == "dim":
            dim = model.graph.input[0].type.tensor_type.shape.dim[draw(st.integers(0, 3))]
            if draw(st.booleans()):
                dim.dim_value = draw(_ODD_INTS)
            else:
                dim.dim_param = "Q"
        elif kind == "op":
            node.op_type = draw(_OPS)
        elif kind == "weight":
            tensor = model.graph.initializer[draw(st.integers(0, 2))]
            shape = [max(0, d + draw(st.sampled_from([-1, 1]))) for d in tensor.dims]
            tensor.CopyFrom(numpy_helper.from_array(np.ones(shape, np.float32), tensor.name))
        else:
            model.opset_import[0].version = draw(st.sampled_from([1, 7, 11, 13, 21, 99]))
    return model.SerializeToString()


@_FUZZ
@given(data=_mangled_model())
def test_fuzz_fields(tmp_path: Path, data: bytes) -> None:
    """Well-formed protobuf with odd contents: again only LipcertErrors may escape."""
    path = tmp_path / "fuzz.onnx"
    path.write_bytes(data)
    with contextlib.suppress(LipcertError):
        load_model(path)


def test_fuzz_inputs_are_valid_to_begin_with(tmp_path: Path) -> None:
    """The seeds of both fuzz tests load, so the mutations start from a working model."""
    path = tmp_path / "seed.onnx"
    path.write_bytes(_VALID)
    assert load(path).output_name == "logits"
