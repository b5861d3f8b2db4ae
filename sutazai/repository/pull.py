"""Pull one catalog entry into the repository: resolve, fetch, verify, publish.

The whole pull holds the model's lock (a second concurrent pull of the same model waits,
then finds the work done) and the repository's shared lock (``gc`` cannot remove blobs
that are stored but not yet published).

A pull also repairs: the blobs of the version it would publish are checked (hashed only
when they changed since they were last found intact, see
:mod:`sutazai.repository.integrity`), and damaged or missing ones are fetched again. A
pull of an unchanged model whose published version lost a byte re-fetches that file and
keeps the version (and its number) as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sutazai.config import Settings
from sutazai.errors import IntegrityError, SourceError
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.repository.catalog import CatalogEntry
from sutazai.repository.fsutil import disk_full, is_disk_full
from sutazai.repository.manifest import FileEntry, Manifest, content_digest
from sutazai.repository.sources import source_for
from sutazai.repository.sources.base import (
    UNVERSIONED,
    FetchContext,
    Resolution,
    Source,
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
    repaired: list[str] = field(default_factory=list)  # paths of damaged files fetched again


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
    try:
        return _pull(entry, repo, settings, progress, source, started)
    except OSError as exc:  # a full disk while unpacking, sealing or publishing
        if not is_disk_full(exc):
            raise
        raise disk_full(repo.root, f"pulling {entry.name}") from exc


def _pull(entry: CatalogEntry, repo: Repository, settings: Settings, progress: Progress,
          source: Source, started: float) -> PullResult:
    with repo.writing(), repo.model_lock(entry.name):
        resolution = source.resolve(entry)
        latest = repo.latest(entry.name)
        repaired: list[str] = []
        if _is_published(latest, entry, resolution):
            assert latest is not None
            damaged = repo.check_blobs(latest.files)
            if not damaged:
                return PullResult(latest, False, True, 0, 0, 0, time.monotonic() - started)
            repo.discard_blobs(set(damaged))
            repaired = [f.path for f in latest.files if f.digest in damaged]
        ctx = FetchContext(repo=repo, settings=settings, progress=progress)
        files = _fetch_intact(source, entry, resolution, ctx)
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
        time.monotonic() - started, repaired,
    )


def _fetch_intact(source: Source, entry: CatalogEntry, resolution: Resolution,
                  ctx: FetchContext) -> list[FileEntry]:
    """Fetch, then make sure every blob the file list names is intact: a source skips
    blobs that are already stored, and a stored one may be damaged. Damaged ones are
    deleted and the fetch runs once more, which stores them again."""
    files = source.fetch(entry, resolution, ctx)
    damaged = ctx.repo.check_blobs(files)
    if damaged:
        ctx.repo.discard_blobs(set(damaged))
        files = source.fetch(entry, resolution, ctx)
        damaged = ctx.repo.check_blobs(files)
    if damaged:
        paths = ", ".join(f.path for f in files if f.digest in damaged)
        raise IntegrityError(f"{entry.name}: {paths} stayed damaged after fetching them "
                             "again; check the disk (sutazai models verify)")
    return files
