"""Air-gapped bundles: one tar holding manifests, blobs and checksums.

Layout of a bundle::

    sutazai-bundle.json              {"format": "sutazai-bundle", "version": 1, ...}
    manifests/<name>/<version>.json
    blobs/sha256/<digest>
    SHA256SUMS                       sha256sum-compatible lines for every other member

The importer trusts nothing: a member must be a regular file at one of those paths
(no absolute paths, '..', links or devices), every blob must hash to its name, every
manifest and the index must match SHA256SUMS, and every manifest must be valid (safe
paths that can form one folder) and reference only blobs the bundle or the repository
holds. Blobs are verified into the store first and versions are published only after
the whole bundle checked out, all or none: a refused bundle, or a failure while
publishing, leaves the repository as it was (the versions it published are removed
again, and so are the blobs it stored that nothing references).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from sutazai.errors import BundleError, SutazAIError
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.repository.crypto import (
    HEADER_BYTES,
    BlobAuthenticationError,
    RepositoryKey,
    encrypt_stream,
    peek_header,
)
from sutazai.repository.fsutil import hash_stream
from sutazai.repository.manifest import Manifest, PathProblems, content_digest
from sutazai.repository.store import Repository

BUNDLE_FORMAT = "sutazai-bundle"
INDEX = "sutazai-bundle.json"
SUMS = "SHA256SUMS"
_BLOB = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_MANIFEST = re.compile(r"^manifests/([a-z0-9][a-z0-9._-]{0,63})/([1-9][0-9]{0,8})\.json$")
MAX_SMALL_MEMBER = 16 * 1024 * 1024  # manifests, index and sums are small
MAX_LISTED_PROBLEMS = 20

log = logging.getLogger(__name__)


def export_bundle(
    repo: Repository, manifests: list[Manifest], out: Path, progress: Progress = NULL_PROGRESS,
    *, sealed: bool = False,
) -> int:
    """Write ``manifests`` and their blobs to ``out`` atomically; returns bytes written.

    Blobs go in as plaintext (decrypted and authenticated on the way), so the bundle loads
    into any repository. With ``sealed`` they go in encrypted with the repository's key
    instead (as stored when that key sealed them, sealed on the way otherwise): the
    bundle can cross a boundary on plain media, and only a repository holding that key
    (as ``repository/key`` or ``repository/previous-key``) can import it."""
    if not manifests:
        raise BundleError("nothing to export: name at least one model or version")
    key = repo.key() if sealed else None  # no key: fail before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    sums: list[str] = []
    digests = sorted({f.digest: f.size for m in manifests for f in m.files}.items())
    task = progress.task(f"export {out.name}", total=sum(size for _, size in digests))
    try:
        _write_bundle(repo, manifests, partial, digests, sums, task, key)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    task.close()
    os.replace(partial, out)
    return out.stat().st_size


def _write_bundle(repo: Repository, manifests: list[Manifest], partial: Path,
                  digests: list[tuple[str, int]], sums: list[str], task: object,
                  key: RepositoryKey | None) -> None:
    """The tar itself: blobs as plaintext, or sealed with ``key``. SHA256SUMS lists what
    each member holds (for a sealed blob, its ciphertext), so ``sha256sum -c`` checks an
    unpacked bundle either way; the blob's name is always its plaintext's digest."""
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        index = json.dumps({
            "format": BUNDLE_FORMAT, "version": 1, "created": datetime.now(UTC).isoformat(),
            "versions": [m.ref for m in manifests],
            **({"sealed_with_key": key.key_id} if key else {}),
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
            if repo.blob_size(digest) != size:
                raise BundleError(f"blob {digest[:12]} holds {repo.blob_size(digest)} bytes, "
                                  f"its manifest says {size}; run 'sutazai models verify'")
            with contextlib.ExitStack() as stack:
                handle, member_size = _member_source(repo, digest, size, key, stack)
                info = tar.gettarinfo(str(blob), arcname=f"blobs/sha256/{digest}")
                info.size = member_size
                info.mode, info.uid, info.gid, info.uname, info.gname = 0o444, 0, 0, "", ""
                counting = _Counting(handle, task, member_size / max(size, 1))
                tar.addfile(info, counting)
            sums.append(f"{counting.sha256.hexdigest()}  blobs/sha256/{digest}")
        _add_bytes(tar, SUMS, ("\n".join(sums) + "\n").encode(), None)


def _member_source(repo: Repository, digest: str, size: int, key: RepositoryKey | None,
                   stack: contextlib.ExitStack) -> tuple[BinaryIO, int]:
    """What goes into the tar for one blob, and its size: the plaintext; or, sealed, the
    stored file when ``key`` sealed it, else a copy sealed with ``key`` now."""
    if key is None:
        return stack.enter_context(repo.open_blob(digest)), size
    header = repo.blob_header(digest)
    blob = repo.blob_path(digest)
    if header is None or header.key_id != key.id_bytes:
        staged = repo.staging_path("export-seal")
        stack.callback(staged.unlink, missing_ok=True)
        with repo.open_blob(digest) as source, staged.open("wb") as sink:
            encrypt_stream(source, sink, key, digest, size)
        blob = staged
    return stack.enter_context(blob.open("rb")), blob.stat().st_size


class _Counting(io.RawIOBase):
    """Hashes what tarfile reads of a member, and reports progress in plaintext bytes."""

    def __init__(self, handle: BinaryIO, task: object, ratio: float = 1.0) -> None:
        self.handle, self.task, self.ratio = handle, task, ratio
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.sha256.update(data)
        self.task.advance(round(len(data) / self.ratio))  # type: ignore[attr-defined]
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
    """Verify and load a bundle; returns (manifest, created) for every version in it.

    All or nothing: when any check fails, or publishing fails midway, the versions this
    import published are removed and the blobs it stored that no version references are
    deleted (under the exclusive lock, as ``gc`` does, so this waits for running pulls).
    """
    try:
        tar = tarfile.open(bundle, "r:*")  # noqa: SIM115 - closed by the 'with' below
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"{bundle} is not a readable tar bundle ({exc})") from None
    added: set[str] = set()  # blobs this import wrote into the store
    try:
        with tar, repo.writing():
            return _import_locked(repo, bundle, tar, added, progress)
    except BaseException:
        if added:  # after the shared lock is released: discarding takes the exclusive one
            _discard(repo, added)
        raise


def _import_locked(repo: Repository, bundle: Path, tar: tarfile.TarFile, added: set[str],
                   progress: Progress) -> list[tuple[Manifest, bool]]:
    small: dict[str, bytes] = {}
    blobs: dict[str, str | None] = {}  # digest -> sha256 of the member (None: not read)
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
            blobs[blob.group(1)] = _import_blob(repo, tar, member, blob.group(1), task,
                                                added)
        elif _MANIFEST.match(name) or name in (INDEX, SUMS):
            if name in small:
                raise BundleError(f"{bundle}: member {name!r} appears twice")
            small[name] = _read_small(tar, member)
        else:
            raise BundleError(f"{bundle}: unexpected member {name!r} (path traversal or "
                              "not a SutazAI bundle); refusing to import")
    task.close()
    manifests = _check_bundle(repo, bundle, small, blobs)
    return _publish_all(repo, manifests)


def _publish_all(repo: Repository, manifests: list[Manifest]) -> list[tuple[Manifest, bool]]:
    """Publish every checked manifest, or, when one fails, none: the versions published
    so far are removed again, with the empty model folders a failed publish left."""
    results: list[tuple[Manifest, bool]] = []
    try:
        for m in manifests:
            results.append(repo.publish(
                name=m.name, files=list(m.files), source=m.source, revision=m.revision,
                format=m.format, tasks=list(m.tasks), license=m.license, parent=m.parent,
                description=m.description, version=m.version,
            ))
    except BaseException:
        for published, created in reversed(results):
            if created:
                repo.remove(published)
        for name in {m.name for m in manifests}:
            with repo.model_lock(name):
                for folder in (repo.manifests_dir / name, repo.snapshots_dir / name):
                    with contextlib.suppress(OSError):  # only when empty
                        folder.rmdir()
        raise
    return results


def _discard(repo: Repository, added: set[str]) -> None:
    """Delete the blobs a failed import stored that no version references. A failure
    here is logged, never raised: the import's own error is the one to report."""
    try:
        repo.discard_unreferenced(added)
    except (SutazAIError, OSError) as exc:
        log.warning("the failed import left %d blob(s) in the repository (%s); "
                    "'sutazai models gc' removes them", len(added), exc)


