"""The IR room: the graph, its nodes, op kinds, the cost model, invariants and channel groups.

Imports nothing of kopt above `kopt.errors`; everything else in kopt builds on it.
"""

from kopt.ir.graph import Graph
from kopt.ir.node import Node, Port

__all__ = ["Graph", "Node", "Port"]
