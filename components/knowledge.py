"""Knowledge steps: documents to entities and relations in the graph store.

Extraction (the model's work) and the upsert (the store's) are separate steps, so that on a
cluster each gets the resources it needs and a failed write does not redo the extraction.
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
def graph_statistics(ingested: dict) -> dict:
    """Counts of the graph after the ingest (``ingested`` orders this step after it)."""
    from sutazai.config import load_settings
    from sutazai.workflows.nightly import graph_statistics as measure_graph

    return measure_graph(load_settings(), ingested).model_dump(mode="json", exclude_none=True)
