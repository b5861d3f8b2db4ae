"""``hf:ORG/REPO`` sources against a local stand-in for the Hugging Face hub.

No real Hugging Face hub can run on, or be reached from, the machines these tests run on.
They therefore talk to :mod:`tests.hub_endpoint`, a small HTTP server on 127.0.0.1 that is
NOT the hub: it mimics only the endpoints ``huggingface_hub`` uses here (model info with
file metadata, the tree listing, and GET/HEAD on ``/resolve/`` with ``Range``), serving an
in-memory repository. What these tests prove is that SutazAI drives ``huggingface_hub`` and
its own downloader correctly against that API; they cannot prove the real hub still
answers the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import huggingface_hub
import pytest
from huggingface_hub import constants as hf_constants

from sutazai.config import Settings
from sutazai.errors import IntegrityError, SourceError, UnsafeFormatError
from sutazai.repository import Repository, load_catalog, pull
from sutazai.repository.manifest import FileEntry, content_digest
from tests.helpers import entry
from tests.hub_endpoint import DEFAULT_COMMIT, HubEndpoint, HubRepo


def safetensors_bytes(payload_size: int) -> bytes:
    header = json.dumps({"w": {"dtype": "U8", "shape": [payload_size],
                               "data_offsets": [0, payload_size]}}).encode()
    return len(header).to_bytes(8, "little") + header + os.urandom(payload_size)


def tiny_model() -> HubRepo:
    return HubRepo(
        repo_id="org/tiny-model",
        files={
            "README.md": b"# tiny model\n",
            "config.json": b'{"hidden_size": 8}\n',
            "model.safetensors": safetensors_bytes(300_000),
            "onnx/model.onnx": os.urandom(50_000),
            "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\nworld\n",
        },
        lfs={"model.safetensors", "onnx/model.onnx"},
    )


TINY_KEPT = ["config.json", "model.safetensors", "tokenizer/vocab.txt"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def hf_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point ``huggingface_hub`` at this test's cache, with no token and online.

    ``huggingface_hub`` reads HF_HOME / HF_HUB_OFFLINE into module constants when it is
    first imported, so the conftest's per-test HF_HOME alone does not isolate its cache.
    """
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "hf-home"
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEndpoint]:
    """The stand-in hub (not the real one, which cannot be reached here) as HF_ENDPOINT."""
    with HubEndpoint([tiny_model()]) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint.url)
        yield endpoint


