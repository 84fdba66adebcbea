"""Sound Lipschitz bounds: the rule table, its rules, and their composition over a graph.

Every rule module is imported here, so the table is complete once lipcert.bounds is.
"""

from __future__ import annotations

from lipcert.bounds.registry import LayerBound, bound_node, supported_ops
from lipcert.bounds.rules import (
    affine_blocks,
    blocks,  # SLL, Sandwich, ScatterND, refused selects
    elementwise,
    householder,  # the Householder activation (lipcert.graph.householder)
    linear,
    patterns,
    pooling,
    structure,
)

__all__ = [
    "LayerBound",
    "affine_blocks",
    "blocks",
    "bound_node",
    "elementwise",
    "householder",
    "linear",
    "patterns",
    "pooling",
    "structure",
    "supported_ops",
]
