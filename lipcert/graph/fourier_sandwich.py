"""Sandwiches of two Fourier-domain affine blocks around an activation, fused as one node.

LBDN's convolutional Sandwich layer (Wang & Manchester 2023) is
`irfft2(sqrt2 A(f)^H Psi rfft2(relu(irfft2(sqrt2 Psi^-1 B(f) rfft2(x)) + b)))`: after the
affine blocks are fused (lipcert.graph.affine_blocks), an AffineBlock holding DFTs, a Relu,
and a second AffineBlock holding DFTs. Bounded op by op, the two blocks' norms multiply;
as one `FourierSandwich` node the rule (lipcert.bounds.rules.affine_blocks) can certify the
pair with a per-frequency LipSDP certificate (lipcert.bounds.fourier_sandwich). Whether the
blocks really are Fourier blocks is checked by the rule, which falls back to the product of
the three nodes' bounds otherwise.
"""

from __future__ import annotations

from lipcert.graph.ir import Graph, Node

# Activations whose slopes lie in [0, 1]: the LipSDP certificate's one requirement of them.
ACTIVATIONS = frozenset({"Relu"})


def _has_dft(node: Node) -> bool:
    return node.op == "AffineBlock" and any(inner.op == "DFT" for inner in node.body)


def find_fourier_sandwiches(graph: Graph) -> list[Node]:
    """AffineBlock (with DFTs) -> activation -> AffineBlock (with DFTs), each tensor between
    them read by the next node only; in graph order, no node in two sandwiches."""
    producers = graph.producers()
    consumers = graph.consumers()
    used: set[int] = set()
    found = []
    for second in graph.nodes:
        if not _has_dft(second) or len(second.inputs) != 1 or id(second) in used:
            continue
        activation = producers.get(second.inputs[0])
        if activation is None or activation.op not in ACTIVATIONS or activation.body:
            continue
        if len(graph.data_inputs(activation)) != 1 or len(activation.outputs) != 1:
            continue
        first = producers.get(activation.inputs[0])
        if first is None or not _has_dft(first) or id(first) in used:
            continue
        links = ((first.outputs[0], activation), (activation.outputs[0], second))
        if any(
            name == graph.output_name or [id(n) for n in consumers.get(name, [])] != [id(user)]
            for name, user in links
        ):
            continue
        used.update({id(first), id(second)})
        found.append(
            Node(
                name=f"{first.name}..{second.name}",
                op="FourierSandwich",
                inputs=first.inputs,
                outputs=second.outputs,
                attrs={"activation": activation.op},
                body=(first, activation, second),
            )
        )
    return found


__all__ = ["ACTIVATIONS", "find_fourier_sandwiches"]
