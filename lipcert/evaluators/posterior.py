"""float32 onnxruntime with a per-sample a-posteriori allowance, and a float64 tail.

The default evaluator of `lipcert certify`. It runs the model in onnxruntime (CPU, float32)
up to a cut, then the rest of the graph (a chain of cheap ops at the end: dense layers,
activations, the head) in float64 from onnxruntime's value at the cut. The dense layers with
the longest sums, whose float32 rounding bound is the largest, thus run in float64. When
every ONNX node of the tail is one of _FLOAT64_OPS (sums of products, single correctly
rounded operations, exact moves), the tail is a float64 copy of those nodes in the same
onnxruntime run (the cut cast to float64, exactly); otherwise lipcert's executor runs it in
torch from the cut's value.

Every batch is checked against onnxruntime's own logits of the whole model (an extra output
of the same run) within both allowances, so a float64 tail that does not compute the model
is caught. The same onnxruntime run also returns, per sample, the sum of squares of every
tensor whose size enters the rounding bound (a ReduceSumSquare added to the model), and the
bound is computed from those sizes (`lipcert.bounds.fp_error`) instead of worst-case ones.
A sum of squares of n terms (each square rounded at most once, then summed in any order) is
at most (1 + 2 gamma_(n+1)) times too small, all terms being non-negative; underflowed
squares lose at most n times the smallest normal number: the norms used are increased by
both. The float32 tensors are summed in groups of up to 64 values (n is then 64, not the
tensor's size), the groups' sums added in float64 (`lipcert.evaluators.norms`). The tail's
tensors (the cut's included) are measured in float64; tensors not measured get their
a-priori size.

`prefetch` starts onnxruntime on the next batch in a background thread, so that it runs
while the float64 work on the current batch is done (`lipcert.certify.pipeline`).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from lipcert.bounds.compose import FLOAT32_UNIT_ROUNDOFF, FLOAT64_UNIT_ROUNDOFF, Analysis
from lipcert.bounds.fp_error import ErrorPlan
from lipcert.bounds.registry import Rounding
from lipcert.errors import ModelLoadError, UnsoundCertificateError
from lipcert.evaluators.base import (
    Evaluation,
    Evaluator,
    HeadError,
    check_agreement,
    input_norms,
)
from lipcert.evaluators.norms import group_size, norm_from_group_sums, norm_from_squares
from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator, make_session
from lipcert.frontends.onnx_flow import graph_names
from lipcert.graph import Graph, Node
from lipcert.model import LoadedModel

# Ops that cost as much as the model itself in float64 (torch has no fast float64 kernels
# for them): the float64 tail stops before the last of them.
_HEAVY = frozenset({"Conv", "ConvTranspose", "AveragePool", "MaxPool", "LpPool"})
_SUM_PREFIX = "lipcert_sum_of_squares_"
_FLOAT64_SUFFIX = "__lipcert_float64"
# Ops whose float64 onnxruntime kernels are what the rounding analysis assumes of float64
# arithmetic: sums of products in any order, one correctly rounded operation per element
# (_FLOAT64_ROUNDED), or exact (_FLOAT64_EXACT: comparisons, moves, shapes). A float64 tail
# made only of these runs in onnxruntime (in the run of the rest of the model), else in
# lipcert's executor (torch).
_FLOAT64_ROUNDED = ("Gemm", "MatMul", "Add", "Sub", "Mul", "Div")
_FLOAT64_EXACT = ("Neg", "Abs", "Relu", "Max", "Min", "ReduceMax", "ReduceMin", "Concat")
_FLOAT64_MOVES = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather")
_FLOAT64_SHAPES = ("Shape", "Identity", "Cast", "Split", "Constant")
_FLOAT64_OPS = frozenset((*_FLOAT64_ROUNDED, *_FLOAT64_EXACT, *_FLOAT64_MOVES, *_FLOAT64_SHAPES))
# Tensors larger than this many times the input are not measured (their sums of squares cost
# more than they save): their size is bounded a priori, ||t(0)|| + L_t ||x||. At 32, the
# fmnist_ce_tau8/tau128 sample models also measure their first activation (16 times the
# input): median allowance -5 %, but the evaluator's CPU time per sample +5 % (tau8) and
# +7 % (tau128), one thread, medians of 12 alternating runs on 2,000 images; kept at 8 (the
# ImageNet-sized LipNet measures the same tensors at 8 and at 32).
_MEASURED_SIZE = 8
# Nor are tensors larger than the input whose measured size could take less than this share
# off the a-priori allowance (as if measured at zero, all other sizes a priori, at the norm
# of a mid-grey input, every entry 0.5): on the ImageNet-sized LipNet, the first activation
# (2.7 times the input) has a share of 0.4 % and measuring it took 3 % of onnxruntime's
# time; on the sample models every measured tensor has 3.5 % or more (input norms 1 to 100).
_MIN_SHARE = 0.005


class PosteriorEvaluator:
    """float32 onnxruntime with an a-posteriori allowance (see the module docstring)."""

    name = "onnxruntime float32 (a-posteriori rounding bound)"
    precision = "float32"
    input_dtype: type = np.float32

    def __init__(
        self,
        model: LoadedModel,
        analysis: Analysis,
        threads: int | None = None,
        *,
        plain: OnnxRuntimeEvaluator | None = None,
        exact: Evaluator | None = None,
    ):
        import onnx

        self.analysis = analysis
        self.threads = threads
        self.plan = ErrorPlan.of(analysis)
        graph = analysis.graph
        proto = onnx.load_from_string(model.onnx_bytes)
        available = _float_tensors(proto)
        rounding = {node.name: layer.rounding for node, layer in analysis.node_bounds}
        tail = _float64_tail(graph, available, rounding)
        self.cut = model.output_name if not tail else graph.data_inputs(tail[0])[0]
        self.tail_names = {node.name for node in tail}
        self.units = {name: FLOAT64_UNIT_ROUNDOFF for name in self.tail_names}
        tail_outputs = {name for node in tail for name in node.outputs}
        input_size = int(np.prod(graph.input_shape))
        # The cut is measured in the float64 tail, from the values onnxruntime returns.
        in_tail = tail_outputs | ({self.cut} if tail else set())
        candidates = [
            name
            for name in self.plan.needed
            if name in available
            and name not in in_tail
            and name != graph.input_name
            and _batch_leading(graph, name)
            # an empty tensor has no groups to sum (Reshape to (N, -1, 0) fails)
            and 0 < int(np.prod(graph.shape(name)[1:])) <= _MEASURED_SIZE * input_size
        ]
        grey = 0.5 * np.sqrt(input_size)  # the norm of a mid-grey input
        a_priori = self.plan.error(np.array([grey]), {}, self.units)  # once for all
        self.measured = tuple(
            name
            for name in candidates
            if int(np.prod(graph.shape(name)[1:])) <= input_size
            or _share(self.plan, name, self.units, grey, a_priori) >= _MIN_SHARE
        )
        self.tail_measured = tuple(
            name for name in self.plan.needed if name in in_tail and _batch_leading(graph, name)
        )
        self.sizes = {name: int(np.prod(graph.shape(name)[1:])) for name in self.measured}
        self.tail_sizes = {name: int(np.prod(graph.shape(name)[1:])) for name in self.tail_measured}
        # Its batches run next to the float64 work on the previous batch (`prefetch`):
        # onnxruntime's idle threads sleep rather than spin against it. The float64 tail runs
        # in the same onnxruntime run when it can (`_float64_copy`), else in torch.
        session = None
        if tail:
            copied = _prefix_model(
                proto, self.cut, model.output_name, self.measured, graph, self.tail_measured
            )
            if copied is not None:
                try:
                    session = make_session(
                        copied.SerializeToString(), model.path, threads, spinning=False
                    )
                except ModelLoadError:  # a float64 kernel onnxruntime lacks: torch's tail
                    session = None
        self.tail_in_onnxruntime = session is not None
        if session is None:
            prefix = _prefix_model(proto, self.cut, model.output_name, self.measured, graph)
            session = make_session(prefix.SerializeToString(), model.path, threads, spinning=False)
        self.session = session
        self.input_name = model.input_name
        self.output_name = model.output_name
        self.tail = _tail_executor(graph, tail, self.cut) if tail else None
        self.head = _head_differences(graph)
        # The plain evaluator checks that a batch computes what single samples do (`plain`:
        # the caller's, of the same model, threads and spec, so the model is loaded once).
        if plain is None:
            plain = OnnxRuntimeEvaluator(model, threads=threads, spec=analysis.spec)
        self.plain = plain
        self.checked = False
        # The graph in float64 (`exact`), run on the first sample of the first batch: the
        # bounds are those of the graph lipcert reads and executes, and onnxruntime must
        # compute the same function (a test, not a proof: it catches an op whose meaning
        # lipcert's executor reads differently from onnxruntime outside the float64 tail).
        self.exact = exact
        self.exact_checked = exact is None
        # onnxruntime runs started ahead (`prefetch`), in order: (batch, its outputs to come)
        self._ahead: deque[tuple[np.ndarray, Future[list[Any]]]] = deque()
        self._pool: ThreadPoolExecutor | None = None

    @staticmethod
    def applies(model: LoadedModel, session: Any = None) -> bool:
        """Only float32 models with a free batch size (else the plain evaluator is used).
        `session`: an onnxruntime session of the model already made, if any."""
        import onnxruntime as ort

        if model.fixed_batch is not None:
            return False
        if session is None:
            session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
        return "float)" in session.get_inputs()[0].type

    def prefetch(self, batch: np.ndarray) -> None:
        """Start onnxruntime on `batch` in a background thread; `evaluate(batch)` (the same
        array, batches taken in the order given) then takes its outputs, and the rest of its
        work (the float64 tail, the allowance) runs while onnxruntime computes the next
        batch. onnxruntime releases the GIL while it runs. Not with one thread (`threads=1`,
        `--threads 1`): everything then runs on the calling thread, as asked (running ahead
        did not pay on a shared 2-core machine: 0.73x against 0.81x of bare onnxruntime)."""
        if self.plain.one_at_a_time or self.threads == 1:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="lipcert-onnxruntime")
        self._ahead.append((batch, self._pool.submit(self._run, batch)))

    def _run(self, batch: np.ndarray) -> list[Any]:
        inputs = np.ascontiguousarray(batch, dtype=np.float32)
        return list(self.session.run(None, {self.input_name: inputs}))

    def _outputs(self, batch: np.ndarray) -> list[Any]:
        """onnxruntime's outputs for `batch`: those of its prefetched run, else a run now."""
        while self._ahead:
            ahead, future = self._ahead.popleft()
            if ahead is batch:
                return future.result()
            future.cancel()  # prefetched for a batch that was not evaluated
        return self._run(batch)

    def evaluate(self, batch: np.ndarray) -> Evaluation:
        original = batch
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if not self.checked and len(batch) > 1:
            self.checked = True
            self.plain.batch_checked = True
            if not self.plain.batches_like_single_samples(batch):
                self.plain.one_at_a_time = True
        if self.plain.one_at_a_time:  # the executor check holds on this path too
            self._ahead.clear()
            return self._checked_first(batch, self.plain.evaluate(batch))
        outputs = self._outputs(original)
        cut_value = np.asarray(outputs[0])
        sums = outputs[1:] if self.cut == self.output_name else outputs[2:]
        runtime_output = np.asarray(outputs[0 if self.cut == self.output_name else 1])
        torch_tail = self.tail is not None and not self.tail_in_onnxruntime
        cut_rows = cut_value if torch_tail else runtime_output  # the start of torch's tail
        # before the logits' reshape, which would hide rows that are not one per sample
        _check_per_sample(len(batch), cut_rows, sums, self.measured, self.sizes)
        runtime_logits = runtime_output.reshape(len(batch), -1).astype(np.float64)
        norms: dict[str, np.ndarray] = {}
        for name, squares in zip(self.measured, sums[: len(self.measured)], strict=True):
            size = self.sizes[name]
            norms[name] = norm_from_group_sums(
                np.asarray(squares), size, group_size(size), FLOAT32_UNIT_ROUNDOFF
            )
        if self.tail_in_onnxruntime:  # the cut's value is the float64 logits
            logits = cut_value.reshape(len(batch), -1).astype(np.float64)
            tail_sums = sums[len(self.measured) :]
            for name, squares in zip(self.tail_measured, tail_sums, strict=True):
                norms[name] = norm_from_squares(
                    np.asarray(squares), self.tail_sizes[name], FLOAT64_UNIT_ROUNDOFF
                )
        elif self.tail is None:
            logits = cut_value.reshape(len(batch), -1).astype(np.float64)
        else:
            logits, tail_norms = self.tail(cut_value, self.tail_measured)
            norms.update(tail_norms)
        x_norms = input_norms(batch)
        norms[self.analysis.graph.input_name] = x_norms
        split = None if self.head is None else self.head[0]
        allowance, body, rest = self.plan.error_split(x_norms, norms, self.units, split)
        allowance = np.where(np.isnan(allowance), np.inf, allowance)
        head = None
        if self.head is not None:
            body = np.where(np.isnan(body), np.inf, body)
            rest = np.where(np.isnan(rest), np.inf, rest)
            head = HeadError(body, rest, self.head[1])
        evaluation = Evaluation(logits, allowance, head)
        if self.tail is not None:
            check_agreement(
                evaluation,
                self.plain.evaluation_of(batch, runtime_logits, x_norms),
                "the graph's float64 tail and onnxruntime",
            )
        return self._checked_first(batch, evaluation)

    def _checked_first(self, batch: np.ndarray, evaluation: Evaluation) -> Evaluation:
        """`evaluation`, once its batch's first sample (of the first batch) agrees with the
        graph in float64 (`exact`) within both allowances."""
        if not self.exact_checked and len(batch):
            assert self.exact is not None
            self.exact_checked = True
            first = np.arange(1)
            check_agreement(
                self.exact.evaluate(batch[first]),
                evaluation.take(first),
                "the graph in float64 (lipcert's executor) and onnxruntime",
            )
        return evaluation


