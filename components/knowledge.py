"""Knowledge steps: documents to entities and relations in the graph store, then chunk
embeddings for vector search.

Extraction (the model's work), the upsert (the store's) and the embedding (the embeddings
champion's) are separate steps, so that on a cluster each gets the resources it needs and a
failed write does not redo the extraction.
No ``from __future__ import annotations`` in component modules: KFP reads the annotations.
"""

from kfp.dsl import Artifact, Input, Metrics, Output

from components.base import component


@component
def extract_documents(paths: list[str], relations: str, extracted: Output[Artifact],
                      metrics: Output[Metrics]) -> int:
    """Load, chunk and extract ``paths`` (default: the documents folder); no writes.
    Documents already in the graph are marked unchanged. Returns how many to write."""
    from sutazai.config import load_settings
    from sutazai.knowledge.service import extract_documents as extract

    settings = load_settings()
    batch = extract(settings, paths or [str(settings.documents_root)], relations=relations)
    with open(extracted.path, "w") as handle:
        handle.write(batch.model_dump_json())
    todo = sum(1 for item in batch.documents if not item.unchanged)
    metrics.log_metric("documents_to_write", float(todo))
    metrics.log_metric("documents_failed", float(len(batch.report.documents_failed)))
    metrics.log_metric("extract_seconds", batch.report.seconds)
    return todo


@component
def upsert_documents(extracted: Input[Artifact], metrics: Output[Metrics]) -> dict:
    """Resolve the extractions against the stored entities and write them (idempotent)."""
    from sutazai.config import load_settings
    from sutazai.knowledge.models import ExtractionBatch
    from sutazai.knowledge.service import upsert_documents as upsert

    with open(extracted.path) as handle:
        batch = ExtractionBatch.model_validate_json(handle.read())
    report = upsert(load_settings(), batch)
    for name in ("documents_ingested", "documents_unchanged", "chunks", "entities",
                 "relations", "seconds"):
        metrics.log_metric(name, float(getattr(report, name)))
    metrics.log_metric("documents_failed", float(len(report.documents_failed)))
    return report.model_dump(mode="json", exclude_none=True)


@component
def embed_chunks(ingested: dict, metrics: Output[Metrics]) -> dict:
    """Embed the chunks the embeddings champion has not embedded yet (all of them after the
    champion changed); ``ingested`` orders this step after the upsert. Without an
    embeddings model in the repository the ingest still stands: the step succeeds with
    ``chunks_embedded`` 0 and ``skipped`` saying why (search runs without its vector half).
    """
    import logging

    from sutazai.config import load_settings
    from sutazai.errors import NotFoundError
    from sutazai.knowledge.service import embed

    try:
        report = embed(load_settings()).model_dump(mode="json", exclude_none=True)
    except NotFoundError as exc:
        logging.getLogger("sutazai.components.knowledge").warning(
            "chunks not embedded (%d written by the ingest): %s", ingested.get("chunks", 0),
            exc)
        report = {"model": "", "dimension": 0, "chunks_embedded": 0, "index_rebuilt": False,
                  "seconds": 0.0, "skipped": str(exc)}
    for name in ("chunks_embedded", "dimension", "seconds"):
        metrics.log_metric(name, float(report[name]))
    metrics.log_metric("index_rebuilt", float(report["index_rebuilt"]))
    return report


@component
def graph_statistics(ingested: dict) -> dict:
    """Counts of the graph after the ingest (``ingested`` orders this step after it)."""
    from sutazai.config import load_settings
    from sutazai.workflows.nightly import graph_statistics as measure_graph

    return measure_graph(load_settings(), ingested).model_dump(mode="json", exclude_none=True)
