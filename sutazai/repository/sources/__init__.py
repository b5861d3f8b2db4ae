"""Model sources, one per URI scheme, behind the :class:`Source` interface."""

from __future__ import annotations

from sutazai.config import Settings
from sutazai.errors import SourceError
from sutazai.repository.catalog import CatalogEntry
from sutazai.repository.sources.base import Source
from sutazai.repository.sources.hf import HuggingFaceSource
from sutazai.repository.sources.http import HttpSource
from sutazai.repository.sources.local import FileSource
from sutazai.repository.sources.oci import OciSource
from sutazai.repository.sources.pypi import PypiSource

SOURCES: dict[str, type[Source]] = {
    scheme: cls
    for cls in (PypiSource, HttpSource, FileSource, HuggingFaceSource, OciSource)
    for scheme in cls.schemes
}


def source_for(entry: CatalogEntry, settings: Settings) -> Source:
    try:
        return SOURCES[entry.scheme](settings)
    except KeyError:
        raise SourceError(f"{entry.name}: no source handles {entry.scheme}:") from None
