"""Air-gapped bundles: one tar holding manifests, blobs and checksums.

Layout of a bundle::

    sutazai-bundle.json              {"format": "sutazai-bundle", "version": 1, ...}
    manifests/<name>/<version>.json
    blobs/sha256/<digest>
    SHA256SUMS                       sha256sum-compatible lines for every other member

The importer trusts nothing: a member must be a regular file at one of those paths
(no absolute paths, '..', links or devices), every blob must hash to its name, every
manifest and the index must match SHA256SUMS, and every manifest must reference only
blobs the bundle or the repository holds. Blobs are verified into the store first and
versions are published only after the whole bundle checked out, so a bad bundle
publishes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from sutazai.errors import BundleError
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.repository.fsutil import hash_stream
from sutazai.repository.manifest import Manifest, content_digest
from sutazai.repository.store import Repository

BUNDLE_FORMAT = "sutazai-bundle"
INDEX = "sutazai-bundle.json"
SUMS = "SHA256SUMS"
_BLOB = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_MANIFEST = re.compile(r"^manifests/([a-z0-9][a-z0-9._-]{0,63})/([1-9][0-9]{0,8})\.json$")
MAX_SMALL_MEMBER = 16 * 1024 * 1024  # manifests, index and sums are small


def export_bundle(
    repo: Repository, manifests: list[Manifest], out: Path, progress: Progress = NULL_PROGRESS
) -> int:
    """Write ``manifests`` and their blobs to ``out`` atomically; returns bytes written."""
    if not manifests:
        raise BundleError("nothing to export: name at least one model or version")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    sums: list[str] = []
    digests = sorted({f.digest: f.size for m in manifests for f in m.files}.items())
    task = progress.task(f"export {out.name}", total=sum(size for _, size in digests))
    try:
        _write_bundle(repo, manifests, partial, digests, sums, task)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    task.close()
    os.replace(partial, out)
    return out.stat().st_size


def _write_bundle(repo: Repository, manifests: list[Manifest], partial: Path,
                  digests: list[tuple[str, int]], sums: list[str], task: object) -> None:
    """The tar itself. Blobs go in as plaintext (decrypted and authenticated on the way
    when the repository encrypts them), so a bundle loads into any repository, whatever
    its key; an importing repository with encryption on seals them again. Carry bundles
    of encrypted models on encrypted media."""
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        index = json.dumps({
            "format": BUNDLE_FORMAT, "version": 1, "created": datetime.now(UTC).isoformat(),
            "versions": [m.ref for m in manifests],
        }, indent=2).encode()
        _add_bytes(tar, INDEX, index, sums)
        for manifest in manifests:
            _add_bytes(tar, f"manifests/{manifest.name}/{manifest.version}.json",
                       manifest.to_json().encode(), sums)
        for digest, size in digests:
            blob = repo.blob_path(digest)
            if not blob.is_file():
                raise BundleError(f"blob {digest[:12]} is missing from the repository; run "
                                  "'sutazai models verify' and pull the damaged models again")
            info = tar.gettarinfo(str(blob), arcname=f"blobs/sha256/{digest}")
            info.size = repo.blob_size(digest)
            if info.size != size:
                raise BundleError(f"blob {digest[:12]} holds {info.size} bytes, its manifest "
                                  f"says {size}; run 'sutazai models verify'")
            info.mode, info.uid, info.gid, info.uname, info.gname = 0o444, 0, 0, "", ""
            with repo.open_blob(digest) as handle:
                tar.addfile(info, _Counting(handle, task))
            sums.append(f"{digest}  blobs/sha256/{digest}")
        _add_bytes(tar, SUMS, ("\n".join(sums) + "\n").encode(), None)


class _Counting(io.RawIOBase):
    """Reports progress while tarfile reads a blob."""

    def __init__(self, handle: BinaryIO, task: object) -> None:
        self.handle, self.task = handle, task

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.task.advance(len(data))  # type: ignore[attr-defined]
        return data


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, sums: list[str] | None) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, int(datetime.now(UTC).timestamp())
    tar.addfile(info, io.BytesIO(data))
    if sums is not None:
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}")


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_SMALL_MEMBER:
        raise BundleError(f"{member.name} is {member.size} bytes, too large for its kind")
    handle = tar.extractfile(member)
    assert handle is not None
    return handle.read()


def import_bundle(
    repo: Repository, bundle: Path, progress: Progress = NULL_PROGRESS
) -> list[tuple[Manifest, bool]]:
    """Verify and load a bundle; returns (manifest, created) for every version in it."""
    small: dict[str, bytes] = {}
    blobs: set[str] = set()
    try:
        tar = tarfile.open(bundle, "r:*")  # noqa: SIM115 - closed by the 'with' below
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"{bundle} is not a readable tar bundle ({exc})") from None
    with tar, repo.writing():
        task = progress.task(f"import {bundle.name}", total=bundle.stat().st_size)
        for member in tar:
            name = member.name
            if member.isdir() and (name.rstrip("/") in ("blobs", "blobs/sha256", "manifests")
                                   or _MANIFEST_DIR.match(name.rstrip("/"))):
                continue
            if not member.isreg():
                raise BundleError(f"{bundle}: member {name!r} is a link or special file; "
                                  "bundles hold regular files only (refusing to import)")
            blob = _BLOB.match(name)
            if blob:
                _import_blob(repo, tar, member, blob.group(1), task)
                blobs.add(blob.group(1))
            elif _MANIFEST.match(name) or name in (INDEX, SUMS):
                if name in small:
                    raise BundleError(f"{bundle}: member {name!r} appears twice")
                small[name] = _read_small(tar, member)
            else:
                raise BundleError(f"{bundle}: unexpected member {name!r} (path traversal or "
                                  "not a SutazAI bundle); refusing to import")
        task.close()
        manifests = _check_bundle(repo, bundle, small, blobs)
        return [
            repo.publish(
                name=m.name, files=list(m.files), source=m.source, revision=m.revision,
                format=m.format, tasks=list(m.tasks), license=m.license, parent=m.parent,
                description=m.description, version=m.version,
            )
            for m in manifests
        ]


_MANIFEST_DIR = re.compile(r"^manifests/[a-z0-9][a-z0-9._-]{0,63}$")


def _import_blob(
    repo: Repository, tar: tarfile.TarFile, member: tarfile.TarInfo, digest: str, task: object
) -> None:
    handle = tar.extractfile(member)
    assert handle is not None
    if repo.has_blob(digest, member.size):
        task.advance(member.size)  # type: ignore[attr-defined]
        return
    staged = repo.staging_path("import")
    try:
        with staged.open("wb") as sink:
            actual, _ = hash_stream(handle, sink, task)  # type: ignore[arg-type]
        if actual != digest:
            raise BundleError(f"blob {digest[:12]}… in the bundle hashes to {actual[:12]}…: "
                              "the bundle is corrupted; export it again")
        repo.adopt(staged, digest)
    finally:
        staged.unlink(missing_ok=True)


def _check_bundle(
    repo: Repository, bundle: Path, small: dict[str, bytes], blobs: set[str]
) -> list[Manifest]:
    if INDEX not in small or SUMS not in small:
        raise BundleError(f"{bundle} lacks {INDEX} or {SUMS}: not a SutazAI bundle")
    try:
        index = json.loads(small[INDEX])
    except ValueError:
        raise BundleError(f"{bundle}: {INDEX} is not JSON") from None
    if not isinstance(index, dict) or index.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{bundle}: {INDEX} does not describe a {BUNDLE_FORMAT}")
    sums: dict[str, str] = {}
    for line in small[SUMS].decode("utf-8", "replace").splitlines():
        digest, sep, name = line.partition("  ")
        if sep:
            sums[name] = digest
    for name, data in small.items():
        if name != SUMS and sums.get(name) != hashlib.sha256(data).hexdigest():
            raise BundleError(f"{bundle}: {name} does not match {SUMS}; the bundle was altered")
    for digest in blobs:
        if sums.get(f"blobs/sha256/{digest}") != digest:
            raise BundleError(f"{bundle}: blob {digest[:12]}… is not listed in {SUMS}")
    manifests = []
    for name, data in sorted(small.items()):
        match = _MANIFEST.match(name)
        if not match:
            continue
        try:
            manifest = Manifest.model_validate_json(data)
        except ValidationError as exc:
            raise BundleError(f"{bundle}: {name} is not a valid manifest "
                              f"({exc.error_count()} problems)") from None
        if (manifest.name, str(manifest.version)) != (match.group(1), match.group(2)):
            raise BundleError(f"{bundle}: {name} holds {manifest.ref}; names disagree")
        if content_digest(list(manifest.files)) != manifest.digest:
            raise BundleError(f"{bundle}: {name} has a digest that does not match its files")
        for entry in manifest.files:
            if not repo.has_blob(entry.digest, entry.size):
                raise BundleError(f"{bundle}: {manifest.ref} needs blob {entry.digest[:12]}… "
                                  f"({entry.path}), which neither the bundle nor the "
                                  "repository holds")
        manifests.append(manifest)
    if not manifests:
        raise BundleError(f"{bundle} holds no manifests")
    return manifests
