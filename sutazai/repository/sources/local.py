"""``file:`` — a local file or folder (a USB drive, an NFS share, an HF cache snapshot)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from sutazai.errors import SourceError
from sutazai.repository.catalog import CatalogEntry
from sutazai.repository.fsutil import hash_file
from sutazai.repository.manifest import FileEntry, content_digest
from sutazai.repository.sources.base import (
    FetchContext,
    RemoteFile,
    Resolution,
    Source,
    refuse_pickle,
    select,
)


def local_path(uri: str) -> Path:
    """``file:///abs``, ``file:/abs`` or ``file:relative`` (to the working directory)."""
    try:
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise SourceError(f"{uri}: file: URIs name a path on this machine, not a host")
        return Path(unquote(parsed.path)).expanduser().resolve()
    except (ValueError, RuntimeError) as exc:  # a NUL byte, '~user' of no such user, bad URL
        raise SourceError(f"{uri!r} is not a usable file: path ({exc}); check the catalog "
                          "entry's source") from None


class FileSource(Source):
    schemes = ("file",)

    def _listing(self, entry: CatalogEntry) -> tuple[Path, list[str]]:
        root = local_path(entry.source)
        if root.is_file():
            return root.parent, [root.name]
        if not root.is_dir():
            raise SourceError(f"{entry.name}: {root} does not exist; check the file: path")
        paths = [
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ]
        chosen = select(paths, entry)
        if not chosen:
            raise SourceError(f"{entry.name}: no files under {root} match the include patterns")
        return root, chosen

    def resolve(self, entry: CatalogEntry) -> Resolution:
        root, paths = self._listing(entry)
        refuse_pickle(paths, entry)
        files = []
        for path in paths:
            digest, size = hash_file(root / path)
            files.append(RemoteFile(path=path, size=size, digest=digest, locator=str(root / path)))
        revision = "sha256:" + content_digest(
            [FileEntry(path=f.path, size=f.size or 0, digest=f.digest or "") for f in files]
        )
        return Resolution(revision=revision, files=files)

    def fetch(
        self, entry: CatalogEntry, resolution: Resolution, ctx: FetchContext
    ) -> list[FileEntry]:
        assert resolution.files is not None
        return [ctx.store_local(Path(f.locator), f.path, f.digest) for f in resolution.files]
