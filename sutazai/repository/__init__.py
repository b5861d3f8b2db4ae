"""The offline, content-addressed model repository (see ``store`` for the layout)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sutazai.repository.catalog import Catalog, CatalogEntry, load_catalog
from sutazai.repository.manifest import FileEntry, Manifest
from sutazai.repository.pull import PullResult, pull
from sutazai.repository.store import Repository

if TYPE_CHECKING:
    from sutazai.config import Settings

__all__ = [
    "Catalog", "CatalogEntry", "FileEntry", "Manifest", "PullResult", "Repository",
    "load_catalog", "open_repository", "pull",
]


def open_repository(settings: Settings) -> Repository:
    """The repository of ``settings`` (encrypting or not, as they say)."""
    return Repository.from_settings(settings)
