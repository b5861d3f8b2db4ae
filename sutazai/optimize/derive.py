"""Derived model versions: a conversion's output, stored and registered like a mirrored
model, with ``parent`` naming the version it came from.

vLLM cannot load GGUF, so the GGUF champion candidates reach it as ``<name>-hf``: the
same weights as Hugging Face safetensors. The derived version's ``source`` is
``derived:<parent ref>`` and its ``revision`` the parent's content digest; MLflow gets the
``sutazai.parent`` tag. Converting the same parent again finds the existing version and
does nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

from sutazai.config import Settings
from sutazai.errors import ConversionError
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.registry import open_registry
from sutazai.repository import open_repository
from sutazai.repository.manifest import FileEntry, Manifest
from sutazai.repository.store import Repository
from sutazai.serving.engines import single_file

HF_SUFFIX = "-hf"


def find_derived(repo: Repository, name: str, parent: Manifest) -> Manifest | None:
    return next((m for m in reversed(repo.versions(name)) if m.parent == parent.ref), None)


def convert_to_safetensors(settings: Settings, manifest: Manifest, *, register: bool = True,
                           progress: Progress = NULL_PROGRESS) -> tuple[Manifest, bool]:
    """The HF safetensors version derived from a GGUF version: (version, created)."""
    if manifest.format != "gguf":
        raise ConversionError(f"{manifest.ref} is {manifest.format}; only GGUF versions are "
                              "converted to safetensors")
    from sutazai.optimize.gguf_to_hf import convert_gguf_to_hf

    repo = open_repository(settings)
    name = manifest.name + HF_SUFFIX
    existing = find_derived(repo, name, manifest)
    if existing is not None:
        return existing, False
    gguf = single_file(repo.ensure_snapshot(manifest), ".gguf", manifest)
    with repo.staging_dir("convert") as stage:
        out = stage / "model"
        task = progress.task(f"convert {manifest.ref} to safetensors")
        convert_gguf_to_hf(gguf, out)
        task.close()
        return publish_derived(
            settings, out, name=name, parent=manifest, source=f"derived:{manifest.ref}",
            revision=manifest.digest, format="safetensors",
            description=f"{manifest.description or manifest.name}, converted from GGUF "
                        f"{manifest.ref} to Hugging Face safetensors for vLLM",
            register=register, progress=progress)


def publish_derived(settings: Settings, folder: Path, *, name: str, parent: Manifest | None,
                    source: str, revision: str, format: str, description: str,
                    tasks: list[str] | None = None, register: bool = True,
                    progress: Progress = NULL_PROGRESS) -> tuple[Manifest, bool]:
    """Store every file under ``folder`` as a version of ``name`` and register it in MLflow.

    The one way conversions, quantisations, fine-tunes and searched architectures enter
    the repository: content-addressed like a pull, idempotent by digest, and ``parent``
    (the version it came from) recorded as lineage. ``tasks`` and the license default to
    the parent's.
    """
    if parent is None and tasks is None:
        raise ValueError("a version without a parent needs its tasks")
    started = time.monotonic()
    repo = open_repository(settings)
    with repo.writing():
        files = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest, size, _ = repo.ingest_file(path, progress=progress)
            files.append(FileEntry(path=path.relative_to(folder).as_posix(), size=size,
                                   digest=digest))
        derived, created = repo.publish(
            name=name, files=files, source=source, revision=revision, format=format,
            tasks=tasks if tasks is not None else parent.tasks,  # type: ignore[union-attr]
            license=parent.license if parent is not None else "",
            parent=parent.ref if parent is not None else None, description=description,
        )
    if register:
        with repo.model_lock(name):
            open_registry(settings).register(derived, repo.ensure_snapshot(derived),
                                             pull_seconds=time.monotonic() - started)
    return derived, created
