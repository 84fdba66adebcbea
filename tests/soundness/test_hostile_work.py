"""Files built to make the probe run hang or allocate gigabytes: refused before any work.

Each model is loaded in a child process with a time limit, so a regression fails the test
instead of hanging the suite; where a size is involved, the refusal must name the tensor and
its size, which the guard computes before anything is allocated.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile_models import make, tensor
from onnx import TensorProto, helper

from lipcert.errors import ModelLoadError, UnsupportedOpError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

# Loading any of these models takes well under a second when refused up front.
_LIMIT_S = 60


def _load_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(
        f"""
        import sys
        from lipcert.errors import LipcertError
        from lipcert.frontends import load_model
        try:
            load_model({str(path)!r})
        except LipcertError as exc:
            print(type(exc).__name__ + ": " + str(exc))
            sys.exit(2)
        print("loaded")
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=_LIMIT_S
    )


def _loop(trips: int, name: str = "loop") -> onnx.NodeProto:
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "one_f"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1]),
        ],
    )
    del trips
    return helper.make_node("Loop", ["trips", "cond", "acc0"], ["acc"], body=body, name=name)


def _loop_inits(trips: int) -> list[onnx.TensorProto]:
    return [
        tensor("trips", trips, np.int64),
        tensor("cond", True, np.bool_),
        tensor("acc0", [0.0]),
        tensor("one_f", [1.0]),
        tensor("scale", [[2.0, 1.0]]),
    ]


def unused_loop_model() -> onnx.ModelProto:
    """A Loop of 2^62 iterations whose result nothing reads."""
    nodes = [_loop(2**62), helper.make_node("Mul", ["x", "scale"], ["logits"], name="scale")]
    return make(nodes, _loop_inits(2**62), [1, 2], [1, 2])


def used_loop_model() -> onnx.ModelProto:
    """The same Loop, whose result is added to the logits."""
    nodes = [
        _loop(2**62),
        helper.make_node("Mul", ["x", "scale"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "acc"], ["logits"], name="add"),
    ]
    return make(nodes, _loop_inits(2**62), [1, 2], [1, 2])


def test_unused_loop_never_runs(tmp_path: Path) -> None:
    path = tmp_path / "unused_loop.onnx"
    path.write_bytes(unused_loop_model().SerializeToString())
    result = _load_in_child(path)
    assert result.stdout.strip() == "loaded", result.stdout + result.stderr


def test_loop_that_leads_to_the_output_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "used_loop.onnx"
    path.write_bytes(used_loop_model().SerializeToString())
    result = _load_in_child(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith("UnsupportedOpError: node 'loop' (Loop): loops are not")


def test_loop_inside_an_if_branch_is_refused() -> None:
    branch = helper.make_graph(
        [_loop(2**62, "inner_loop")],
        "then",
        [],
        [helper.make_tensor_value_info("acc", TensorProto.FLOAT, [1])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["acc0"], ["acc_else"])],
        "else",
        [],
        [helper.make_tensor_value_info("acc_else", TensorProto.FLOAT, [1])],
    )
    nodes = [
        helper.make_node(
            "If", ["cond"], ["extra"], then_branch=branch, else_branch=other, name="branch"
        ),
        helper.make_node("Mul", ["x", "scale"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "extra"], ["logits"], name="add"),
    ]
    model = make(nodes, _loop_inits(2**62), [1, 2], [1, 2])
    with pytest.raises(UnsupportedOpError, match=r"node 'inner_loop' \(Loop\) \(inside 'branch'"):
        load_from_proto(model, LoadOptions(), source="m.onnx", fmt="onnx")


# --- sizes computed in ways shape inference does not follow ------------------------------------

_HUGE = 300_000_000  # 1.2 GB of float32