def test_pull_pins_the_commit_and_stores_the_selected_files(
    hub: HubEndpoint, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    """Against the stand-in hub: resolve 'main' to the commit, fetch only what the entry keeps."""
    served = hub.repos["org/tiny-model"].files
    write_catalog(entry("tiny", "hf:org/tiny-model", revision="main", format="safetensors",
                        exclude=["*.md", "onnx/*"]))
    result = pull(load_catalog(settings.catalog).get("tiny"), repo, settings)

    assert result.created and not result.unchanged
    manifest = result.manifest
    assert manifest.version == 1 and manifest.source == "hf:org/tiny-model"
    assert manifest.revision == DEFAULT_COMMIT
    assert [f.path for f in manifest.files] == TINY_KEPT
    for file in manifest.files:
        assert file.digest == sha256(served[file.path]) and file.size == len(served[file.path])
        assert repo.blob_path(file.digest).read_bytes() == served[file.path]
    assert result.downloaded_bytes == sum(len(served[p]) for p in TINY_KEPT)

    info = hub.seen("model_info")
    assert [(r.path, r.query.get("blobs", [""])[0].lower()) for r in info] == [
        ("/api/models/org/tiny-model/revision/main", "true")  # files_metadata=True
    ]
    downloads = hub.seen("resolve", "GET")
    # Downloads are pinned to the resolved commit, not the moving branch, and skip exclusions.
    assert sorted(r.path for r in downloads) == [
        f"/org/tiny-model/resolve/{DEFAULT_COMMIT}/{p}" for p in TINY_KEPT
    ]
    assert all(r.status == 200 for r in downloads)


def test_include_patterns_select_files(
    hub: HubEndpoint, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    """Against the stand-in hub: 'include' keeps only matching files ('*' crosses '/')."""
    write_catalog(entry("tiny-onnx", "hf:org/tiny-model", revision="main", format="onnx",
                        include=["*.onnx", "*.json"]))
    result = pull(load_catalog(settings.catalog).get("tiny-onnx"), repo, settings)
    assert [f.path for f in result.manifest.files] == ["config.json", "onnx/model.onnx"]
    assert len(hub.seen("resolve", "GET")) == 2


def test_repull_of_an_unchanged_model_downloads_nothing(
    hub: HubEndpoint, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    """Against the stand-in hub: the second pull only asks for metadata."""
    write_catalog(entry("tiny", "hf:org/tiny-model", revision="main", exclude=["*.md"]))
    model = load_catalog(settings.catalog).get("tiny")
    first = pull(model, repo, settings)
    assert first.created and first.downloaded_bytes > 0
    before = len(hub.seen())

    again = pull(model, repo, settings)
    assert again.unchanged and not again.created
    assert again.downloaded_bytes == 0 and again.written_bytes == 0
    assert again.manifest.version == 1 and again.manifest.digest == first.manifest.digest
    second = hub.seen()[before:]
    assert [r.kind for r in second] == ["model_info"]  # no HEAD or GET on /resolve/
    assert [m.version for m in repo.versions("tiny")] == [1]


def test_lfs_file_not_matching_its_advertised_sha256_is_refused(
    hub: HubEndpoint, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    """Against the stand-in hub: served LFS bytes differ from the sha256 in the metadata."""
    good = safetensors_bytes(200_000)
    bad = bytearray(good)
    bad[150_000] ^= 0xFF
    advertised = sha256(good)
    hub.add(HubRepo(
        repo_id="org/corrupt-model",
        files={"config.json": b"{}", "model.safetensors": bytes(bad)},
        lfs={"model.safetensors"}, lfs_sha256={"model.safetensors": advertised},
    ))
    write_catalog(entry("corrupt", "hf:org/corrupt-model", revision="main"))

    with pytest.raises(IntegrityError, match=f"has sha256 {sha256(bytes(bad))}, expected "
                                             f"{advertised}"):
        pull(load_catalog(settings.catalog).get("corrupt"), repo, settings)
    assert repo.versions("corrupt") == []
    assert not repo.has_blob(advertised)
    assert not repo.has_blob(sha256(bytes(bad)))
    assert list((repo.tmp_dir / "downloads").glob("*.part")) == []
    assert any(r.path.endswith("/model.safetensors") for r in hub.seen("resolve", "GET"))


def test_pickle_weights_are_refused_before_any_download(
    hub: HubEndpoint, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    """Against the stand-in hub: a .pt file is refused from the file list alone."""
    hub.add(HubRepo(
        repo_id="org/pickled-model",
        files={"config.json": b"{}", "pytorch_model.pt": b"\x80\x04K\x01." + os.urandom(1000)},
        lfs={"pytorch_model.pt"},
    ))
    write_catalog(
        entry("pickled", "hf:org/pickled-model", revision="main"),
        entry("unpickled", "hf:org/pickled-model", revision="main", exclude=["*.pt"]),
    )
    catalog = load_catalog(settings.catalog)

    with pytest.raises(UnsafeFormatError, match=r"pytorch_model\.pt .*allow_pickle"):
        pull(catalog.get("pickled"), repo, settings)
    assert hub.seen("resolve") == []  # neither HEAD nor GET of any file
    assert repo.versions("pickled") == []

    # The remedy the message names works: dropping the file with 'exclude'.
    kept = pull(catalog.get("unpickled"), repo, settings)
    assert [f.path for f in kept.manifest.files] == ["config.json"]
    assert [r.path.rsplit("/", 1)[1] for r in hub.seen("resolve")] == ["config.json"]


@pytest.mark.parametrize(
    ("source", "revision", "reason"),
    [
        ("hf:org/missing-model", "main", "Repository Not Found"),
        ("hf:org/tiny-model", "v9.9", "Revision Not Found"),
    ],
)
def test_unknown_repository_or_revision_gives_a_clear_error(
    hub: HubEndpoint, settings: Settings, repo: Repository, write_catalog: Callable[..., Path],
    source: str, revision: str, reason: str,
) -> None:
    """Against the stand-in hub: a 404 from the model API becomes a SourceError."""
    write_catalog(entry("missing", source, revision=revision))
    repo_id = source.removeprefix("hf:")
    with pytest.raises(SourceError) as raised:
        pull(load_catalog(settings.catalog).get("missing"), repo, settings)
    message = str(raised.value)
    assert f"cannot resolve {repo_id}@{revision} on {hub.url}" in message
    assert reason in message and "HF_ENDPOINT" in message
    assert [(r.kind, r.status) for r in hub.seen()] == [("model_info", 404)]
    assert repo.versions("missing") == []


def test_offline_pull_from_the_hf_cache_matches_an_online_pull(
    tmp_path: Path, settings: Settings, repo: Repository,
    write_catalog: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Populate the HF cache from the stand-in hub, stop it, then pull with HF_HUB_OFFLINE=1."""
    write_catalog(entry("tiny", "hf:org/tiny-model", revision="main", exclude=["*.md"]))
    model = load_catalog(settings.catalog).get("tiny")
    with HubEndpoint([tiny_model()]) as endpoint:
        served = endpoint.repos["org/tiny-model"].files
        folder = Path(huggingface_hub.snapshot_download(
            "org/tiny-model", revision="main", endpoint=endpoint.url
        ))
        assert folder == Path(hf_constants.HF_HUB_CACHE).resolve() / (
            f"models--org--tiny-model/snapshots/{DEFAULT_COMMIT}")
        assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} \
            == set(served)
        # The same model pulled online, into another repository, for comparison.
        monkeypatch.setenv("HF_ENDPOINT", endpoint.url)
        online = pull(model, Repository(tmp_path / "online-repository"), settings)
    with pytest.raises(ConnectionRefusedError):  # the stand-in hub is really gone
        socket.create_connection(("127.0.0.1", urlsplit(endpoint.url).port), timeout=2).close()
    answered = len(endpoint.seen())

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    offline = pull(model, repo, settings)

    assert offline.created and offline.downloaded_bytes == 0
    assert offline.manifest.revision == online.manifest.revision == DEFAULT_COMMIT
    assert offline.manifest.files == online.manifest.files
    expected = [FileEntry(path=p, size=len(served[p]), digest=sha256(served[p]))
                for p in sorted(served) if not p.endswith(".md")]
    assert offline.manifest.digest == online.manifest.digest == content_digest(expected)
    for file in offline.manifest.files:
        assert repo.blob_path(file.digest).read_bytes() == served[file.path]
    assert pull(model, repo, settings).unchanged  # offline re-pull: same commit, same files
    assert len(endpoint.seen()) == answered

    write_catalog(entry("uncached", "hf:org/never-downloaded", revision="main"))
    with pytest.raises(SourceError, match="cannot resolve org/never-downloaded@main"):
        pull(load_catalog(settings.catalog).get("uncached"), repo, settings)


def test_unreachable_endpoint_gives_a_clear_error(
    settings: Settings, repo: Repository, write_catalog: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing listens where HF_ENDPOINT points (no stand-in hub, no real hub)."""
    from tests.servers import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    write_catalog(entry("gone", "hf:org/tiny-model", revision="main"))
    with pytest.raises(SourceError, match="cannot resolve org/tiny-model@main on http://127"):
        pull(load_catalog(settings.catalog).get("gone"), repo, settings)