_MANIFEST_DIR = re.compile(r"^manifests/[a-z0-9][a-z0-9._-]{0,63}$")


def _import_blob(
    repo: Repository, tar: tarfile.TarFile, member: tarfile.TarInfo, digest: str, task: object,
    added: set[str],
) -> str | None:
    """Store one blob member; returns the sha256 of the member's bytes (to check against
    SHA256SUMS), or None when the repository already had the blob and it was not read.
    A sealed member (a sealed bundle's) is authenticated and re-hashed as plaintext.
    ``digest`` goes into ``added`` when this call wrote the blob into the store."""
    handle = tar.extractfile(member)
    assert handle is not None
    head = handle.read(HEADER_BYTES)
    header = peek_header(head)  # checked by adopt_sealed
    plain_size = member.size if header is None else header.plain_size
    if repo.has_blob(digest, plain_size):
        task.advance(plain_size)  # type: ignore[attr-defined]
        return None
    staged = repo.staging_path("import")
    try:
        hasher = hashlib.sha256(head)
        with staged.open("wb") as sink:
            sink.write(head)
            actual, _ = hash_stream(handle, sink, task, hasher=hasher)  # type: ignore[arg-type]
        if header is not None:
            try:
                if repo.adopt_sealed(staged, digest):
                    added.add(digest)
            except BlobAuthenticationError:
                raise BundleError(f"sealed blob {digest[:12]}… failed authentication: the "
                                  "bundle is corrupted or was altered; export it again") from None
            return actual
        if actual != digest:
            raise BundleError(f"blob {digest[:12]}… in the bundle hashes to {actual[:12]}…: "
                              "the bundle is corrupted; export it again")
        if repo.adopt(staged, digest):
            added.add(digest)
        return actual
    finally:
        staged.unlink(missing_ok=True)


