"""``hf:ORG/REPO`` — the Hugging Face hub (or a mirror of it) through ``huggingface_hub``.

The catalog pins ``revision`` (a commit, tag or branch); resolution turns it into the
commit sha and the file list with the LFS sha256 of every weight file, so an unchanged
model is recognised without downloading. Bytes then go through SutazAI's own resumable,
verifying downloader from the URLs ``huggingface_hub`` builds. ``HF_ENDPOINT`` selects a
mirror; with ``HF_HUB_OFFLINE=1`` nothing is contacted and the model is taken from the
local Hugging Face cache (``snapshot_download(local_files_only=True)``) if it is there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sutazai.errors import SourceError
from sutazai.repository.catalog import CatalogEntry
from sutazai.repository.fsutil import hash_file
from sutazai.repository.manifest import FileEntry
from sutazai.repository.sources.base import (
    FetchContext,
    RemoteFile,
    Resolution,
    Source,
    refuse_pickle,
    select,
)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _repo_id(entry: CatalogEntry) -> str:
    repo_id = entry.source.partition(":")[2].strip("/")
    if repo_id.count("/") > 1:
        raise SourceError(f"{entry.name}: {entry.source} must look like hf:ORG/REPO")
    return repo_id


class HuggingFaceSource(Source):
    schemes = ("hf",)

    def resolve(self, entry: CatalogEntry) -> Resolution:
        import httpx2  # huggingface_hub's HTTP client; its transport errors are not OSErrors
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        repo_id = _repo_id(entry)
        try:
            if _offline():
                return self._resolve_cached(entry, repo_id)
            info = huggingface_hub.HfApi(endpoint=_endpoint()).model_info(
                repo_id, revision=entry.revision, files_metadata=True
            )
        except (HfHubHTTPError, OfflineModeIsEnabled, httpx2.HTTPError, OSError, ValueError) as exc:
            raise SourceError(
                f"{entry.name}: cannot resolve {repo_id}@{entry.revision} on "
                f"{_endpoint() or 'the Hugging Face hub'}: {exc}. Check the repository, the "
                "revision and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the local cache"
            ) from None
        siblings: dict[str, Any] = {s.rfilename: s for s in info.siblings or []}
        paths = select(list(siblings), entry)
        refuse_pickle(paths, entry)
        files = []
        for path in paths:
            sibling = siblings[path]
            lfs = sibling.lfs
            digest = (lfs.sha256 if hasattr(lfs, "sha256") else lfs.get("sha256")) if lfs else None
            files.append(RemoteFile(path=path, size=sibling.size, digest=digest))
        return Resolution(revision=str(info.sha), files=files)

    def _resolve_cached(self, entry: CatalogEntry, repo_id: str) -> Resolution:
        import huggingface_hub

        folder = Path(huggingface_hub.snapshot_download(
            repo_id, revision=entry.revision, local_files_only=True
        ))
        paths = select(
            [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()], entry
        )
        refuse_pickle(paths, entry)
        files = []
        for path in paths:
            digest, size = hash_file(folder / path)
            files.append(RemoteFile(path=path, size=size, digest=digest,
                                    locator=str(folder / path)))
        return Resolution(revision=folder.name, files=files)

    def fetch(
        self, entry: CatalogEntry, resolution: Resolution, ctx: FetchContext
    ) -> list[FileEntry]:
        import huggingface_hub

        assert resolution.files is not None
        if _offline():
            return [ctx.store_local(Path(f.locator), f.path, f.digest) for f in resolution.files]
        token = huggingface_hub.get_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        downloader = ctx.downloader()
        return [
            ctx.store_download(
                huggingface_hub.hf_hub_url(
                    _repo_id(entry), f.path, revision=resolution.revision, endpoint=_endpoint()
                ),
                f.path, digest=f.digest, size=f.size, headers=headers, downloader=downloader,
            )
            for f in resolution.files
        ]
