"""The Householder activation (Singla, Singla and Feizi, ICLR 2022), fused into one node.

The layer splits a tensor z into two halves x, y along an axis and, per pair (x_i, y_i),
keeps the pair where the selector w . z = w1 x_i + w2 y_i is <= 0 and reflects it where it is
> 0; the reference code writes the select with masks:

    sel = x sin(t/2) - y cos(t/2)
    a = x * (sel <= 0) + (x cos t + y sin t) * (sel > 0)
    b = y * (sel <= 0) + (x sin t - y cos t) * (sel > 0)
    out = concat(a, b)

Both torch exporters write Split, Mul/Sub/Add with constants, LessOrEqual and Greater of the
selector against 0, Casts of the two comparisons, four masking Muls, two Adds and a Concat
(the sines and cosines are computed by Sin/Cos in the TorchScript export, folded into float32
weights by dynamo).

Two other spellings of the same function are recognised:
- `torch.where(sel <= 0, x, a2)` per half: Where(Cmp(s, 0), x, a2) or, kept where the
  condition fails, Where(Cmp(s, 0), a2, x) (both exporters write the comparison and two
  Wheres). Where selects one branch exactly, as the masks do.
- `cat([b, a])`: the halves concatenated in swapped order, P h(z) with P the exchange of the
  halves, a permutation of coordinates: an isometry, so the bound and the rounding analysis
  of h hold for it unchanged. Each half is matched to its pair's row by the variable it
  keeps (the half keeping y must reflect with R's second row), so a Concat whose reflected
  rows do not go with the kept variables is not fused.
Both halves must select on the same selector tensor and keep the pair on the same side.

**The function lipcert certifies.** With v = w / ||w|| and R* = I - 2 v v^T (the reflection
across the selector's line, computed exactly in rationals from the float constants w), the
ideal activation is h(z) = z where w . z <= 0 and R* z elsewhere. It is continuous (R* fixes
the line w . z = 0) and 1-Lipschitz: within one side it is an isometry, and for z1 kept and
z2 reflected, ||z1 - R* z2||^2 = ||z1 - z2||^2 + 4 (v . z1)(v . z2) <= ||z1 - z2||^2 because
v . z1 <= 0 < v . z2. The same holds with the sides swapped, and with strict and non-strict
comparisons exchanged.

The file's own reflection constants R (float32 sines and cosines) are not exactly R*: the
exact function with them jumps by up to ||R - R*|| ||z|| across the line (about 1e-7 ||z||),
so it has no Lipschitz constant. lipcert certifies h and counts the difference between what
the runtime computes and h in the node's rounding allowance
(lipcert.bounds.rules.householder), from the deviations recorded here:
- `deviation32`: max over pairs of ||R_rt - R*||_F with R_rt the constants as the float32
  runtime holds them (the file's float32 weights, or the float32 roundings of constants the
  front-end recomputed in float64), rounded up;
- `deviation64`: the same for the float64 values of the graph, when the runtime may hold them
  (constants that are not float32 weights), else 0;
- `abs_norm`: an upper bound of the norm of |R| (entrywise absolute values) for every pair.
In the fused node's body, the reflection's constants are replaced by the float64 roundings of
R* (correctly rounded from the exact rationals), so that the float64 executor computes h up to
its own rounding; onnxruntime keeps running the file's constants. The selector's constants
keep their values under names of their own: h is defined from them as the graph holds them,
so the generic allowance for recomputed constants (lipcert.bounds.folded) does not apply,
and neither does its need of a relative error bound: a recomputed sine or cosine near 0 (the
reference code's initial angle pi/2), known to an absolute 1e-14 only, is fused like any.

A select whose reflection does not fix the selector's line (a vector scaled by 1.01, two
different vectors, a threshold other than 0, a bias, the rows of R exchanged between the
halves) is not fused: its comparisons are then refused by the rules.

**The order-2 activation is refused** (`HouseHolder_Order_2` of the same code: per pair, the
angle phi = (atan2(y, x) - t0 / 2) mod 2 pi selects the identity, a reflection, a rotation or
a reflection on four sectors bounded by angles of t1 and t2). In exact arithmetic it is
continuous and 1-Lipschitz (adjacent maps agree on the ray between their sectors, and a
continuous map that is an isometry on each of finitely many sectors is 1-Lipschitz along any
segment), but not as exported. ONNX has no atan2; both torch exporters write
Atan(y / x), plus pi (y > 0) or minus pi (else) where x < 0, by Wheres, and the modulo as
s - Floor(s / 2 pi) 2 pi. Two inputs make the runtime leave the function by a distance no
rounding allowance can hold (measured with onnxruntime on both exports, against the float64
module):
- x = -0.0 (0 times a negative weight is -0, and so is a sum of such, as in a bias-free
  layer on zero inputs):
  y / -0 = -inf for y > 0, and -0 < 0 is false, so the angle is -pi/2 instead of pi/2 and
  another sector's map is applied: ||runtime - f|| = 1.42 ||z|| at z = (-0, 1);
- t0 clamped to 0 (the reference clamps it to [0, 2 pi]) and y / x tiny and negative
  (z = (1, -1e-45)): s / 2 pi rounds to -0, Floor(-0) = -0, so phi = s < 0 and no sector's
  mask holds: the pair becomes 0, ||runtime - f|| = ||z||.
Besides, onnxruntime documents no error bound for its float32 Atan. match_householder
therefore refuses Atan(Div) of the two outputs of one Split (the order-2 angle; LipPool of
the same code computes it too) in one line naming the Atan node; a Div of two data tensors
has no rule either.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from fractions import Fraction

import numpy as np

from lipcert.graph.ir import Graph, Node, refuse

# A reflection further than this from R* (Frobenius, per pair) is not a Householder
# activation with rounded constants: float32 sines and cosines are off by about 1e-7.
TOLERANCE = 2.0**-16
# Pairs with distinct constants checked exactly (in rationals); more is left alone.
_MAX_PAIRS = 1 << 14
_FLOAT_CASTS = frozenset({1, 11})  # FLOAT, DOUBLE
# Mask kinds: the comparison of the selector s with 0, normalised to "s OP 0".
_KIND = {"LessOrEqual": "le", "Less": "lt", "Greater": "gt", "GreaterOrEqual": "ge"}
_MIRROR = {"le": "ge", "lt": "gt", "gt": "lt", "ge": "le"}
_COMPLEMENT = {"le": "gt", "gt": "le", "lt": "ge", "ge": "lt"}


@dataclasses.dataclass(frozen=True)
class _Term:
    variable: int  # 0 for x, 1 for y
    constant: str | None  # the Mul's constant, None for the bare variable
    sign: int
    mul: Node | None


@dataclasses.dataclass(frozen=True)
class _Half:
    """One half of the output: `kept` (a Split output) where `selector OP 0` holds (OP
    given by `kind`), `reflected` elsewhere; `nodes` are the select's own nodes."""

    kept: str
    reflected: str
    selector: str
    kind: str
    nodes: tuple[Node, ...]
    spelling: str


