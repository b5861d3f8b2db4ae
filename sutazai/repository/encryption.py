"""Encryption at rest for a repository that already holds blobs: seal, re-key, unseal.

The migrations an operator runs once in a while (``sutazai models encrypt``, ``rekey``,
``decrypt``), apart from the store's everyday reads and writes (:mod:`.store`), which only
need to know how to read and write one sealed blob. Each walks every blob under the
repository's exclusive lock and replaces each one atomically, so a run cut short can be
run again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sutazai.errors import ConfigError, IntegrityError
from sutazai.progress import NULL_PROGRESS, Progress, ProgressTask
from sutazai.repository.crypto import (
    BlobAuthenticationError,
    BlobHeader,
    RepositoryKey,
    encrypt_stream,
    read_header,
)
from sutazai.repository.fsutil import fsync_dir, hash_stream
from sutazai.repository.store import Repository


@dataclass
class EncryptReport:
    """What :func:`encrypt_blobs` did."""

    encrypted: int = 0
    encrypted_bytes: int = 0
    already_encrypted: int = 0
    failed: list[str] = field(default_factory=list)  # digests left plain: corrupt blobs
    snapshots_reset: int = 0


@dataclass
class RekeyReport:
    """What :func:`rekey_blobs` did."""

    key_id: str = ""  # the current key's fingerprint, which every sealed blob now has
    rekeyed: int = 0
    rekeyed_bytes: int = 0
    current: int = 0  # already sealed with the current key
    plain: int = 0  # not encrypted at all ('sutazai models encrypt' seals them)
    failed: list[str] = field(default_factory=list)  # digests that failed authentication


@dataclass
class DecryptReport:
    """What :func:`decrypt_blobs` did."""

    decrypted: int = 0
    decrypted_bytes: int = 0
    already_plain: int = 0
    failed: list[str] = field(default_factory=list)  # digests that stay sealed
    snapshots_relinked: int = 0


def encrypt_blobs(repo: Repository, progress: Progress = NULL_PROGRESS) -> EncryptReport:
    """Seal every plain blob in place (turning encryption on for an existing store).

    Each blob is re-hashed while it is encrypted into a temporary file, which then
    replaces it atomically; a plain blob that no longer hashes to its name is left as
    it is and listed in ``failed`` (run verify). Snapshot folders linking a blob are
    removed *before* the blob is replaced, so no reader follows a link to ciphertext;
    ensure_snapshot remakes them with decrypted copies. Holds the exclusive lock.
    Needs the key; works whatever ``encrypt`` says.
    """
    report = EncryptReport()
    key_holder = repo.key()
    del key_holder  # fetched up front: a missing key fails before any change
    with repo.exclusive():
        plain, sealed = _scan_blobs(repo, report.failed)
        report.already_encrypted = len(sealed)
        task = progress.task("encrypt blobs", total=sum(b.stat().st_size for b in plain))
        for blob in plain:
            digest, size = blob.name, blob.stat().st_size
            staged = repo.staging_path("seal")
            try:
                with blob.open("rb") as source, staged.open("wb") as sink:
                    actual = encrypt_stream(source, sink, repo.key(), digest, size, task)
                    sink.flush()
                    os.fsync(sink.fileno())
                if actual != digest:
                    report.failed.append(digest)
                    continue
                report.snapshots_reset += repo.reset_snapshots({digest})
                os.chmod(staged, 0o444)
                os.replace(staged, blob)
                report.encrypted += 1
                report.encrypted_bytes += size
            finally:
                staged.unlink(missing_ok=True)
        task.close()
    return report


def rekey_blobs(repo: Repository, progress: Progress = NULL_PROGRESS) -> RekeyReport:
    """Re-seal every blob sealed with the previous key with the current one (the second
    half of a key rotation; see the README's Encryption at rest).

    Every sealed blob's key is checked before anything changes: a blob that neither the
    current nor the previous key sealed stops the run with :class:`WrongKeyError`. Each
    blob is decrypted (authenticated) and re-hashed while it is sealed again into a
    temporary file, which then replaces it atomically, so a run cut short leaves every
    blob readable and the next run finishes the rest. Decrypted copies stay valid (the
    plaintext is unchanged). A blob that fails authentication is left as it is and
    listed in ``failed`` (run verify). Holds the exclusive lock.
    """
    report = RekeyReport()
    with repo.exclusive():
        plain, sealed = _scan_blobs(repo, report.failed)
        report.plain = len(plain)
        for _, header in sealed:
            repo.sealing_key(header)  # a missing key fails before any change
        current = repo.key()  # after key_for, which may have re-read a rotated key
        report.key_id = current.key_id
        stale = [(blob, header) for blob, header in sealed
                 if header.key_id != current.id_bytes]
        report.current = len(sealed) - len(stale)
        report.rekeyed, report.rekeyed_bytes, failed = _rewrite_sealed(repo,
            stale, current, progress.task("re-seal blobs",
                                          total=sum(h.plain_size for _, h in stale)))
        report.failed += failed
    return report


def decrypt_blobs(repo: Repository, progress: Progress = NULL_PROGRESS) -> DecryptReport:
    """Turn every sealed blob back into a plain one (leaving encryption at rest).

    Refused while ``encrypt`` is on, since new blobs would be sealed again. Each blob
    is authenticated and re-hashed on the way and replaced atomically; snapshots are
    then relinked to the plain blobs, and the decrypted copies removed. Holds the
    exclusive lock. Needs the key(s) that sealed them.
    """
    if repo.encrypt:
        raise ConfigError("this repository seals new blobs: set "
                          "SUTAZAI_REPOSITORY_ENCRYPTION=false first, then decrypt")
    report = DecryptReport()
    with repo.exclusive():
        plain, sealed = _scan_blobs(repo, report.failed)
        report.already_plain = len(plain)
        for _, header in sealed:
            repo.sealing_key(header)  # a missing key fails before any change
        report.decrypted, report.decrypted_bytes, failed = _rewrite_sealed(repo,
            sealed, None, progress.task("decrypt blobs",
                                        total=sum(h.plain_size for _, h in sealed)))
        report.failed += failed
        # snapshots linked decrypted copies: relink them to the plain blobs, as publish
        # does, then the copies can go
        plain_now = {header.digest for _, header in sealed} - set(failed)
        for manifest in repo.all_versions():
            if plain_now.intersection(f.digest for f in manifest.files):
                repo._write_snapshot(manifest, materialize=False)
                report.snapshots_relinked += 1
        repo.plaintext.remove(plain_now)
    return report


def _scan_blobs(repo: Repository, unreadable: list[str]
                ) -> tuple[list[Path], list[tuple[Path, BlobHeader]]]:
    """Every blob, split into plain ones and sealed ones with their headers; blobs whose
    header is damaged go to ``unreadable``."""
    plain: list[Path] = []
    sealed: list[tuple[Path, BlobHeader]] = []
    for blob in sorted(repo.blobs_dir.glob("*/*")):
        try:
            header = read_header(blob, blob.name)
        except IntegrityError:
            unreadable.append(blob.name)
            continue
        if header is None:
            plain.append(blob)
        else:
            sealed.append((blob, header))
    return plain, sealed


def _rewrite_sealed(repo: Repository, blobs: list[tuple[Path, BlobHeader]],
                    key: RepositoryKey | None, task: ProgressTask
                    ) -> tuple[int, int, list[str]]:
    """Rewrite each sealed blob from its authenticated plaintext, sealed with ``key``
    or plain when it is None: (blobs rewritten, their plaintext bytes, digests that
    failed authentication and were left as they were). Each replacement is atomic."""
    done = done_bytes = 0
    failed: list[str] = []
    for blob, header in blobs:
        staged = repo.staging_path("reseal")
        try:
            with repo.open_blob(blob.name) as source, staged.open("wb") as sink:
                if key is None:
                    actual, _ = hash_stream(source, sink, task)
                else:
                    actual = encrypt_stream(source, sink, key, header.digest,
                                            header.plain_size, task)
                sink.flush()
                os.fsync(sink.fileno())
            if actual != header.digest:  # authenticated, yet: never replace on doubt
                failed.append(header.digest)
                continue
            os.chmod(staged, 0o444)
            os.replace(staged, blob)
            fsync_dir(blob.parent)
            done += 1
            done_bytes += header.plain_size
        except BlobAuthenticationError:
            failed.append(header.digest)
        finally:
            staged.unlink(missing_ok=True)
    task.close()
    return done, done_bytes, failed
