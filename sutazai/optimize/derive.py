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

from sutazai.config import Settings
from sutazai.errors import ConversionError
from sutazai.mirror import open_registry, open_repository
from sutazai.progress import NULL_PROGRESS, Progress
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
    started = time.monotonic()
    gguf = single_file(repo.ensure_snapshot(manifest), ".gguf", manifest)
    with repo.writing(), repo.staging_dir("convert") as stage:
        out = stage / "model"
        task = progress.task(f"convert {manifest.ref} to safetensors")
        written = convert_gguf_to_hf(gguf, out)
        task.close()
        files = []
        for path in written:
            digest, size, _ = repo.ingest_file(path, progress=progress)
            files.append(FileEntry(path=path.relative_to(out).as_posix(), size=size,
                                   digest=digest))
        derived, created = repo.publish(
            name=name, files=files, source=f"derived:{manifest.ref}", revision=manifest.digest,
            format="safetensors", tasks=manifest.tasks, license=manifest.license,
            parent=manifest.ref,
            description=f"{manifest.description or manifest.name}, converted from GGUF "
                        f"{manifest.ref} to Hugging Face safetensors for vLLM",
        )
    if register:
        with repo.model_lock(name):
            open_registry(settings).register(derived, repo.ensure_snapshot(derived),
                                             pull_seconds=time.monotonic() - started)
    return derived, created
