"""Where backups live: a content-addressed pool of objects and one signed manifest each.

```
<backup root>/objects/sha256/ab/<digest>      every file's bytes, once, whatever the backup
<backup root>/backups/<id>/manifest.json      what the backup holds: path -> digest, size
<backup root>/backups/<id>/manifest.sig       HMAC-SHA256 of manifest.json (key: a secret)
<backup root>/hashes.json                     (path, size, mtime, inode) -> digest: a file
                                              that did not change is neither read nor copied
<backup root>/tmp/                            staging and objects being written
<backup root>/lock                            held (flock) by the one create or prune at work
```

A backup appears whole or not at all: its manifest and signature are written into a hidden
folder that is renamed into ``backups/`` last, so a create killed midway (SIGKILL, a full
disk) leaves no half backup for ``list`` to show, only unreferenced objects and scratch
files, which the next ``prune`` collects. The lock keeps a prune from collecting the objects
of a create that has not written its manifest yet.

Because objects are named by their sha256, a backup of an unchanged home writes only its
manifest; pruning a backup removes the objects no other manifest names. ``verify`` re-reads
every object a manifest names, so a flipped byte, a missing object or an edited manifest
(its signature no longer matches) is found.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from sutazai.errors import IntegrityError, InUseError, NotFoundError

CHUNK = 1 << 20
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PARTIAL = ".partial-"  # a manifest folder being written


class BackupFile(BaseModel):
    path: str  # where it goes in a restored home (relative, POSIX)
    sha256: str
    size: int
    sealed: bool = False  # encrypted with the sealing key (secrets)


class BackupManifest(BaseModel):
    id: str
    created: datetime
    home: str
    profile: str = "embedded"  # the settings profile it was taken with (restores need it)
    databases: dict[str, str] = Field(default_factory=dict)  # dump name -> URL (no password)
    files: list[BackupFile] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)  # what the drill compares
    notes: list[str] = Field(default_factory=list)  # parts left out, and why
    secrets: bool = False

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


class BackupArchive:
    """The pool and the manifests under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects" / "sha256"
        self.backups = root / "backups"
        self._hashes_path = root / "hashes.json"
        self._hashes: dict[str, list[object]] | None = None
        self.written = 0  # bytes this process added to the pool
        self.added: list[Path] = []  # the objects this process added (undone on failure)

    # ------------------------------------------------------------------ objects
    def object_path(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest

    def put(self, source: Path) -> tuple[str, int]:
        """Pool ``source``'s bytes; (sha256, size). An unchanged file (same size, mtime and
        inode as last time) is looked up, not read; known bytes are not written again."""
        stat = source.stat()
        key = str(source.resolve())
        cached = self.hashes.get(key)
        fingerprint = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        if cached and cached[:3] == fingerprint and self.object_path(str(cached[3])).exists():
            return str(cached[3]), stat.st_size
        digest, size = self._copy_in(source)
        self.hashes[key] = [*fingerprint, digest]
        return digest, size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        with tempfile.NamedTemporaryFile(dir=self._tmp(), delete=False) as handle:
            handle.write(data)
        try:
            return self._copy_in(Path(handle.name))
        finally:
            Path(handle.name).unlink(missing_ok=True)

    def _copy_in(self, source: Path) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self._tmp())
        try:
            with open(source, "rb") as reader, os.fdopen(fd, "wb") as writer:
                while block := reader.read(CHUNK):
                    digest.update(block)
                    writer.write(block)
                    size += len(block)
                writer.flush()
                os.fsync(writer.fileno())
            target = self.object_path(digest.hexdigest())
            if target.exists():
                return digest.hexdigest(), size
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            target.chmod(0o400)
            self.written += size
            self.added.append(target)
            return digest.hexdigest(), size
        finally:
            Path(tmp).unlink(missing_ok=True)

    def discard_added(self) -> None:
        """Remove the objects this process added: a create that failed names them in no
        manifest (call it holding :meth:`lock`, so no other create has named them)."""
        for path in self.added:
            path.unlink(missing_ok=True)
        self.added.clear()
        self.written = 0

    def read_object(self, entry: BackupFile) -> Iterator[bytes]:
        path = self.object_path(entry.sha256)
        if not path.is_file():
            raise IntegrityError(f"object {entry.sha256[:12]} of {entry.path} is missing")
        with open(path, "rb") as reader:
            while block := reader.read(CHUNK):
                yield block

    def check_object(self, entry: BackupFile) -> str | None:
        """What is wrong with ``entry``'s object (None: its bytes are right)."""
        path = self.object_path(entry.sha256)
        if not path.is_file():
            return f"{entry.path}: object {entry.sha256[:12]} is missing"
        digest = hashlib.sha256()
        with open(path, "rb") as reader:
            while block := reader.read(CHUNK):
                digest.update(block)
        if digest.hexdigest() != entry.sha256 or path.stat().st_size != entry.size:
            return f"{entry.path}: object {entry.sha256[:12]} is damaged (sha256 differs)"
        return None

    # ---------------------------------------------------------------- manifests
    def save(self, manifest: BackupManifest, key: bytes) -> Path:
        """Write the manifest and its signature, the signature last (a manifest without
        one is an interrupted backup, which ``verify`` reports)."""
        folder = self.backups / manifest.id
        if folder.exists():
            raise InUseError(f"backup {manifest.id} already exists in {self.backups}")
        partial = self.backups / f"{PARTIAL}{manifest.id}"
        body = manifest.model_dump_json(indent=1).encode()
        try:
            self.save_hashes()  # a cache: right even if the manifest never lands
            _write_atomic(partial / MANIFEST, body)
            _write_atomic(partial / SIGNATURE, sign(body, key).encode())
            os.rename(partial, folder)  # the backup appears whole, or not at all
            _fsync_dir(self.backups)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return folder

    def ids(self) -> list[str]:
        if not self.backups.is_dir():
            return []
        return sorted(p.name for p in self.backups.iterdir()
                      if not p.name.startswith(".") and (p / MANIFEST).is_file())

    def load(self, backup_id: str, key: bytes | None) -> BackupManifest:
        """The manifest of ``backup_id`` (a prefix will do); its signature is checked when
        ``key`` is given (IntegrityError if it does not match)."""
        matches = [i for i in self.ids() if i.startswith(backup_id)]
        if len(matches) != 1:
            known = ", ".join(self.ids()[-5:]) or "none yet"
            raise NotFoundError(f"no backup {backup_id!r} in {self.root} (the newest: {known})"
                                if not matches else f"{backup_id!r} names {len(matches)} "
                                "backups; give more of the id")
        folder = self.backups / matches[0]
        body = (folder / MANIFEST).read_bytes()
        if key is not None:
            signature = (folder / SIGNATURE).read_text().strip() if (
                folder / SIGNATURE).is_file() else ""
            if not hmac.compare_digest(signature, sign(body, key)):
                raise IntegrityError(f"backup {matches[0]}: the manifest's signature does not "
                                     "match (edited, cut short, or signed with another key)")
        return BackupManifest.model_validate_json(body)

    def remove(self, backup_id: str) -> None:
        shutil.rmtree(self.backups / backup_id)

    def collect_garbage(self) -> int:
        """Delete objects no remaining manifest names, and what interrupted creates left
        (scratch files, unfinished manifest folders); bytes freed. Call it holding
        :meth:`lock`: a running create's objects are named by no manifest yet."""
        wanted = {f.sha256 for i in self.ids() for f in self.load(i, None).files}
        freed = 0
        for path in self.objects.glob("*/*") if self.objects.is_dir() else []:
            if path.name not in wanted:
                freed += path.stat().st_size
                path.unlink()
        leftovers = list(self.backups.glob(f"{PARTIAL}*")) if self.backups.is_dir() else []
        if (self.root / "tmp").is_dir():
            leftovers += list((self.root / "tmp").iterdir())
        for path in leftovers:
            files = [path] if not path.is_dir() else [p for p in path.rglob("*")
                                                       if p.is_file()]
            freed += sum(p.lstat().st_size for p in files)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return freed

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held by the one create or prune writing to this root; the kernel drops it when
        its process dies, even by SIGKILL, so a killed create never blocks the next."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise InUseError(f"another 'sutazai backup create' or 'prune' is writing to "
                                 f"{self.root}; wait for it to finish, then run this "
                                 "again") from None
            yield
        finally:
            os.close(fd)  # releases the lock

    # ------------------------------------------------------------------ caches
    @property
    def hashes(self) -> dict[str, list[object]]:
        if self._hashes is None:
            try:
                self._hashes = json.loads(self._hashes_path.read_text())
            except (OSError, ValueError):
                self._hashes = {}
        return self._hashes

    def save_hashes(self) -> None:
        if self._hashes is not None:
            _write_atomic(self._hashes_path, json.dumps(self._hashes).encode())

    def _tmp(self) -> Path:
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path


def sign(body: bytes, key: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def new_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