def _check_bundle(
    repo: Repository, bundle: Path, small: dict[str, bytes], blobs: dict[str, str | None]
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
    for digest, member_sha256 in blobs.items():
        listed = sums.get(f"blobs/sha256/{digest}")
        if listed is None or (member_sha256 is not None and listed != member_sha256):
            raise BundleError(f"{bundle}: blob {digest[:12]}… is not listed in {SUMS} as it "
                              "is; the bundle was altered")
    manifests: list[Manifest] = []
    problems: list[str] = []
    for name, data in sorted(small.items()):
        match = _MANIFEST.match(name)
        if match:
            found = _manifest_problems(repo, f"{match.group(1)}:{match.group(2)}", data)
            if isinstance(found, Manifest):
                manifests.append(found)
            else:
                problems += found
    if problems:
        listed = "; ".join(problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        raise BundleError(f"{bundle}: refused, nothing was imported: {listed}"
                          + (f"; and {more} more problem(s)" if more > 0 else "")
                          + "; export the bundle again from a repository that verifies")
    if not manifests:
        raise BundleError(f"{bundle} holds no manifests")
    return manifests


def _manifest_problems(repo: Repository, ref: str, data: bytes) -> Manifest | list[str]:
    """The manifest stored as ``ref`` (``name:version``), or each thing wrong with it."""
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            cause = (error.get("ctx") or {}).get("error")
            if isinstance(cause, PathProblems):
                problems += [f"{ref}: {problem}" for problem in cause.problems]
            elif isinstance(cause, ValueError):
                problems.append(f"{ref}: {cause}")
            else:
                where = ".".join(str(part) for part in error["loc"])
                problems.append(f"{ref}: {where + ': ' if where else ''}{error['msg']}")
        return problems
    if manifest.ref != ref:
        return [f"{ref}: the manifest stored as {ref} holds {manifest.ref}; names disagree"]
    if content_digest(list(manifest.files)) != manifest.digest:
        return [f"{ref}: its digest does not match its files"]
    return [
        f"{ref}: needs blob {entry.digest[:12]}… ({entry.path}), which neither the bundle "
        "nor the repository holds"
        for entry in manifest.files if not repo.has_blob(entry.digest, entry.size)
    ] or manifest