def _computed_count() -> list[onnx.NodeProto]:
    """'count' = [_HUGE] (int64, shape [1]), computed through a float Cast and a Mul."""
    return [
        helper.make_node("Size", ["x"], ["n"], name="size"),
        helper.make_node("Cast", ["n"], ["n_f"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node("Mul", ["n_f", "factor"], ["big_f"], name="times"),
        helper.make_node("Cast", ["big_f"], ["big"], to=TensorProto.INT64, name="to_int"),
        helper.make_node("Reshape", ["big", "one"], ["count"], name="as_shape"),
    ]


def _absorb(tensor_name: str) -> list[onnx.NodeProto]:
    """logits = x + 0 * sum(tensor): the tensor leads to the output."""
    return [
        helper.make_node("ReduceSum", [tensor_name], ["total"], keepdims=0, name="total"),
        helper.make_node("Mul", ["total", "zero"], ["nothing"], name="nothing"),
        helper.make_node("Add", ["x", "nothing"], ["logits"], name="add"),
    ]


def _inits() -> list[onnx.TensorProto]:
    return [
        tensor("factor", _HUGE / 2),
        tensor("one", [1], np.int64),
        tensor("zero", 0.0),
        tensor("start", 0.0),
        tensor("step", 1.0),
        tensor("base", [1.0]),
        tensor("roi", [], np.float32),
        tensor("scales_none", [], np.float32),
    ]


def _constant_of_shape() -> onnx.ModelProto:
    nodes = [
        *_computed_count(),
        helper.make_node("ConstantOfShape", ["count"], ["big_tensor"], name="fill"),
        *_absorb("big_tensor"),
    ]
    return make(nodes, _inits(), [1, 2], [1, 2])


def _expand() -> onnx.ModelProto:
    nodes = [
        *_computed_count(),
        helper.make_node("Expand", ["base", "count"], ["big_tensor"], name="expand"),
        *_absorb("big_tensor"),
    ]
    return make(nodes, _inits(), [1, 2], [1, 2])


def _tile() -> onnx.ModelProto:
    nodes = [
        *_computed_count(),
        helper.make_node("Tile", ["base", "count"], ["big_tensor"], name="tile"),
        *_absorb("big_tensor"),
    ]
    return make(nodes, _inits(), [1, 2], [1, 2])


def _range() -> onnx.ModelProto:
    nodes = [
        *_computed_count(),
        helper.make_node("Cast", ["big_f"], ["limit"], to=TensorProto.FLOAT, name="limit"),
        helper.make_node("Range", ["start", "limit", "step"], ["big_tensor"], name="range"),
        *_absorb("big_tensor"),
    ]
    return make(nodes, _inits(), [1, 2], [1, 2])


def _resize() -> onnx.ModelProto:
    nodes = [
        *_computed_count(),
        helper.make_node(
            "Resize", ["base", "roi", "scales_none", "count"], ["big_tensor"], name="resize"
        ),
        *_absorb("big_tensor"),
    ]
    return make(nodes, _inits(), [1, 2], [1, 2])


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(_constant_of_shape, id="constant_of_shape"),
        pytest.param(_expand, id="expand"),
        pytest.param(_tile, id="tile"),
        pytest.param(_range, id="range"),
        pytest.param(_resize, id="resize"),
    ],
)
def test_computed_huge_size_is_refused_before_allocation(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "huge.onnx"
    path.write_bytes(build().SerializeToString())
    result = _load_in_child(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith(ModelLoadError.__name__), result.stdout
    assert f"would hold {_HUGE} values" in result.stdout, result.stdout


def test_small_size_computed_the_same_way_loads() -> None:
    """The look-alike: pads computed through a float Cast, as exporters do, are computed
    first and the model loads (and pads as onnxruntime does)."""
    nodes = [
        helper.make_node("Size", ["x"], ["n"], name="size"),
        helper.make_node("Cast", ["n"], ["n_f"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node("Mul", ["n_f", "half"], ["p_f"], name="times"),
        helper.make_node("Cast", ["p_f"], ["p"], to=TensorProto.INT64, name="to_int"),
        helper.make_node("Reshape", ["p", "one"], ["p1"], name="p1"),
        helper.make_node("Concat", ["zero_i", "zero_i", "zero_i", "p1"], ["pads"], axis=0),
        helper.make_node("Pad", ["x", "pads"], ["logits"], mode="constant", name="pad"),
    ]
    inits = [tensor("half", 0.5), tensor("one", [1], np.int64), tensor("zero_i", [0], np.int64)]
    model = make(nodes, inits, [1, 2], [1, 3])
    loaded = load_from_proto(model, LoadOptions(), source="m.onnx", fmt="onnx")
    assert loaded.graph.shape("logits") == (1, 3)


def _concat_chain(copies: int) -> onnx.ModelProto:
    """Concats of Concats of a constant NonZero (whose size inference leaves open): each
    level multiplies the size by `copies`."""
    nodes = [
        helper.make_node("NonZero", ["ones"], ["nz"], name="nonzero"),
        helper.make_node("Concat", ["nz"] * copies, ["c1"], axis=1, name="concat1"),
        helper.make_node("Concat", ["c1"] * copies, ["c2"], axis=1, name="concat2"),
        helper.make_node("ReduceMax", ["c2"], ["m"], keepdims=0, name="max"),
        helper.make_node("Cast", ["m"], ["m_f"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node("Mul", ["x", "m_f"], ["logits"], name="scale"),
    ]
    return make(nodes, [tensor("ones", np.ones(1024))], [1, 2], [1, 2])


def test_chained_concats_of_open_sizes_are_bounded_before_allocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1024 * 64 * 64 values against a guard of 2^20: refused, not allocated level by level."""
    monkeypatch.setattr("lipcert.frontends.onnx_guard.MAX_TENSOR_ELEMENTS", 1 << 20)
    with pytest.raises(ModelLoadError, match=r"tensor 'c2' .* would hold 4194304 values"):
        load_from_proto(_concat_chain(64), LoadOptions(), source="m.onnx", fmt="onnx")


def test_chained_concats_within_the_guard_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The look-alike: 1024 * 16 * 16 values fit the same guard and the model loads."""
    monkeypatch.setattr("lipcert.frontends.onnx_guard.MAX_TENSOR_ELEMENTS", 1 << 20)
    loaded = load_from_proto(_concat_chain(16), LoadOptions(), source="m.onnx", fmt="onnx")
    assert loaded.graph.shape("logits") == (1, 2)


def _nonzero_chain(levels: int) -> onnx.ModelProto:
    """NonZero of Exp of NonZero ... of a constant: each NonZero's output has its input's
    rank times its size (Exp > 0 keeps every entry), an open size to inference."""
    nodes, previous = [], "ones"
    for level in range(levels):
        nodes += [
            helper.make_node("NonZero", [previous], [f"nz{level}"], name=f"nonzero{level}"),
            helper.make_node("Cast", [f"nz{level}"], [f"f{level}"], to=TensorProto.FLOAT),
            helper.make_node("Exp", [f"f{level}"], [f"e{level}"], name=f"exp{level}"),
        ]
        previous = f"e{level}"
    nodes += [
        helper.make_node("Shape", [previous], ["shape"], name="shape"),
        helper.make_node("ReduceMax", ["shape"], ["m"], keepdims=0, name="max"),
        helper.make_node("Cast", ["m"], ["m_f"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node("Mul", ["x", "m_f"], ["logits"], name="scale"),
    ]
    return make(nodes, [tensor("ones", np.ones(1024))], [1, 2], [1, 2])


def test_chained_nonzeros_are_bounded_before_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """1024 * 2^12 values against a guard of 2^20: refused before the probe allocates them."""
    monkeypatch.setattr("lipcert.frontends.onnx_guard.MAX_TENSOR_ELEMENTS", 1 << 20)
    with pytest.raises(ModelLoadError, match=r"node 'nonzero\d+' \(NonZero\): the size"):
        load_from_proto(_nonzero_chain(12), LoadOptions(), source="m.onnx", fmt="onnx")


def test_short_nonzero_chain_passes_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The look-alike: three levels fit the same guard; the probe runs, and only the constant
    computed through Exp is refused afterwards (by the float64 folding, not by the guard)."""
    monkeypatch.setattr("lipcert.frontends.onnx_guard.MAX_TENSOR_ELEMENTS", 1 << 20)
    with pytest.raises(UnsupportedOpError, match="float64 recomputation is not bounded"):
        load_from_proto(_nonzero_chain(3), LoadOptions(), source="m.onnx", fmt="onnx")
