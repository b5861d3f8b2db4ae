"""Encryption at rest of repository blobs (sutazai.repository.crypto), end to end.

Models go in through the real ``file:`` and ``http:`` sources (nginx on 127.0.0.1), the
key comes from the environment provider (``SUTAZAI_SECRET_REPOSITORY_KEY``) or from a real
OpenBao dev server, and every attack is made on the bytes on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sutazai.config import Settings, load_settings
from sutazai.errors import BundleError, ConfigError, IntegrityError
from sutazai.repository import Repository, encryption, load_catalog, pull
from sutazai.repository.bundle import export_bundle, import_bundle
from sutazai.repository.crypto import (
    CHUNK_BYTES,
    HEADER_BYTES,
    MAGIC,
    TAG_BYTES,
    RepositoryKey,
    WrongKeyError,
    encrypted_size,
    forget_repository_keys,
    load_previous_repository_key,
    load_repository_key,
)
from sutazai.repository.manifest import Manifest
from sutazai.security.audit import audit_path, open_audit_log
from sutazai.security.secrets import SecretNotFoundError
from tests.helpers import entry, flip_byte
from tests.openbao import ROOT_TOKEN, running_openbao
from tests.servers import Nginx

KEY_VAR = "SUTAZAI_SECRET_REPOSITORY_KEY"
PREVIOUS_KEY_VAR = "SUTAZAI_SECRET_REPOSITORY_PREVIOUS_KEY"
WEIGHTS = bytes(range(256)) * (10 * 1024 + 100)  # 2.5 MiB + 25 KiB: three chunks


@pytest.fixture(autouse=True)
def fresh_key_cache() -> Iterator[None]:
    forget_repository_keys()
    yield
    forget_repository_keys()


@pytest.fixture
def key_text(monkeypatch: pytest.MonkeyPatch) -> str:
    text = RepositoryKey.generate().to_text()
    monkeypatch.setenv(KEY_VAR, text)
    return text


@pytest.fixture
def enc_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / ".sutazai", catalog=tmp_path / "catalog.yaml",
                    repository_encryption=True)


def open_repo(settings: Settings, tmp_path: Path, encrypt: bool = True) -> Repository:
    """The settings' repository with decrypted copies in a test folder (not /dev/shm)."""
    return Repository(settings.repository_root, encrypt=encrypt,
                      key=lambda: load_repository_key(settings),
                      previous_key=lambda: load_previous_repository_key(settings),
                      plaintext_dir=tmp_path / "plaintext")


def make_model(folder: Path, weights: bytes = WEIGHTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text(json.dumps({"hidden": 128}))
    (folder / "empty.txt").write_bytes(b"")
    return folder


def pull_model(settings: Settings, repo: Repository, write_catalog: Callable[..., Path],
               name: str, source: Path) -> Manifest:
    write_catalog(entry(name, f"file:{source}", format="safetensors"))
    return pull(load_catalog(settings.catalog).get(name), repo, settings).manifest


def weights_of(manifest: Manifest) -> str:
    return next(f.digest for f in manifest.files if f.path == "model.safetensors")


def test_round_trip_publish_snapshot_verify(
    tmp_path: Path, enc_settings: Settings, key_text: str,
    write_catalog: Callable[..., Path],
) -> None:
    repo = open_repo(enc_settings, tmp_path)
    source = make_model(tmp_path / "src")
    manifest = pull_model(enc_settings, repo, write_catalog, "tiny", source)

    # content addressing is on the plaintext: the same digests as a plain repository
    plain = Repository(tmp_path / "plain-repo")
    plain_manifest = pull(load_catalog(enc_settings.catalog).get("tiny"), plain,
                          enc_settings).manifest
    assert manifest.digest == plain_manifest.digest
    assert [f.digest for f in manifest.files] == [f.digest for f in plain_manifest.files]

    for file in manifest.files:
        blob = repo.blob_path(file.digest).read_bytes()
        assert blob.startswith(MAGIC) and len(blob) == encrypted_size(file.size)
        assert repo.has_blob(file.digest, file.size) and repo.blob_size(file.digest) == file.size
    assert WEIGHTS[:4096] not in repo.blob_path(weights_of(manifest)).read_bytes()
    # publishing decrypts nothing: a version that is not served keeps no plaintext
    assert not repo.snapshot_path(manifest).exists()
    assert not (tmp_path / "plaintext").exists()
    assert not any(p.is_file() for p in repo.tmp_dir.rglob("*"))

    folder = repo.ensure_snapshot(manifest)
    assert folder == repo.snapshot_path(manifest)
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "empty.txt").read_bytes() == b""
    copy = (folder / "model.safetensors").resolve()
    assert copy.is_relative_to(tmp_path / "plaintext")
    assert stat.S_IMODE(copy.stat().st_mode) == 0o400
    assert stat.S_IMODE((tmp_path / "plaintext").stat().st_mode) == 0o700
    assert repo.ensure_snapshot(manifest) == folder  # intact: nothing redone
    with repo.open_blob(weights_of(manifest)) as stream:
        assert stream.read() == WEIGHTS
    with repo.open_blob(weights_of(manifest)) as stream:  # odd sizes across chunk borders
        parts = [stream.read(7), stream.read(CHUNK_BYTES), stream.read(CHUNK_BYTES + 13),
                 stream.read(), stream.read()]
    assert b"".join(parts) == WEIGHTS and parts[-1] == b""
    assert repo.verify([manifest]) == []

    again = pull(load_catalog(enc_settings.catalog).get("tiny"), repo, enc_settings)
    assert again.unchanged and again.written_bytes == 0


