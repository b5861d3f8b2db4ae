"""Graph stores behind one interface: FalkorDB (embedded default) and Neo4j (production)."""

from sutazai.knowledge.stores.base import GraphStore

__all__ = ["GraphStore"]
