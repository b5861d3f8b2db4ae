"""Small filesystem primitives that make writes atomic and hashing cheap."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

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