def test_plain_and_encrypted_blobs_side_by_side_then_encrypt_in_place(
    tmp_path: Path, enc_settings: Settings, key_text: str,
    write_catalog: Callable[..., Path],
) -> None:
    plain_repo = open_repo(enc_settings, tmp_path, encrypt=False)
    old = pull_model(enc_settings, plain_repo, write_catalog, "old",
                     make_model(tmp_path / "old"))
    old_folder = plain_repo.ensure_snapshot(old)
    assert (old_folder / "model.safetensors").resolve() == \
        plain_repo.blob_path(weights_of(old)).resolve()  # plain: linked to the blob itself

    # encryption turned on later: new blobs are sealed, identical ones stay shared
    repo = open_repo(enc_settings, tmp_path)
    new = pull_model(enc_settings, repo, write_catalog, "new",
                     make_model(tmp_path / "new", WEIGHTS[::-1]))
    assert repo.blob_header(weights_of(old)) is None
    assert repo.blob_header(weights_of(new)) is not None
    assert repo.blob_header(next(f.digest for f in new.files if f.path == "config.json")) \
        is None  # the same config bytes as "old": stored once, still plain
    assert (repo.ensure_snapshot(new) / "model.safetensors").read_bytes() == WEIGHTS[::-1]
    assert (repo.ensure_snapshot(old) / "model.safetensors").read_bytes() == WEIGHTS
    assert repo.verify([old, new]) == []

    report = encryption.encrypt_blobs(repo)
    assert report.encrypted == 3 and report.already_encrypted == 1 and not report.failed
    assert report.snapshots_reset == 2  # both versions linked a blob that changed
    assert all(repo.blob_header(f.digest) is not None for m in (old, new) for f in m.files)
    assert not old_folder.exists()  # no link is left pointing at ciphertext
    assert (repo.ensure_snapshot(old) / "model.safetensors").read_bytes() == WEIGHTS
    assert repo.verify([old, new]) == []
    assert encryption.encrypt_blobs(repo).encrypted == 0


