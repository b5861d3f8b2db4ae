"""Documents to a knowledge graph: entities and relations in FalkorDB or Neo4j.

``documents`` loads and chunks, ``extract`` (spaCy NER and subject-verb-object) and
``llm_extract`` (a served model, JSON-schema constrained) find entities and relations,
``resolve`` merges spellings into canonical entities, ``stores`` write them with the
Cypher in ``cypher``, ``server`` runs the embedded FalkorDB, and ``service`` ties it
together for the CLI and the pipelines.
"""

from sutazai.knowledge.models import GraphStats, IngestReport
from sutazai.knowledge.service import graph_stats, ingest

__all__ = ["GraphStats", "IngestReport", "graph_stats", "ingest"]
