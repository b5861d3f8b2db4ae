"""``https:``/``http:`` sources against a real nginx mirror on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sutazai.config import Settings
from sutazai.errors import IntegrityError
from sutazai.repository import Repository, load_catalog, pull
from tests.helpers import entry, flip_byte
from tests.servers import Nginx


def publish_on_mirror(nginx: Nginx, name: str, size: int) -> tuple[str, bytes]:
    data = os.urandom(size)
    (nginx.root / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest(), data


def test_pull_from_mirror_verifies_and_repull_downloads_nothing(
    nginx: Nginx, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    digest, data = publish_on_mirror(nginx, "model.gguf", 3_000_000)
    write_catalog(entry("mirrored", f"{nginx.url}/model.gguf", sha256=digest, format="gguf"))
    model = load_catalog(settings.catalog).get("mirrored")

    first = pull(model, repo, settings)
    assert first.created and first.downloaded_bytes == len(data)
    assert first.manifest.files[0].path == "model.gguf"
    assert repo.blob_path(digest).read_bytes() == data

    requests_before = len(nginx.access_log())
    again = pull(model, repo, settings)
    assert again.unchanged and again.downloaded_bytes == 0 and again.written_bytes == 0
    assert [r["request"].split()[0] for r in nginx.access_log()[requests_before:]] == ["HEAD"]


def test_without_expected_digest_the_etag_pins_the_revision(
    nginx: Nginx, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    publish_on_mirror(nginx, "weights.safetensors", 200_000)
    write_catalog(entry("etagged", f"{nginx.url}/weights.safetensors"))
    model = load_catalog(settings.catalog).get("etagged")
    first = pull(model, repo, settings)
    assert '"' in first.manifest.revision  # nginx's ETag
    assert pull(model, repo, settings).unchanged

    time.sleep(1.1)  # a new mtime gives a new ETag
    publish_on_mirror(nginx, "weights.safetensors", 200_000)
    changed = pull(model, repo, settings)
    assert changed.created and changed.manifest.version == 2


def test_flipped_byte_on_the_mirror_is_detected_and_nothing_is_published(
    nginx: Nginx, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    digest, _ = publish_on_mirror(nginx, "model.gguf", 1_000_000)
    flip_byte(nginx.root / "model.gguf", 123_456)
    write_catalog(entry("corrupt", f"{nginx.url}/model.gguf", sha256=digest))
    with pytest.raises(IntegrityError, match="has sha256"):
        pull(load_catalog(settings.catalog).get("corrupt"), repo, settings)
    assert repo.versions("corrupt") == []
    assert not repo.has_blob(digest)
    assert list((repo.tmp_dir / "downloads").glob("*.part")) == []  # bad bytes discarded


def test_unreachable_mirror_gives_a_clear_error(
    settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    from sutazai.errors import SourceError
    from tests.servers import free_port

    write_catalog(entry("gone", f"http://127.0.0.1:{free_port()}/model.gguf"))
    with pytest.raises(SourceError, match="cannot reach"):
        pull(load_catalog(settings.catalog).get("gone"), repo, settings)


@pytest.mark.slow
def test_sigkilled_pull_leaves_no_version_and_the_next_pull_resumes(
    tmp_path: Path, settings: Settings, repo: Repository, write_catalog: Callable[..., Path]
) -> None:
    nginx = Nginx(tmp_path / "nginx-slow", tmp_path / "mirror", slow_rate="1m")
    nginx.start()
    try:
        digest, data = publish_on_mirror(nginx, "big.gguf", 3 * 1024 * 1024)
        write_catalog(entry("big", f"{nginx.url}/slow/big.gguf", sha256=digest))
        child = subprocess.Popen(
            [sys.executable, "-m", "sutazai.cli.main", "models", "pull", "big", "--no-register"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        parts = repo.tmp_dir / "downloads"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            partial = list(parts.glob("*.part")) if parts.exists() else []
            if partial and partial[0].stat().st_size > 512 * 1024:
                break
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        kept = partial[0].stat().st_size
        assert 0 < kept < len(data)
        assert repo.versions("big") == []  # nothing visible after the kill

        result = pull(load_catalog(settings.catalog).get("big"), repo, settings)
        assert result.created and result.manifest.files[0].digest == digest
        assert result.resumed_bytes == kept
        assert result.downloaded_bytes == len(data) - kept
        resumed = nginx.access_log()[-1]
        assert resumed["status"] == "206" and resumed["range"] == f"bytes={kept}-"
        assert repo.blob_path(digest).read_bytes() == data
    finally:
        nginx.stop()
