"""Planning: component orders, the chunk planner, chunk descriptors, assignment to consumers."""

from mixplane.chunking.assign import Assignment, Topology
from mixplane.chunking.order import ComponentOrder
from mixplane.chunking.planner import Planner
from mixplane.chunking.spec import ChunkSpec

__all__ = ["Assignment", "ChunkSpec", "ComponentOrder", "Planner", "Topology"]