def test_key_rotation_reads_both_keys_and_rekey_retires_the_old_one(
    tmp_path: Path, enc_settings: Settings, key_text: str, monkeypatch: pytest.MonkeyPatch,
    write_catalog: Callable[..., Path],
) -> None:
    """Rotation as an admin does it: the old key becomes repository/previous-key and a new
    one repository/key. Blobs of both keys stay readable; `rekey` re-seals the old ones,
    after which the previous key is not needed. A reader that cached the old key follows
    the rotation without a restart. Plaintext and digests never change."""
    old_key = RepositoryKey.parse(key_text)
    reader = open_repo(enc_settings, tmp_path)  # a long-running process, caching the old key
    old = pull_model(enc_settings, reader, write_catalog, "old", make_model(tmp_path / "old"))

    new_key = RepositoryKey.generate()
    monkeypatch.setenv(KEY_VAR, new_key.to_text())
    forget_repository_keys()
    repo = open_repo(enc_settings, tmp_path)
    with pytest.raises(WrongKeyError, match=r"repository/previous-key.*rekey"):
        repo.open_blob(weights_of(old)).read()
    with pytest.raises(WrongKeyError, match="nothing was changed"):
        encryption.rekey_blobs(repo)
    assert all(repo.blob_header(f.digest).key_id == old_key.id_bytes  # type: ignore[union-attr]
               for f in old.files)

    monkeypatch.setenv(PREVIOUS_KEY_VAR, key_text)
    new = pull_model(enc_settings, repo, write_catalog, "new",
                     make_model(tmp_path / "new", WEIGHTS[::-1]))
    assert repo.blob_header(weights_of(new)).key_id == new_key.id_bytes  # type: ignore[union-attr]
    assert repo.open_blob(weights_of(old)).read() == WEIGHTS  # through the previous key
    assert repo.verify([old, new]) == []

    report = encryption.rekey_blobs(repo)
    assert report.key_id == new_key.key_id and not report.failed
    assert (report.rekeyed, report.current, report.plain) == (3, 1, 0)  # config shared
    assert report.rekeyed_bytes == sum(f.size for f in old.files)
    assert {repo.blob_header(f.digest).key_id  # type: ignore[union-attr]
            for m in (old, new) for f in m.files} == {new_key.id_bytes}
    assert encryption.rekey_blobs(repo).rekeyed == 0  # idempotent

    monkeypatch.delenv(PREVIOUS_KEY_VAR)
    forget_repository_keys()
    assert (reader.ensure_snapshot(old) / "model.safetensors").read_bytes() == WEIGHTS
    assert reader.open_blob(weights_of(new)).read() == WEIGHTS[::-1]  # re-read the new key
    assert open_repo(enc_settings, tmp_path).verify([old, new]) == []


def test_wrong_key_is_a_clear_error_not_corruption(
    tmp_path: Path, enc_settings: Settings, key_text: str, monkeypatch: pytest.MonkeyPatch,
    write_catalog: Callable[..., Path],
) -> None:
    manifest = pull_model(enc_settings, open_repo(enc_settings, tmp_path), write_catalog,
                          "tiny", make_model(tmp_path / "src"))
    right = RepositoryKey.parse(key_text)
    wrong = RepositoryKey.generate()
    monkeypatch.setenv(KEY_VAR, wrong.to_text())
    forget_repository_keys()
    repo = open_repo(enc_settings, tmp_path)
    for action in (lambda: repo.ensure_snapshot(manifest), lambda: repo.verify([manifest])):
        with pytest.raises(WrongKeyError, match=rf"key id {right.key_id}.*has id {wrong.key_id}"):
            action()
    assert not repo.snapshot_path(manifest).exists()
    # and a repository opened without any key says how to open it
    with pytest.raises(ConfigError, match=r"Repository\.from_settings"):
        Repository(enc_settings.repository_root).ensure_snapshot(manifest)


def test_missing_or_malformed_key_fails_before_anything_is_stored(
    tmp_path: Path, enc_settings: Settings, monkeypatch: pytest.MonkeyPatch,
    write_catalog: Callable[..., Path],
) -> None:
    monkeypatch.delenv(KEY_VAR, raising=False)
    repo = Repository.from_settings(enc_settings)
    with pytest.raises(SecretNotFoundError) as missing:
        pull_model(enc_settings, repo, write_catalog, "tiny", make_model(tmp_path / "src"))
    message = str(missing.value)
    assert "base64.b64encode(os.urandom(32))" in message and KEY_VAR in message
    assert "repository/key" in message and "0600" in message
    assert repo.versions("tiny") == [] and not list(repo.blobs_dir.glob("*/*"))

    monkeypatch.setenv(KEY_VAR, "dG9vIHNob3J0")  # base64 of 9 bytes
    forget_repository_keys()
    with pytest.raises(ConfigError, match=r"decodes to 9 bytes, not 32.*os\.urandom"):
        Repository.from_settings(enc_settings).key()


