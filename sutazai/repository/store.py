"""The offline, content-addressed model repository.

On-disk layout (``<root>`` is ``.sutazai/repository`` by default)::

    blobs/sha256/<aa>/<digest>     file contents, named by sha256, read-only, stored once
    manifests/<name>/<version>.json   one immutable manifest per published version
    snapshots/<name>/<version>/...    the version as a ready-to-serve folder of relative
                                      symlinks into blobs/ (what engines load)
    tmp/                              staging and resumable partial downloads
    locks/                            per-model pull locks and the repository lock
    plaintext/                        decrypted copies of encrypted blobs (see below)
    retired/<name>.json               numbers of removed versions, never given out again
    verified.db                       files hashed and found intact (:mod:`.integrity`)

A version is visible exactly when its manifest exists. Everything a manifest references
is written, verified and linked before the manifest is atomically renamed into place,
so a crash at any point leaves either no version or a complete one. Version numbers are
never given out twice: removing ``name:3`` retires 3, so a number names one content for
good, and the MLflow registry (which never reuses a number either) keeps the same ones.

Integrity: ``verify`` re-hashes everything; pulls and engine starts check the blobs they
rely on through :class:`~sutazai.repository.integrity.VerifiedCache`, which hashes a file
only when it changed since it was last found intact. A pull re-fetches a published
version's damaged blobs; :meth:`Repository.ensure_snapshot` with ``verify=True`` refuses
to hand out damaged bytes (and re-makes damaged decrypted copies from their blobs).

Concurrency: pulls of one model serialise on ``locks/<name>.lock``; every writer holds a
shared lock on ``locks/repository.lock`` and ``gc`` an exclusive one, so garbage
collection never deletes a blob that a running pull has stored but not yet published.

Encryption at rest (``encrypt=True``, :mod:`sutazai.repository.crypto`): new blobs are
sealed with AES-256-GCM under the repository key, still named by the sha256 of their
plaintext, so manifests and digests do not change and plain and encrypted blobs can sit
side by side (each blob's header says which it is). Readers do not notice:
:meth:`Repository.open_blob` streams plaintext, ``verify`` decrypts and re-hashes, bundles
carry plaintext (and are re-sealed on import into an encrypted repository), and
:meth:`Repository.ensure_snapshot` links a version's encrypted files to decrypted copies
(:mod:`sutazai.repository.plaintext`: tmpfs when it fits, else ``plaintext/``), made on
demand and never at publish time, so versions that are not served stay encrypted.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from filelock import FileLock
from pydantic import ValidationError

from sutazai.errors import ConfigError, IntegrityError, NotFoundError, SourceError
from sutazai.progress import NULL_PROGRESS, Progress, ProgressTask
from sutazai.repository.crypto import (
    CHUNK_BYTES,
    PREVIOUS_KEY_SECRET,
    BlobAuthenticationError,
    BlobHeader,
    BlobReader,
    RepositoryKey,
    WrongKeyError,
    encrypt_stream,
    encrypted_size,
    forget_repository_keys,
    load_previous_repository_key,
    load_repository_key,
    read_header,
)
from sutazai.repository.fsutil import atomic_write_text, hash_file, hash_stream
from sutazai.repository.integrity import VerifiedCache
from sutazai.repository.manifest import FileEntry, Manifest, content_digest, path_problems
from sutazai.repository.plaintext import PlaintextCache

if TYPE_CHECKING:
    from sutazai.config import Settings

KeySource = Callable[[], RepositoryKey]
PreviousKeySource = Callable[[], RepositoryKey | None]


@dataclass
class FileProblem:
    """A file of a version whose blob is missing or whose bytes changed."""

    ref: str
    path: str
    problem: str  # "missing" | "size" | "digest" | "corrupt" | "snapshot"
    # ("corrupt": an encrypted blob failed authentication: modified, truncated, reordered)
    expected: str
    actual: str


@dataclass
class GcReport:
    removed_blobs: int = 0
    freed_bytes: int = 0
    removed_paths: list[str] = field(default_factory=list)
    removed_plaintext: int = 0  # decrypted copies of blobs no version references
    removed_partial: int = 0  # partial downloads and staging folders of interrupted pulls


class Repository:
    """A content-addressed model store rooted at one folder."""

    def __init__(
        self,
        root: Path,
        *,
        encrypt: bool = False,
        key: KeySource | RepositoryKey | None = None,
        previous_key: PreviousKeySource | None = None,
        plaintext_dir: Path | None = None,
    ) -> None:
        """``encrypt`` seals new blobs with the key that ``key`` gives (read on first
        need, then kept). Encrypted blobs are read whenever a key is given, whatever
        ``encrypt`` says; ``previous_key`` gives the key being rotated out, for blobs
        still sealed with it. ``plaintext_dir`` pins where decrypted copies go (default:
        tmpfs when it fits, else ``<root>/plaintext``; see
        :mod:`sutazai.repository.plaintext`).
        """
        if encrypt and key is None:
            raise ConfigError("an encrypting repository needs a key: open it with "
                              "Repository.from_settings(settings)")
        self.root = root
        self.encrypt = encrypt
        self._key_source = key
        self._key: RepositoryKey | None = key if isinstance(key, RepositoryKey) else None
        self._previous_key_source = previous_key
        self.plaintext = PlaintextCache(root, plaintext_dir)
        self.verified = VerifiedCache(root / "verified.db")
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

    @classmethod
    def from_settings(cls, settings: Settings) -> Repository:
        """The repository of ``settings``: encrypting when ``repository_encryption`` is on,
        and able to read encrypted blobs either way (the key is read, audited, only when
        an encrypted blob is read or a blob is written with encryption on)."""
        return cls(
            settings.repository_root,
            encrypt=settings.repository_encryption,
            key=lambda: load_repository_key(settings),
            previous_key=lambda: load_previous_repository_key(settings),
            plaintext_dir=settings.repository_plaintext_dir,
        )

    def key(self) -> RepositoryKey:
        """The repository key; raises a ConfigError/SecretError that says how to set it."""
        if self._key is None:
            if self._key_source is None or isinstance(self._key_source, RepositoryKey):
                raise ConfigError(
                    f"{self.root} holds encrypted blobs, and this repository was opened "
                    "without a key: open it with Repository.from_settings(settings), which "
                    "reads the secret 'repository/key'")
            self._key = self._key_source()
        return self._key

    def key_for(self, header: BlobHeader) -> RepositoryKey:
        """The key that sealed this blob: the current one, or the one being rotated out.

        When neither matches, the cached keys are read again once (a rotation may have
        happened since this process read them); failing that, the current key is
        returned and decryption raises :class:`WrongKeyError`, which says what to do.
        """
        for attempt in range(2):
            current = self.key()
            if header.key_id == current.id_bytes:
                return current
            previous = self._previous_key_source() if self._previous_key_source else None
            if previous is not None and header.key_id == previous.id_bytes:
                return previous
            if attempt == 0 and callable(self._key_source):
                forget_repository_keys()
                self._key = None
        return current

    def sealing_key(self, header: BlobHeader) -> RepositoryKey:
        """The key that sealed ``header``'s blob, or :class:`WrongKeyError` naming the secret
        to set (the current and the previous key are the only ones known)."""
        key = self.key_for(header)
        if key.id_bytes != header.key_id:
            previous = self._previous_key_source() if self._previous_key_source else None
            raise WrongKeyError(
                f"blob {header.digest[:12]}… was sealed with key id {header.key_id.hex()}, "
                f"which is neither the current key ({key.key_id}) nor the previous one "
                f"({previous.key_id if previous else 'not set'}): set the key that sealed "
                f"it as the secret {PREVIOUS_KEY_SECRET!r} and run this again; nothing was "
                "changed")
        return key

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
        """Shared lock held while storing blobs and publishing (excludes ``gc``).

        With encryption on, the key is fetched first: a missing key fails a pull before
        anything is downloaded."""
        if self.encrypt:
            self.key()
        with self._repository_lock(fcntl.LOCK_SH):
            yield

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._repository_lock(fcntl.LOCK_EX):
            yield

    # -------------------------------------------------------------------- blobs
    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / digest[:2] / digest

    def blob_header(self, digest: str) -> BlobHeader | None:
        """The encryption header of a stored blob, None when it is plain.

        Raises FileNotFoundError for a missing blob, IntegrityError for a sealed blob of
        another digest or an unknown format version."""
        return read_header(self.blob_path(digest), digest)

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        """True when the blob is stored (plain or encrypted) and holds ``size`` bytes of
        plaintext; checked from its size and header, without reading it."""
        path = self.blob_path(digest)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        if size is None:
            return True
        if stat.st_size not in (size, encrypted_size(size)):
            return False
        try:
            header = self.blob_header(digest)
        except (IntegrityError, FileNotFoundError):
            return False
        return stat.st_size == size if header is None else header.plain_size == size

    def blob_size(self, digest: str) -> int:
        """Bytes of plaintext in a stored blob (its file is larger when encrypted)."""
        header = self.blob_header(digest)
        return self.blob_path(digest).stat().st_size if header is None else header.plain_size

    def open_blob(self, digest: str) -> BinaryIO:
        """The blob's plaintext as a binary stream, decrypting (and authenticating chunk
        by chunk) when it is encrypted; a tampered chunk raises IntegrityError."""
        header = self.blob_header(digest)
        if header is None:
            return self.blob_path(digest).open("rb")
        return io.BufferedReader(BlobReader(self.blob_path(digest), header,
                                            self.key_for(header)), buffer_size=CHUNK_BYTES)

    def _place(self, staged: Path, digest: str) -> bool:
        target = self.blob_path(digest)
        if target.exists():
            staged.unlink(missing_ok=True)
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staged, 0o444)
        os.replace(staged, target)
        self.verified.record(target, digest)  # every caller hashed what it places
        return True

    def _seal(
        self, source: BinaryIO, digest: str, size: int, task: ProgressTask | None = None
    ) -> tuple[str, bool]:
        """Encrypt ``size`` bytes of ``source`` into the blob ``digest`` through a
        temporary file: (sha256 of what was read, whether a blob was written). Nothing is
        stored when the bytes do not hash to ``digest``."""
        staged = self.staging_path("seal")
        try:
            with staged.open("wb") as sink:
                actual = encrypt_stream(source, sink, self.key(), digest, size, task)
                sink.flush()
                os.fsync(sink.fileno())
            if actual != digest:
                return actual, False
            return actual, self._place(staged, digest)
        finally:
            staged.unlink(missing_ok=True)

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
        bytes are stored once across models and versions. With encryption on, the file is
        sealed into the store (re-hashed on the way) and the plaintext file is deleted.
        """
        if self.blob_path(digest).exists():
            verified_file.unlink(missing_ok=True)
            return False
        if not self.encrypt:
            return self._place(verified_file, digest)
        try:
            with verified_file.open("rb") as source:
                actual, written = self._seal(source, digest, os.fstat(source.fileno()).st_size)
            if actual != digest:
                raise IntegrityError(f"{verified_file.name} hashes to {actual}, not {digest}: "
                                     "it changed after it was verified; fetch it again")
            return written
        finally:
            verified_file.unlink(missing_ok=True)

    def adopt_sealed(self, sealed_file: Path, digest: str) -> bool:
        """Move an encrypted blob made elsewhere (a sealed bundle's) into the store.

        Every chunk is authenticated and the plaintext re-hashed against ``digest`` first.
        The ciphertext is kept as it is when this repository seals with the same key;
        otherwise the blob is stored from its plaintext (plain, or sealed with this
        repository's key). A key that matches neither the current nor the previous one
        raises :class:`WrongKeyError` saying which key to configure. The file is consumed.
        """
        try:
            header = read_header(sealed_file, digest)
            if header is None:
                raise IntegrityError(f"{sealed_file.name} is not an encrypted blob")
            if self.blob_path(digest).exists():
                return False
            key = self.sealing_key(header)
            keep_sealed = self.encrypt and key.id_bytes == self.key().id_bytes
            plain = self.staging_path("unseal")
            try:
                with io.BufferedReader(BlobReader(sealed_file, header, key),
                                       buffer_size=CHUNK_BYTES) as source, \
                        plain.open("wb") as sink:
                    actual, size = hash_stream(source, None if keep_sealed else sink)
                if actual != digest or size != header.plain_size:
                    raise IntegrityError(f"encrypted blob {digest[:12]}… decrypts to "
                                         f"{actual[:12]}… ({size} bytes): it is damaged")
                if keep_sealed:
                    return self._place(sealed_file, digest)
                return self.adopt(plain, digest)
            finally:
                plain.unlink(missing_ok=True)
        finally:
            sealed_file.unlink(missing_ok=True)

    def ingest_file(
        self, path: Path, expected_digest: str | None = None, progress: Progress = NULL_PROGRESS
    ) -> tuple[str, int, bool]:
        """Copy a local file into the store, hashing on the way: (digest, size, written)."""
        if self.encrypt:
            return self._ingest_sealed(path, expected_digest, progress)
        staged = self.staging_path("ingest")
        try:
            task = progress.task(f"store {path.name}", total=path.stat().st_size)
            with path.open("rb") as source, staged.open("wb") as sink:
                digest, size = hash_stream(source, sink, task)
                sink.flush()
                os.fsync(sink.fileno())
            task.close()
            if expected_digest and digest != expected_digest:
                raise _changed(path, digest, expected_digest)
            return digest, size, self.adopt(staged, digest)
        finally:
            staged.unlink(missing_ok=True)

    def _ingest_sealed(
        self, path: Path, expected_digest: str | None, progress: Progress
    ) -> tuple[str, int, bool]:
        """Encrypting ingest: the digest must be known before sealing (it is bound into
        every chunk), so without ``expected_digest`` the file is read twice (hash, then
        seal and re-hash); no plaintext copy is ever written."""
        self.key()  # a missing key fails before any work
        size = path.stat().st_size
        task = progress.task(f"store {path.name}", total=size * (1 if expected_digest else 2))
        digest = expected_digest
        if digest is None:
            with path.open("rb") as source:
                digest, _ = hash_stream(source, progress=task)
        if self.has_blob(digest, size):
            task.close()
            return digest, size, False
        with path.open("rb") as source:
            actual, written = self._seal(source, digest, size, task)
        task.close()
        if actual != digest:
            raise _changed(path, actual, digest)
        return digest, size, written

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
        import keeps numbers when they are free). New numbers follow the highest ever
        given, removed ones included; a removed number is given back only when asked for
        with the content it had.
        """
        problems = path_problems(f.path for f in files)
        if problems:  # before a folder is made: 'x' and 'x/y' cannot both be linked
            raise SourceError(f"{name}: its files cannot form one folder: "
                              f"{'; '.join(problems)}; the source names them so, fix it")
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
            retired = self.retired_versions(name)  # only the same content may have one back
            if version is None or version in taken or retired.get(version, digest) != digest:
                version = max(taken | set(retired), default=0) + 1
            manifest = Manifest(
                name=name, version=version, digest=digest, source=source, revision=revision,
                format=format, tasks=tasks, license=license, parent=parent,
                description=description, files=sorted(files, key=lambda f: f.path),
            )
            self._write_snapshot(manifest, materialize=False)
            atomic_write_text(self.manifest_path(name, version), manifest.to_json())
            return manifest, True

    def _link_target(self, entry_path: str, target: Path) -> Path:
        """Relative link text for a target inside the repository (the repository stays
        relocatable), absolute for one outside it (tmpfs copies)."""
        root = self.root.resolve()
        try:
            inside = target.resolve().relative_to(root)
        except ValueError:
            return target.resolve()
        depth = len(Path(entry_path).parts) + 2  # <name>/<version>/<path parts>
        return Path(*([".."] * depth)) / inside

    def _write_snapshot(self, manifest: Manifest, materialize: bool = True) -> None:
        """Link the version's folder. Encrypted files are linked to decrypted copies, made
        only when ``materialize`` (ensure_snapshot), never at publish: a version nobody
        serves keeps no plaintext anywhere."""
        final = self.snapshot_path(manifest)
        final.parent.mkdir(parents=True, exist_ok=True)
        headers = {e.digest: self._header_or_none(e.digest) for e in manifest.files}
        if not materialize and any(h is not None for h in headers.values()):
            shutil.rmtree(final, ignore_errors=True)  # left by a crash; made on demand
            return
        staged = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="snapshot-"))
        try:
            for entry in manifest.files:
                link = staged / entry.path
                link.parent.mkdir(parents=True, exist_ok=True)
                if headers[entry.digest] is None:
                    target = self.blob_path(entry.digest)
                else:
                    target = self._materialize(entry.digest, entry.size)
                link.symlink_to(self._link_target(entry.path, target))
            if final.exists():  # left by a crash before its manifest was written
                shutil.rmtree(final)
            os.replace(staged, final)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise

    def _header_or_none(self, digest: str) -> BlobHeader | None:
        """The header, or None for plain and missing blobs (a missing blob's link dangles
        and ``verify`` reports it, as for plain repositories)."""
        try:
            return self.blob_header(digest)
        except FileNotFoundError:
            return None

    def _materialize(self, digest: str, size: int) -> Path:
        """A decrypted copy of an encrypted blob, written under a temporary name and
        renamed; shared by every version using it.

        Not re-hashed: every chunk is authenticated (AES-GCM) under the repository key with
        the digest, index and final flag bound in, and the plaintext was hashed against
        the digest when the blob was sealed, so an authenticated blob is the right bytes.
        That halves the CPU cost of a first serve (SHA-256, not AES, is the slow part);
        ``verify`` still re-hashes both the blob's plaintext and the copy."""
        existing = self.plaintext.find(digest, size)
        if existing is not None:
            return existing
        with self.open_blob(digest):  # no key, wrong key, bad size: fail before any mkdir
            pass
        tmp, final = self.plaintext.new_copy(digest, size)
        try:
            try:
                written = self._decrypt_into(digest, tmp)
            except OSError as exc:
                if exc.errno != errno.ENOSPC or final.is_relative_to(self.plaintext.disk_dir):
                    raise
                tmp.unlink(missing_ok=True)  # tmpfs filled up meanwhile: use the disk
                self.plaintext.memory_dir = None
                tmp, final = self.plaintext.new_copy(digest, size)
                written = self._decrypt_into(digest, tmp)
            if written != size:
                raise IntegrityError(
                    f"blob {digest[:12]}… decrypts to {written} bytes, its manifest says "
                    f"{size}; run 'sutazai models verify' and restore the blob")
            os.chmod(tmp, 0o400)
            os.replace(tmp, final)
            self.verified.record(final, digest)  # authenticated chunk by chunk, see above
            return final
        finally:
            tmp.unlink(missing_ok=True)

    def _decrypt_into(self, digest: str, path: Path) -> int:
        view = memoryview(bytearray(CHUNK_BYTES))
        written = 0
        with self.open_blob(digest) as source, path.open("wb") as sink:
            while count := source.readinto(view):  # type: ignore[attr-defined]
                sink.write(view[:count])
                written += count
        return written

    def ensure_snapshot(self, manifest: Manifest, verify: bool = False) -> Path:
        """The version's folder, rebuilt if it was deleted or damaged.

        For encrypted blobs this is where the plaintext appears: each file is decrypted
        (every chunk authenticated) into the plaintext cache (tmpfs when it fits, else
        ``<root>/plaintext``, both private to the user) and linked. A tampered blob raises
        IntegrityError and no snapshot is made. Call :meth:`evict_plaintext` to remove the
        decrypted copies when the version is no longer served.

        ``verify`` (an engine start) also checks the bytes the links lead to, the files an
        engine will load: plain blobs, or the decrypted copies of encrypted ones. Each is
        hashed only when it changed since it was last found intact (a model just pulled
        or served costs nothing). A damaged decrypted copy is made again from its blob; a
        damaged or missing blob raises IntegrityError naming the command that repairs it.
        """
        path = self.snapshot_path(manifest)
        if verify:
            for entry in manifest.files:  # damaged copies go: the snapshot is remade below
                copy = self.plaintext.find(entry.digest, entry.size)
                if copy is not None and not self._copy_intact(copy, entry.digest):
                    copy.unlink(missing_ok=True)
        try:
            if self._snapshot_problems(manifest):
                with self.writing(), self.model_lock(manifest.name):
                    if self._snapshot_problems(manifest):  # another process may have made it
                        self._write_snapshot(manifest)
        except BlobAuthenticationError as exc:
            if not verify:
                raise
            raise IntegrityError(f"{manifest.ref}: {exc}; {repair_hint([manifest])}") from None
        damaged = self._serving_problems(manifest) if verify else []
        if damaged:
            raise IntegrityError(
                f"{manifest.ref} is damaged ({'; '.join(damaged)}): refusing to load it; "
                f"{repair_hint([manifest])}")
        return path

    def _serving_problems(self, manifest: Manifest) -> list[str]:
        """What is wrong with the files an engine would load from the snapshot."""
        problems = []
        for entry in manifest.files:
            try:
                header = self._header_or_none(entry.digest)
            except IntegrityError:
                problems.append(f"{entry.path}: corrupt blob header")
                continue
            if header is None:
                found = self._checked_blob(entry)
                if found is not None:
                    problems.append(f"{entry.path}: {found[0]}")
                continue
            copy = self.plaintext.find(entry.digest, entry.size)
            if copy is None or not self._copy_intact(copy, entry.digest):
                problems.append(f"{entry.path}: decrypted copy damaged")
        return problems

    def _snapshot_problems(self, manifest: Manifest) -> list[str]:
        base = self.snapshot_path(manifest)
        problems = []
        for entry in manifest.files:
            link = base / entry.path
            try:
                header = self._header_or_none(entry.digest)
            except IntegrityError:
                problems.append(entry.path)
                continue
            if header is None:
                expected: Path | None = self.blob_path(entry.digest)
            else:
                expected = self.plaintext.find(entry.digest, entry.size)
            if (not link.is_symlink() or expected is None
                    or link.resolve() != expected.resolve()):
                problems.append(entry.path)
        return problems

    # ------------------------------------------------------------ verify/rm/gc
    def verify(
        self, manifests: list[Manifest], progress: Progress = NULL_PROGRESS
    ) -> list[FileProblem]:
        """Re-hash every file of ``manifests``; return what is missing or corrupted.

        Encrypted blobs are decrypted (every chunk authenticated) and the plaintext is
        re-hashed; a chunk that fails authentication is a "corrupt" problem. Decrypted
        copies that a snapshot links are re-hashed too, since that is what engines load.
        A wrong key is not corruption: it raises WrongKeyError.
        """
        problems: list[FileProblem] = []
        total = sum(m.size for m in manifests)
        task = progress.task("verify", total=total)
        checked: dict[str, tuple[str, str, str] | None] = {}
        copies: dict[str, str | None] = {}
        for manifest in manifests:
            encrypted = False
            for entry in manifest.files:
                if entry.digest not in checked:
                    checked[entry.digest] = self._checked_blob(entry, task, fresh=True)
                found = checked[entry.digest]
                if found is not None:
                    problems.append(FileProblem(manifest.ref, entry.path, *found))
                with_header = found is None and self._header_or_none(entry.digest) is not None
                encrypted = encrypted or with_header
            snapshot = self.snapshot_path(manifest)
            if encrypted and not snapshot.exists():
                continue  # not materialized: nothing decrypted to check
            for path in self._snapshot_problems(manifest):
                problems.append(FileProblem(manifest.ref, path, "snapshot", "symlink", "broken"))
            for entry in manifest.files if encrypted else []:
                copy = self.plaintext.find(entry.digest, entry.size)
                if copy is not None and entry.digest not in copies:
                    copies[entry.digest] = self._hash_and_record(copy, entry.digest)
                if copy is not None and copies[entry.digest] != entry.digest:
                    problems.append(FileProblem(manifest.ref, entry.path, "snapshot",
                                                entry.digest, f"decrypted copy {copy} modified; "
                                                "the next engine start makes it again (or run "
                                                "evict_plaintext)"))
        task.close()
        return problems

    def check_blobs(self, files: list[FileEntry]) -> dict[str, tuple[str, str, str]]:
        """The damaged or missing blobs behind ``files``: {digest: (problem, expected,
        actual)}, empty when all are intact. Cheap when nothing changed: a blob is hashed
        only when it changed since it was last found intact (see :mod:`.integrity`)."""
        problems: dict[str, tuple[str, str, str]] = {}
        for entry in {f.digest: f for f in files}.values():
            found = self._checked_blob(entry)
            if found is not None:
                problems[entry.digest] = found
        return problems

    def discard_blobs(self, digests: set[str]) -> None:
        """Delete damaged blobs so that a pull stores them again (hold :meth:`writing`).
        Open readers (an engine's mmap) keep the old bytes until they close them."""
        for digest in digests:
            self.blob_path(digest).unlink(missing_ok=True)
        self.verified.forget(self.blob_path(d) for d in digests)

    def _checked_blob(self, entry: FileEntry, task: ProgressTask | None = None,
                      fresh: bool = False) -> tuple[str, str, str] | None:
        """:meth:`_check_blob` through the verified-files cache: skipped when the blob is
        unchanged since it was found intact, unless ``fresh``; the cache learns the result."""
        blob = self.blob_path(entry.digest)
        if not fresh and self.verified.verified(blob, entry.digest):
            return None
        try:
            before = blob.stat()
        except FileNotFoundError:
            return "missing", entry.digest, ""
        found = self._check_blob(entry, task)
        if found is None:
            self.verified.record(blob, entry.digest, before)
        else:
            self.verified.forget([blob])
        return found

    def _hash_and_record(self, path: Path, digest: str) -> str:
        """sha256 of ``path``; the cache learns whether it is ``digest``."""
        before = path.stat()
        actual = hash_file(path)[0]
        if actual == digest:
            self.verified.record(path, digest, before)
        else:
            self.verified.forget([path])
        return actual

    def _copy_intact(self, copy: Path, digest: str) -> bool:
        """Whether a decrypted copy holds ``digest`` (hashed only when it changed)."""
        try:
            return (self.verified.verified(copy, digest)
                    or self._hash_and_record(copy, digest) == digest)
        except FileNotFoundError:  # evicted meanwhile
            return False

    def _check_blob(self, entry: FileEntry, task: ProgressTask | None = None
                    ) -> tuple[str, str, str] | None:
        """(problem, expected, actual) for one blob, or None when it is intact."""
        blob = self.blob_path(entry.digest)
        if not blob.is_file():
            return "missing", entry.digest, ""
        try:
            header = self.blob_header(entry.digest)
        except IntegrityError as exc:
            return "corrupt", entry.digest, str(exc)
        size = blob.stat().st_size
        expected = entry.size if header is None else encrypted_size(entry.size)
        if header is not None and header.plain_size != entry.size:
            return "size", str(entry.size), str(header.plain_size)
        if size != expected:
            return "size", str(expected), str(size)
        if header is None:
            actual = hash_file(blob, task)[0]
        else:
            try:
                with self.open_blob(entry.digest) as source:
                    actual = hash_stream(source, progress=task, chunk=CHUNK_BYTES)[0]
            except BlobAuthenticationError as exc:
                return "corrupt", entry.digest, str(exc)
        return None if actual == entry.digest else ("digest", entry.digest, actual)

    def retired_versions(self, name: str) -> dict[int, str]:
        """Numbers of ``name``'s removed versions, with the content digest each had."""
        try:
            data = json.loads((self.root / "retired" / f"{name}.json").read_text())
            return {int(number): str(digest) for number, digest in data.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError) as exc:
            raise IntegrityError(f"{self.root / 'retired' / f'{name}.json'} is damaged "
                                 f"({exc}); restore it or write {{}} into it") from None

    def remove(self, manifest: Manifest) -> None:
        """Unpublish a version: manifest first (it disappears atomically), then its folder.

        Its number is retired first: a later version never gets it, so ``name:N`` keeps
        meaning one content, in the repository and in MLflow alike."""
        with self.model_lock(manifest.name):
            retired = self.retired_versions(manifest.name) | {manifest.version: manifest.digest}
            atomic_write_text(self.root / "retired" / f"{manifest.name}.json",
                              json.dumps({str(k): v for k, v in sorted(retired.items())}))
            self.manifest_path(manifest.name, manifest.version).unlink(missing_ok=True)
            shutil.rmtree(self.snapshot_path(manifest), ignore_errors=True)
            for folder in (self.manifests_dir / manifest.name, self.snapshots_dir / manifest.name):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()

    def discard_unreferenced(self, digests: set[str]) -> int:
        """Delete those of ``digests``' blobs that no version references (what a failed
        import stored); returns how many. Under the exclusive lock, as :meth:`gc`, so no
        pull is between finding one of them and publishing it: call it without holding
        :meth:`writing`."""
        removed = 0
        with self.exclusive():
            referenced = {f.digest for m in self.all_versions() for f in m.files}
            for digest in digests - referenced:
                try:
                    self.blob_path(digest).unlink()
                except FileNotFoundError:
                    continue
                removed += 1
                with suppress(OSError):
                    self.blob_path(digest).parent.rmdir()  # only when empty
        return removed

    def gc(self, dry_run: bool = False) -> GcReport:
        """Delete blobs that no manifest references, their decrypted copies, and what
        interrupted pulls left in tmp/ (partial downloads, pip's staging folders).

        Every pull holds the shared lock while it writes there, and this holds the
        exclusive one, so whatever is left there now belongs to no running pull (a pull
        that starts later waits, and then downloads from the start)."""
        report = GcReport()
        with self.exclusive():
            for leftover in self._interrupted_pull_files():
                report.removed_partial += 1
                report.freed_bytes += _tree_size(leftover)
                report.removed_paths.append(str(leftover.relative_to(self.root)))
                if not dry_run:
                    if leftover.is_dir():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink(missing_ok=True)
            referenced = {f.digest for m in self.all_versions() for f in m.files}
            for blob in self.blobs_dir.glob("*/*"):
                if blob.name in referenced:
                    continue
                report.removed_blobs += 1
                report.freed_bytes += blob.stat().st_size
                report.removed_paths.append(str(blob.relative_to(self.root)))
                if not dry_run:
                    blob.unlink()
            for copy in self.plaintext.copies():
                if copy.name in referenced:
                    continue
                report.removed_plaintext += 1
                report.freed_bytes += copy.stat().st_size
                report.removed_paths.append(str(copy))
                if not dry_run:
                    copy.unlink(missing_ok=True)
            if not dry_run:
                self.verified.prune()
        return report

    def _interrupted_pull_files(self) -> list[Path]:
        """What only a pull writes in tmp/ (under the shared lock): resumable downloads
        (``downloads/<key>.part`` and their ``.json`` records) and ``pypi-*`` folders."""
        downloads = self.tmp_dir / "downloads"  # HttpDownloader's folder
        found = sorted(downloads.glob("*.part")) + sorted(downloads.glob("*.json"))
        return found + sorted(p for p in self.tmp_dir.glob("pypi-*") if p.is_dir())

    # -------------------------------------------------------------- encryption
    def evict_plaintext(self, manifests: list[Manifest] | None = None) -> tuple[int, int]:
        """Remove the decrypted copies of ``manifests``' blobs (all when None) and the
        snapshot folders linking them: (files, bytes) freed.

        What is already open (an engine's mmap) keeps working; the next
        :meth:`ensure_snapshot` decrypts again. Holds the exclusive lock (waits for
        running pulls).
        """
        with self.exclusive():
            digests = None if manifests is None else {
                f.digest for m in manifests for f in m.files}
            self.reset_snapshots(digests)
            return self.plaintext.remove(digests)

    def reset_snapshots(self, digests: set[str] | None) -> int:
        """Delete snapshot folders of versions using ``digests`` (all when None) whose
        files are, or are about to be, encrypted; ensure_snapshot remakes them."""
        reset = 0
        for manifest in self.all_versions():
            chosen = [f for f in manifest.files if digests is None or f.digest in digests]
            if not chosen or not self.snapshot_path(manifest).exists():
                continue
            if digests is None and all(self._header_or_none(f.digest) is None for f in chosen):
                continue
            shutil.rmtree(self.snapshot_path(manifest), ignore_errors=True)
            reset += 1
        return reset


def _tree_size(path: Path) -> int:
    """Bytes in a file, or in the files under a folder."""
    try:
        if not path.is_dir():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except FileNotFoundError:
        return 0


def repair_hint(manifests: list[Manifest]) -> str:
    """What repairs missing or damaged files of ``manifests``: a pull of the model fetches
    a published version's damaged files again; a version that is not in the catalog (a
    derived one, or an older revision) comes back from a bundle."""
    names = " ".join(sorted({m.name for m in manifests}))
    return (f"run 'sutazai models pull {names}' to fetch the damaged files again, or "
            "'sutazai models import BUNDLE' for a version the catalog no longer gives")


def _changed(path: Path, actual: str, expected: str) -> IntegrityError:
    return IntegrityError(
        f"{path} has sha256 {actual}, expected {expected}: the file changed or the "
        "catalog's digest is wrong"
    )