def match_householder(graph: Graph, node: Node) -> Node | None:
    """Concat of the two halves of h(x, y), in either order: each half selects x (or y), a
    Split output, where s OP 0 and its entry of R (x, y) elsewhere, s = w . (x, y) one
    selector for both, R within TOLERANCE of the reflection across the line w . z = 0.
    A half is written with masks (x m + a2 n, m and n complementary Casts of comparisons
    of s with 0) or with Where(s OP 0, x, a2) (either branch first). See the module's
    docstring. Called on every node, it also refuses the order-2 activation's angle (an
    Atan), naming it."""
    if node.op == "Atan":
        _refuse_pair_angle(graph, node)
    concat = node
    if concat.op != "Concat" or len(concat.inputs) != 2 or concat.body:
        return None
    view = _View(graph)
    first, second = (view.half(name) for name in concat.inputs)
    if first is None or second is None:
        return None
    if (first.selector, first.kind) != (second.selector, second.kind):
        return None  # both halves keep the pair on the same side of the same selector
    split = view.producers.get(first.kept)
    if split is None or split.op != "Split" or split.body or len(split.outputs) != 2:
        return None
    x, y = split.outputs
    if (first.kept, second.kept) == (x, y):
        a2, b2, swapped = first.reflected, second.reflected, False
    elif (first.kept, second.kept) == (y, x):
        # Concat(b, a): h followed by the exchange of the halves, a permutation of the
        # coordinates (an isometry, which moves no rounding error between pairs)
        a2, b2, swapped = second.reflected, first.reflected, True
    else:
        return None
    shape = graph.shape(x)
    if graph.shape(y) != shape or graph.shape(concat.outputs[0]) != graph.shape(split.inputs[0]):
        return None
    if any(graph.shape(name) != shape for name in concat.inputs):
        return None
    rank = len(shape)
    axis = int(split.attr("axis", 0)) % rank
    if int(concat.attr("axis", 0)) % rank != axis:
        return None
    selector = first.selector
    sel_form, a_form, b_form = (view.linear_form(name, (x, y)) for name in (selector, a2, b2))
    if sel_form is None or a_form is None or b_form is None:
        return None
    (sel_terms, sel_nodes), (a_terms, a_nodes), (b_terms, b_nodes) = sel_form, a_form, b_form
    if len(a_terms) != 2 or len(b_terms) != 2 or any(t.mul is None for t in (*a_terms, *b_terms)):
        return None  # every reflection entry is a product with a constant (replaced below)
    constants = {t.constant for t in (*sel_terms, *a_terms, *b_terms) if t.constant}
    reduced = _reduced_shape(graph, constants, shape)
    if reduced is None:
        return None
    values = float64_constants(graph, constants, reduced)
    if values is None:
        return None
    float32_weights = all(
        np.asarray(graph.constant(t.constant)).dtype == np.float32
        and t.constant not in graph.inexact_constants
        for t in (*a_terms, *b_terms)
        if t.constant
    )
    checked = _check_pairs(values, reduced, sel_terms, a_terms, b_terms, float32_weights)
    if checked is None:
        return None
    ideal, deviation32, deviation64, abs_norm = checked

    body_nodes = [split, *sel_nodes, *a_nodes, *b_nodes, *first.nodes, *second.nodes, concat]
    body_nodes = list({id(n): n for n in body_nodes}.values())
    members = {id(n) for n in body_nodes}
    consumers = graph.consumers()
    for node in body_nodes:
        if node is concat:
            continue
        for out in node.outputs:
            if out == graph.output_name:
                return None
            if any(id(user) not in members for user in consumers.get(out, [])):
                return None
    products = [t.mul for t in (*sel_terms, *a_terms, *b_terms) if t.mul is not None]
    if len({id(p) for p in products}) != len(products):
        return None  # a product shared by two entries: they could not be replaced apart
    # The reflection's constants become R*'s float64 roundings (the float64 executor then
    # computes h); one constant per product, with the product's sign folded in. The
    # selector's keep their values under a name of their own: h is defined from these
    # float64 values, so how far they are from the file's exact constants (a recomputed
    # sine's error) does not matter, and the rule counts their float32 rounding.
    replaced: dict[int, Node] = {}
    entries = [(f"R{row}{t.variable}", t) for row, ts in ((0, a_terms), (1, b_terms)) for t in ts]
    entries += [(f"w{t.variable}", t) for t in sel_terms if t.mul is not None]
    for key, term in entries:
        assert term.mul is not None and term.constant is not None
        name = graph.fresh_name(f"{concat.name}::householder_{key}")
        if key.startswith("R"):
            graph.constants[name] = term.sign * ideal[int(key[1])][term.variable]
        else:
            graph.constants[name] = graph.constant(term.constant)
        inputs = tuple(name if i == term.constant else i for i in term.mul.inputs)
        replaced[id(term.mul)] = dataclasses.replace(term.mul, inputs=inputs)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    body = tuple(replaced.get(id(n), n) for n in sorted(body_nodes, key=lambda n: order[id(n)]))
    # The copies take the originals' places, so that fusing drops them with the body.
    graph.nodes = [replaced.get(id(n), n) for n in graph.nodes]
    graph.notes.append(
        f"Householder activation {concat.name!r}: the exact reflection of the selector's line "
        f"is certified; the runtime's reflection constants differ from it by at most "
        f"{deviation32:.2g} per pair (Frobenius), counted in the rounding allowance"
    )
    return Node(
        name=concat.name,
        op="Householder",
        inputs=(split.inputs[0],),
        outputs=concat.outputs,
        attrs={
            "axis": axis,
            "pairs": int(np.prod(reduced)),
            "deviation32": deviation32,
            "deviation64": deviation64,
            "abs_norm": abs_norm,
            "halves_swapped": int(swapped),
            "written_as": (
                f"{' and '.join(sorted({first.spelling, second.spelling}))} of a pair and its "
                f"reflection{', the halves concatenated in swapped order' if swapped else ''}"
            ),
        },
        body=body,
    )