def three_chunk_blob(tmp_path: Path, settings: Settings,
                     write_catalog: Callable[..., Path]) -> tuple[Repository, Manifest, Path]:
    repo = open_repo(settings, tmp_path)
    manifest = pull_model(settings, repo, write_catalog, "tiny", make_model(tmp_path / "src"))
    blob = repo.blob_path(weights_of(manifest))
    os.chmod(blob, 0o644)
    return repo, manifest, blob


def swap_chunks(blob: Path) -> None:
    data = bytearray(blob.read_bytes())
    size = CHUNK_BYTES + TAG_BYTES
    first = data[HEADER_BYTES:HEADER_BYTES + size]
    data[HEADER_BYTES:HEADER_BYTES + size] = data[HEADER_BYTES + size:HEADER_BYTES + 2 * size]
    data[HEADER_BYTES + size:HEADER_BYTES + 2 * size] = first
    blob.write_bytes(bytes(data))


def drop_last_chunk(blob: Path) -> None:
    with blob.open("r+b") as handle:
        handle.truncate(HEADER_BYTES + 2 * (CHUNK_BYTES + TAG_BYTES))


def shrink_header_and_drop_last_chunk(blob: Path) -> None:
    """Truncate at a chunk boundary *and* fix the header's size to match."""
    data = bytearray(blob.read_bytes()[:HEADER_BYTES + 2 * (CHUNK_BYTES + TAG_BYTES)])
    data[24:32] = (2 * CHUNK_BYTES).to_bytes(8, "big")
    blob.write_bytes(bytes(data))


TAMPERING: dict[str, Callable[[Path], None]] = {
    "byte-in-chunk": lambda blob: flip_byte(blob, HEADER_BYTES + CHUNK_BYTES + 77),
    "byte-in-tag": lambda blob: flip_byte(blob, HEADER_BYTES + CHUNK_BYTES + 5),
    "byte-in-salt": lambda blob: flip_byte(blob, 40),
    "chunks-reordered": swap_chunks,
    "truncated": drop_last_chunk,
    "truncated-and-header-edited": shrink_header_and_drop_last_chunk,
}


@pytest.mark.parametrize("attack", sorted(TAMPERING))
def test_tampering_is_reported_by_verify_and_refused_by_readers(
    attack: str, tmp_path: Path, enc_settings: Settings, key_text: str,
    write_catalog: Callable[..., Path],
) -> None:
    repo, manifest, blob = three_chunk_blob(tmp_path, enc_settings, write_catalog)
    TAMPERING[attack](blob)

    problems = [(p.path, p.problem) for p in repo.verify([manifest])]
    assert problems and all(path == "model.safetensors" for path, _ in problems)
    assert problems[0][1] in {"corrupt", "size"}
    with pytest.raises(IntegrityError):
        repo.ensure_snapshot(manifest)
    assert not repo.snapshot_path(manifest).exists()
    assert not list((tmp_path / "plaintext").rglob("*.tmp"))  # no half-decrypted copy
    with pytest.raises(IntegrityError), repo.open_blob(weights_of(manifest)) as stream:
        stream.read()
    with pytest.raises((IntegrityError, BundleError)):  # refused, whichever check fires first
        export_bundle(repo, [manifest], tmp_path / "out.tar")
    assert not list(tmp_path.glob("*out.tar*"))


