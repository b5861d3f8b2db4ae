"""Where decrypted copies of encrypted blobs live while a snapshot needs them.

llama.cpp and vLLM open model files by path and mmap them, so a version whose blobs are
encrypted is served from decrypted copies. Where those copies go is a trade-off:

* **memory** (``/dev/shm/sutazai-<uid>/<repository id>/``, tmpfs): the plaintext never
  touches a persistent disk, so a stolen disk, a backup or a volume snapshot holds only
  ciphertext, and a reboot wipes the copies. It costs RAM (tmpfs pages, shared with the
  engine's mmap, so not twice) for as long as the copy exists; a copy is placed there only
  when it fits in half of both the free tmpfs space and the available memory.
* **disk** (``<repository>/plaintext/``, mode 0700, files 0400): no RAM cost, but the
  plaintext of every *materialized* version is at rest on the repository's disk until it
  is evicted. Versions never served stay encrypted either way.

``auto`` (the default) tries memory first, then disk. A configured folder (for example
an encrypted scratch volume) replaces both. Copies are shared between versions by digest,
written to a temporary name and renamed (a reader never sees half a copy), and removed
by :meth:`Repository.evict_plaintext` (cleanup after serving) or ``gc``. Folders are
created private to the user and refused when someone else owns them or they are links,
since ``/dev/shm`` is writable by every local user.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sutazai.errors import ConfigError

SHM = Path("/dev/shm")


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) or accept it only if it is ours, private and no link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(f"{path} is not a folder owned by this user (a link, or another "
                          "user's): refusing to put decrypted models there; remove it")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PlaintextCache:
    """Decrypted copies of blobs, by digest, in memory (tmpfs) or on disk (see module)."""

    def __init__(self, repository_root: Path, configured: Path | None = None) -> None:
        self.configured = configured
        self.disk_dir = configured if configured is not None else repository_root / "plaintext"
        self.memory_dir: Path | None = None
        if configured is None and SHM.is_dir() and os.access(SHM, os.W_OK):
            tag = hashlib.sha256(str(repository_root.resolve()).encode()).hexdigest()[:16]
            self.memory_dir = SHM / f"sutazai-{os.getuid()}" / tag

    def _bases(self) -> list[Path]:
        return [b for b in (self.memory_dir, self.disk_dir) if b is not None]

    @staticmethod
    def _in(base: Path, digest: str) -> Path:
        return base / "sha256" / digest[:2] / digest

    def find(self, digest: str, size: int) -> Path | None:
        """An existing complete copy of ``digest`` (right size), else None."""
        for base in self._bases():
            path = self._in(base, digest)
            try:
                if path.stat().st_size == size and not path.is_symlink():
                    return path
            except FileNotFoundError:
                continue
        return None

    def copies(self) -> Iterator[Path]:
        for base in self._bases():
            yield from (p for p in base.glob("sha256/*/*") if not p.name.startswith("."))

    def _fits_in_memory(self, size: int) -> bool:
        if self.memory_dir is None:
            return False
        try:
            fs = os.statvfs(SHM)
        except OSError:
            return False
        free = fs.f_bavail * fs.f_frsize
        return size <= free // 2 and size <= _available_memory() // 2

    def new_copy(self, digest: str, size: int) -> tuple[Path, Path]:
        """(temporary file, final path) for writing a copy of ``digest``."""
        base = self.memory_dir if self._fits_in_memory(size) else self.disk_dir
        assert base is not None
        if base == self.memory_dir:
            private_dir(base.parent)
        private_dir(base)
        folder = base / "sha256" / digest[:2]
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{digest[:12]}.", suffix=".tmp")
        os.close(fd)
        return Path(tmp), folder / digest

    def remove(self, digests: set[str] | None = None) -> tuple[int, int]:
        """Delete copies (of ``digests``, or all, and stale temporaries): (files, bytes)."""
        files = freed = 0
        for base in self._bases():
            for path in base.glob("sha256/*/*"):
                stale = path.name.startswith(".") and path.name.endswith(".tmp")
                if digests is not None and path.name not in digests and not stale:
                    continue
                try:
                    size = path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    continue
                files, freed = files + 1, freed + size
        if digests is None:  # everything went: leave no empty folders behind either
            for base in self._bases():
                shutil.rmtree(base / "sha256", ignore_errors=True)
                for folder in (base, base.parent) if base == self.memory_dir else (base,):
                    with contextlib.suppress(OSError):  # the parent is shared: only if empty
                        folder.rmdir()
        return files, freed
