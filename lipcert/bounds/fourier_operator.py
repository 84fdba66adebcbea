"""Affine blocks that run through the Fourier domain: real DFT, per-frequency matrices, inverse.

Cayley (Trockman & Kolter 2021), LOT (Xu et al. 2022) and LBDN's convolutional Sandwich
(Wang & Manchester 2023) apply their convolutions as `irfft2(Q(f) rfft2(x))`: a one-sided
DFT of the real input, one matrix per frequency, the inverse. Torch's dynamo exporter writes
`DFT` ops for the transforms and the complex product on (real, imaginary) pairs with
Gathers, Concats, Negs and real MatMuls. Such a block is too large to probe at CIFAR size
(16 channels on 32 x 32 is a 16384 x 16384 matrix); this module bounds it, exactly, through
its per-frequency matrices. See `fourier_bound` for what is recognised and the proof.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lipcert.bounds import numeric
from lipcert.bounds.numeric import add_up, mul_up
from lipcert.bounds.registry import LayerBound, refuse
from lipcert.errors import UnsupportedOpError
from lipcert.graph import Graph, Node
from lipcert.graph.dft import DftGeometry, dft_geometry

# Labels of the frequency-diagonality check (see _labels): a tensor element that depends on
# no input element, and one that depends on input elements of two different labels.
FREE = -1.0
MIXED = -2.0
# Ops that only move, copy or drop elements: their labels move with the elements.
_MOVING = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Identity",
        "Dropout",
        "Slice",
        "Gather",
        "Concat",
        "Expand",
        "Tile",
    }
)
# Ops that scale each element by a constant: labels unchanged (broadcast to the output).
_SCALING = frozenset({"Neg", "Mul", "Div"})
_SUMMING = frozenset({"Add", "Sub", "Sum"})
# The per-frequency matrices are read with at most this many runs of the middle part.
MAX_PROBE_RUNS = 4096
# ... and held with at most this many float64 entries (2 Cout x 2 Cin per frequency).
MAX_SYMBOL_ENTRIES = 1 << 25


@dataclass(frozen=True)
class FourierBlock:
    """The block read as suffix o irdft o M o rdft o prefix."""

    prefix: tuple[Node, ...]  # entry -> the forward transform's (real) input
    forward: tuple[Node, ...]  # the one-sided DFT, then the full DFTs
    middle: tuple[Node, ...]  # M: half spectrum -> half spectrum
    inverse: tuple[Node, ...]  # the full inverse DFTs, then the one-sided inverse
    suffix: tuple[Node, ...]  # the inverse's (real) output -> exit
    axes: tuple[int, ...]  # the transformed axes, increasing (of the tensors with components)
    onesided_axis: int | None  # None: full DFTs of (x, 0), then the real part of the inverse
    lengths: dict[int, int]  # the signal length n per transformed axis
    core_in: str  # the real signal transformed (one component)
    core_out: str  # the real signal written back (one component)


def fourier_block(node: Node, graph: Graph) -> FourierBlock | None:
    """Split an AffineBlock's body into prefix, forward DFTs, M, inverse DFTs and suffix.

    None unless the body is exactly that: the forward transform is a one-sided DFT of a real
    signal (one component) followed by full DFTs along other axes, each reading the previous
    one's output and read by nothing else; the inverse is full inverse DFTs along the same
    axes followed by a one-sided inverse along the one-sided axis, writing a signal of the
    forward's length; every transform has the length of its axis (no padding, no
    truncation); the prefix and suffix are chains of one-input ops; M is everything else and
    reads only the forward's output.
    """
    body = list(node.body)
    if any(inner.body for inner in body) or len(node.inputs) != 1:
        return None
    dfts = [inner for inner in body if inner.op == "DFT"]
    if len(dfts) < 2:
        return None
    producers = {name: inner for inner in body for name in inner.outputs if name}
    users: dict[str, list[Node]] = {}
    for inner in body:
        for name in graph.data_inputs(inner):
            users.setdefault(name, []).append(inner)
    geometries: dict[int, DftGeometry] = {}
    for dft in dfts:
        geometry = _geometry(graph, dft)
        if geometry is None:
            return None
        geometries[id(dft)] = geometry
    forward = [d for d in dfts if not geometries[id(d)].inverse]
    inverse = [d for d in dfts if geometries[id(d)].inverse]
    if not forward or len(forward) != len(inverse):
        return None
    forward_chain = _chain(graph, forward, producers, users)
    inverse_chain = _chain(graph, inverse, producers, users)
    if forward_chain is None or inverse_chain is None:
        return None
    first, last = geometries[id(forward_chain[0])], geometries[id(inverse_chain[-1])]
    core: list[Node] = []  # the full-spectrum form's embedding and real-part nodes
    if first.onesided and not first.complex_input:
        # rfft ... irfft: the last inverse is one-sided along the same axis
        onesided: int | None = first.axis
        if not last.onesided or last.axis != first.axis:
            return None
        real_in = forward_chain[0].inputs[0]
        real_out = inverse_chain[-1].outputs[0]
    elif not first.onesided and first.complex_input and not last.onesided:
        # fft of (x, 0) ... the real part of the inverse (LOT's forward)
        onesided = None
        embed = _real_embedding(graph, producers, users, forward_chain[0])
        real_part = _real_part(graph, users, inverse_chain[-1])
        if embed is None or real_part is None:
            return None
        core = [embed, real_part]
        real_in = graph.data_inputs(embed)[0]
        real_out = real_part.outputs[0]
    else:
        return None
    rest = [*forward_chain[1:], *inverse_chain[: len(inverse_chain) - (onesided is not None)]]
    if any(geometries[id(d)].onesided for d in rest):
        return None
    if not all(geometries[id(d)].complex_input for d in [*forward_chain[1:], *inverse_chain]):
        return None
    forward_axes = [geometries[id(d)].axis for d in forward_chain]
    inverse_axes = [geometries[id(d)].axis for d in inverse_chain]
    if len(set(forward_axes)) != len(forward_axes) or set(forward_axes) != set(inverse_axes):
        return None
    lengths = {geometries[id(d)].axis: geometries[id(d)].length for d in forward_chain}
    for d in forward_chain:
        g = geometries[id(d)]
        if g.length != g.input_length:
            return None
    for d in inverse_chain:
        g = geometries[id(d)]
        n = lengths[g.axis]
        if g.length != n:
            return None
        if g.axis == onesided:
            if g.input_length != n // 2 + 1:
                return None
        elif g.input_length != n:
            return None
    spectrum_in, spectrum_out = forward_chain[-1].outputs[0], inverse_chain[0].inputs[0]
    in_shape, out_shape = graph.shape(real_in), graph.shape(real_out)
    if len(out_shape) == len(in_shape) - 1 and onesided is None:
        out_shape = (*out_shape, 1)  # the real part read by a Gather of the scalar index 0
    if in_shape[-1] != 1 or out_shape[-1] != 1 or len(in_shape) != len(out_shape):
        return None
    if in_shape[0] != out_shape[0] or any(out_shape[a] != lengths[a] for a in lengths):
        return None
    if graph.shape(spectrum_in)[0] != graph.shape(spectrum_out)[0]:
        return None
    if len(graph.shape(spectrum_out)) != len(graph.shape(spectrum_in)):
        return None
    for a in lengths:
        if graph.shape(spectrum_out)[a] != graph.shape(spectrum_in)[a]:
            return None
    prefix = _walk_back(graph, producers, users, real_in, node.inputs[0])
    suffix = _walk_forward(graph, users, real_out, node.outputs[0])
    if prefix is None or suffix is None:
        return None
    taken = {id(n) for n in [*prefix, *core, *forward_chain, *inverse_chain, *suffix]}
    middle = [inner for inner in body if id(inner) not in taken]
    produced = {spectrum_in} | {name for inner in middle for name in inner.outputs if name}
    for inner in middle:
        if len(inner.outputs) != 1 or any(n not in produced for n in graph.data_inputs(inner)):
            return None
    if spectrum_out not in produced:
        return None
    for name in produced - {spectrum_out}:
        if any(id(u) not in {id(m) for m in middle} for u in users.get(name, [])):
            return None
    return FourierBlock(
        prefix=tuple(prefix),
        forward=tuple(forward_chain),
        middle=tuple(middle),
        inverse=tuple(inverse_chain),
        suffix=tuple(suffix),
        axes=tuple(sorted(lengths)),
        onesided_axis=onesided,
        lengths=lengths,
        core_in=real_in,
        core_out=real_out,
    )


def _real_embedding(
    graph: Graph, producers: dict[str, Node], users: dict[str, list[Node]], dft: Node
) -> Node | None:
    """The Concat(x, zeros) along the components that makes x (one component) complex."""
    concat = producers.get(dft.inputs[0])
    if concat is None or concat.op != "Concat" or len(concat.inputs) != 2:
        return None
    rank = len(graph.shape(concat.outputs[0]))
    if int(concat.attr("axis", 0)) % rank != rank - 1:
        return None
    data, zero = concat.inputs
    if graph.data_inputs(concat) != [data] or not graph.is_constant(zero):
        return None
    if graph.shape(data)[-1] != 1 or np.any(np.asarray(graph.constant(zero))):
        return None
    if [id(u) for u in users.get(concat.outputs[0], [])] != [id(dft)]:
        return None
    return concat


def _real_part(graph: Graph, users: dict[str, list[Node]], dft: Node) -> Node | None:
    """The one reader of the last inverse DFT: the real component (Gather index 0, or Slice
    [0, 1) along the components), keeping the axis (Slice, Gather of [0])."""
    readers = users.get(dft.outputs[0], [])
    if len(readers) != 1:
        return None
    step = readers[0]
    rank = len(graph.shape(dft.outputs[0]))
    if step.op == "Gather":
        if int(step.attr("axis", 0)) % rank != rank - 1 or not graph.is_constant(step.inputs[1]):
            return None
        index = np.asarray(graph.constant(step.inputs[1]))
        if index.shape not in ((), (1,)) or int(index.reshape(-1)[0]) != 0:
            return None
        return step
    if step.op == "Slice":
        from lipcert.graph.affine_blocks import _sliced_positions

        if _sliced_positions(graph, step, rank - 1) != [0]:
            return None
        if graph.shape(step.outputs[0])[:-1] != graph.shape(dft.outputs[0])[:-1]:
            return None  # a Slice that also crops another axis: not only the real part
        return step
    return None


def _geometry(graph: Graph, dft: Node) -> DftGeometry | None:
    data = graph.data_inputs(dft)
    if data != [dft.inputs[0]]:
        return None
    ints = []
    for index in (1, 2):
        name = dft.inputs[index] if index < len(dft.inputs) else ""
        ints.append(int(np.asarray(graph.constant(name)).reshape(-1)[0]) if name else None)
    try:
        return dft_geometry(dft, graph.shape(dft.inputs[0]), ints[0], ints[1])
    except UnsupportedOpError:
        return None


def _chain(
    graph: Graph, dfts: list[Node], producers: dict[str, Node], users: dict[str, list[Node]]
) -> list[Node] | None:
    """The DFTs as a chain, each reading the previous one's output, read by nothing else."""
    ids = {id(d) for d in dfts}
    starts = [
        d for d in dfts if d.inputs[0] not in producers or id(producers[d.inputs[0]]) not in ids
    ]
    if len(starts) != 1:
        return None
    chain = [starts[0]]
    while len(chain) < len(dfts):
        readers = users.get(chain[-1].outputs[0], [])
        if len(readers) != 1 or id(readers[0]) not in ids:
            return None
        chain.append(readers[0])
    return chain


