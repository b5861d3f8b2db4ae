"""Knowledge steps: documents to entities and relations in the graph store.

No ``from __future__ import annotations`` in component modules: KFP reads the annotations.
"""

from kfp.dsl import Metrics, Output

from components.base import component


@component
def ingest_documents(paths: list[str], relations: str, metrics: Output[Metrics]) -> dict:
    """Extract entities and relations from ``paths`` (default: the documents folder) and
    upsert them; unchanged documents are skipped, broken ones reported, not fatal."""
    from sutazai.knowledge.service import ingest

    from sutazai.config import load_settings

    settings = load_settings()
    report = ingest(settings, paths or [str(settings.documents_root)], relations=relations)
    for name in ("documents_ingested", "documents_unchanged", "chunks", "entities",
                 "relations", "seconds"):
        metrics.log_metric(name, float(getattr(report, name)))
    metrics.log_metric("documents_failed", float(len(report.documents_failed)))
    return report.model_dump(mode="json", exclude_none=True)


@component
def graph_statistics(ingested: dict) -> dict:
    """Counts of the graph after the ingest (``ingested`` orders this step after it)."""
    from sutazai.knowledge.service import graph_stats

    from sutazai.config import load_settings

    return graph_stats(load_settings()).model_dump(mode="json", exclude_none=True)
