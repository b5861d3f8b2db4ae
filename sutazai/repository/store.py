"""The offline, content-addressed model repository.

On-disk layout (``<root>`` is ``.sutazai/repository`` by default)::

    blobs/sha256/<aa>/<digest>     file contents, named by sha256, read-only, stored once
    manifests/<name>/<version>.json   one immutable manifest per published version
    snapshots/<name>/<version>/...    the version as a ready-to-serve folder of relative
                                      symlinks into blobs/ (what engines load)
    tmp/                              staging and resumable partial downloads
    locks/                            per-model pull locks and the repository lock

A version is visible exactly when its manifest exists. Everything a manifest references
is written, verified and linked before the manifest is atomically renamed into place,
so a crash at any point leaves either no version or a complete one.

Concurrency: pulls of one model serialise on ``locks/<name>.lock``; every writer holds a
shared lock on ``locks/repository.lock`` and ``gc`` an exclusive one, so garbage
collection never deletes a blob that a running pull has stored but not yet published.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from pydantic import ValidationError

from sutazai.errors import IntegrityError, NotFoundError
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.repository.fsutil import atomic_write_text, hash_file, hash_stream
from sutazai.repository.manifest import FileEntry, Manifest, content_digest


@dataclass
class FileProblem:
    """A file of a version whose blob is missing or whose bytes changed."""

    ref: str
    path: str
    problem: str  # "missing" | "size" | "digest" | "snapshot"
    expected: str
    actual: str


@dataclass
class GcReport:
    removed_blobs: int = 0
    freed_bytes: int = 0
    removed_paths: list[str] = field(default_factory=list)


class Repository:
    """A content-addressed model store rooted at one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs" / "sha256"
        self.manifests_dir = root / "manifests"
        self.snapshots_dir = root / "snapshots"
        self.tmp_dir = root / "tmp"
        self.locks_dir = root / "locks"
        for folder in (
            self.blobs_dir, self.manifests_dir, self.snapshots_dir, self.tmp_dir, self.locks_dir
        ):
            folder.mkdir(parents=True, exist_ok=True)
        self._model_locks: dict[str, FileLock] = {}

    # ------------------------------------------------------------------ locking
    def model_lock(self, name: str) -> FileLock:
        """Inter-process lock serialising pulls and publishes of one model (re-entrant)."""
        if name not in self._model_locks:
            self._model_locks[name] = FileLock(self.locks_dir / f"{name}.lock")
        return self._model_locks[name]

    @contextmanager
    def _repository_lock(self, mode: int) -> Iterator[None]:
        with (self.locks_dir / "repository.lock").open("a+") as handle:
            fcntl.flock(handle.fileno(), mode)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Shared lock held while storing blobs and publishing (excludes ``gc``)."""
        with self._repository_lock(fcntl.LOCK_SH):
            yield

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._repository_lock(fcntl.LOCK_EX):
            yield

    # -------------------------------------------------------------------- blobs
    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / digest[:2] / digest

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        path = self.blob_path(digest)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        return size is None or stat.st_size == size

    def staging_path(self, prefix: str = "stage") -> Path:
        """A fresh file path under tmp/ on the same filesystem as the blobs."""
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=f"{prefix}-")
        os.close(fd)
        return Path(name)

    @contextmanager
    def staging_dir(self, prefix: str = "stage") -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix=f"{prefix}-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def adopt(self, verified_file: Path, digest: str) -> bool:
        """Move a file whose sha256 is ``digest`` into the store.

        Returns False (and deletes the file) when the blob already existed: identical
        bytes are stored once across models and versions.
        """
        target = self.blob_path(digest)
        if target.exists():
            verified_file.unlink(missing_ok=True)
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(verified_file, 0o444)
        os.replace(verified_file, target)
        return True

    def ingest_file(
        self, path: Path, expected_digest: str | None = None, progress: Progress = NULL_PROGRESS
    ) -> tuple[str, int, bool]:
        """Copy a local file into the store, hashing on the way: (digest, size, written)."""
        staged = self.staging_path("ingest")
        try:
            task = progress.task(f"store {path.name}", total=path.stat().st_size)
            with path.open("rb") as source, staged.open("wb") as sink:
                digest, size = hash_stream(source, sink, task)
                sink.flush()
                os.fsync(sink.fileno())
            task.close()
            if expected_digest and digest != expected_digest:
                raise IntegrityError(
                    f"{path} has sha256 {digest}, expected {expected_digest}: the file "
                    "changed or the catalog's digest is wrong"
                )
            return digest, size, self.adopt(staged, digest)
        finally:
            staged.unlink(missing_ok=True)

    # ---------------------------------------------------------------- manifests
    def manifest_path(self, name: str, version: int) -> Path:
        return self.manifests_dir / name / f"{version}.json"

    def snapshot_path(self, manifest: Manifest) -> Path:
        return self.snapshots_dir / manifest.name / str(manifest.version)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.manifests_dir.iterdir() if p.is_dir())

    def versions(self, name: str) -> list[Manifest]:
        folder = self.manifests_dir / name
        if not folder.is_dir():
            return []
        manifests = [
            self._read_manifest(p) for p in folder.glob("*.json") if p.stem.isdigit()
        ]
        return sorted(manifests, key=lambda m: m.version)

    def all_versions(self) -> list[Manifest]:
        return [m for name in self.names() for m in self.versions(name)]

    def latest(self, name: str) -> Manifest | None:
        found = self.versions(name)
        return found[-1] if found else None

    def get(self, name: str, version: int | None = None) -> Manifest:
        if version is None:
            latest = self.latest(name)
            if latest is None:
                raise NotFoundError(
                    f"model {name!r} is not in the repository; pull it with "
                    f"'sutazai models pull {name}'"
                )
            return latest
        path = self.manifest_path(name, version)
        if not path.is_file():
            known = ", ".join(str(m.version) for m in self.versions(name)) or "none"
            raise NotFoundError(f"{name}:{version} does not exist (versions: {known})")
        return self._read_manifest(path)

    def find_digest(self, name: str, digest: str) -> Manifest | None:
        return next((m for m in self.versions(name) if m.digest == digest), None)

    def _read_manifest(self, path: Path) -> Manifest:
        try:
            return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
        except ValidationError as exc:
            raise IntegrityError(
                f"manifest {path} is corrupt ({exc.error_count()} problems); restore it "
                "from a bundle or remove the version"
            ) from None

    # ------------------------------------------------------------------ publish
    def publish(
        self,
        *,
        name: str,
        files: list[FileEntry],
        source: str,
        revision: str,
        format: str,
        tasks: list[str],
        license: str,
        parent: str | None = None,
        description: str = "",
        version: int | None = None,
    ) -> tuple[Manifest, bool]:
        """Make a version visible; returns (manifest, created).

        Content already published under ``name`` is returned as it is (created False),
        so publishing is idempotent. ``version`` asks for a specific number (bundle
        import keeps numbers when they are free).
        """
        digest = content_digest(files)
        with self.model_lock(name):
            existing = self.find_digest(name, digest)
            if existing is not None:
                return existing, False
            for entry in files:
                if not self.has_blob(entry.digest, entry.size):
                    raise IntegrityError(
                        f"{name}: blob for {entry.path} ({entry.digest[:12]}) is missing or "
                        "has the wrong size; pull again"
                    )
            taken = {m.version for m in self.versions(name)}
            if version is None or version in taken:
                version = max(taken, default=0) + 1
            manifest = Manifest(
                name=name, version=version, digest=digest, source=source, revision=revision,
                format=format, tasks=tasks, license=license, parent=parent,
                description=description, files=sorted(files, key=lambda f: f.path),
            )
            self._write_snapshot(manifest)
            atomic_write_text(self.manifest_path(name, version), manifest.to_json())
            return manifest, True

    def _write_snapshot(self, manifest: Manifest) -> None:
        final = self.snapshot_path(manifest)
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="snapshot-"))
        try:
            for entry in manifest.files:
                link = staged / entry.path
                link.parent.mkdir(parents=True, exist_ok=True)
                depth = len(Path(entry.path).parts) + 2  # <name>/<version>/<path parts>
                target = Path(*([".."] * depth)) / self.blob_path(entry.digest).relative_to(
                    self.root
                )
                link.symlink_to(target)
            if final.exists():  # left by a crash before its manifest was written
                shutil.rmtree(final)
            os.replace(staged, final)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise

    def ensure_snapshot(self, manifest: Manifest) -> Path:
        """The version's folder, rebuilt if it was deleted or damaged."""
        path = self.snapshot_path(manifest)
        if self._snapshot_problems(manifest):
            with self.model_lock(manifest.name):
                self._write_snapshot(manifest)
        return path

    def _snapshot_problems(self, manifest: Manifest) -> list[str]:
        base = self.snapshot_path(manifest)
        return [
            e.path
            for e in manifest.files
            if not (base / e.path).is_symlink()
            or (base / e.path).resolve() != self.blob_path(e.digest).resolve()
        ]

    # ------------------------------------------------------------ verify/rm/gc
    def verify(
        self, manifests: list[Manifest], progress: Progress = NULL_PROGRESS
    ) -> list[FileProblem]:
        """Re-hash every file of ``manifests``; return what is missing or corrupted."""
        problems: list[FileProblem] = []
        total = sum(m.size for m in manifests)
        task = progress.task("verify", total=total)
        hashed: dict[str, str] = {}
        for manifest in manifests:
            for entry in manifest.files:
                blob = self.blob_path(entry.digest)
                if not blob.is_file():
                    problems.append(
                        FileProblem(manifest.ref, entry.path, "missing", entry.digest, "")
                    )
                    continue
                size = blob.stat().st_size
                if size != entry.size:
                    problems.append(
                        FileProblem(manifest.ref, entry.path, "size", str(entry.size), str(size))
                    )
                    continue
                if entry.digest not in hashed:
                    hashed[entry.digest] = hash_file(blob, task)[0]
                if hashed[entry.digest] != entry.digest:
                    problems.append(
                        FileProblem(
                            manifest.ref, entry.path, "digest", entry.digest, hashed[entry.digest]
                        )
                    )
            for path in self._snapshot_problems(manifest):
                problems.append(FileProblem(manifest.ref, path, "snapshot", "symlink", "broken"))
        task.close()
        return problems

    def remove(self, manifest: Manifest) -> None:
        """Unpublish a version: manifest first (it disappears atomically), then its folder."""
        with self.model_lock(manifest.name):
            self.manifest_path(manifest.name, manifest.version).unlink(missing_ok=True)
            shutil.rmtree(self.snapshot_path(manifest), ignore_errors=True)
            for folder in (self.manifests_dir / manifest.name, self.snapshots_dir / manifest.name):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()

    def gc(self, dry_run: bool = False) -> GcReport:
        """Delete blobs that no manifest references."""
        report = GcReport()
        with self.exclusive():
            referenced = {f.digest for m in self.all_versions() for f in m.files}
            for blob in self.blobs_dir.glob("*/*"):
                if blob.name in referenced:
                    continue
                report.removed_blobs += 1
                report.freed_bytes += blob.stat().st_size
                report.removed_paths.append(str(blob.relative_to(self.root)))
                if not dry_run:
                    blob.unlink()
        return report
