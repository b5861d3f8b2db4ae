"""Small filesystem primitives that make writes atomic and hashing cheap."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from sutazai.errors import DiskFullError
from sutazai.progress import ProgressTask

# 1 MiB: the buffer is read into, hashed and written from while it is still in the CPU
# cache; with 4 MiB a copy-and-hash of 512 MiB ran 2-3x slower on the 2-core reference
# machine (benchmarks/encryption_cost.py, plain publish).
COPY_CHUNK = 1024 * 1024


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def hash_stream(
    source: BinaryIO,
    sink: BinaryIO | None = None,
    progress: ProgressTask | None = None,
    chunk: int = COPY_CHUNK,
    hasher: Any = None,
    limit: int | None = None,
) -> tuple[str, int]:
    """sha256 and length of ``source`` (up to ``limit`` bytes), copying it to ``sink`` on
    the way when given. Pass ``hasher`` to continue an existing sha256 object."""
    digest = hasher if hasher is not None else hashlib.sha256()
    size = 0
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    while limit is None or size < limit:
        want = chunk if limit is None else min(chunk, limit - size)
        count = source.readinto(view[:want])  # type: ignore[attr-defined]
        if not count:
            break
        piece = view[:count]
        digest.update(piece)
        if sink is not None:
            sink.write(piece)
        size += count
        if progress is not None:
            progress.advance(count)
    return digest.hexdigest(), size


def hash_file(path: Path, progress: ProgressTask | None = None) -> tuple[str, int]:
    with path.open("rb") as handle:
        return hash_stream(handle, progress=progress)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Room kept free beyond what a download needs (manifests, links, the filesystem's own
# bookkeeping, and whatever else writes to that disk): 1% of it, at least 1 MiB.
MIN_MARGIN = 1024 * 1024
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
WHERE_TO = "free space there, or set SUTAZAI_HOME (or SUTAZAI_REPOSITORY_DIR) to a larger disk"


def human_bytes(count: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as the CLI's tables print sizes)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use on ``folder``'s filesystem."""
    return shutil.disk_usage(folder).free


def ensure_free_space(folder: Path, need: int, what: str) -> None:
    """Raise DiskFullError unless ``folder`` has room for ``need`` bytes and a margin."""
    wanted = need + max(MIN_MARGIN, need // 100)
    free = free_bytes(folder)
    if wanted > free:
        raise DiskFullError(
            f"{what} needs {human_bytes(wanted)} in {folder} but only {human_bytes(free)} is "
            f"free; {WHERE_TO}")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def disk_full(folder: Path, what: str) -> DiskFullError:
    """The error for a write that ran out of space (ENOSPC, or a quota) in ``folder``."""
    try:
        free = f" ({human_bytes(free_bytes(folder))} free now)"
    except OSError:
        free = ""
    return DiskFullError(f"{folder} ran out of space while {what}{free}; {WHERE_TO}")
