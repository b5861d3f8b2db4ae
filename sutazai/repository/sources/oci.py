"""``oci:`` / ``ollama:`` — OCI distribution registries, including Ollama's layout.

``oci://HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST]`` pulls any OCI artifact;
``ollama:[HOST/][NAMESPACE/]MODEL[:TAG]`` pulls from the Ollama registry (default
``registry.ollama.ai``, namespace ``library``, tag ``latest``). Ollama models are OCI
manifests whose layers carry media types such as ``application/vnd.ollama.image.model``
(the GGUF weights) and ``...template``; each layer becomes a named file of the version,
and the manifest itself is kept so the model can be pushed on to another registry.

The registry's digests are sha256, so every layer is verified as it streams in and the
manifest digest pins the revision: a re-pull compares digests and downloads nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import urllib3

from sutazai.errors import SourceError
from sutazai.repository.catalog import CatalogEntry
from sutazai.repository.download import make_pool, request
from sutazai.repository.manifest import FileEntry, validate_relative_path
from sutazai.repository.sources.base import (
    FetchContext,
    RemoteFile,
    Resolution,
    Source,
    refuse_pickle,
    select,
)

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
OLLAMA_FILES = {
    "application/vnd.ollama.image.model": "model.gguf",
    "application/vnd.ollama.image.projector": "projector.gguf",
    "application/vnd.ollama.image.adapter": "adapter.gguf",
    "application/vnd.ollama.image.template": "template",
    "application/vnd.ollama.image.system": "system",
    "application/vnd.ollama.image.params": "params.json",
    "application/vnd.ollama.image.license": "LICENSE",
    "application/vnd.ollama.image.messages": "messages.json",
}
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_REFERENCE = re.compile(r"^(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)(?::(?P<tag>[\w][\w.-]{0,127}))?"
                        r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


@dataclass(frozen=True)
class OciReference:
    host: str
    repository: str
    reference: str  # tag or sha256 digest
    plain_http: bool

    @property
    def base_url(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.host}/v2/{self.repository}"


def parse_reference(entry: CatalogEntry, plain_http_hosts: list[str], ollama_host: str
                    ) -> OciReference:
    scheme, _, rest = entry.source.partition(":")
    rest = rest.lstrip("/") if scheme == "oci" else rest.removeprefix("//")
    if scheme == "ollama":
        first, slash, remainder = rest.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            host, rest = first, remainder
        else:
            host = ollama_host
        if "/" not in rest.split(":")[0]:
            rest = f"library/{rest}"
    else:
        host, slash, rest = rest.partition("/")
        if not slash or not host:
            raise SourceError(f"{entry.name}: {entry.source} must look like "
                              "oci://HOST[:PORT]/REPOSITORY[:TAG]")
    match = _REFERENCE.match(rest)
    if not match:
        raise SourceError(f"{entry.name}: {rest!r} is not a valid OCI repository reference")
    reference = entry.revision or match.group("digest") or match.group("tag") or "latest"
    hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return OciReference(host, match.group("repo"), reference, hostname in plain_http_hosts)


class RegistryClient:
    """The small part of the OCI distribution API a pull needs, with bearer-token auth."""

    def __init__(self, ref: OciReference, pool: urllib3.PoolManager) -> None:
        self.ref = ref
        self.pool = pool
        self.token: str | None = None

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _authenticate(self, challenge: str) -> None:
        if not challenge.lower().startswith("bearer "):
            raise SourceError(f"{self.ref.host} asks for {challenge.split(' ')[0]} auth, "
                              "which SutazAI does not support; mirror the model to an "
                              "anonymous-read registry")
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        if not realm:
            raise SourceError(f"{self.ref.host} sent a bearer challenge without a realm")
        response = request(self.pool, "GET", realm, fields=params)
        if response.status != 200:
            raise SourceError(f"token service {realm} answered HTTP {response.status}")
        body = json.loads(response.data)
        self.token = body.get("token") or body.get("access_token")

    def get(self, url: str, accept: str = "") -> Any:
        extra = {"Accept": accept} if accept else {}
        response = request(self.pool, "GET", url, self.headers(extra))
        if response.status == 401 and self.token is None:
            self._authenticate(response.headers.get("WWW-Authenticate", ""))
            response = request(self.pool, "GET", url, self.headers(extra))
        if response.status == 404:
            raise SourceError(f"{url} does not exist: check the repository name and tag")
        if response.status != 200:
            raise SourceError(f"{url} answered HTTP {response.status}")
        return response

    def manifest(self) -> tuple[str, bytes, dict[str, Any]]:
        """(digest, raw bytes, document) of the reference, following an image index."""
        body = self.manifest_bytes(self.ref.reference)
        document = json.loads(body)
        if document.get("mediaType") in INDEX_TYPES or "manifests" in document:
            body = self.manifest_bytes(_pick_platform(document.get("manifests", [])))
            document = json.loads(body)
        return "sha256:" + hashlib.sha256(body).hexdigest(), body, document

    def manifest_bytes(self, reference: str) -> bytes:
        body: bytes = self.get(f"{self.ref.base_url}/manifests/{reference}", ACCEPT).data
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if _DIGEST.match(reference) and digest != reference:
            raise SourceError(f"registry served manifest {digest} when asked for {reference}")
        return body


def _pick_platform(manifests: list[dict[str, Any]]) -> str:
    for item in manifests:
        platform = item.get("platform", {})
        if platform.get("os") in (None, "linux") and platform.get("architecture") in (
            None, "amd64"
        ):
            return str(item["digest"])
    if not manifests:
        raise SourceError("the image index lists no manifests")
    return str(manifests[0]["digest"])


def _hex(digest: str) -> str:
    match = _DIGEST.match(digest)
    if not match:
        raise SourceError(f"unsupported digest {digest!r}: only sha256 is accepted")
    return match.group(1)


def layer_files(document: dict[str, Any]) -> list[RemoteFile]:
    """Name each layer: Ollama media types, OCI title annotations, else by digest."""
    try:
        return _layer_files(document)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # The registry is remote and untrusted: a malformed manifest, or a title such as
        # '../x' that would leave the version folder, is the registry's fault, said so.
        raise SourceError(f"the registry's image manifest is malformed or names an unsafe "
                          f"file ({type(exc).__name__}: {exc}); check the reference or the "
                          "registry") from None


def _layer_files(document: dict[str, Any]) -> list[RemoteFile]:
    files: list[RemoteFile] = []
    config = document.get("config")
    # names SutazAI adds itself: a layer titled so would make a version list a path twice
    used = {"manifest.json", "config.json"} if config else {"manifest.json"}
    descriptors = list(document.get("layers", []))
    for index, layer in enumerate(descriptors):
        media = str(layer.get("mediaType", ""))
        title = (layer.get("annotations") or {}).get("org.opencontainers.image.title")
        name = OLLAMA_FILES.get(media) or title or f"blobs/sha256-{_hex(layer['digest'])}"
        name = validate_relative_path(str(name))
        if name in used:
            name = f"{name}.{index}"
        used.add(name)
        files.append(RemoteFile(path=name, size=_size(layer["size"]),
                                digest=_hex(layer["digest"]), locator=str(layer["digest"])))
    if config:
        files.append(RemoteFile(path="config.json", size=_size(config["size"]),
                                digest=_hex(config["digest"]), locator=str(config["digest"])))
    return files


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"size {value!r} is not a byte count")
    return value


class OciSource(Source):
    schemes = ("oci", "ollama")

    def _client(self, entry: CatalogEntry) -> RegistryClient:
        ref = parse_reference(entry, self.settings.oci_plain_http_hosts,
                              self.settings.ollama_registry)
        return RegistryClient(ref, make_pool(self.settings.http_timeout_s))

    def resolve(self, entry: CatalogEntry) -> Resolution:
        digest, body, document = self._client(entry).manifest()
        files = layer_files(document)
        chosen = set(select([f.path for f in files], entry))
        files = [f for f in files if f.path in chosen]
        refuse_pickle([f.path for f in files], entry)
        files.append(RemoteFile(path="manifest.json", size=len(body),
                                digest=hashlib.sha256(body).hexdigest(), locator="manifest"))
        return Resolution(revision=digest, files=files)

    def fetch(
        self, entry: CatalogEntry, resolution: Resolution, ctx: FetchContext
    ) -> list[FileEntry]:
        assert resolution.files is not None
        client = self._client(entry)
        body = client.manifest_bytes(resolution.revision)  # authenticates, pins the digest
        downloader = ctx.downloader()
        stored = [
            ctx.store_download(
                f"{client.ref.base_url}/blobs/{remote.locator}", remote.path,
                digest=remote.digest, size=remote.size, headers=client.headers(),
                downloader=downloader,
            )
            for remote in resolution.files
            if remote.locator != "manifest"
        ]
        stored.append(ctx.store_bytes(body, "manifest.json"))
        return stored