def _check_per_sample(
    n: int, cut: np.ndarray, sums: list[Any], measured: tuple[str, ...], sizes: dict[str, int]
) -> None:
    """One row per sample in the cut's value and in every sum of squares, and as many
    values per sample in each measured tensor as the graph says (a per-row norm of a tensor
    whose batch is merged with its rows is below the sample's): else a one-line error."""
    labels = [*measured, *["a float64 tail tensor"] * (len(sums) - len(measured))]
    named = [("the cut", cut), *zip(labels, sums, strict=True)]
    bad = [name for name, value in named if np.ndim(value) < 1 or len(value) != n]
    for name, squares in zip(measured, sums, strict=False):
        width = int(np.prod(np.shape(squares)[1:])) * group_size(sizes[name])
        if width != sizes[name]:
            bad.append(name)
    if bad:
        raise UnsoundCertificateError(
            f"tensor {bad[0]!r} does not hold {n} samples of the graph's size in onnxruntime's "
            "run: its sum of squares is not one per sample (run with --margins float64)"
        )


def _share(
    plan: ErrorPlan,
    name: str,
    units: dict[str, float],
    x_norm: float,
    a_priori: np.ndarray | None = None,
) -> float:
    """The share of the a-priori allowance (every size a priori; `a_priori`, if already
    computed) at input norm `x_norm` that measuring tensor `name` could take off at most:
    its size set to zero."""
    x_norms = np.array([x_norm])
    if a_priori is None:
        a_priori = plan.error(x_norms, {}, units)
    without = plan.error(x_norms, {name: np.zeros(1)}, units)
    if not (np.all(np.isfinite(a_priori)) and np.all(a_priori > 0)):
        return 1.0  # an unbounded (or zero) a-priori allowance: measured
    return float(np.max(1.0 - without / a_priori))