def test_blob_copied_over_another_is_detected(
    tmp_path: Path, enc_settings: Settings, key_text: str,
    write_catalog: Callable[..., Path],
) -> None:
    repo, manifest, blob = three_chunk_blob(tmp_path, enc_settings, write_catalog)
    config = next(f for f in manifest.files if f.path == "config.json")
    shutil.copyfile(repo.blob_path(config.digest), blob)
    assert ("model.safetensors", "corrupt") in {(p.path, p.problem)
                                                for p in repo.verify([manifest])}
    with pytest.raises(IntegrityError, match="copied over another"):
        repo.ensure_snapshot(manifest)
    assert not repo.has_blob(weights_of(manifest), len(WEIGHTS))


def test_decrypted_copy_modified_is_reported_and_evict_restores(
    tmp_path: Path, enc_settings: Settings, key_text: str,
    write_catalog: Callable[..., Path],
) -> None:
    repo = open_repo(enc_settings, tmp_path)
    manifest = pull_model(enc_settings, repo, write_catalog, "tiny", make_model(tmp_path / "src"))
    copy = (repo.ensure_snapshot(manifest) / "model.safetensors").resolve()
    flip_byte(copy, 10)
    assert [(p.path, p.problem) for p in repo.verify([manifest])] == [
        ("model.safetensors", "snapshot")]

    files, freed = repo.evict_plaintext([manifest])
    assert files == 3 and freed == len(WEIGHTS) + len(json.dumps({"hidden": 128}))
    assert not repo.snapshot_path(manifest).exists() and not copy.exists()
    assert (repo.ensure_snapshot(manifest) / "model.safetensors").read_bytes() == WEIGHTS
    assert repo.verify([manifest]) == []


def test_gc_removes_unreferenced_blobs_and_their_decrypted_copies(
    tmp_path: Path, enc_settings: Settings, key_text: str,
    write_catalog: Callable[..., Path],
) -> None:
    repo = open_repo(enc_settings, tmp_path)
    source = make_model(tmp_path / "src")
    first = pull_model(enc_settings, repo, write_catalog, "tiny", source)
    repo.ensure_snapshot(first)
    (source / "model.safetensors").write_bytes(b"new weights")
    second = pull_model(enc_settings, repo, write_catalog, "tiny", source)
    repo.ensure_snapshot(second)
    assert repo.gc().removed_blobs == 0

    repo.remove(first)
    report = repo.gc()
    assert (report.removed_blobs, report.removed_plaintext) == (1, 1)
    assert not repo.blob_path(weights_of(first)).exists()
    assert repo.plaintext.find(weights_of(first), len(WEIGHTS)) is None
    assert (repo.ensure_snapshot(second) / "model.safetensors").read_bytes() == b"new weights"
    assert repo.verify([second]) == []


def test_bundles_carry_plaintext_and_are_sealed_again_on_import(
    tmp_path: Path, enc_settings: Settings, key_text: str, monkeypatch: pytest.MonkeyPatch,
    write_catalog: Callable[..., Path],
) -> None:
    repo = open_repo(enc_settings, tmp_path)
    manifest = pull_model(enc_settings, repo, write_catalog, "tiny", make_model(tmp_path / "src"))
    bundle = tmp_path / "tiny.tar"
    export_bundle(repo, [manifest], bundle)

    plain = Repository(tmp_path / "air-gapped-plain")
    [(imported, created)] = import_bundle(plain, bundle)
    assert created and imported.digest == manifest.digest and plain.verify([imported]) == []
    assert plain.blob_path(weights_of(manifest)).read_bytes() == WEIGHTS

    other = RepositoryKey.generate()
    sealed = Repository(tmp_path / "air-gapped-encrypted", encrypt=True, key=other,
                        plaintext_dir=tmp_path / "plaintext-2")
    [(imported, created)] = import_bundle(sealed, bundle)
    header = sealed.blob_header(weights_of(manifest))
    assert created and header is not None and header.key_id == other.id_bytes
    assert sealed.verify([imported]) == []
    assert (sealed.ensure_snapshot(imported) / "model.safetensors").read_bytes() == WEIGHTS
    assert not any(p.is_file() for p in sealed.tmp_dir.rglob("*"))