def _refuse_pair_angle(graph: Graph, atan: Node) -> None:
    """Refuse Atan(Div(y, x)) of the two halves of one Split: the angle of the order-2
    Householder activation, whose exported form is not certifiable (module docstring)."""
    producers = graph.producers()
    div = producers.get(atan.inputs[0]) if atan.inputs else None
    if div is None or div.op != "Div" or len(div.inputs) != 2:
        return
    sources = [producers.get(name) for name in div.inputs]
    split = sources[0]
    if split is None or split.op != "Split" or sources[1] is not split:
        return
    if not split.inputs or graph.is_constant(split.inputs[0]):
        return  # an angle computed from weights, not from the data
    if set(div.inputs) != set(split.outputs) or len(split.outputs) != 2:
        return
    raise refuse(
        atan,
        "the angle atan2 of the two halves of a Split (as the order-2 Householder "
        "activation computes it) is not supported: its export, Atan(y / x) with Where "
        "corrections and a Floor modulo, takes another sector's map where x = -0.0 (1.4 "
        "||z|| away) and none where the angle rounds just below 0, beyond any rounding "
        "allowance",
    )


class _View:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.producers = graph.producers()

    def _node(self, name: str, *ops: str) -> Node | None:
        node = self.producers.get(name)
        if node is None or node.body or node.op not in ops or len(node.outputs) != 1:
            return None
        return node

    def half(self, name: str) -> _Half | None:
        return self._masked(name) or self._where(name)

    def _masked(self, name: str) -> _Half | None:
        """Add(Mul(v, m), Mul(r, n)), v a Split output, m and n the Casts of complementary
        comparisons of one selector with 0."""
        add = self._node(name, "Add")
        if add is None or len(add.inputs) != 2:
            return None
        parts = []
        for operand in add.inputs:
            mul = self._node(operand, "Mul")
            if mul is None or len(mul.inputs) != 2:
                return None
            first, second = mul.inputs
            if self._is_mask(second) and not self._is_mask(first):
                parts.append((first, second, mul))
            elif self._is_mask(first) and not self._is_mask(second):
                parts.append((second, first, mul))
            else:
                return None
        for (value, mask, _), (other, other_mask, _) in (parts, parts[::-1]):
            if not self._is_split_output(value):
                continue
            keep, turn = self._mask(mask), self._mask(other_mask)
            if keep is None or turn is None:
                return None
            (selector, kind, keep_nodes), (selector_turn, kind_turn, turn_nodes) = keep, turn
            if selector != selector_turn or _COMPLEMENT[kind] != kind_turn:
                return None
            nodes = (*keep_nodes, *turn_nodes, *(p[2] for p in parts), add)
            return _Half(value, other, selector, kind, nodes, "masked select")
        return None

    def _where(self, name: str) -> _Half | None:
        """Where(s OP 0, v, r) or Where(s OP 0, r, v), v a Split output: the pair is kept
        where the condition holds, or where it does not (the complementary comparison)."""
        where = self._node(name, "Where")
        if where is None or len(where.inputs) != 3:
            return None
        condition, when_true, when_false = where.inputs
        compared = self._compare(condition)
        if compared is None:
            return None
        selector, kind, nodes = compared
        for value, other, kept_kind in (
            (when_true, when_false, kind),
            (when_false, when_true, _COMPLEMENT[kind]),
        ):
            if self._is_split_output(value) and not self._is_split_output(other):
                return _Half(value, other, selector, kept_kind, (*nodes, where), "Where")
        return None

    def _is_split_output(self, name: str) -> bool:
        source = self.producers.get(name)
        return source is not None and source.op == "Split" and not source.body

    def _is_mask(self, name: str) -> bool:
        cast = self._node(name, "Cast")
        return cast is not None and self._node(cast.inputs[0], *_KIND) is not None

    def _mask(self, name: str) -> tuple[str, str, list[Node]] | None:
        """(selector, kind, nodes) of a Cast to a float of a comparison of s with 0."""
        cast = self._node(name, "Cast")
        if cast is None or int(cast.attr("to", 0)) not in _FLOAT_CASTS:
            return None
        compared = self._compare(cast.inputs[0])
        if compared is None:
            return None
        selector, kind, nodes = compared
        return selector, kind, [*nodes, cast]

    def _compare(self, name: str) -> tuple[str, str, list[Node]] | None:
        """(s, kind, [the comparison]) of a comparison of s with exactly 0, as "s OP 0"."""
        compare = self._node(name, *_KIND)
        if compare is None or len(compare.inputs) != 2:
            return None
        left, right = compare.inputs
        kind = _KIND[compare.op]
        if self._zero(right) and not self.graph.is_constant(left):
            selector = left
        elif self._zero(left) and not self.graph.is_constant(right):
            selector, kind = right, _MIRROR[kind]
        else:
            return None
        return selector, kind, [compare]

    def _zero(self, name: str) -> bool:
        if not self.graph.is_constant(name):
            return False
        value = np.asarray(self.graph.constant(name))
        return value.dtype.kind == "f" and value.size > 0 and bool(np.all(value == 0))

    def linear_form(
        self, name: str, variables: tuple[str, str]
    ) -> tuple[list[_Term], list[Node]] | None:
        """The terms of a form c1 x + c2 y built from Mul by constants, Add, Sub and Neg,
        each variable at most once (at most two roundings per element)."""
        nodes: list[Node] = []
        terms = self._terms(name, variables, 1, nodes, depth=0)
        if terms is None or not terms or len(terms) > 2:
            return None
        if len({t.variable for t in terms}) != len(terms):
            return None
        return terms, nodes

    def _terms(
        self, name: str, variables: tuple[str, str], sign: int, nodes: list[Node], depth: int
    ) -> list[_Term] | None:
        if name in variables:
            return [_Term(variables.index(name), None, sign, None)]
        node = self._node(name, "Mul", "Add", "Sub", "Neg")
        if node is None or depth > 4:
            return None
        nodes.append(node)
        if node.op == "Neg":
            return self._terms(node.inputs[0], variables, -sign, nodes, depth + 1)
        if len(node.inputs) != 2:
            return None
        first, second = node.inputs
        if node.op == "Mul":
            if self.graph.is_constant(second) and first in variables:
                return [_Term(variables.index(first), second, sign, node)]
            if self.graph.is_constant(first) and second in variables:
                return [_Term(variables.index(second), first, sign, node)]
            return None
        left = self._terms(first, variables, sign, nodes, depth + 1)
        right = self._terms(
            second, variables, sign if node.op == "Add" else -sign, nodes, depth + 1
        )
        if left is None or right is None:
            return None
        return left + right


