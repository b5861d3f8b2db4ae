"""The interface every model source implements, and what they share.

A source does two things. ``resolve`` finds out cheaply (metadata only) which exact
revision the catalog entry means and, where the protocol publishes them, the files with
their sizes and digests: that is what lets a re-pull of an unchanged model download and
write nothing. ``fetch`` brings the bytes into the blob store, verified, and returns the
file list of the version to publish.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from sutazai.config import Settings
from sutazai.errors import UnsafeFormatError
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.repository.catalog import CatalogEntry
from sutazai.repository.download import HttpDownloader
from sutazai.repository.manifest import FileEntry
from sutazai.repository.store import Repository

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
UNVERSIONED = "unversioned"  # a revision that cannot prove the content unchanged


@dataclass
class RemoteFile:
    """A file as the source describes it; size and digest when the protocol tells."""

    path: str
    size: int | None = None
    digest: str | None = None
    locator: str = ""  # source-specific: URL, layer digest, wheel member, ...


@dataclass
class Resolution:
    """The exact revision an entry resolves to, and its files when known up front."""

    revision: str
    files: list[RemoteFile] | None = None


@dataclass
class FetchStats:
    """What a fetch cost: bytes over the network and bytes written to the store."""

    downloaded: int = 0
    written: int = 0
    resumed: int = 0


@dataclass
class FetchContext:
    repo: Repository
    settings: Settings
    progress: Progress = NULL_PROGRESS
    stats: FetchStats = field(default_factory=FetchStats)

    def downloader(self) -> HttpDownloader:
        return HttpDownloader(
            self.repo.tmp_dir,
            timeout_s=self.settings.http_timeout_s,
            chunk_bytes=self.settings.download_chunk_bytes,
            progress=self.progress,
            space_factor=2 if self.repo.encrypt else 1,  # sealed into a second file
        )

    def store_download(
        self, url: str, path: str, *, digest: str | None, size: int | None,
        headers: dict[str, str] | None = None, downloader: HttpDownloader | None = None,
    ) -> FileEntry:
        """Download ``url`` unless its blob is already stored; return its file entry."""
        if digest and self.repo.has_blob(digest, size):
            return FileEntry(path=path, size=self.repo.blob_size(digest), digest=digest)
        result = (downloader or self.downloader()).download(
            url, label=path, expected_digest=digest, expected_size=size, headers=headers
        )
        self.stats.downloaded += result.transferred
        self.stats.resumed += result.resumed_from
        if self.repo.adopt(result.path, result.digest):
            self.stats.written += result.size
        return FileEntry(path=path, size=result.size, digest=result.digest)

    def store_staged(self, staged: Path, path: str, digest: str) -> FileEntry:
        """Adopt a file already hashed in the repository's staging area (no copy)."""
        size = staged.stat().st_size
        if self.repo.adopt(staged, digest):
            self.stats.written += size
        return FileEntry(path=path, size=size, digest=digest)

    def store_bytes(self, data: bytes, path: str) -> FileEntry:
        """Store a small in-memory file (a manifest, a config)."""
        staged = self.repo.staging_path("bytes")
        try:
            staged.write_bytes(data)
            return self.store_local(staged, path)
        finally:
            staged.unlink(missing_ok=True)

    def store_local(self, local: Path, path: str, digest: str | None = None) -> FileEntry:
        """Copy a local file into the store unless its blob is already there."""
        if digest and self.repo.has_blob(digest, local.stat().st_size):
            return FileEntry(path=path, size=local.stat().st_size, digest=digest)
        actual, size, written = self.repo.ingest_file(local, digest, self.progress)
        if written:
            self.stats.written += size
        return FileEntry(path=path, size=size, digest=actual)


class Source(ABC):
    """A place models come from, picked by the scheme of the entry's source URI."""

    schemes: ClassVar[tuple[str, ...]]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def resolve(self, entry: CatalogEntry) -> Resolution:
        """Pin the entry to an exact revision using metadata only."""

    @abstractmethod
    def fetch(
        self, entry: CatalogEntry, resolution: Resolution, ctx: FetchContext
    ) -> list[FileEntry]:
        """Store the revision's files (verified) and return the version's file list."""


def select(paths: list[str], entry: CatalogEntry) -> list[str]:
    """Apply the entry's include/exclude globs ('*' also crosses '/')."""
    chosen = [
        p for p in paths
        if (not entry.include or any(fnmatch.fnmatchcase(p, g) for g in entry.include))
        and not any(fnmatch.fnmatchcase(p, g) for g in entry.exclude)
    ]
    return sorted(chosen)


def _pickle_suffixed(paths: list[str], suffixes: tuple[str, ...]) -> list[str]:
    return [p for p in paths if p.lower().endswith(suffixes)]


def _unsafe(entry: CatalogEntry, paths: list[str]) -> UnsafeFormatError:
    return UnsafeFormatError(
        f"{entry.name}: {', '.join(paths)} may hold pickled Python that runs code when loaded. "
        "Mirror a safetensors/GGUF variant, drop the files with 'exclude', or set "
        "'allow_pickle: true' on the catalog entry if you trust the source"
    )


def refuse_pickle(paths: list[str], entry: CatalogEntry) -> None:
    """Refuse, before downloading, names that are always pickle-based (.pt .pkl .ckpt ...).

    ``.bin`` is ambiguous (PyTorch pickles, but also spaCy's msgpack lookups) and is
    judged on its bytes after download by :func:`refuse_pickle_content`.
    """
    unsafe = _pickle_suffixed(paths, PICKLE_SUFFIXES[:-1])
    if unsafe and not entry.allow_pickle:
        raise _unsafe(entry, unsafe)


def refuse_pickle_content(files: list[FileEntry], repo: Repository, entry: CatalogEntry) -> None:
    """Refuse pickle-suffixed files unless their bytes are provably a data-only format."""
    if entry.allow_pickle:
        return
    suspects = _pickle_suffixed([f.path for f in files], PICKLE_SUFFIXES)
    by_path = {f.path: f for f in files}
    unsafe = [p for p in suspects if not blob_is_data_only(repo, by_path[p].digest)]
    if unsafe:
        raise _unsafe(entry, unsafe)


def blob_is_data_only(repo: Repository, digest: str) -> bool:
    """:func:`is_data_only` for a stored blob, judged on its plaintext (encrypted blobs
    are decrypted into a private temporary file first; pickle suspects are rare)."""
    if repo.blob_header(digest) is None:
        return is_data_only(repo.blob_path(digest))
    with repo.staging_dir("sniff") as folder:
        plain = folder / "blob"
        with repo.open_blob(digest) as source, plain.open("wb") as sink:
            shutil.copyfileobj(source, sink, 1024 * 1024)
        return is_data_only(plain)


def is_data_only(path: Path) -> bool:
    """True for GGUF, safetensors and complete msgpack documents: formats that hold data
    and cannot run code when loaded. Everything else is treated as possibly pickle."""
    with path.open("rb") as handle:
        head = handle.read(8)
        if head[:4] == b"GGUF":
            return True
        header_length = int.from_bytes(head, "little") if len(head) == 8 else 0
        if 0 < header_length < 100 * 1024 * 1024:  # safetensors: length, then a JSON header
            try:
                if isinstance(json.loads(handle.read(header_length)), dict):
                    return True
            except ValueError:
                pass
    if path.stat().st_size > 256 * 1024 * 1024:
        return False
    import msgpack

    try:
        msgpack.unpackb(path.read_bytes(), strict_map_key=False, raw=True)
    except Exception:  # any decoding failure means "not provably msgpack"
        return False
    return True
