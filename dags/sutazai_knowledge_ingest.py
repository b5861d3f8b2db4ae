"""
### SutazAI knowledge ingest

Turns documents (txt, md, html, pdf) into entities and relations in the knowledge graph
(Neo4j in production, the embedded FalkorDB on one machine), through the Kubeflow pipeline
`knowledge_ingest`. Unchanged documents are skipped; changed ones replace their old chunks.
After the write, the chunks not yet embedded by the embeddings champion (all of them when
the champion changed) are embedded for the vector half of hybrid search; without an
embeddings model in the repository that step is skipped, not failed (search then uses full
text and the graph), and its log says so.

**Scheduled** on the `sutazai-documents` asset: post an asset event (Airflow's REST API,
`POST /api/v2/assets/events`) after dropping documents into SutazAI's documents folder.

**Conf** — `paths`: files, folders or URIs (default: the documents folder);
`relations`: `svo` (dependency parse), `llm` (the served model at `SUTAZAI_KG_LLM_URL`,
JSON-schema constrained), `both` or `none`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task
from sutazai_dag_support import DEFAULT_ARGS, DOCUMENTS, TAGS, check_request, launch, log

from sutazai.knowledge.models import RELATION_MODES


@dag(
    dag_id="sutazai_knowledge_ingest",
    schedule=[DOCUMENTS],
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=4),
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "knowledge-graph"],
    doc_md=__doc__,
    params={
        "paths": Param(None, type=["null", "array"], items={"type": "string"},
                       description="Files, folders or URIs; empty: the documents folder."),
        "relations": Param("svo", enum=list(RELATION_MODES),
                           description="How relations are extracted."),
    },
)
def sutazai_knowledge_ingest() -> None:
    @task
    def ingest(arguments: dict[str, Any]) -> dict[str, Any]:
        """Run the knowledge_ingest pipeline; log the graph's size after it."""
        result = launch("knowledge_ingest", arguments)
        stats = result["output"] or {}
        log.info("graph after ingest: %d documents, %d chunks, %d entities, %d relations",
                 *(int(stats.get(key, 0)) for key in ("documents", "chunks", "entities",
                                                        "relations")))
        return result

    ingest(check_request("knowledge_ingest"))


sutazai_knowledge_ingest()
