"""Pull throughput: SutazAI's verified HTTP pull against ``curl`` + ``sha256sum``.

Run from the repository root::

    .venv/bin/python benchmarks/pull_throughput.py [--size-mib 1024] [--repeat 3]
                                                   [--check] [--json]

A random file is served by a real nginx on 127.0.0.1 (``tests.servers.Nginx``). The
script then alternates, ``--repeat`` times each:

* raw: ``curl -sS -o FILE URL`` followed by ``sha256sum FILE``, timed together;
* SutazAI: ``sutazai.repository.pull`` into a fresh repository whose catalog entry pins
  the file's sha256, timed end to end (HEAD, download with inline hashing, fsync,
  verification, adoption into the blob store and publishing).

Finally it re-pulls the unchanged model and checks that nothing is downloaded or written
("written" is both ``PullResult.written_bytes`` and the change in the total size of the
regular files under the repository root, symlinks excluded; "downloaded" is both
``PullResult.downloaded_bytes`` and the body bytes nginx logged for the re-pull).

Targets: SutazAI throughput >= 0.9x raw throughput, and a re-pull writes 0 bytes. The
exit code is 0 whatever the figures (it is a measurement); ``--check`` makes it 1 when a
target fails. Nothing is dropped from the page cache: the served file stays cached, and
the output of a run may still be in the cache when the raw path hashes it. Dirty pages are
flushed with ``sync`` before every timed run (outside the timing) so that one run's
writeback does not land in the next one's time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from stat import S_ISREG
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import write_random_file  # noqa: E402 (after the path)

TARGET_RATIO = 0.9
FILE_NAME = "model.gguf"  # not a pickle suffix, so no content sniffing is involved


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024,
                        help="size of the served random file in MiB (default 1024)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed runs of each path, alternating (default 3)")
    parser.add_argument("--chunk-kib", type=int, default=None,
                        help="override Settings.download_chunk_bytes (KiB) for SutazAI")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="parent folder of the temporary folder (default: system temp)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a target fails")
    parser.add_argument("--json", action="store_true",
                        help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.repeat < 1:
        parser.error("--size-mib and --repeat must be at least 1")
    return args


def tree_bytes(root: Path) -> int:
    """Total size of the regular files under ``root``; symlinks are not followed or counted."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            stat = os.lstat(os.path.join(folder, name))
            if S_ISREG(stat.st_mode):
                total += stat.st_size
    return total


def logged_body_bytes(nginx: Any, skip: int) -> tuple[int, list[str]]:
    """Body bytes nginx sent for the access-log lines after the first ``skip``."""
    rows = nginx.access_log()[skip:]
    return sum(int(r["bytes"]) for r in rows), [r["request"].split(" ")[0] for r in rows]


