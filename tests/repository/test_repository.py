"""The content-addressed repository, exercised through the ``file:`` source."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from sutazai.config import Settings
from sutazai.errors import IntegrityError, NotFoundError, UnsafeFormatError
from sutazai.repository import Repository, load_catalog, pull
from sutazai.repository.manifest import content_digest
from tests.helpers import entry, flip_byte, tree_bytes


def make_model(folder: Path, weights: bytes = b"W" * 100_000) -> Path:
    (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text(json.dumps({"hidden": 128}))
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    return folder


def test_pull_publishes_a_verified_version_with_a_snapshot(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    source = make_model(tmp_path / "src")
    write_catalog(entry("tiny", f"file:{source}", format="safetensors"))
    result = pull(load_catalog(settings.catalog).get("tiny"), repo, settings)

    manifest = result.manifest
    assert result.created and manifest.ref == "tiny:1"
    assert sorted(f.path for f in manifest.files) == [
        "config.json", "model.safetensors", "tokenizer/vocab.txt"]
    assert manifest.digest == content_digest(list(manifest.files))
    snapshot = repo.snapshot_path(manifest)
    assert (snapshot / "model.safetensors").read_bytes() == b"W" * 100_000
    assert (snapshot / "tokenizer" / "vocab.txt").is_symlink()
    assert repo.verify([manifest]) == []


def test_repull_of_unchanged_model_writes_nothing(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    source = make_model(tmp_path / "src")
    write_catalog(entry("tiny", f"file:{source}"))
    model = load_catalog(settings.catalog).get("tiny")
    pull(model, repo, settings)
    before = tree_bytes(repo.root)

    again = pull(model, repo, settings)
    assert again.unchanged and not again.created
    assert (again.written_bytes, again.downloaded_bytes) == (0, 0)
    assert tree_bytes(repo.root) == before
    assert [m.version for m in repo.versions("tiny")] == [1]


def test_changed_source_becomes_a_new_version_and_shares_unchanged_blobs(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    source = make_model(tmp_path / "src")
    write_catalog(entry("tiny", f"file:{source}"))
    model = load_catalog(settings.catalog).get("tiny")
    first = pull(model, repo, settings).manifest
    (source / "config.json").write_text(json.dumps({"hidden": 256}))
    second = pull(model, repo, settings)

    assert second.created and second.manifest.version == 2
    assert second.written_bytes == len(json.dumps({"hidden": 256}))  # only the changed file
    assert repo.get("tiny", 1).digest == first.digest
    assert repo.get("tiny").version == 2


def test_identical_bytes_are_stored_once_across_models(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    weights = bytes(range(256)) * 1000
    a = make_model(tmp_path / "a", weights)
    b = make_model(tmp_path / "b", weights)
    write_catalog(entry("model-a", f"file:{a}"), entry("model-b", f"file:{b}"))
    catalog = load_catalog(settings.catalog)
    pull(catalog.get("model-a"), repo, settings)
    second = pull(catalog.get("model-b"), repo, settings)

    assert second.created and second.written_bytes == 0
    assert len(list(repo.blobs_dir.glob("*/*"))) == 3


def test_verify_reports_corrupted_and_missing_blobs(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    write_catalog(entry("tiny", f"file:{make_model(tmp_path / 'src')}"))
    manifest = pull(load_catalog(settings.catalog).get("tiny"), repo, settings).manifest
    weights = next(f for f in manifest.files if f.path == "model.safetensors")
    config = next(f for f in manifest.files if f.path == "config.json")
    flip_byte(repo.blob_path(weights.digest), 500)
    repo.blob_path(config.digest).unlink()

    problems = {(p.path, p.problem) for p in repo.verify([manifest])}
    assert ("model.safetensors", "digest") in problems
    assert ("config.json", "missing") in problems


def test_gc_removes_only_unreferenced_blobs(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    source = make_model(tmp_path / "src")
    write_catalog(entry("tiny", f"file:{source}"))
    model = load_catalog(settings.catalog).get("tiny")
    first = pull(model, repo, settings).manifest
    (source / "model.safetensors").write_bytes(b"new weights")
    second = pull(model, repo, settings).manifest
    assert repo.gc().removed_blobs == 0

    repo.remove(first)
    dry = repo.gc(dry_run=True)
    assert dry.removed_blobs == 1 and dry.freed_bytes == 100_000
    assert repo.gc().removed_blobs == 1
    assert repo.verify([second]) == []
    with pytest.raises(NotFoundError):
        repo.get("tiny", 1)


@pytest.mark.parametrize("name", ["weights.pt", "model.ckpt", "data.pkl"])
def test_pickle_weights_are_refused_before_download(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path],
    name: str,
) -> None:
    source = make_model(tmp_path / "src")
    (source / name).write_bytes(b"\x80\x04K\x01.")
    write_catalog(entry("tiny", f"file:{source}"))
    with pytest.raises(UnsafeFormatError, match=name):
        pull(load_catalog(settings.catalog).get("tiny"), repo, settings)
    assert repo.versions("tiny") == []


def test_bin_files_are_judged_by_content(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    source = make_model(tmp_path / "src")
    (source / "lookups.bin").write_bytes(msgpack.packb({"lexeme_norm": {"a": "b"}}))
    write_catalog(entry("data-bin", f"file:{source}"))
    assert pull(load_catalog(settings.catalog).get("data-bin"), repo, settings).created

    (source / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.")
    with pytest.raises(UnsafeFormatError, match=r"pytorch_model\.bin"):
        pull(load_catalog(settings.catalog).get("data-bin"), repo, settings)
    assert len(repo.versions("data-bin")) == 1

    write_catalog(entry("data-bin", f"file:{source}", allow_pickle=True))
    assert pull(load_catalog(settings.catalog).get("data-bin"), repo, settings).created


def test_expected_sha256_mismatch_publishes_nothing(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    write_catalog(entry("one", f"file:{tmp_path / 'model.gguf'}", sha256="ab" * 32))
    with pytest.raises(IntegrityError, match="sha256"):
        pull(load_catalog(settings.catalog).get("one"), repo, settings)
    assert repo.versions("one") == []


def _pull_in_child(catalog: str, home: str, name: str, queue: multiprocessing.Queue) -> None:
    settings = Settings(home=Path(home), catalog=Path(catalog))
    result = pull(load_catalog(settings.catalog).get(name), Repository(settings.repository_root),
                  settings)
    queue.put((result.manifest.ref, result.created))


def test_concurrent_pulls_of_one_model_publish_one_version(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    source = make_model(tmp_path / "src", b"X" * 5_000_000)
    write_catalog(entry("tiny", f"file:{source}"))
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    children = [
        context.Process(target=_pull_in_child,
                        args=(str(settings.catalog), str(settings.home), "tiny", queue))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    results = sorted(queue.get(timeout=5) for _ in children)
    assert [ref for ref, _ in results] == ["tiny:1", "tiny:1"]
    assert sorted(created for _, created in results) == [False, True]
    assert [m.version for m in repo.versions("tiny")] == [1]
    assert repo.verify(repo.versions("tiny")) == []