def test_sealed_bundles_carry_no_plaintext_and_need_the_key(
    tmp_path: Path, enc_settings: Settings, key_text: str, write_catalog: Callable[..., Path],
) -> None:
    """`export --sealed`: a bundle for plain media. Its blobs are ciphertext (as stored,
    or sealed on the way when plain), its SHA256SUMS checks with `sha256sum -c`, and only
    a repository holding the key imports it: as-is when it seals with that key, as
    plaintext otherwise. A wrong key or an altered blob publishes nothing."""
    import subprocess
    import tarfile

    key = RepositoryKey.parse(key_text)
    plain_first = Repository(enc_settings.repository_root, key=key,
                             plaintext_dir=tmp_path / "plaintext-0")
    old = pull_model(enc_settings, plain_first, write_catalog, "old", make_model(tmp_path / "o"))
    repo = open_repo(enc_settings, tmp_path)
    new = pull_model(enc_settings, repo, write_catalog, "new",
                     make_model(tmp_path / "n", WEIGHTS[::-1]))
    assert repo.blob_header(weights_of(old)) is None  # stored plain: sealed on export
    bundle = tmp_path / "models.tar"
    export_bundle(repo, [old, new], bundle, sealed=True)

    data = bundle.read_bytes()
    assert WEIGHTS[:4096] not in data and WEIGHTS[::-1][:4096] not in data
    unpacked = tmp_path / "unpacked"
    with tarfile.open(bundle) as tar:
        tar.extractall(unpacked, filter="data")
    assert json.loads((unpacked / "sutazai-bundle.json").read_text())["sealed_with_key"] == \
        key.key_id
    checked = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=unpacked,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    same_key = Repository(tmp_path / "same-key", encrypt=True, key=key,
                          plaintext_dir=tmp_path / "plaintext-1")
    assert [created for _, created in import_bundle(same_key, bundle)] == [True, True]
    assert same_key.blob_path(weights_of(new)).read_bytes() == \
        repo.blob_path(weights_of(new)).read_bytes()  # the ciphertext, kept as it was
    assert (same_key.ensure_snapshot(new) / "model.safetensors").read_bytes() == WEIGHTS[::-1]
    assert same_key.verify([old, new]) == []

    plain_holder = Repository(tmp_path / "plain-with-key", key=key)
    import_bundle(plain_holder, bundle)
    assert plain_holder.blob_path(weights_of(old)).read_bytes() == WEIGHTS  # unsealed

    stranger = Repository(tmp_path / "stranger", encrypt=True, key=RepositoryKey.generate())
    with pytest.raises(WrongKeyError, match="repository/previous-key"):
        import_bundle(stranger, bundle)
    assert stranger.all_versions() == []

    altered = tmp_path / "altered.tar"
    with tarfile.open(bundle) as source, tarfile.open(altered, "w") as sink:
        for member in source:
            content = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == f"blobs/sha256/{weights_of(new)}":
                content = content[:-1] + bytes([content[-1] ^ 1])
            sink.addfile(member, io.BytesIO(content))
    victim = Repository(tmp_path / "victim", encrypt=True, key=key)
    with pytest.raises(BundleError, match="failed authentication"):
        import_bundle(victim, altered)
    assert victim.all_versions() == []
    assert not any(p.is_file() for p in victim.tmp_dir.rglob("*"))


def test_resumed_http_download_is_sealed_and_leaves_no_plaintext(
    nginx: Nginx, tmp_path: Path, enc_settings: Settings, key_text: str,
    write_catalog: Callable[..., Path],
) -> None:
    data = os.urandom(3_000_000)
    (nginx.root / "model.gguf").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    url = f"{nginx.url}/model.gguf"
    repo = open_repo(enc_settings, tmp_path)
    # an interrupted earlier attempt left the first megabyte
    key = hashlib.sha256(f"{url}\n{digest}".encode()).hexdigest()[:32]
    downloads = repo.tmp_dir / "downloads"
    downloads.mkdir(parents=True)
    (downloads / f"{key}.part").write_bytes(data[:1_000_000])
    (downloads / f"{key}.json").write_text(json.dumps({"url": url, "total": len(data)}))

    write_catalog(entry("mirrored", url, sha256=digest, format="gguf"))
    result = pull(load_catalog(enc_settings.catalog).get("mirrored"), repo, enc_settings)
    assert result.created and result.resumed_bytes == 1_000_000
    assert result.downloaded_bytes == len(data) - 1_000_000
    assert repo.blob_header(digest) is not None
    assert data[:4096] not in repo.blob_path(digest).read_bytes()
    assert not any(p.is_file() for p in repo.tmp_dir.rglob("*"))  # .part sealed and removed
    assert (repo.ensure_snapshot(result.manifest) / "model.gguf").read_bytes() == data
    assert repo.verify([result.manifest]) == []