def run_raw(url: str, out: Path, digest: str) -> float:
    """curl the URL to ``out`` and sha256sum it; seconds for both together."""
    out.unlink(missing_ok=True)
    os.sync()
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "-o", str(out), url], check=True)
    summed = subprocess.run(["sha256sum", str(out)], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    got = summed.stdout.split()[0]
    if got != digest:
        raise RuntimeError(f"raw path: sha256sum says {got}, expected {digest}")
    out.unlink()
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from sutazai.config import Settings
    from sutazai.repository import CatalogEntry, PullResult, Repository, pull
    from tests.servers import Nginx

    for tool in ("curl", "sha256sum"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed; the raw path needs it", file=sys.stderr)
            return 2

    err = Console(stderr=True)
    size = args.size_mib * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="sutazai-pull-bench-", dir=args.workdir))
    nginx = None
    try:
        www = work / "www"
        err.log(f"writing {args.size_mib} MiB of random bytes under {www}")
        digest = write_random_file(www / FILE_NAME, size)
        nginx = Nginx(work / "nginx", www)
        nginx.start()
        url = f"{nginx.url}/{FILE_NAME}"
        entry = CatalogEntry(
            name="bench-model", source=url, sha256=digest, format="gguf",
            tasks=["text-generation"], license="other",
            description="pull_throughput benchmark payload",
        )
        overrides: dict[str, Any] = {}
        if args.chunk_kib is not None:
            overrides["download_chunk_bytes"] = args.chunk_kib * 1024

        def settings_for(home: Path) -> Settings:
            # repository_dir is explicit so that a SUTAZAI_REPOSITORY_DIR in the
            # environment cannot send the benchmark into a real repository.
            return Settings(home=home, repository_dir=home / "repository",
                            catalog=work / "catalog.yaml", **overrides)

        def run_sutazai(home: Path) -> tuple[float, PullResult, Repository, Settings]:
            shutil.rmtree(home, ignore_errors=True)
            settings = settings_for(home)
            repo = Repository(settings.repository_root)
            os.sync()
            started = time.perf_counter()
            result = pull(entry, repo, settings)
            seconds = time.perf_counter() - started
            if not result.created or result.downloaded_bytes != size:
                raise RuntimeError(f"SutazAI pull did not download and publish: {result}")
            return seconds, result, repo, settings

        (work / "raw").mkdir()
        raw_times: list[float] = []
        sutazai_times: list[float] = []
        repo = settings = None
        for index in range(args.repeat):
            raw_times.append(run_raw(url, work / "raw" / FILE_NAME, digest))
            err.log(f"run {index + 1}/{args.repeat}: raw {raw_times[-1]:.3f} s")
            if repo is not None:
                shutil.rmtree(repo.root.parent, ignore_errors=True)
            seconds, result, repo, settings = run_sutazai(work / f"home-{index}")
            sutazai_times.append(seconds)
            err.log(f"run {index + 1}/{args.repeat}: SutazAI {seconds:.3f} s "
                    f"(PullResult.seconds {result.seconds:.3f})")

        assert repo is not None and settings is not None
        before = tree_bytes(repo.root)
        log_lines = len(nginx.access_log())
        started = time.perf_counter()
        again = pull(entry, repo, settings)
        repull_seconds = time.perf_counter() - started
        tree_delta = tree_bytes(repo.root) - before
        served, methods = logged_body_bytes(nginx, log_lines)

        raw_median = statistics.median(raw_times)
        sutazai_median = statistics.median(sutazai_times)
        raw_mibs = args.size_mib / raw_median
        sutazai_mibs = args.size_mib / sutazai_median
        ratio = sutazai_mibs / raw_mibs
        throughput_ok = ratio >= TARGET_RATIO
        repull_ok = (again.unchanged and again.downloaded_bytes == 0 and again.written_bytes == 0
                     and tree_delta == 0 and served == 0)
        figures: dict[str, Any] = {
            "size_bytes": size,
            "repeat": args.repeat,
            "download_chunk_bytes": settings.download_chunk_bytes,
            "cpus": os.cpu_count(),
            "raw": {"seconds": raw_times, "median_s": raw_median, "mib_per_s": raw_mibs},
            "sutazai": {"seconds": sutazai_times, "median_s": sutazai_median,
                        "mib_per_s": sutazai_mibs},
            "ratio": ratio,
            "target_ratio": TARGET_RATIO,
            "throughput_pass": throughput_ok,
            "repull": {
                "seconds": repull_seconds,
                "unchanged": again.unchanged,
                "downloaded_bytes": again.downloaded_bytes,
                "written_bytes": again.written_bytes,
                "tree_delta_bytes": tree_delta,
                "nginx_body_bytes": served,
                "nginx_requests": methods,
                "pass": repull_ok,
            },
            "pass": throughput_ok and repull_ok,
        }

        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            out = Console()
            table = Table(title=f"Pull of {args.size_mib} MiB from nginx on 127.0.0.1, "
                                f"median of {args.repeat}")
            table.add_column("path")
            table.add_column("runs (s)", justify="right")
            table.add_column("median s", justify="right")
            table.add_column("MiB/s", justify="right")
            table.add_column("vs raw", justify="right")
            table.add_row("raw: curl + sha256sum", " ".join(f"{t:.3f}" for t in raw_times),
                          f"{raw_median:.3f}", f"{raw_mibs:.1f}", "1.00x")
            table.add_row("SutazAI pull (verify + publish)",
                          " ".join(f"{t:.3f}" for t in sutazai_times),
                          f"{sutazai_median:.3f}", f"{sutazai_mibs:.1f}", f"{ratio:.2f}x")
            out.print(table)
            out.print(f"re-pull: {repull_seconds:.3f} s, unchanged={again.unchanged}, "
                      f"downloaded_bytes={again.downloaded_bytes}, "
                      f"written_bytes={again.written_bytes}, "
                      f"repository tree delta={tree_delta} bytes, "
                      f"nginx body bytes={served} ({', '.join(methods) or 'no requests'})",
                      highlight=False)
            verdict = "PASS" if throughput_ok else "FAIL"
            out.print(f"{verdict}: SutazAI >= {TARGET_RATIO}x raw throughput "
                      f"(measured {ratio:.2f}x)", highlight=False)
            verdict = "PASS" if repull_ok else "FAIL"
            out.print(f"{verdict}: re-pull writes 0 bytes (and downloads 0)", highlight=False)
            out.print(f"note: page cache not dropped; download_chunk_bytes="
                      f"{settings.download_chunk_bytes}; {os.cpu_count()} CPUs shared with "
                      "nginx; curl does not fsync, SutazAI does", highlight=False)
        return 1 if args.check and not figures["pass"] else 0
    finally:
        if nginx is not None:
            nginx.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
