"""The one internal graph every model format is turned into."""

from __future__ import annotations

from lipcert.graph.ir import Graph, Node

__all__ = ["Graph", "Node"]
