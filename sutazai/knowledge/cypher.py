"""Every Cypher statement SutazAI sends to a graph store, in one place.

Only the subset FalkorDB and Neo4j 5 both run is used (PLATFORM-FACTS, "Knowledge
graph"): fixed labels, ``UNWIND $rows ... MERGE`` upserts keyed on our own ``id``
property, ``SET x += map``, ``timestamp()``, scalar or list-of-scalar properties, no
``CALL {}`` and no APOC. Every value travels as a query parameter; labels and
relationship types are constants checked against a whitelist, so no input ever becomes
Cypher text. Schema statements are the one thing that differs per store.
"""

from __future__ import annotations

import re

LABELS = frozenset({"Document", "Chunk", "Entity"})
RELATIONSHIP_TYPES = frozenset({"HAS_CHUNK", "MENTIONS", "RELATED"})


def label(name: str) -> str:
    """A node label from the whitelist (raises ValueError for anything else)."""
    if name not in LABELS:
        raise ValueError(f"label {name!r} is not one of {sorted(LABELS)}")
    return name


def relationship(name: str) -> str:
    if name not in RELATIONSHIP_TYPES:
        raise ValueError(f"relationship type {name!r} is not one of {sorted(RELATIONSHIP_TYPES)}")
    return name


# ------------------------------------------------------------------------------- schema
# (label, property) pairs: unique ids, and the properties lookups filter on.
UNIQUE = [("Entity", "id"), ("Document", "id"), ("Chunk", "id")]
INDEXED = [("Entity", "key"), ("Document", "uri"), ("Chunk", "document")]
EDGE_INDEXED = [("RELATED", "document")]


def falkordb_schema() -> list[str]:
    """Range indexes first: FalkorDB builds a unique constraint on top of an index."""
    nodes = [f"CREATE INDEX FOR (n:{label(lbl)}) ON (n.{prop})" for lbl, prop in UNIQUE + INDEXED]
    edges = [f"CREATE INDEX FOR ()-[r:{relationship(t)}]-() ON (r.{prop})"
             for t, prop in EDGE_INDEXED]
    return nodes + edges


def falkordb_constraints(graph: str) -> list[list[str]]:
    """``GRAPH.CONSTRAINT CREATE`` commands (a Redis command, not Cypher, on FalkorDB)."""
    return [["GRAPH.CONSTRAINT", "CREATE", graph, "UNIQUE", "NODE", label(lbl), "PROPERTIES",
             "1", prop] for lbl, prop in UNIQUE]


def neo4j_schema() -> list[str]:
    unique = [f"CREATE CONSTRAINT {lbl.lower()}_{prop} IF NOT EXISTS FOR (n:{label(lbl)}) "
              f"REQUIRE n.{prop} IS UNIQUE" for lbl, prop in UNIQUE]
    nodes = [f"CREATE INDEX {lbl.lower()}_{prop} IF NOT EXISTS FOR (n:{label(lbl)}) ON (n.{prop})"
             for lbl, prop in INDEXED]
    edges = [f"CREATE INDEX {t.lower()}_{prop} IF NOT EXISTS FOR ()-[r:{relationship(t)}]-() "
             f"ON (r.{prop})" for t, prop in EDGE_INDEXED]
    return unique + nodes + edges


# ------------------------------------------------------------------------------- writes
UPSERT_CHUNKS = """
UNWIND $rows AS r
MERGE (c:Chunk {id: r.id})
ON CREATE SET c.created = timestamp()
SET c += r.props
"""

# The statement the benchmark measures: one MERGE per row, batched by UNWIND. Entities
# carry ten properties, no more: on FalkorDB each property costs about as much to set as
# the MERGE itself (benchmarks/kg_upsert.py). The resolver sends the merged aliases and
# the best confidence seen, so plain SETs suffice; provenance is where it was first seen.
UPSERT_ENTITIES = """
UNWIND $rows AS r
MERGE (e:Entity {id: r.id})
ON CREATE SET e.document = r.document, e.chunk = r.chunk, e.extractor = r.extractor,
              e.model = r.model
SET e.name = r.name, e.type = r.type, e.key = r.key, e.aliases = r.aliases,
    e.confidence = r.confidence
"""

# The same upsert for one entity: the benchmark's baseline (one round trip per entity).
UPSERT_ENTITY = """
MERGE (e:Entity {id: $id})
ON CREATE SET e.document = $document, e.chunk = $chunk, e.extractor = $extractor,
              e.model = $model
SET e.name = $name, e.type = $type, e.key = $key, e.aliases = $aliases,
    e.confidence = $confidence
"""

# FalkorDB's MERGE costs about 2.5x a CREATE on the server (25 against 10 ms per 1,000
# entities), so on FalkorDB the entities the resolver knows to be new are created; its
# unique constraint turns a race with another writer into an error, and that batch is
# redone with UPSERT_ENTITIES.
CREATE_ENTITIES = """
UNWIND $rows AS r
CREATE (e:Entity {id: r.id, document: r.document, chunk: r.chunk, extractor: r.extractor,
                  model: r.model, name: r.name, type: r.type, key: r.key, aliases: r.aliases,
                  confidence: r.confidence})
"""

# Nodes of the shape PLATFORM-FACTS measured (id and name only): the benchmark's yardstick
# for what the entity properties above cost.
UPSERT_BARE_ENTITIES = """
UNWIND $rows AS r
MERGE (e:Entity {id: r.id})
SET e.name = r.name
"""

UPSERT_MENTIONS = """
UNWIND $rows AS r
MATCH (c:Chunk {id: r.chunk})
MATCH (e:Entity {id: r.entity})
MERGE (c)-[m:MENTIONS {start: r.start}]->(e)
SET m += r.props
"""

