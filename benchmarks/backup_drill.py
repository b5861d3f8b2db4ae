"""Backup drill: create, verify and restore a home, then back it up again unchanged and flip
bytes in the pool to see that verify finds every one. Verify, restore and the read-back are
the library's drill (``sutazai.backup.drill.run_drill``, what ``sutazai backup drill`` and
the sutazai_backup DAG run), timed check by check.

    .venv/bin/python benchmarks/backup_drill.py [--home PATH] [--blob-mib 256]
        [--flips 20] [--json]

Without ``--home`` a scratch home is built: a model of ``--blob-mib`` random bytes
published and registered in MLflow, and the real documents of benchmarks/data/kg_real/
ingested into the embedded graph. With ``--home`` (for example the home a first
``make run`` leaves), that home is backed up into a scratch backup folder and restored
into a scratch home; it is only read. The peer is ``cp -a`` of the same home (the naive
backup: no consistency, no integrity, no increments).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def scratch_home(workdir: Path, blob_mib: int) -> Path:
    from sutazai.config import load_settings
    from sutazai.knowledge.service import ingest
    from sutazai.registry import open_registry
    from sutazai.repository import open_repository
    from sutazai.repository.manifest import FileEntry

    settings = load_settings()
    weights = workdir / "weights" / "model.gguf"
    weights.parent.mkdir(parents=True)
    with weights.open("wb") as handle:
        for _ in range(blob_mib):
            handle.write(os.urandom(1 << 20))
    repo = open_repository(settings)
    digest, size, _ = repo.ingest_file(weights)
    manifest, _ = repo.publish(name="drill-model", files=[FileEntry(
        path="model.gguf", digest=digest, size=size)], source=f"file:{weights}",
        revision=digest, format="gguf", tasks=["text-generation"], license="apache-2.0")
    open_registry(settings).register(manifest, repo.ensure_snapshot(manifest))
    ingest(settings, [str(ROOT / "benchmarks" / "data" / "kg_real")], relations="none",
           embed=False)
    return settings.home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path)
    parser.add_argument("--blob-mib", type=int, default=256)
    parser.add_argument("--flips", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sutazai-backup-drill-"))
    os.environ["SUTAZAI_HOME"] = str(args.home or workdir / "home")
    os.environ["SUTAZAI_BACKUP_DIR"] = str(workdir / "backups")
    from sutazai.backup.archive import BackupArchive
    from sutazai.backup.drill import run_drill
    from sutazai.backup.service import backup_root, create, verify
    from sutazai.config import load_settings

    try:
        home = args.home or scratch_home(workdir, args.blob_mib)
        settings = load_settings()
        home_bytes = sum(p.stat().st_size for p in home.rglob("*")
                         if p.is_file() and not p.is_symlink())
        started = time.monotonic()
        subprocess.run(["cp", "-a", str(home), str(workdir / "cp-copy")], check=True)
        copy_s = time.monotonic() - started
        shutil.rmtree(workdir / "cp-copy")
        timings: dict[str, float] = {}
        started = time.monotonic()
        first = create(settings)
        timings["create"] = time.monotonic() - started
        started = time.monotonic()
        again = create(settings)
        timings["incremental"] = time.monotonic() - started
        written_again = int(again.notes[-1].split()[1])
        # the drill: verify, restore into a scratch home, use it, compare (no metrics pushed)
        drill = run_drill(settings, backup_id=again.id, push_metrics=False,
                          scratch=workdir / "scratch")
        checks = {c.name: c for c in drill.checks}
        problems = [c.detail for c in drill.checks if c.name == "verify"
                    and c.status == "failed"]
        for name, check in (("verify", "verify"), ("restore", "restore"),
                            ("graph_read_back", "graph_documents")):
            timings[name] = checks[check].seconds if check in checks else float("nan")
        # corruption: flip one byte in a random object of each kind, verify, put it back
        archive = BackupArchive(backup_root(settings))
        rng = random.Random(0)
        found = 0
        kinds = sorted({f.path.split("/")[0] for f in again.files})
        for trial in range(args.flips):
            kind = kinds[trial % len(kinds)]
            entry = rng.choice([f for f in again.files if f.path.split("/")[0] == kind
                                and f.size])
            path = archive.object_path(entry.sha256)
            path.chmod(0o600)
            original = path.read_bytes()
            data = bytearray(original)
            spot = rng.randrange(len(data))
            data[spot] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(data))
            found += any(entry.path in p for p in verify(settings, again.id)[1])
            path.write_bytes(original)
        figures: dict[str, Any] = {
            "home_bytes": home_bytes, "backup_bytes": first.size, "files": len(first.files),
            "seconds": {k: round(v, 2) for k, v in timings.items()},
            "cp_a_seconds": round(copy_s, 2),
            "incremental_written_bytes": written_again,
            "incremental_share": round(written_again / max(home_bytes, 1), 5),
            "verify_problems": problems, "corruptions_found": f"{found}/{args.flips}",
            "restored_graph_documents": checks["graph_documents"].restored
            if "graph_documents" in checks else None,
            "source_graph_documents": first.counts.get("graph_documents"),
            "drill_seconds": round(timings["create"] + timings["verify"]
                                   + timings["restore"] + timings["graph_read_back"], 1),
            "drill_ok": drill.ok, "drill_failures": drill.failures,
            "drill_checks": {c.name: c.status for c in drill.checks},
            "library_drill_seconds": drill.seconds,
            "restore_vs_cp_a": round(timings["restore"] / max(copy_s, 1e-9), 2)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