def _walk_back(
    graph: Graph,
    producers: dict[str, Node],
    users: dict[str, list[Node]],
    name: str,
    entry: str,
) -> list[Node] | None:
    steps: list[Node] = []
    while name != entry:
        step = producers.get(name)
        if step is None or len(graph.data_inputs(step)) != 1 or len(step.outputs) != 1:
            return None
        if len(users.get(name, [])) != 1:
            return None
        steps.append(step)
        name = graph.data_inputs(step)[0]
    return steps[::-1]


def _walk_forward(
    graph: Graph, users: dict[str, list[Node]], name: str, exit_: str
) -> list[Node] | None:
    steps: list[Node] = []
    while name != exit_:
        readers = users.get(name, [])
        if len(readers) != 1:
            return None
        step = readers[0]
        if len(graph.data_inputs(step)) != 1 or len(step.outputs) != 1:
            return None
        steps.append(step)
        name = step.outputs[0]
    return steps


# Ops whose linear part is the identity on the elements in order (with keeps_elements).
_IN_ORDER = frozenset({"Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity", "Dropout"})


def keeps_elements(graph: Graph, node: Node) -> bool:
    """True when the linear part of a one-input op is the identity on its elements in
    order: reshapes, a Slice that keeps everything, a constant added."""
    data = graph.data_inputs(node)
    if len(data) != 1 or data[0] != node.inputs[0]:
        return False
    source_shape, out_shape = graph.shape(data[0]), graph.shape(node.outputs[0])
    if int(np.prod(source_shape)) != int(np.prod(out_shape)):
        return False
    if node.op in _IN_ORDER:
        return True
    if node.op == "Slice":
        if source_shape != out_shape:
            return False
        steps = node.inputs[4] if len(node.inputs) > 4 else ""
        if not steps:
            return True
        if not graph.is_constant(steps):
            return False
        return bool(np.all(np.asarray(graph.constant(steps)) > 0))
    if node.op in ("Add", "Sub"):  # a constant added: the linear part is the identity
        return source_shape == out_shape
    return False