def _head_differences(graph: Graph) -> tuple[str, np.ndarray] | None:
    """(the head's input tensor, upper bounds of ||w_i - w_j||) for a linear head whose
    rows lipcert's head detection reads (scalings after it included), else None."""
    from lipcert.bounds.compose import _find_head, _head_spread, head_row_differences

    head = _find_head(graph)
    if head is None or head.rows.shape[0] < 2:
        return None
    # rows built from constants the model computes are within `spread` of the exact rows
    differences = head_row_differences(head.rows, _head_spread(graph, head))
    return head.body_input, differences + 1e-300


def _float_tensors(proto: Any) -> set[str]:
    """Names of the float32 tensors the ONNX model computes (or takes as input)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # no types known: nothing is measured, the a-priori sizes are used
        return set()
    float_type = onnx.TensorProto.FLOAT
    names = {
        info.name
        for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        if info.type.tensor_type.elem_type == float_type
    }
    return names


def _float64_tail(graph: Graph, available: set[str], rounding: dict[str, Rounding]) -> list[Node]:
    """The longest chain of cheap single-input nodes at the end of the graph whose start
    tensor onnxruntime computes, and which reads nothing else computed from the input."""
    producers = graph.producers()
    chain: list[Node] = []
    name = graph.output_name
    while True:
        node = producers.get(name)
        if node is None or node.op in _HEAVY:
            break
        sources = graph.data_inputs(node)
        if len(sources) != 1:
            break
        chain.append(node)
        name = sources[0]
    chain.reverse()
    # The tail starts at a tensor onnxruntime computes in float32 (not the input), with a node
    # that rounds: exact ops (activations, reshapes) before it stay in onnxruntime.
    while chain and (
        graph.data_inputs(chain[0])[0] not in available
        or graph.data_inputs(chain[0])[0] == graph.input_name
        or not _batch_leading(graph, graph.data_inputs(chain[0])[0])
        or rounding[chain[0].name].terms == 0
    ):
        chain.pop(0)
    produced = {graph.data_inputs(chain[0])[0]} if chain else set()
    for node in chain:
        for name in node.inputs:
            if name and name not in produced and not graph.is_constant(name):
                return []
        produced.update(node.outputs)
    return chain


def _batch_leading(graph: Graph, name: str) -> bool:
    """Whether tensor `name` has the batch as its own leading axis (size 1 in the graph,
    probed at batch 1): a model may merge it with the axes after it, (N, 64) -> (8 N, 8),
    and a sum of squares over all but the leading axis is then one per row of 8, not per
    sample (certify crashed on such a cut; a per-row norm is below the sample's)."""
    shape = graph.shape(name)
    return len(shape) > 1 and shape[0] == 1


def _prefix_model(
    proto: Any,
    cut: str,
    logits: str,
    measured: tuple[str, ...],
    graph: Graph,
    float64_tail: tuple[str, ...] | None = None,
) -> Any:
    """The ONNX model computing `cut`, the logits and the sum of squares of each measured
    tensor. With `float64_tail` (the tail's measured tensors), it computes instead the
    logits in float64 from the cut (`_float64_copy`), the float32 logits, the float32 sums
    of squares of `measured`, then the float64 ones of `float64_tail`; None if the tail
    cannot be copied in float64."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    extra_nodes: list[Any] = []
    outputs = [
        helper.make_tensor_value_info(cut, onnx.TensorProto.FLOAT, None),
        helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None),
    ]
    if cut == logits:  # no float64 tail: the logits once
        outputs = outputs[:1]
    opset = max(
        (entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")),
        default=1,
    )
    # The tensors and nodes added here take names the file does not use: onnxruntime takes
    # the last of two initializers of one name, so a file's own int64 tensor named like
    # lipcert's flat shape (Gather indices, say) had its value replaced in certify's runs.
    taken = graph_names(model.graph)
    prefix = _SUM_PREFIX
    while any(name.startswith(prefix) for name in taken):
        prefix = f"_{prefix}"
    renamed: dict[str, str] = {}
    if float64_tail is not None:
        copied = _float64_copy(model, cut, logits)
        if copied is None or any(name not in copied[1] for name in float64_tail):
            return None
        extra_nodes, renamed = copied
        outputs[0] = helper.make_tensor_value_info(renamed[logits], onnx.TensorProto.DOUBLE, None)
    flat_shape = f"{prefix}flat_shape"
    axes = f"{prefix}axes"
    model.graph.initializer.append(
        onnx.numpy_helper.from_array(np.array([0, -1], dtype=np.int64), flat_shape)
    )
    if opset >= 18:  # ReduceSumSquare takes its axes as an input from opset 18 on
        for axis in (1, 2):
            model.graph.initializer.append(
                onnx.numpy_helper.from_array(np.array([axis], dtype=np.int64), f"{axes}{axis}")
            )
    # ReduceSumSquare over the flattened sample (one axis), or over its last axis in groups:
    # on an ImageNet-sized LipNet it took 2/3 of the time of x * x followed by a product with
    # a column of ones, itself twice as fast as a reduction over several axes.
    # The float32 tensors in groups of group_size values (one sum of squares per group, shape
    # (N, groups)); the float64 ones (already accurate) in one sum, shape (N, 1).
    summed: list[tuple[str, int, int | None]] = [
        (name, onnx.TensorProto.FLOAT, group_size(int(np.prod(graph.shape(name)[1:]))))
        for name in measured
    ]
    summed += [(renamed[name], onnx.TensorProto.DOUBLE, None) for name in float64_tail or ()]
    for i, (name, elem_type, group) in enumerate(summed):
        out = f"{prefix}{i}"
        shape, axis = flat_shape, 1
        if group is not None:
            shape, axis = f"{prefix}groups_of_{group}", 2
            if shape not in {init.name for init in model.graph.initializer}:
                model.graph.initializer.append(
                    onnx.numpy_helper.from_array(np.array([0, -1, group], dtype=np.int64), shape)
                )
        if opset >= 18:
            reduce = helper.make_node(
                "ReduceSumSquare", [f"{out}_flat", f"{axes}{axis}"], [out], keepdims=0
            )
        else:
            reduce = helper.make_node(
                "ReduceSumSquare", [f"{out}_flat"], [out], axes=[axis], keepdims=0
            )
        extra_nodes += [helper.make_node("Reshape", [name, shape], [f"{out}_flat"]), reduce]
        outputs.append(helper.make_tensor_value_info(out, elem_type, None))
    model.graph.node.extend(extra_nodes)
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    _prune(model.graph)
    return model


def _float64_copy(model: Any, cut: str, logits: str) -> tuple[list[Any], dict[str, str]] | None:
    """Nodes computing, in float64, the nodes of `model` that the logits need from `cut`
    (the float64 tail), and the names of their float64 tensors by original name; None when
    a node is not one of _FLOAT64_OPS, or a tensor's type is unknown.

    The cut is cast to float64 (exactly), and so is every float32 constant those nodes read
    (initializers and Constant outputs: their weights; onnxruntime folds these casts once);
    casts to float32 among them cast to float64 instead. Integer tensors (shapes) are
    computed as before. A float32 tensor computed elsewhere (weights computed in the graph,
    say) is not read: None."""
    import onnx
    from onnx import helper

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return None
    types = {init.name: init.data_type for init in inferred.graph.initializer}
    constants = set(types) | {
        name for node in inferred.graph.node if node.op_type == "Constant" for name in node.output
    }
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        types[info.name] = info.type.tensor_type.elem_type
    downstream = {cut}
    after: list[Any] = []
    for node in inferred.graph.node:  # in topological order
        if any(name in downstream for name in node.input):
            after.append(node)
            downstream.update(node.output)
    if logits not in downstream:
        return None
    needed = {logits}
    kept = []
    for node in reversed(after):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    float32, float64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE
    taken = graph_names(model.graph)  # the copies' names are new (as the sums' in _prefix_model)
    suffix = _FLOAT64_SUFFIX
    while any(name.endswith(suffix) for name in taken):
        suffix = f"{suffix}_"
    renamed = {cut: f"{cut}{suffix}"}
    nodes = [helper.make_node("Cast", [cut], [renamed[cut]], to=float64)]
    for node in kept:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _FLOAT64_OPS:
            return None
        inputs = []
        for name in node.input:
            if name and name not in renamed and name not in types:
                return None
            if name and name not in renamed and types[name] == float32:
                if name not in constants:
                    return None
                renamed[name] = f"{name}{suffix}"
                nodes.append(helper.make_node("Cast", [name], [renamed[name]], to=float64))
            inputs.append(renamed.get(name, name))
        for name in node.output:
            if name:
                renamed[name] = f"{name}{suffix}"
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{node.name or node.output[0]}{suffix}"
        del copy.input[:]
        copy.input.extend(inputs)
        del copy.output[:]
        copy.output.extend(renamed.get(name, name) for name in node.output)
        for attribute in copy.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == float32:
                attribute.i = float64
        nodes.append(copy)
    return nodes, renamed


def _prune(graph: Any) -> None:
    """Drop the nodes no output needs (after a switch from a Softmax to the logits, say)."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
    kept = list(reversed(keep))
    del graph.node[:]
    graph.node.extend(kept)


def _tail_executor(graph: Graph, tail: list[Node], cut: str) -> Any:
    """A function (cut value, names) -> (float64 logits, float64 norms of the named tensors)."""
    import dataclasses

    import torch

    from lipcert.graph.execute import GraphExecutor

    class _Tail(GraphExecutor):
        def values(self, x: torch.Tensor) -> dict[str, Any]:
            values: dict[str, Any] = dict(self.constants)
            values[self.graph.input_name] = x.to(self.dtype)
            self._batch = int(x.shape[0])
            self._run(self.graph.nodes, values)
            return values

    sub = dataclasses.replace(graph, input_name=cut, nodes=list(tail))
    executor = _Tail(sub, torch.float64)

    def run(value: np.ndarray, names: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with torch.no_grad():
            values = executor.values(torch.as_tensor(value.astype(np.float64)))
        logits = values[graph.output_name].reshape(len(value), -1).numpy()
        norms = {}
        for name in names:
            flat = values[name].reshape(len(value), -1)
            # float64 sums of squares, any order; squares below 2^-1022 (values below
            # 1e-154) may underflow to 0: norm_from_squares adds what they lose
            squares = (flat * flat).sum(dim=1).numpy()
            norms[name] = norm_from_squares(squares, flat.shape[1], FLOAT64_UNIT_ROUNDOFF)
        return logits, norms

    return run
