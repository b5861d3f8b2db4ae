"""Air-gapped bundles: round trips, and a hostile importer's view of malformed tars."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sutazai.config import Settings
from sutazai.errors import BundleError, SourceError
from sutazai.repository import Repository, load_catalog, pull
from sutazai.repository.bundle import export_bundle, import_bundle
from sutazai.repository.manifest import FileEntry, Manifest
from tests.helpers import entry, flip_byte


@pytest.fixture
def exported(tmp_path: Path, settings: Settings, repo: Repository,
             write_catalog: Callable[..., Path]) -> Path:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "model.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 400)
    (source / "sub" / "tokenizer.json").write_text("{}")
    write_catalog(entry("tiny", f"file:{source}"), entry("other", f"file:{source}/model.gguf"))
    catalog = load_catalog(settings.catalog)
    manifests = [pull(catalog.get(n), repo, settings).manifest for n in ("tiny", "other")]
    bundle = tmp_path / "out" / "models.tar"
    export_bundle(repo, manifests, bundle)
    return bundle


def test_round_trip_between_two_repositories(exported: Path, tmp_path: Path,
                                             repo: Repository) -> None:
    target = Repository(tmp_path / "air-gapped")
    results = import_bundle(target, exported)
    assert sorted((m.ref, created) for m, created in results) == [
        ("other:1", True), ("tiny:1", True)]
    for manifest, _ in results:
        assert manifest.digest == repo.get(manifest.name).digest
        assert target.verify([manifest]) == []
        assert (target.snapshot_path(manifest) / "model.gguf").read_bytes().startswith(b"GGUF")
    # the shared weights blob is stored once, and a second import changes nothing
    assert len(list(target.blobs_dir.glob("*/*"))) == 2
    assert [created for _, created in import_bundle(target, exported)] == [False, False]


def test_bundle_members_are_checksummed(exported: Path) -> None:
    with tarfile.open(exported) as tar:
        names = tar.getnames()
        sums = tar.extractfile("SHA256SUMS").read().decode()  # type: ignore[union-attr]
    assert names[0] == "sutazai-bundle.json" and names[-1] == "SHA256SUMS"
    assert all(name in sums for name in names if name != "SHA256SUMS")


def rewrite(bundle: Path, out: Path, change: Callable[[tarfile.TarInfo, bytes],
                                                      tuple[tarfile.TarInfo, bytes] | None],
            extra: list[tuple[tarfile.TarInfo, bytes]] | None = None) -> Path:
    with tarfile.open(bundle) as source, tarfile.open(out, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            changed = change(member, data)
            if changed is not None:
                info, body = changed
                info.size = len(body)
                target.addfile(info, io.BytesIO(body))
        for info, body in extra or []:
            info.size = len(body)
            target.addfile(info, io.BytesIO(body) if info.isreg() else None)
    return out


def test_tar_slip_member_is_rejected_and_nothing_is_written(exported: Path, tmp_path: Path
                                                            ) -> None:
    evil = tarfile.TarInfo("../../escaped.txt")
    bad = rewrite(exported, tmp_path / "slip.tar", lambda m, d: (m, d), [(evil, b"owned")])
    target = Repository(tmp_path / "target")
    with pytest.raises(BundleError, match="escaped"):
        import_bundle(target, bad)
    assert not (tmp_path / "escaped.txt").exists() and not list(tmp_path.rglob("escaped.txt"))
    assert target.all_versions() == []


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_are_rejected(exported: Path, tmp_path: Path, kind: bytes) -> None:
    link = tarfile.TarInfo("blobs/sha256/" + "0" * 64)
    link.type, link.linkname = kind, "/etc/passwd"
    bad = rewrite(exported, tmp_path / "link.tar", lambda m, d: (m, d), [(link, b"")])
    target = Repository(tmp_path / "target")
    with pytest.raises(BundleError, match="link"):
        import_bundle(target, bad)
    assert target.all_versions() == []


def test_blob_digest_mismatch_is_rejected_and_nothing_is_published(
    exported: Path, tmp_path: Path
) -> None:
    def corrupt(member: tarfile.TarInfo, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
        if member.name.startswith("blobs/") and len(data) > 1000:
            data = data[:500] + bytes([data[500] ^ 1]) + data[501:]
        return member, data

    target = Repository(tmp_path / "target")
    with pytest.raises(BundleError, match="corrupted"):
        import_bundle(target, rewrite(exported, tmp_path / "bad.tar", corrupt))
    assert target.all_versions() == []
    assert not list(target.blobs_dir.glob("*/*"))  # nor the good blob stored before it


def with_versions(bundle: Path, out: Path, versions: dict[str, list[str]]) -> Path:
    """``bundle`` plus a manifest per ``{"name:version": [paths]}``, listed in SHA256SUMS
    as an exporter would: its files reuse the blobs of tiny:1, whatever their paths."""
    with tarfile.open(bundle) as tar:
        tiny = json.loads(tar.extractfile("manifests/tiny/1.json").read())  # type: ignore[union-attr]
    extra, sums = [], []
    for ref, paths in versions.items():
        name, version = ref.split(":")
        files = [{**tiny["files"][i % len(tiny["files"])], "path": path}
                 for i, path in enumerate(paths)]
        canonical = [[f["path"], f["size"], f["digest"]]
                     for f in sorted(files, key=lambda f: f["path"])]
        digest = hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode())
        body = json.dumps({**tiny, "name": name, "version": int(version), "files": files,
                           "digest": digest.hexdigest()}).encode()
        member = f"manifests/{name}/{version}.json"
        extra.append((tarfile.TarInfo(member), body))
        sums.append(f"{hashlib.sha256(body).hexdigest()}  {member}\n")

    def add_sums(member: tarfile.TarInfo, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
        return member, data + "".join(sums).encode() if member.name == "SHA256SUMS" else data

    return rewrite(bundle, out, add_sums, extra)


def stored(repo: Repository) -> list[str]:
    """Everything a repository shows: versions, snapshot and manifest folders, blobs."""
    return sorted(str(p.relative_to(repo.root)) for folder in
                  (repo.manifests_dir, repo.snapshots_dir, repo.blobs_dir)
                  for p in folder.rglob("*"))


def test_colliding_paths_refuse_the_whole_bundle_and_store_nothing(
    exported: Path, tmp_path: Path
) -> None:
    """tiny:1 and other:1 are valid, bbb:1 lists 'x' and 'x/y': none of them is imported,
    and neither an empty snapshot folder nor a blob of the good versions stays."""
    bad = with_versions(exported, tmp_path / "bad.tar", {"bbb:1": ["x", "x/y"]})
    target = Repository(tmp_path / "target")
    with pytest.raises(BundleError) as refused:
        import_bundle(target, bad)
    assert "bbb:1: path 'x' is both a file and the folder of 'x/y'" in str(refused.value)
    assert "problems)" not in str(refused.value)
    assert stored(target) == []


def test_every_manifest_problem_is_named(exported: Path, tmp_path: Path) -> None:
    bad = with_versions(exported, tmp_path / "bad.tar", {
        "bbb:1": ["a", "a"], "ccc:1": ["../x", "ok", "ok"], "ddd:2": ["/abs", "y/z", "y"]})
    with pytest.raises(BundleError) as refused:
        import_bundle(Repository(tmp_path / "target"), bad)
    message = str(refused.value)
    for problem in ["bbb:1: path 'a' appears twice",
                    "ccc:1: unsafe file path '../x'", "ccc:1: path 'ok' appears twice",
                    "ddd:2: unsafe file path '/abs'",
                    "ddd:2: path 'y' is both a file and the folder of 'y/z'"]:
        assert problem in message
    assert "\n" not in message


def test_refused_bundle_keeps_what_the_repository_had(exported: Path, tmp_path: Path
                                                      ) -> None:
    target = Repository(tmp_path / "target")
    import_bundle(target, exported)
    before = stored(target)
    with pytest.raises(BundleError, match="bbb:1"):
        import_bundle(target, with_versions(exported, tmp_path / "bad.tar",
                                            {"bbb:1": ["x", "x/y"]}))
    assert stored(target) == before


def test_a_failure_midway_through_publishing_publishes_nothing(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = Repository(tmp_path / "target")
    publish, calls = target.publish, []

    def fail_second(**kwargs: object) -> object:
        calls.append(kwargs["name"])
        if len(calls) == 2:
            (target.snapshots_dir / str(kwargs["name"])).mkdir()  # as a real failure leaves
            raise OSError(28, "No space left on device")
        return publish(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(target, "publish", fail_second)
    with pytest.raises(OSError, match="No space"):
        import_bundle(target, exported)
    assert len(calls) == 2 and stored(target) == []


def test_published_files_must_form_one_folder(repo: Repository) -> None:
    """Pulls publish through the same check: a source naming 'x' and 'x/y' is refused
    before any folder is made."""
    digest, size, _ = repo.ingest_file(Path(__file__))
    files = [FileEntry(path=p, size=size, digest=digest) for p in ("x", "x/y")]
    with pytest.raises(SourceError, match="path 'x' is both a file and the folder of 'x/y'"):
        repo.publish(name="bbb", files=files, source="s", revision="r", format="other",
                     tasks=[], license="mit")
    assert repo.all_versions() == [] and not any(repo.snapshots_dir.iterdir())
    with pytest.raises(ValidationError, match="appears twice"):
        Manifest(name="bbb", version=1, digest=digest, source="s", revision="r",
                 format="other", tasks=[], license="mit", files=[files[0], files[0]])


def test_edited_manifest_is_rejected(exported: Path, tmp_path: Path) -> None:
    def edit(member: tarfile.TarInfo, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
        if member.name == "manifests/tiny/1.json":
            document = json.loads(data)
            document["license"] = "proprietary"
            data = json.dumps(document).encode()
        return member, data

    with pytest.raises(BundleError, match="SHA256SUMS"):
        import_bundle(Repository(tmp_path / "t"), rewrite(exported, tmp_path / "e.tar", edit))


def test_corrupted_blob_in_repository_cannot_be_exported_silently(
    exported: Path, repo: Repository, tmp_path: Path
) -> None:
    manifest = repo.get("other")
    flip_byte(repo.blob_path(manifest.files[0].digest), 10)
    bundle = tmp_path / "again.tar"
    export_bundle(repo, [manifest], bundle)  # export copies bytes as they are...
    with pytest.raises(BundleError):  # ...and the importer refuses them
        import_bundle(Repository(tmp_path / "t2"), bundle)


MEMBER_NAMES = st.one_of(
    st.sampled_from(["sutazai-bundle.json", "SHA256SUMS", "manifests/tiny/1.json",
                     "blobs/sha256/" + "a" * 64, "../x", "/etc/x", "blobs/../../x",
                     "manifests/tiny/../../../x.json", "blobs/sha256/short", "./SHA256SUMS"]),
    st.text(alphabet="abc./-_0123456789", min_size=1, max_size=40),
)
MEMBER_TYPES = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                                tarfile.LNKTYPE, tarfile.FIFOTYPE])


@hyp_settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(st.tuples(MEMBER_NAMES, MEMBER_TYPES, st.binary(max_size=64)),
                        max_size=6))
def test_importer_never_writes_outside_and_fails_only_with_bundle_errors(
    tmp_path_factory: pytest.TempPathFactory,
    members: list[tuple[str, bytes, bytes]],
) -> None:
    base = tmp_path_factory.mktemp("fuzz")
    bundle = base / "fuzz.tar"
    with tarfile.open(bundle, "w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "../../outside" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    root = base / "repo"
    target = Repository(root)
    try:
        results = import_bundle(target, bundle)
    except BundleError:
        results = []
    outside = {p for p in base.rglob("*") if not p.is_relative_to(root)}
    assert outside == {bundle}
    for path in root.rglob("*"):
        assert not path.is_symlink() or path.is_relative_to(root / "snapshots")
    for manifest, _ in results:  # anything accepted is fully verified
        assert target.verify([manifest]) == []
    for blob in target.blobs_dir.glob("*/*"):
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
