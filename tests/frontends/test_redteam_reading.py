"""Red team: files that onnxruntime runs one way and lipcert could read another.

Every bound is a bound of lipcert's reading of the file; the load-time cross-check compares
the logits only, on three inputs. Each case below is a construct the ONNX checker admits,
with onnxruntime's run of the file as the ground truth.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lipcert
from lipcert.errors import ModelLoadError


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


# --- the default domain imported twice -----------------------------------------------------


def _softmax_model(imports: list[tuple[str, int]]) -> onnx.ModelProto:
    """probs = Softmax(x, axis=1) on (N, 2, 3): at opset < 13 over the flattened (2, 3) (it
    keeps the argmax of the six logits), from 13 over axis 1 alone (it does not)."""
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["z"], name="logits"),
            helper.make_node("Softmax", ["z"], ["probs"], axis=1, name="softmax"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2, 3])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(domain, v) for domain, v in imports]
    )
    model.ir_version = 8
    return model


# the logits' argmax is 3 (0.5); Softmax over axis 1 gives column 1 (0, -3) -> 0.95 at index 1
_CENTER = np.array([[[0.0, 0.0, 0.0], [0.5, -3.0, 0.0]]], np.float32)


@pytest.mark.parametrize(
    "imports",
    [
        pytest.param([("", 11), ("", 17)], id="empty_twice"),
        pytest.param([("ai.onnx", 11), ("", 17)], id="alias_then_empty"),
        pytest.param([("", 11), ("ai.onnx", 17)], id="empty_then_alias"),
    ],
)
def test_default_domain_imported_at_two_versions_is_refused(
    tmp_path: Path, imports: list[tuple[str, int]]
) -> None:
    model = _softmax_model(imports)
    # onnxruntime runs the last import (17): the file's decision at the center is class 1,
    # while the argmax of its logits, which lipcert certified reading the first (11), is 3
    # (before the refusal: radius 0.354 for class 3 at this very point)
    probs = _ort(model, _CENTER).reshape(-1)
    assert int(np.argmax(probs)) == 1
    assert int(np.argmax(_CENTER.reshape(-1))) == 3
    assert np.allclose(probs.reshape(2, 3).sum(axis=0), 1.0, atol=1e-6)
    with pytest.raises(ModelLoadError, match=r"imports the default ONNX domain at several"):
        lipcert.load(_save(model, tmp_path / "twice.onnx"))


@pytest.mark.parametrize(
    "imports",
    [
        pytest.param([("", 11)], id="once"),
        pytest.param([("", 11), ("ai.onnx", 11)], id="twice_same_version"),
    ],
)
def test_default_domain_imported_once_keeps_the_decision(
    tmp_path: Path, imports: list[tuple[str, int]]
) -> None:
    model = _softmax_model(imports)
    loaded = lipcert.load(_save(model, tmp_path / "once.onnx"))
    assert loaded.lipschitz_bound == pytest.approx(1.0)
    x = np.random.default_rng(0).standard_normal((64, 1, 2, 3)).astype(np.float32)
    for sample in x:
        probs = _ort(model, sample).reshape(-1)
        assert np.allclose(probs.sum(), 1.0, atol=1e-6)  # over all six, as at opset 11
        certified = loaded.certify(sample)
        assert int(certified.prediction[0]) == int(np.argmax(probs))


# --- a constant recomputed in float64 whose runtime name is already taken --------------------


def _collision_model(taken: str) -> onnx.ModelProto:
    """t = (x + e) - e + K * relu(x - 10), logits = (t, -t), with e = -3 exp(0) computed in the
    model (recomputed in float64 by the loader, handed to the runtime as a new weight) and
    K = 0 a weight of the file named `taken`. The file computes t = x."""
    weights = [
        numpy_helper.from_array(np.zeros((1, 1), np.float32), "w"),
        numpy_helper.from_array(np.full((1, 1), -3.0, np.float32), "minus3"),
        numpy_helper.from_array(np.full((1, 1), 10.0, np.float32), "ten"),
        numpy_helper.from_array(np.zeros((1, 1), np.float32), taken),
        numpy_helper.from_array(np.array([[1.0, -1.0]], np.float32), "pair"),
    ]
    nodes = [
        helper.make_node("Exp", ["w"], ["one"], name="exp"),
        helper.make_node("Mul", ["one", "minus3"], ["e"], name="scale"),
        helper.make_node("Add", ["x", "e"], ["y0"], name="add_e"),
        helper.make_node("Sub", ["y0", "e"], ["t0"], name="sub_e"),
        helper.make_node("Sub", ["x", "ten"], ["s"], name="gate"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", taken], ["y2"], name="hidden"),
        helper.make_node("Add", ["t0", "y2"], ["t"], name="sum"),
        helper.make_node("MatMul", ["t", "pair"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("taken", ["e__folded_in_float64", "k"])
def test_recomputed_constant_takes_a_new_name(tmp_path: Path, taken: str) -> None:
    model = _collision_model(taken)
    loaded = lipcert.load(_save(model, tmp_path / "collide.onnx"))
    assert "recomputed in float64" in " ".join(loaded.notes)
    center = np.array([[8.0]], np.float32)
    certified = loaded.certify(center)
    assert int(certified.prediction[0]) == 0
    # margin 16 over the bound 2 of t -> 2t: radius 8 (less the allowance)
    assert 7.9 < float(certified.radius[0]) <= 8.0
    # 15.5 lies 7.5 from the center: the file computes t = 15.5 there, class 0; with the
    # file's K = 0 overwritten by e = -3 the runtime computed t = 15.5 - 3 * 5.5 = -1 (class
    # 1) inside the certified radius, while the three load-time probes never reach x > 10
    inside = np.array([[15.5]], np.float32)
    assert _ort(model, inside.reshape(1, 1)).reshape(-1).tolist() == [15.5, -15.5]
    assert int(loaded.certify(inside).prediction[0]) == 0
    assert np.allclose(loaded.logits(inside).reshape(-1), [15.5, -15.5])


# --- nodes that do not lead to the logits ----------------------------------------------------

_ADDRESS_SPACE = 12 << 30


def _dead_branch_model() -> onnx.ModelProto:
    """logits = x W, and a second output x + sum(ones(2^17, 2^17)): 2^34 values (64 GiB) that
    nothing lipcert certifies reads, so the size guard never looks at them."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["logits"], name="head"),
        helper.make_node(
            "ConstantOfShape",
            ["size"],
            ["big"],
            value=numpy_helper.from_array(np.ones(1, np.float32)),
            name="big",
        ),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0, name="total"),
        helper.make_node("Add", ["x", "total"], ["other"], name="other"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("other", TensorProto.FLOAT, [1, 2]),
        ],
        [
            numpy_helper.from_array(np.array([2**17, 2**17], np.int64), "size"),
            numpy_helper.from_array(np.array([[2.0, 0.0], [0.0, 1.0]], np.float32), "W"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_nodes_off_the_logits_are_not_run(tmp_path: Path) -> None:
    """onnxruntime runs every node of the graph it is given, wanted or not: the runtime's
    model kept the dead branch, and the load-time cross-check asked onnxruntime for 64 GiB
    (an onnxruntime error, not a refusal, under the cap below; memory exhaustion without)."""
    path = _save(_dead_branch_model(), tmp_path / "dead.onnx")
    script = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, ({_ADDRESS_SPACE}, {_ADDRESS_SPACE}))
        import numpy as np
        import lipcert
        model = lipcert.load({str(path)!r})
        batch = model.certify(np.array([[3.0, 1.0]], np.float32))
        print(model.lipschitz_bound, int(batch.prediction[0]), float(batch.radius[0]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    bound, prediction, radius = done.stdout.split()
    # logits (2 x0, x1): ||W|| = 2, margin 6 - 1 = 5 over ||(2, -1)|| = sqrt(5)
    assert float(bound) == pytest.approx(2.0)
    assert int(prediction) == 0
    assert float(radius) == pytest.approx(5 / np.sqrt(5), rel=1e-5)
    loaded = lipcert.load(path)
    runnable = onnx.load_from_string(loaded.loaded.onnx_bytes)
    assert [node.name for node in runnable.graph.node] == ["head"]


# --- node names that lipcert also makes ------------------------------------------------------


def _conv_net(names: dict[str, str]) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> Sub -> AveragePool (1x1) -> Flatten -> Gemm ->
    Relu -> Gemm, free batch. lipcert fuses Conv+BN into one node named 'conv+bn', names the
    unnamed Sub 'Sub_3', and runs the two Gemms after the pool in float64 (the default
    evaluator's tail): `names` gives the tail's nodes their names."""
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((4, 1, 3, 3)),
        "g": 1 + 0.3 * rng.uniform(size=4),
        "mu": 3000 + rng.standard_normal(4),
        "var": 1 + rng.uniform(size=4),
        "shift": np.full((1, 4, 1, 1), 2000.0),
    }
    # BN(c) = (c - mu) g / sqrt(var + eps) + b = c g / sqrt(var + eps) + O(1): the float32
    # run cancels values of about 3000
    weights["b"] = weights["mu"] * weights["g"] / np.sqrt(weights["var"] + 1e-5)
    weights |= {
        "fc": 0.1 * rng.standard_normal((8, 4 * 6 * 6)),
        "fc2": 0.3 * rng.standard_normal((3, 8)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Sub", ["r", "shift"], ["s"]),
        helper.make_node("AveragePool", ["s"], ["p"], kernel_shape=[1, 1], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc"], ["h"], transB=1, name=names["gemm1"]),
        helper.make_node("Relu", ["h"], ["hr"], name="relu2"),
        helper.make_node("Gemm", ["hr", "fc2"], ["logits"], transB=1, name=names["gemm2"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _allowance(path: Path, x: np.ndarray) -> np.ndarray:
    from lipcert.certify.pipeline import choose_evaluators
    from lipcert.evaluators.posterior import PosteriorEvaluator

    model = lipcert.load(path)
    evaluators = choose_evaluators(model.loaded, model.analysis, "float32", threads=1)
    assert isinstance(evaluators.evaluator, PosteriorEvaluator)
    return np.asarray(evaluators.evaluator.evaluate(x).allowance)


@pytest.mark.parametrize(
    "names",
    [
        pytest.param({"gemm1": "conv+bn", "gemm2": "head"}, id="fused_pair_name"),
        pytest.param({"gemm1": "Sub_3", "gemm2": "conv+bn"}, id="generated_and_fused"),
    ],
)
def test_names_lipcert_makes_do_not_mix_nodes(tmp_path: Path, names: dict[str, str]) -> None:
    """The allowance of a batch cannot depend on node names. A float64 tail node named as
    the float32 Conv+BN (or the unnamed Sub) gave that node the float64 unit: the allowance
    fell from 0.0863 to 0.0058 (to 0.0039 with both), 36 (24) times the 1.6e-4 that
    onnxruntime's logits were off the exact ones here; with more collisions on a deeper net
    it fell 120 times, to 1.4 times the error, or the evaluator stopped with 'the graph in
    float64 ... and onnxruntime differ'."""
    x = np.random.default_rng(1).uniform(0, 1, (16, 1, 6, 6)).astype(np.float32)
    plain = _allowance(_save(_conv_net({"gemm1": "g1", "gemm2": "g2"}), tmp_path / "a.onnx"), x)
    renamed = _allowance(_save(_conv_net(names), tmp_path / "b.onnx"), x)
    np.testing.assert_allclose(renamed, plain, rtol=1e-12)


def test_external_data_location_with_a_nul_is_refused(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.eye(2, dtype=np.float32), "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="w\x00.bin")
    (tmp_path / "w").write_bytes(np.eye(2, dtype=np.float32).tobytes())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"], name="head")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "nul.onnx"
    path.write_bytes(model.SerializeToString())
    # was ValueError('embedded null byte') from pathlib: an internal error, not a refusal
    with pytest.raises(ModelLoadError, match=r"tensor 'W'.*holds a NUL"):
        lipcert.load(path)


# --- constructs that held (kept as regression tests) -----------------------------------------


def _dense_jacobian(model: onnx.ModelProto, x0: np.ndarray, step: float = 2.0**-8) -> np.ndarray:
    """onnxruntime's Jacobian at x0 by central differences along the basis vectors (exact
    for the piecewise-linear models below away from their kinks)."""
    columns = []
    for i in range(x0.size):
        e = np.zeros_like(x0)
        e.flat[i] = step
        up, down = _ort(model, x0 + e).reshape(-1), _ort(model, x0 - e).reshape(-1)
        columns.append((up.astype(np.float64) - down) / (2 * step))
    return np.stack(columns, axis=1)


def test_a_weight_that_is_also_a_graph_input_is_bounded_as_stored(tmp_path: Path) -> None:
    """ONNX lets a caller override an initializer listed among the graph inputs; lipcert
    feeds only the data input, so the stored value is the function: its bound is that
    weight's spectral norm, and certify's logits are x W^T with it."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["logits"], transB=1, name="head")],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("W", TensorProto.FLOAT, [3, 4]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    loaded = lipcert.load(_save(model, tmp_path / "override.onnx"))
    spectral = float(np.linalg.svd(weight.astype(np.float64), compute_uv=False)[0])
    assert loaded.lipschitz_bound == pytest.approx(spectral, rel=1e-6)
    assert loaded.lipschitz_bound >= spectral
    x = rng.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded.logits(x), x.astype(np.float64) @ weight.T, atol=1e-5)
    jacobian = _dense_jacobian(model, x[:1])
    np.testing.assert_allclose(jacobian, weight, atol=1e-4)


def test_a_local_function_named_as_a_standard_op_is_not_what_runs(tmp_path: Path) -> None:
    """A FunctionProto in the default domain named Relu (body: Neg) passes the checker, but
    onnxruntime runs the standard Relu, and so does lipcert's reading: the bound 1 of a ReLU
    and the runtime's values are those of max(x, 0), not -x."""
    body = helper.make_function(
        "",
        "Relu",
        ["X"],
        ["Y"],
        [helper.make_node("Neg", ["X"], ["Y"])],
        [helper.make_opsetid("", 17)],
    )
    pair = numpy_helper.from_array(np.array([[2.0, 0.0], [0.0, 3.0]], np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "W"], ["logits"], name="head"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        [pair],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], functions=[body])
    model.ir_version = 8
    x = np.array([[-1.0, 2.0]], np.float32)
    assert _ort(model, x).reshape(-1).tolist() == [0.0, 6.0]
    loaded = lipcert.load(_save(model, tmp_path / "relu_function.onnx"))
    assert loaded.lipschitz_bound == pytest.approx(3.0)
    np.testing.assert_allclose(loaded.logits(x).reshape(-1), [0.0, 6.0])
