"""Pull one catalog entry into the repository: resolve, fetch, verify, publish.

The whole pull holds the model's lock (a second concurrent pull of the same model waits,
then finds the work done) and the repository's shared lock (``gc`` cannot remove blobs
that are stored but not yet published).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sutazai.config import Settings
from sutazai.errors import IntegrityError, SourceError
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.repository.catalog import CatalogEntry
from sutazai.repository.manifest import Manifest, content_digest
from sutazai.repository.sources import source_for
from sutazai.repository.sources.base import (
    UNVERSIONED,
    FetchContext,
    Resolution,
    refuse_pickle,
    refuse_pickle_content,
)
from sutazai.repository.store import Repository


@dataclass
class PullResult:
    manifest: Manifest
    created: bool  # a new version was published
    unchanged: bool  # resolved to the published revision: nothing downloaded or written
    downloaded_bytes: int
    written_bytes: int
    resumed_bytes: int
    seconds: float


def _is_published(latest: Manifest | None, entry: CatalogEntry, resolution: Resolution) -> bool:
    """True when the entry resolves to exactly what the latest version already holds."""
    if latest is None or resolution.revision == UNVERSIONED:
        return False
    if latest.source != entry.source or latest.revision != resolution.revision:
        return False
    if resolution.files is None:
        return True
    published = {f.path: f.digest for f in latest.files}
    return all(
        f.path in published and f.digest in (None, published[f.path]) for f in resolution.files
    )


def pull(
    entry: CatalogEntry,
    repo: Repository,
    settings: Settings,
    progress: Progress = NULL_PROGRESS,
) -> PullResult:
    """Mirror ``entry``; idempotent, resumable, and safe to run concurrently."""
    started = time.monotonic()
    source = source_for(entry, settings)
    with repo.writing(), repo.model_lock(entry.name):
        resolution = source.resolve(entry)
        latest = repo.latest(entry.name)
        if _is_published(latest, entry, resolution):
            assert latest is not None
            return PullResult(latest, False, True, 0, 0, 0, time.monotonic() - started)
        ctx = FetchContext(repo=repo, settings=settings, progress=progress)
        files = source.fetch(entry, resolution, ctx)
        if not files:
            raise SourceError(f"{entry.name}: the source yielded no files to store")
        refuse_pickle([f.path for f in files], entry)
        refuse_pickle_content(files, repo, entry)
        if entry.sha256 is not None and [f.digest for f in files] != [entry.sha256]:
            got = ", ".join(f"{f.path}={f.digest}" for f in files)
            raise IntegrityError(
                f"{entry.name}: expected one file with sha256 {entry.sha256}, got {got}; "
                "the source changed or the catalog's sha256 is wrong"
            )
        if entry.digest is not None and content_digest(files) != entry.digest:
            raise IntegrityError(
                f"{entry.name}: content digest {content_digest(files)} differs from the "
                f"catalog's {entry.digest}; the source changed or the catalog is out of date"
            )
        manifest, created = repo.publish(
            name=entry.name, files=files, source=entry.source, revision=resolution.revision,
            format=entry.format, tasks=list(entry.tasks), license=entry.license,
            description=entry.description,
        )
    return PullResult(
        manifest, created, False, ctx.stats.downloaded, ctx.stats.written, ctx.stats.resumed,
        time.monotonic() - started,
    )
