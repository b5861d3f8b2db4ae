"""``https:`` / ``http:`` — one file from a mirror or plain URL, resumable and verified."""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

import urllib3

from sutazai.errors import SourceError
from sutazai.repository.catalog import CatalogEntry
from sutazai.repository.download import make_pool, unreachable
from sutazai.repository.manifest import FileEntry, validate_relative_path
from sutazai.repository.sources.base import (
    UNVERSIONED,
    FetchContext,
    RemoteFile,
    Resolution,
    Source,
    refuse_pickle,
)


def file_name(url: str) -> str:
    """The file name a URL's last path segment gives, refused when it is not a plain name
    (``%2e%2e`` decodes to '..', ``%5c`` to a backslash): it becomes a path in the version."""
    try:
        name = PurePosixPath(unquote(urlparse(url).path)).name or "model"
        return validate_relative_path(name)
    except ValueError as exc:  # an invalid URL (e.g. "http://[x/"), or an unsafe name
        raise SourceError(f"{url!r} does not name a usable file ({exc}); check the catalog "
                          "entry's source URL") from None


class HttpSource(Source):
    schemes = ("https", "http")

    def resolve(self, entry: CatalogEntry) -> Resolution:
        name = file_name(entry.source)
        refuse_pickle([name], entry)
        size: int | None = None
        validator = None
        pool = make_pool(self.settings.http_timeout_s)
        try:
            head = pool.request("HEAD", entry.source)
            if head.status == 200:
                length = head.headers.get("Content-Length")
                size = int(length) if length is not None else None
                validator = head.headers.get("ETag") or head.headers.get("Last-Modified")
        except urllib3.exceptions.MaxRetryError as exc:  # no answer, retries spent: the
            raise unreachable(entry.source, exc) from None  # GET would only repeat them
        except Exception:  # HEAD is an optimisation; the GET reports real problems
            head = None
        if entry.sha256:
            revision = f"sha256:{entry.sha256}"
        elif validator:
            revision = f"{validator} ({size} bytes)"
        else:
            revision = UNVERSIONED  # always fetched; identical bytes are still stored once
        return Resolution(
            revision=revision,
            files=[RemoteFile(path=name, size=size, digest=entry.sha256, locator=entry.source)],
        )

    def fetch(
        self, entry: CatalogEntry, resolution: Resolution, ctx: FetchContext
    ) -> list[FileEntry]:
        assert resolution.files is not None
        remote = resolution.files[0]
        return [ctx.store_download(remote.locator, remote.path, digest=remote.digest,
                                   size=remote.size)]
