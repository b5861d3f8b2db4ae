"""Documents to a knowledge graph: entities and relations in FalkorDB or Neo4j.

``documents`` loads and chunks, ``extract`` (spaCy NER and subject-verb-object) and
``llm_extract`` (a served model, JSON-schema constrained) find entities and relations,
``resolve`` merges spellings into canonical entities, ``stores`` write them with the
Cypher in ``cypher``, ``server`` runs the embedded FalkorDB, and ``service`` ties it
together for the CLI and the pipelines. Nothing is imported here, so a DAG can read
:data:`sutazai.knowledge.models.RELATION_MODES` without loading the extractors.
"""