def test_key_read_is_audited_once_by_name_and_never_logged(
    tmp_path: Path, enc_settings: Settings, key_text: str, caplog: pytest.LogCaptureFixture,
    write_catalog: Callable[..., Path],
) -> None:
    caplog.set_level(logging.DEBUG)
    repo = Repository.from_settings(enc_settings)
    manifest = pull_model(enc_settings, repo, write_catalog, "tiny", make_model(tmp_path / "src"))
    again = Repository.from_settings(enc_settings)
    assert again.verify([manifest]) == []
    flip_byte(again.blob_path(weights_of(manifest)), HEADER_BYTES + 3)
    with pytest.raises(IntegrityError) as failure:
        again.open_blob(weights_of(manifest)).read()

    reads = [r for r in open_audit_log(enc_settings).records() if r.action == "secret.read"]
    assert [(r.target, r.result) for r in reads] == [("repository/key", "ok")]  # cached
    assert reads[0].details["provider"].startswith("env")
    key = RepositoryKey.parse(key_text)
    raw = key.material
    audit_text = audit_path(enc_settings).read_text()
    for text in (caplog.text, str(failure.value), repr(key), str(key), audit_text):
        assert key_text not in text and raw.hex() not in text
    assert key.key_id in repr(key)


def test_auto_places_decrypted_copies_in_private_tmpfs_and_evict_cleans(
    tmp_path: Path, enc_settings: Settings, key_text: str,
    write_catalog: Callable[..., Path],
) -> None:
    repo = Repository.from_settings(enc_settings)
    if repo.plaintext.memory_dir is None:
        pytest.fail("this machine has no writable /dev/shm; the memory placement is untested")
    try:
        manifest = pull_model(enc_settings, repo, write_catalog, "tiny",
                              make_model(tmp_path / "src"))
        link = repo.ensure_snapshot(manifest) / "model.safetensors"
        copy = link.resolve()
        assert copy.is_relative_to(repo.plaintext.memory_dir)
        assert os.readlink(link) == str(copy)  # outside the repository: absolute link
        for folder in (repo.plaintext.memory_dir, repo.plaintext.memory_dir.parent):
            info = os.lstat(folder)
            assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
        assert link.read_bytes() == WEIGHTS
        assert not (repo.root / "plaintext").exists()  # nothing decrypted on the disk
    finally:
        repo.evict_plaintext()
    assert not copy.exists() and not repo.snapshot_path(manifest).exists()
    shutil.rmtree(repo.plaintext.memory_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # shared by this user's repositories: only if empty
        repo.plaintext.memory_dir.parent.rmdir()


def test_key_from_a_real_openbao_server(
    tmp_path: Path, enc_settings: Settings, monkeypatch: pytest.MonkeyPatch,
    write_catalog: Callable[..., Path],
) -> None:
    monkeypatch.delenv(KEY_VAR, raising=False)
    key = RepositoryKey.generate()
    with running_openbao(tmp_path / "openbao") as bao:
        bao.root().secrets.kv.v2.create_or_update_secret(
            path="sutazai/repository", secret={"key": key.to_text()}, mount_point="secret")
        monkeypatch.setenv("SUTAZAI_SECRETS_PROVIDER", "vault")
        monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_ADDR", bao.addr)
        monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_TOKEN", ROOT_TOKEN)
        repo = open_repo(enc_settings, tmp_path)
        manifest = pull_model(enc_settings, repo, write_catalog, "tiny",
                              make_model(tmp_path / "src"))
    # the server is gone: the process keeps the key it read
    header = repo.blob_header(weights_of(manifest))
    assert header is not None and header.key_id == key.id_bytes
    assert (repo.ensure_snapshot(manifest) / "model.safetensors").read_bytes() == WEIGHTS
    reads = [r for r in open_audit_log(enc_settings).records() if r.action == "secret.read"]
    assert [(r.target, r.result) for r in reads] == [("repository/key", "ok")]
    assert "vault" in reads[0].details["provider"]


def test_the_cli_encrypts_an_existing_repository_and_audits_it(
    tmp_path: Path, settings: Settings, key_text: str, write_catalog: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`sutazai models encrypt` seals the plain blobs a repository already has; the product
    path (`open_repository`) then reads them, and `sutazai models verify` passes. Then a
    key rotation with `models rekey`, and the way back with `models decrypt`."""
    from typer.testing import CliRunner

    from sutazai.cli.main import app
    from sutazai.repository import open_repository

    manifest = pull_model(settings, open_repository(settings), write_catalog, "tiny",
                          make_model(tmp_path / "src"))
    monkeypatch.setenv("SUTAZAI_REPOSITORY_PLAINTEXT_DIR", str(tmp_path / "plain"))
    runner = CliRunner()
    done = runner.invoke(app, ["models", "encrypt", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["encrypted"] == 3 and not report["failed"]  # weights, config, empty file
    repo = open_repository(load_settings())
    assert repo.blob_header(weights_of(manifest)) is not None  # sealed on disk
    assert (repo.ensure_snapshot(manifest) / "model.safetensors").read_bytes() == WEIGHTS
    assert runner.invoke(app, ["models", "verify"]).exit_code == 0
    assert [r for r in open_audit_log(settings).records() if r.action == "repository.encrypt"]

    # rotation: `models rekey` re-seals every blob with the new key, audited
    monkeypatch.setenv(PREVIOUS_KEY_VAR, key_text)
    monkeypatch.setenv(KEY_VAR, RepositoryKey.generate().to_text())
    forget_repository_keys()
    rekeyed = runner.invoke(app, ["models", "rekey", "--json"])
    assert rekeyed.exit_code == 0, rekeyed.output
    assert json.loads(rekeyed.output)["rekeyed"] == 3
    assert [r for r in open_audit_log(settings).records() if r.action == "repository.rekey"]
    monkeypatch.delenv(PREVIOUS_KEY_VAR)
    forget_repository_keys()
    assert runner.invoke(app, ["models", "verify"]).exit_code == 0

    # and back: `models decrypt` is refused while new blobs would be sealed, then works
    monkeypatch.setenv("SUTAZAI_REPOSITORY_ENCRYPTION", "true")
    refused = runner.invoke(app, ["models", "decrypt"])
    assert refused.exit_code != 0 and repo.blob_header(weights_of(manifest)) is not None
    monkeypatch.setenv("SUTAZAI_REPOSITORY_ENCRYPTION", "false")
    decrypted = runner.invoke(app, ["models", "decrypt", "--json"])
    assert decrypted.exit_code == 0, decrypted.output
    assert json.loads(decrypted.output)["decrypted"] == 3
    assert repo.blob_path(weights_of(manifest)).read_bytes() == WEIGHTS  # plain on disk
    assert (repo.snapshot_path(manifest) / "model.safetensors").resolve() == \
        repo.blob_path(weights_of(manifest)).resolve()  # linked to the blob, as when plain
    assert not list(repo.plaintext.copies())  # the decrypted copies are gone
    monkeypatch.delenv(KEY_VAR)
    forget_repository_keys()
    assert runner.invoke(app, ["models", "verify"]).exit_code == 0  # no key needed now
    assert [r for r in open_audit_log(settings).records() if r.action == "repository.decrypt"]

    monkeypatch.setenv("SUTAZAI_CLI_ROLE", "operator")
    for command in ("encrypt", "rekey", "decrypt"):  # an admin's decisions
        assert runner.invoke(app, ["models", command]).exit_code != 0