UPSERT_RELATIONS = """
UNWIND $rows AS r
MATCH (a:Entity {id: r.source})
MATCH (b:Entity {id: r.target})
MERGE (a)-[x:RELATED {type: r.type, chunk: r.chunk}]->(b)
SET x += r.props
"""

# Written last, with its HAS_CHUNK edges in the same (atomic) statement: a Document node
# exists only once all its chunks, mentions, relations and links do.
UPSERT_DOCUMENT = """
MERGE (d:Document {id: $id})
ON CREATE SET d.created = timestamp()
SET d += $props, d.ingested = timestamp()
WITH d
UNWIND $chunks AS r
MATCH (c:Chunk {id: r.chunk})
MERGE (d)-[h:HAS_CHUNK]->(c)
SET h += r.props
"""

# -------------------------------------------------------------------------- deletions
MENTIONED_BY_DOCUMENT = """
MATCH (c:Chunk {document: $document})-[:MENTIONS]->(e:Entity)
RETURN DISTINCT e.id
"""

DELETE_DOCUMENT_RELATIONS = """
MATCH ()-[r:RELATED {document: $document}]->()
DELETE r
"""

DELETE_DOCUMENT_CHUNKS = """
MATCH (c:Chunk {document: $document})
DETACH DELETE c
"""

DELETE_DOCUMENT = """
MATCH (d:Document {id: $document})
DETACH DELETE d
"""

# Entities left without any mention (of the ones the removed document mentioned).
DELETE_ORPHANS = """
UNWIND $ids AS id
MATCH (e:Entity {id: id})
OPTIONAL MATCH (e)<-[m:MENTIONS]-()
WITH e, count(m) AS mentions
WHERE mentions = 0
DETACH DELETE e
RETURN count(*)
"""

# ------------------------------------------------------------------------------ reads
DOCUMENT_BY_URI = """
MATCH (d:Document {uri: $uri})
RETURN d.id, d.uri, d.title, d.chunks
"""

DOCUMENT_BY_ID = """
MATCH (d:Document {id: $id})
RETURN d.id, d.uri, d.title, d.chunks
"""

DOCUMENTS_BY_PREFIX = """
MATCH (d:Document)
WHERE d.id STARTS WITH $prefix
RETURN d.id, d.uri, d.title, d.chunks
"""

CHUNKS_OF = """
MATCH (c:Chunk {document: $document})
RETURN count(c)
"""

ENTITY_CATALOG = """
MATCH (e:Entity)
WHERE e.type IN $types
RETURN e.id, e.name, e.type, e.key, e.aliases, e.confidence
"""

ENTITY_BY_KEY = """
MATCH (e:Entity {key: $key})
RETURN e.id, e.name, e.type, e.aliases, e.confidence
"""

ENTITY_BY_ID = """
MATCH (e:Entity {id: $id})
RETURN e.id, e.name, e.type, e.aliases, e.confidence
"""

ENTITY_ALIASES = """
MATCH (e:Entity)
RETURN e.id, e.type, e.aliases
"""

ENTITY_NAMES = """
MATCH (e:Entity)
RETURN e.name
"""

NEIGHBOURS_OUT = """
MATCH (e:Entity {id: $id})-[r:RELATED]->(o:Entity)
RETURN r.type, r.confidence, o.id, o.name, o.type, r.document
ORDER BY r.confidence DESC, o.name
LIMIT $limit
"""

NEIGHBOURS_IN = """
MATCH (e:Entity {id: $id})<-[r:RELATED]-(o:Entity)
RETURN r.type, r.confidence, o.id, o.name, o.type, r.document
ORDER BY r.confidence DESC, o.name
LIMIT $limit
"""

MENTIONS_OF = """
MATCH (c:Chunk)-[m:MENTIONS]->(e:Entity {id: $id})
MATCH (d:Document {id: c.document})
RETURN d.id, d.uri, c.id, c.text, c.start, m.start, m.end, m.text, m.confidence, m.extractor
ORDER BY d.uri, m.start
LIMIT $limit
"""

COUNT_DOCUMENTS = "MATCH (d:Document) RETURN count(d)"
COUNT_CHUNKS = "MATCH (c:Chunk) RETURN count(c)"
COUNT_MENTIONS = "MATCH (:Chunk)-[m:MENTIONS]->(:Entity) RETURN count(m)"
ENTITIES_BY_TYPE = "MATCH (e:Entity) RETURN e.type, count(e)"
RELATIONS_BY_TYPE = "MATCH (:Entity)-[r:RELATED]->(:Entity) RETURN r.type, count(r)"

EXPORT_NODES = """
MATCH (n)
RETURN labels(n)[0], n.id, properties(n)
"""

EXPORT_EDGES = """
MATCH (a)-[r]->(b)
RETURN a.id, type(r), b.id, properties(r)
"""

# ------------------------------------------------------------- read-only user queries
_STRINGS = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`")
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_WRITE_CLAUSES = re.compile(  # keywords, not properties or parameters named like them
    r"(?<![.$\w])(CREATE|MERGE|DELETE|DETACH|SET|REMOVE|DROP|LOAD\s+CSV|FOREACH)\b"
    r"|(?<![.$\w])CALL\s+(db\.idx|dbms|apoc|gds|db\.create|db\.drop)", re.I)


def writes(statement: str) -> str | None:
    """The first write clause in ``statement`` (outside strings and comments), or None.

    A courtesy check that gives a clear message before the store's own read-only mode
    (FalkorDB's GRAPH.RO_QUERY, Neo4j's READ access mode) refuses the statement anyway.
    """
    bare = _STRINGS.sub("''", _COMMENTS.sub(" ", statement))
    found = _WRITE_CLAUSES.search(bare)
    return found.group(0).upper() if found else None
