"""What encryption at rest costs: a plain repository against an encrypted one, same data.

Run from the repository root::

    .venv/bin/python benchmarks/encryption_cost.py [--size-mib 512] [--repeat 3]
                                                   [--plaintext-dir DIR] [--workdir DIR]
                                                   [--json]

One random file (a stand-in for a GGUF/safetensors model) is written once. Then, for
each of ``--repeat`` rounds, alternating plain and encrypted (so drift in the machine's
load hits both), a fresh repository is made and three operations are timed:

* **publish**: ``Repository.ingest_file`` (digest unknown, as ``publish_derived`` does)
  followed by ``Repository.publish`` of a one-file version. Plain: one read that copies
  and hashes. Encrypted: one read to hash (the digest is bound into every chunk, so it
  is needed first), one read that seals and re-hashes.
* **publish, CPU only**: the same reads, hashing and sealing, written to ``/dev/null``:
  the cryptography's cost without the page cache and the disk, which make the publish
  figures noisy on a shared machine. Both modes write the same bytes and fsync them; a
  plain copy fills the page cache at memory speed and then waits for the fsync, while
  sealing (CPU-bound) overlaps the kernel's writeback, so with a disk slower than the
  CPU, publish costs little or nothing extra (it can even finish first).
* **first serve**: ``ensure_snapshot`` then reading the snapshot's file to the end
  (hashing it, as an engine's load pages it in). Plain: links only, then a read of the
  blob. Encrypted: decrypt + authenticate into the plaintext cache (no re-hash:
  GCM authenticates every chunk), then the read. Later serves of a materialized
  snapshot cost the same in both (a plain file).
* **verify**: ``Repository.verify`` of the version. Plain: hash the blob. Encrypted:
  decrypt + authenticate + hash the blob, and re-hash the decrypted copy the snapshot
  links (that is what engines load).

Figures are MiB of plaintext per second (median over rounds) and encrypted/plain ratios
(1.0 = no cost). Dirty pages are flushed with ``sync`` before every timed operation,
outside the timing; nothing is dropped from the page cache, and the source file is read
once before each publish (outside the timing), so the source and the blobs are read from
memory: the figures show the CPU cost of the cryptography, which is what a fast NVMe disk
would expose too. (Without that warm-up a plain round that follows an encrypted one
finds the source evicted by the encrypted round's extra 2x512 MiB and reads it from
disk.) The key is generated in memory (the
secret provider is not part of the measurement). Exit code 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import write_random_file  # noqa: E402 (after the path)

READ_CHUNK = 4 * 1024 * 1024
OPERATIONS = ("publish", "publish, CPU only", "first serve", "verify")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512,
                        help="size of the model file in MiB (default 512)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of each mode, alternating (default 3)")
    parser.add_argument("--plaintext-dir", type=Path, default=None,
                        help="where decrypted copies go (default: the repository's choice, "
                        "tmpfs when it fits)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="parent folder of the temporary folder (default: system temp)")
    parser.add_argument("--json", action="store_true",
                        help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.repeat < 1:
        parser.error("--size-mib and --repeat must be at least 1")
    return args


def read_through(path: Path) -> str:
    """Read a file to the end (as a model load pages it in); its sha256."""
    digest = hashlib.sha256()
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while count := handle.readinto(view):
            digest.update(view[:count])
    return digest.hexdigest()


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    os.sync()
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def one_round(work: Path, source: Path, digest: str, encrypted: bool, key: Any,
              plaintext_dir: Path | None) -> tuple[dict[str, float], str]:
    """Fresh repository; seconds of each operation, and where the snapshot's file lives."""
    from sutazai.repository import FileEntry, Repository

    root = work / ("encrypted" if encrypted else "plain")
    shutil.rmtree(root, ignore_errors=True)
    repo = Repository(root, encrypt=encrypted, key=key, plaintext_dir=plaintext_dir)
    seconds: dict[str, float] = {}
    try:
        def publish() -> Any:
            got, size, _ = repo.ingest_file(source)
            manifest, _ = repo.publish(
                name="bench-model", files=[FileEntry(path="model.gguf", size=size, digest=got)],
                source="file:bench", revision=got, format="gguf",
                tasks=["text-generation"], license="other")
            return manifest

        read_through(source)  # same start for both modes: the source in the page cache
        seconds["publish"], manifest = timed(publish)
        if manifest.files[0].digest != digest:
            raise RuntimeError("published digest differs from the file's sha256")
        if (repo.blob_header(digest) is not None) != encrypted:
            raise RuntimeError(f"blob encryption is not {encrypted}")

        def publish_cpu() -> None:
            """What publish costs without the disk: copy/seal into /dev/null."""
            from sutazai.repository.crypto import encrypt_stream
            from sutazai.repository.fsutil import hash_stream

            with source.open("rb") as src, open(os.devnull, "wb") as sink:
                if not encrypted:
                    hash_stream(src, sink)
                    return
                got, size = hash_stream(src)
                src.seek(0)
                encrypt_stream(src, sink, key, got, size)

        seconds["publish, CPU only"], _ = timed(publish_cpu)

        def first_serve() -> str:
            return read_through(repo.ensure_snapshot(manifest) / "model.gguf")

        seconds["first serve"], served = timed(first_serve)
        if served != digest:
            raise RuntimeError("the snapshot's file does not hash to the digest")
        where = str((repo.snapshot_path(manifest) / "model.gguf").resolve().parent.parent.parent)

        seconds["verify"], problems = timed(lambda: repo.verify([manifest]))
        if problems:
            raise RuntimeError(f"verify found problems: {problems}")
        return seconds, where
    finally:
        if encrypted:
            repo.evict_plaintext()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from sutazai.repository.crypto import RepositoryKey

    err = Console(stderr=True)
    size = args.size_mib * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="sutazai-encryption-bench-", dir=args.workdir))
    key = RepositoryKey.generate()
    times: dict[str, dict[str, list[float]]] = {
        mode: {op: [] for op in OPERATIONS} for mode in ("plain", "encrypted")}
    where = ""
    try:
        source = work / "model.gguf"
        err.log(f"writing {args.size_mib} MiB of random bytes to {source}")
        digest = write_random_file(source, size)
        for index in range(args.repeat):
            for mode in ("plain", "encrypted"):
                seconds, place = one_round(work, source, digest, mode == "encrypted", key,
                                           args.plaintext_dir)
                if mode == "encrypted":
                    where = place
                for op, value in seconds.items():
                    times[mode][op].append(value)
                err.log(f"round {index + 1}/{args.repeat} {mode:9}: " + ", ".join(
                    f"{op} {value:.2f} s" for op, value in seconds.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    figures: dict[str, Any] = {
        "size_mib": args.size_mib, "repeat": args.repeat, "cpus": os.cpu_count(),
        "machine": platform.machine(), "plaintext_copies": where, "operations": {}}
    for op in OPERATIONS:
        plain_s = statistics.median(times["plain"][op])
        enc_s = statistics.median(times["encrypted"][op])
        figures["operations"][op] = {
            "plain_s": round(plain_s, 3), "encrypted_s": round(enc_s, 3),
            "plain_mib_s": round(args.size_mib / plain_s, 1),
            "encrypted_mib_s": round(args.size_mib / enc_s, 1),
            "ratio": round(plain_s / enc_s, 3),  # encrypted throughput / plain throughput
            "plain_runs_s": [round(t, 3) for t in times["plain"][op]],
            "encrypted_runs_s": [round(t, 3) for t in times["encrypted"][op]],
        }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    table = Table(title=f"Encryption at rest: {args.size_mib} MiB, median of {args.repeat}, "
                  f"{os.cpu_count()} CPUs; decrypted copies in {where}")
    for column in ("operation", "plain MiB/s", "encrypted MiB/s", "encrypted/plain"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for op, row in figures["operations"].items():
        table.add_row(op, f"{row['plain_mib_s']:.0f}", f"{row['encrypted_mib_s']:.0f}",
                      f"{row['ratio']:.2f}x")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