def _reduced_shape(
    graph: Graph, constants: set[str], shape: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The broadcast shape of the constants (at the data's rank), when it broadcasts into
    the data's shape without enlarging it and holds at most _MAX_PAIRS pairs."""
    rank = len(shape)
    shapes = [np.shape(graph.constant(n)) for n in constants]
    if any(len(s) > rank for s in shapes):
        return None
    try:
        reduced = np.broadcast_shapes(*shapes, (1,) * rank)
        if np.broadcast_shapes(reduced, shape) != shape:
            return None
    except ValueError:
        return None
    if int(np.prod(reduced)) > _MAX_PAIRS:
        return None
    return tuple(reduced)


def float64_constants(
    graph: Graph, names: set[str], reduced: tuple[int, ...]
) -> dict[str, np.ndarray] | None:
    """The constants `names` in float64, broadcast to `reduced`; None if one is not finite."""
    values = {
        name: np.broadcast_to(np.asarray(graph.constant(name), dtype=np.float64), reduced)
        for name in names
    }
    if not all(np.all(np.isfinite(v)) for v in values.values()):
        return None
    return values


def _coefficients(
    terms: list[_Term], values: dict[str, np.ndarray], index: tuple[int, ...], round32: bool
) -> list[Fraction]:
    """[c_x, c_y] of a form at one pair, exactly (as the runtime holds the constants)."""
    out = [Fraction(0), Fraction(0)]
    for term in terms:
        if term.constant is None:
            value = 1.0
        else:
            raw = values[term.constant][index]
            value = float(np.float32(raw)) if round32 else float(raw)
        out[term.variable] = term.sign * Fraction(value)
    return out


def _check_pairs(
    values: dict[str, np.ndarray],
    reduced: tuple[int, ...],
    sel_terms: list[_Term],
    a_terms: list[_Term],
    b_terms: list[_Term],
    float32_weights: bool,
) -> tuple[list[list[np.ndarray]], float, float, float] | None:
    """R*'s float64 roundings, deviation32, deviation64 and abs_norm, or None when some pair
    has a zero selector or a reflection further than TOLERANCE from R*."""
    ideal = [[np.zeros(reduced) for _ in range(2)] for _ in range(2)]
    deviation32 = deviation64 = abs_square = Fraction(0)
    for index in _indices(reduced):
        w = _coefficients(sel_terms, values, index, round32=False)
        norm = w[0] * w[0] + w[1] * w[1]
        if norm == 0:
            return None
        star = [[int(i == j) - 2 * w[i] * w[j] / norm for j in range(2)] for i in range(2)]
        for round32 in (False, True):
            rows = [_coefficients(t, values, index, round32) for t in (a_terms, b_terms)]
            square = sum(
                ((rows[i][j] - star[i][j]) ** 2 for i in range(2) for j in range(2)), Fraction(0)
            )
            if round32:
                deviation32 = max(deviation32, square)
            elif not float32_weights:
                deviation64 = max(deviation64, square)
            if square > Fraction(TOLERANCE) ** 2:
                return None
            largest = sum(
                (max(abs(rows[i][j]), abs(star[i][j])) ** 2 for i in range(2) for j in range(2)),
                Fraction(0),
            )
            abs_square = max(abs_square, largest)
        for i in range(2):
            for j in range(2):
                ideal[i][j][index] = float(star[i][j])  # correctly rounded
    return ideal, _sqrt_up(deviation32), _sqrt_up(deviation64), _sqrt_up(abs_square)


def _indices(shape: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    yield from np.ndindex(*shape)


def _sqrt_up(value: Fraction) -> float:
    """An upper bound of sqrt(value), as a float."""
    if value == 0:
        return 0.0
    result = math.sqrt(float(value))
    while Fraction(result) ** 2 < value:
        result = math.nextafter(result, math.inf)
    return result


__all__ = ["TOLERANCE", "float64_constants", "match_householder"]
