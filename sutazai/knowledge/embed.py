"""Chunk embeddings from the embeddings champion, for the vector half of hybrid search.

The model is the one the selection crowned for the ``embeddings`` task (its repository
snapshot, bytes verified), run in-process with sentence-transformers: a 23 MB MiniLM needs
no server, and a query is embedded in milliseconds. Each chunk records the model version
that embedded it (``embedding_model``), so the embedding step only embeds new chunks, and
re-embeds everything when the champion changes (replacing the vector index when the
dimension changes too).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sutazai.errors import ConfigError, GraphStoreError, NotFoundError
from sutazai.knowledge.models import EmbedReport
from sutazai.progress import NULL_PROGRESS, Progress

if TYPE_CHECKING:
    from sutazai.config import Settings
    from sutazai.knowledge.stores.base import GraphStore

log = logging.getLogger(__name__)

EMBEDDINGS_TASK = "embeddings"
BATCH = 64  # chunks per model call and per write


@dataclass
class Embedder:
    """A sentence-embedding model: ``name`` is its repository reference (``model:version``),
    recorded on every chunk it embeds."""

    name: str
    model: Any  # sentence_transformers.SentenceTransformer

    @property
    def dimension(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension)  # the name before 5.x
        return int(get())

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Unit-length vectors (cosine similarity is then a dot product)."""
        vectors = self.model.encode(texts, batch_size=BATCH, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return [[float(x) for x in row] for row in vectors]

    @classmethod
    def load(cls, name: str, folder: Path) -> Embedder:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per load is noise on every kg search
        try:
            model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{name} is not a sentence-transformers model ({exc}); crown "
                              "an embeddings model with 'sutazai bench select embeddings'"
                              ) from None
        return cls(name, model)


def embedding_model_ref(settings: Settings) -> tuple[str, int] | None:
    """The repository version chunks are embedded with: the ``embeddings`` champion, else
    the newest mirrored model that declares the task; None when the repository has none."""
    from sutazai.registry.task_aliases import current_aliases
    from sutazai.repository import open_repository

    champion = current_aliases(settings).choice(EMBEDDINGS_TASK)
    if champion is not None:
        return champion.model, champion.repository_version
    candidates = [m for m in open_repository(settings).all_versions()
                  if EMBEDDINGS_TASK in m.tasks and m.format == "safetensors"]
    if not candidates:
        return None
    newest = max(candidates, key=lambda m: m.created)
    return newest.name, newest.version


def load_embedder(settings: Settings) -> Embedder:
    """The embeddings champion, loaded; a clear error when the repository has none."""
    from sutazai.repository import open_repository

    ref = embedding_model_ref(settings)
    if ref is None:
        raise NotFoundError("no embeddings model in the repository, so chunks cannot be "
                            "embedded; mirror one ('sutazai models pull all-minilm-l6-v2')")
    repository = open_repository(settings)
    manifest = repository.get(*ref)
    folder = repository.ensure_snapshot(manifest, verify=True)
    return Embedder.load(manifest.ref, folder)


def embed_chunks(store: GraphStore, embedder: Embedder,
                 progress: Progress = NULL_PROGRESS) -> EmbedReport:
    """Embed every chunk the store holds that ``embedder`` has not embedded yet.

    Idempotent and resumable: each batch is written as it is done, and a re-run (or one
    after a crash) only embeds what is left. Embeddings of another dimension are dropped
    with their index first, since one vector index holds one dimension.
    """
    started = time.monotonic()
    report = EmbedReport(model=embedder.name, dimension=embedder.dimension)
    store.backfill_search_text()  # a graph from before full-text search: index it too
    others = sorted({dim for dim, _ in store.embedding_models().values()}
                    - {embedder.dimension})
    if others:
        log.info("embeddings of dimension %s replaced by %s's (%d)", others, embedder.name,
                 embedder.dimension)
        store.clear_embeddings(embedder.dimension)
    store.create_vector_index(embedder.dimension, replace=bool(others))
    report.index_rebuilt = bool(others)
    bar = progress.task(f"embedding chunks ({embedder.name})", total=None)
    try:
        seen: set[str] = set()
        while batch := store.chunks_to_embed(embedder.name, BATCH * 4):
            ids = [cid for cid, _ in batch]
            if seen.issuperset(ids):  # written but still listed: never loop forever
                raise GraphStoreError(f"{store.name} did not keep the embeddings written "
                                      f"for {len(ids)} chunk(s)")
            seen.update(ids)
            vectors = embedder.embed([text for _, text in batch])
            store.set_embeddings(embedder.name, dict(zip(ids, vectors, strict=True)))
            report.chunks_embedded += len(batch)
            bar.advance(len(batch))
    finally:
        bar.close()
    report.seconds = round(time.monotonic() - started, 3)
    return report