# --- the middle part: frequency-diagonal, and its matrices --------------------------------------


def _position_labels(shape: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray:
    """Label of each element of a (batch, ..., components) spectrum: its sample and frequency."""
    labels = np.zeros(shape, dtype=np.float64)
    frequencies = int(np.prod([shape[a] for a in axes]))
    index = np.zeros(shape, dtype=np.int64)
    for a in axes:
        grid = np.arange(shape[a]).reshape([-1 if i == a else 1 for i in range(len(shape))])
        index = index * shape[a] + grid
    batch = np.arange(shape[0]).reshape([-1] + [1] * (len(shape) - 1))
    labels = labels + (batch * frequencies + index)
    return labels


def _combine(values: np.ndarray, axis: int) -> np.ndarray:
    """Per position, the common label of `values` along `axis` (FREE ignored), else MIXED."""
    real = values >= 0
    low = np.where(real, values, np.inf).min(axis=axis)
    high = np.where(real, values, -np.inf).max(axis=axis)
    any_real = real.any(axis=axis)
    out = np.where(any_real, low, FREE)
    mixed = np.any(values == MIXED, axis=axis) | (any_real & (low != high))
    return np.where(mixed, MIXED, out)


def _merge(parts: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    stacked = np.stack([np.broadcast_to(p, shape) for p in parts])
    return _combine(stacked, 0)


def middle_is_frequency_diagonal(graph: Graph, block: FourierBlock) -> bool:
    """True when every element of M's output at (sample b, frequency k) depends only on
    elements of M's input at (b, k) (or on none).

    Each input element is labelled with its (sample, frequency); the labels are pushed
    through M's ops: ops that move, copy or drop elements move the labels with them (run by
    lipcert's own executor, so they mean what the model computes), scalings by constants
    keep them, a sum takes the common label of its terms, a MatMul or Gemm with a constant
    the common label of the data it contracts. A label that would combine two different
    labels is MIXED. By induction over M's ops, every element of every tensor is an affine
    function of the input elements carrying its label (none for FREE): M is block-diagonal
    over (sample, frequency) when the output's labels are its own positions' (or FREE).
    Any other op, or a MatMul of two data tensors, and the answer is False.
    """
    import torch

    from lipcert.graph.execute import GraphExecutor

    start = block.forward[-1].outputs[0]
    sub = Graph(
        input_name=start,
        output_name=block.inverse[0].inputs[0],
        nodes=list(block.middle),
        constants=graph.constants,
        shapes=graph.shapes,
        size_known=graph.size_known,
        batch_size=graph.batch_size,
        opset=graph.opset,
    )
    try:
        executor = GraphExecutor(sub, dtype=torch.float64)
    except UnsupportedOpError:
        return False
    executor._batch = graph.shape(start)[0]
    labels: dict[str, np.ndarray] = {start: _position_labels(graph.shape(start), block.axes)}
    for inner in block.middle:
        out = inner.outputs[0]
        out_shape = graph.shape(out)
        data = graph.data_inputs(inner)
        op = inner.op
        if op in _MOVING:
            if op != "Concat" and data != [inner.inputs[0]]:
                return False
            args: list[object] = []
            for name in inner.inputs:
                if not name:
                    args.append(None)
                elif name in labels:
                    args.append(torch.from_numpy(np.array(labels[name])))
                elif op == "Concat":
                    shape = np.asarray(graph.constant(name)).shape
                    args.append(torch.full(shape, FREE, dtype=torch.float64))
                else:
                    args.append(executor.constants[name])
            try:
                result = executor.run_node(inner, args)[0]
            except (UnsupportedOpError, RuntimeError):  # labels that do not fit the op
                return False
            value = result.detach().numpy().astype(np.float64)
        elif op in _SCALING and len(data) == 1:
            if op == "Div" and data[0] != inner.inputs[0]:
                return False
            value = np.broadcast_to(labels[data[0]], out_shape)
        elif op in _SUMMING and data:
            value = _merge([labels[name] for name in data], out_shape)
        elif op == "MatMul" and len(data) == 1:
            contracted = _matmul_labels(graph, inner, labels[data[0]], out_shape)
            if contracted is None:
                return False
            value = contracted
        elif op == "Gemm" and data == [inner.inputs[0]] and not inner.attr("transA", 0):
            x = labels[data[0]]
            if x.ndim != 2:
                return False
            value = np.broadcast_to(_combine(x, 1)[:, None], out_shape)
        else:
            return False
        if tuple(value.shape) != tuple(out_shape):
            return False
        labels[out] = np.asarray(value)
    final = labels.get(block.inverse[0].inputs[0])
    if final is None:
        return False
    expected = _position_labels(final.shape, block.axes)
    return bool(np.all((final == expected) | (final == FREE)))


def _matmul_labels(
    graph: Graph, node: Node, x: np.ndarray, out_shape: tuple[int, ...]
) -> np.ndarray | None:
    """Labels of A @ X or X @ A (A constant): the common label of what each output contracts."""
    if x.ndim < 2 or len(out_shape) < 2:
        return None
    if node.inputs[1] == graph.data_inputs(node)[0] and node.inputs[0] != node.inputs[1]:
        # A @ X: output (..., i, j) contracts X[..., :, j].
        column = _combine(x, x.ndim - 2)  # (..., n)
        value = column[..., None, :]
    else:
        # X @ A: output (..., i, j) contracts X[..., i, :].
        row = _combine(x, x.ndim - 1)  # (..., m)
        value = row[..., :, None]
    try:
        return np.broadcast_to(value, out_shape)
    except ValueError:
        return None


def middle_matrices(
    graph: Graph, block: FourierBlock, bounds: list[tuple[Node, LayerBound]]
) -> tuple[np.ndarray, tuple[int, ...], int, int, float] | None:
    """The real matrices M_k (F, 2 C_out, 2 C_in) of a frequency-diagonal M, in float64.

    Rows and columns are ordered (real parts of the channels, then imaginary parts). Column
    (r, c) is M applied to the spectrum that holds 1 in component r of channel c at every
    frequency of one sample: M being block-diagonal over (sample, frequency), its output at
    frequency k is M_k's column. `bounds` holds the rules' bounds of (at least) M's nodes.
    Also returned: the frequency grid, C_in, C_out, and a bound
    of ||computed M_k - M_k||_2 for every k (see fourier_bound).
    """
    from lipcert.bounds.affine_operator import block_rounding
    from lipcert.bounds.numeric import FLOAT64_UNIT_ROUNDOFF

    start, stop = block.forward[-1].outputs[0], block.inverse[0].inputs[0]
    in_shape, out_shape = graph.shape(start), graph.shape(stop)
    axes = block.axes
    batch = in_shape[0]
    grid = tuple(in_shape[a] for a in axes)
    frequencies = int(np.prod(grid))
    c_in = int(np.prod(in_shape[1:-1])) // frequencies
    c_out = int(np.prod(out_shape[1:-1])) // frequencies
    if in_shape[-1] != 2 or out_shape[-1] != 2 or c_in < 1 or c_out < 1:
        return None
    runs = 2 * c_in
    if runs > MAX_PROBE_RUNS or frequencies * 4 * c_in * c_out > MAX_SYMBOL_ENTRIES:
        return None
    fake = Node(
        name=f"{block.middle[0].name if block.middle else stop}..middle",
        op="AffineBlock",
        inputs=(start,),
        outputs=(stop,),
        body=block.middle,
    )
    in_order = _canonical_order(len(in_shape), axes)
    out_order = _canonical_order(len(out_shape), axes)
    in_canonical = tuple(in_shape[a] for a in in_order)
    matrices = np.zeros((frequencies, 2 * c_out, 2 * c_in))
    columns = [(r, c) for r in range(2) for c in range(c_in)]
    run = _linear_runner(fake, graph)
    # Every column is probed at every position of the (possibly pinned) batch: a constant
    # of the batch's shape can make M differ between positions (a model certified at each
    # position must be bounded at each), so the matrices are position 0's and the spread
    # of the others around them (squared Frobenius norm per position and frequency) is
    # added to the error below.
    spread_sq = np.zeros((batch, frequencies))
    for r, c in columns:
        probe = np.zeros(in_canonical)
        probe.reshape(batch, -1, frequencies, 2)[:, c, :, r] = 1.0
        written = run(np.transpose(probe, np.argsort(in_order))).reshape(out_shape)
        result = np.transpose(written, out_order).reshape(batch, c_out, frequencies, 2)
        matrices[:, :c_out, r * c_in + c] = result[0, :, :, 0].T
        matrices[:, c_out:, r * c_in + c] = result[0, :, :, 1].T
        spread_sq += ((result - result[:1]) ** 2).sum(axis=(1, 3))
    if not np.all(np.isfinite(matrices)) or not np.all(np.isfinite(spread_sq)):
        return None
    # The float64 run of M's linear part errs by at most g (D s + C) per sample with input
    # norm s (block_rounding at the float64 unit, as the probe of a whole block uses it);
    # each probe has s = sqrt(F). The errors of the 2 C_in columns bound every M_k's error
    # in the Frobenius norm, hence in the spectral norm.
    in_middle = {id(inner) for inner in block.middle}
    middle_bounds = [(inner, layer) for inner, layer in bounds if id(inner) in in_middle]
    rounding = block_rounding(fake, graph, middle_bounds, unit=FLOAT64_UNIT_ROUNDOFF)
    g = rounding.gamma(FLOAT64_UNIT_ROUNDOFF)
    per_column = mul_up(
        g,
        add_up(mul_up(rounding.input_gain, numeric.sqrt_up(frequencies)), rounding.offset),
    )
    error = mul_up(per_column, numeric.sqrt_up(2 * c_in))
    # Position b's computed M_k is within its own `error` of its exact one (the same rounding
    # bound) and within the spread's Frobenius norm of position 0's: both are added.
    spread = numeric.up(math.sqrt(float(spread_sq.max())) * (1 + 1e-12)) if batch > 1 else 0.0
    return matrices, grid, c_in, c_out, add_up(error, spread)


def _linear_runner(fake: Node, graph: Graph) -> Callable[[np.ndarray], np.ndarray]:
    """x -> the bias-free body of `fake` at x, in float64 (as affine_operator._run_body runs
    it), with one executor for all the probes, holding only the constants the body reads,
    on one torch thread (tiny batched products: more threads only contend)."""
    import torch

    from lipcert.bounds.affine_operator import _linear_part
    from lipcert.graph.execute import GraphExecutor

    nodes, extra = _linear_part(fake, graph)
    constants = {**graph.constants, **extra}
    used = {name for inner in nodes for name in inner.inputs if name in constants}
    sub = Graph(
        input_name=fake.inputs[0],
        output_name=fake.outputs[0],
        nodes=nodes,
        constants={name: constants[name] for name in used},
        shapes=graph.shapes,
        size_known=graph.size_known,
        batch_size=graph.batch_size,
        opset=graph.opset,
    )
    executor = GraphExecutor(sub, dtype=torch.float64)

    def run(start: np.ndarray) -> np.ndarray:
        values: dict[str, object] = dict(executor.constants)
        x = torch.as_tensor(np.array(start, dtype=np.float64))
        values[sub.input_name] = x
        executor._batch = int(x.shape[0])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                executor._run(sub.nodes, values)
        finally:
            torch.set_num_threads(threads)
        out = values[sub.output_name]
        return out.detach().numpy().reshape(int(x.shape[0]), -1)  # type: ignore[attr-defined]

    return run


def _canonical_order(rank: int, axes: tuple[int, ...]) -> list[int]:
    """Axes reordered as (batch, channel axes..., frequency axes..., components)."""
    channels = [a for a in range(1, rank - 1) if a not in axes]
    return [0, *channels, *axes, rank - 1]


# --- the bound -----------------------------------------------------------------------------------


def fourier_bound(
    node: Node,
    graph: Graph,
    bounds: list[tuple[Node, LayerBound]],
    analysis: FourierAnalysis | str | None = "compute",
) -> tuple[float, str, bool] | None:
    """Exact ||A|| of a block suffix o irdft o M o rdft o prefix with M frequency-diagonal.

    Notation: x real with channels c and spatial axes of lengths n_1..n_d (N = prod n_i),
    a the one-sided axis. The forward transform R (one-sided DFT along a, full DFTs along
    the others, unnormalised) maps x to its half spectrum X[k], k_a in 0..n_a // 2; the
    inverse T (full inverse DFTs, then the one-sided inverse, which reads bins 0 and n_a / 2
    by their real parts only) maps a half spectrum Y to
        y[j] = (1 / N) sum_k w_k Re(Y[k] e^(2 pi i k.j / n)),
    with w_k = 1 when k_a is self-conjugate (k_a = 0, or n_a / 2 for even n_a), else 2.
    With the real inner product <U, V>_w = (1 / N) sum_k w_k Re(conj(U[k]) . V[k]):
    - R is an isometry (Parseval: each full-spectrum bin outside the half is the conjugate
      of one with weight 2), and T is its adjoint: <R x, Y>_w = sum_j x[j] y[j] since
      conj(X[k]) = sum_j x[j] e^(2 pi i k.j / n) for real x. So T R = I and R T = P, the
      orthogonal projection onto V = range(R).
    - V is the half spectra with X[-k] = conj(X[k]) on the self-conjugate slab (k_a
      self-conjugate; -k negates the other coordinates mod n). P is the identity off that
      slab and (Y + J Y) / 2 on it, J Y[k] = conj(Y[-k]) (a symmetric isometric involution).
    Then A = T M R = R^* M R is unitarily equivalent (through R, an isometry onto V) to
    P M restricted to V, which splits into orthogonal pieces, with M_k the real 2C x 2C
    matrix of M at bin k on (real parts, imaginary parts) and S = diag(I, -I) (conjugation):
    - a bin off the slab (weight 2 on both sides): M_k;
    - a pair k != -k on the slab (X[k] = z free, X[-k] = conj z): (M_k + S M_(-k) S) / 2;
    - a bin k = -k on the slab (X[k] real, output real part kept): the real-to-real block.
    So ||A|| = max over the pieces of their largest singular value, exactly. The prefix and
    suffix multiply it by their own bounds (exact when both are 1).

    Soundness of the parts: `fourier_block` checks the structure; M's frequency-diagonality
    is proved by `middle_is_frequency_diagonal`; the M_k are computed in float64 with the
    error bound of `middle_matrices` (at most e in the spectral norm per bin, hence per
    piece), added to the largest computed singular value rounded up by the SVD allowance;
    forming a piece (M_k + S M_(-k) S) / 2 rounds each entry once (the halving is exact):
    at most u max_k ||M_k||_F more. `analysis`: fourier_analysis's result when the caller
    has it already.

    The per-frequency matrices are those of the graph's size: a graph whose input size is
    open (`size_known` False) is refused here, as a Fourier block (its DFTs' lengths are the
    probe's size's).
    """
    _refuse_open_size(node, graph)
    found = fourier_analysis(node, graph, bounds) if isinstance(analysis, str) else analysis
    if found is None:
        return None
    sigma = max(_max_singular(stack) for stack in found.pieces)
    value = add_up(
        numeric.singular_value_up(sigma, 2 * max(found.c_in, found.c_out)), found.piece_error
    )
    frequencies = int(np.prod(found.grid))
    spectrum = "spectrum" if found.block.onesided_axis is None else "half spectrum"
    method = (
        f"per-frequency matrices of a DFT block ({frequencies} frequencies of the "
        f"{spectrum}, {2 * found.c_out}x{2 * found.c_in} real), SVD"
    )
    outer = found.outer
    return (value if outer == 1.0 else mul_up(outer, value)), method, found.exact


@dataclass(frozen=True)
class FourierAnalysis:
    """A Fourier block's pieces (operator_pieces) and what bounds their errors."""

    block: FourierBlock
    pieces: list[np.ndarray]
    grid: tuple[int, ...]
    c_in: int
    c_out: int
    # ||computed piece - exact piece||_2 <= piece_error for every piece (fourier_bound)
    piece_error: float
    # the product of the prefix's and suffix's bounds (1.0 when they are all exactly 1)
    outer: float
    # the bound of the core is the block's norm: prefix and suffix are isometries
    exact: bool


def fourier_analysis(
    node: Node, graph: Graph, bounds: list[tuple[Node, LayerBound]]
) -> FourierAnalysis | None:
    """Recognise the block (fourier_block, middle_is_frequency_diagonal), read its M_k
    (middle_matrices) and form its pieces; None when it is not a Fourier block. A Fourier
    block of a graph whose input size is open is refused (see fourier_bound)."""
    _refuse_open_size(node, graph)
    block = fourier_block(node, graph)
    if block is None or not middle_is_frequency_diagonal(graph, block):
        return None
    found = middle_matrices(graph, block, bounds)
    if found is None:
        return None
    matrices, grid, c_in, c_out, error = found
    if block.onesided_axis is None:
        position, n_onesided = None, 0
    else:
        position = block.axes.index(block.onesided_axis)
        n_onesided = block.lengths[block.onesided_axis]
    pieces = operator_pieces(matrices, grid, position, n_onesided, c_in, c_out)
    forming = mul_up(
        numeric.FLOAT64_EPS,
        numeric.up(float(np.sqrt((matrices**2).sum(axis=(1, 2)).max())) * (1 + 1e-12)),
    )
    outer, isometric = outer_factor(graph, [*block.prefix, *block.suffix], bounds)
    return FourierAnalysis(
        block, pieces, grid, c_in, c_out, add_up(error, forming), outer, isometric
    )


def _refuse_open_size(node: Node, graph: Graph) -> None:
    """Fail closed on an open input size: the DFT lengths, the frequency grid and the
    matrices M_k are the probe size's, and a block bounded there says nothing at others."""
    if graph.size_known:
        return
    if any(inner.op == "DFT" for inner in node.body):  # every Fourier block has its DFTs
        raise refuse(
            node,
            "a block through the Fourier domain is bounded at one input size, which the "
            "model leaves open; pass input_shape= (--input-shape) to bound it at that size",
        )


def outer_factor(
    graph: Graph, steps: list[Node], bounds: list[tuple[Node, LayerBound]]
) -> tuple[float, bool]:
    """A bound of the norm of a chain of one-input ops around a core, and whether it is an
    isometry. Element moves that keep every element (reshapes, full slices, a transpose, a
    constant added) are isometries, exactly 1; other ops (a crop, a zero padding, a scaling)
    multiply by their rules' bounds, and ||suffix o core o prefix|| is then only at most the
    product with ||core||."""
    factors = {id(inner): layer.factor for inner, layer in bounds}
    outer = 1.0
    isometric = True
    for step in steps:
        moves = step.op == "Transpose" and len(graph.data_inputs(step)) == 1
        if keeps_elements(graph, step) or moves:
            continue
        isometric = False
        if factors[id(step)] != 1.0:
            outer = mul_up(outer, factors[id(step)])
    return outer, isometric


def operator_pieces(
    matrices: np.ndarray,
    grid: tuple[int, ...],
    position: int | None,
    n_onesided: int,
    c_in: int,
    c_out: int,
) -> list[np.ndarray]:
    """The real pieces of irdft o M o rdft (see fourier_bound), as three stacks: the bins off
    the self-conjugate slab (M_k), the pairs on it ((M_k + S M_(-k) S) / 2, each pair twice),
    and the self-paired bins (the real-to-real block). Two blocks on the same grid get their
    pieces in the same order, and the same orthonormal coordinates of their common space."""
    k = np.indices(grid).reshape(len(grid), -1).T  # (F, d), row-major like the labels
    if position is None:  # the full spectrum of a real signal: every bin has its mirror
        on_slab = np.ones(len(k), dtype=bool)
    else:
        k_a = k[:, position]
        on_slab = (k_a == 0) | (2 * k_a == n_onesided)
    mirror_coords = np.array(
        [(-k[:, i]) % grid[i] if i != position else k[:, i] for i in range(len(grid))]
    ).T
    mirror = np.ravel_multi_index(tuple(mirror_coords.T), grid)
    index = np.arange(len(k))
    s_out = np.concatenate([np.ones(c_out), -np.ones(c_out)])
    s_in = np.concatenate([np.ones(c_in), -np.ones(c_in)])
    off = index[~on_slab]
    paired = index[on_slab & (mirror != index)]
    single = index[on_slab & (mirror == index)]
    conjugated = s_out[None, :, None] * matrices[mirror[paired]] * s_in[None, None, :]
    return [
        matrices[off],
        (matrices[paired] + conjugated) / 2,
        matrices[single][:, :c_out, :c_in],
    ]


def _max_singular(stack: np.ndarray) -> float:
    if stack.size == 0:
        return 0.0
    return float(np.linalg.svd(stack, compute_uv=False).max())


__all__ = [
    "FourierAnalysis",
    "FourierBlock",
    "fourier_analysis",
    "fourier_block",
    "fourier_bound",
    "middle_is_frequency_diagonal",
    "middle_matrices",
    "operator_pieces",
]
