"""The offline, content-addressed model repository (see ``store`` for the layout)."""

from sutazai.repository.catalog import Catalog, CatalogEntry, load_catalog
from sutazai.repository.manifest import FileEntry, Manifest
from sutazai.repository.pull import PullResult, pull
from sutazai.repository.store import Repository

__all__ = [
    "Catalog", "CatalogEntry", "FileEntry", "Manifest", "PullResult", "Repository",
    "load_catalog", "pull",
]
