"""TLS for SutazAI's servers and clients, optionally mutual, with certificates from files or
from the secret provider (Vault's PKI or KV, a Kubernetes TLS secret).

``tls=files`` reads ``tls_cert_file``/``tls_key_file`` (and ``tls_ca_file``); the key file
must be mode 0600, like every secret file SutazAI reads. ``tls=secrets`` reads the PEMs
``tls/cert``, ``tls/key`` and optionally ``tls/ca`` through the provider (audited by name)
and, since uvicorn and OpenSSL load certificates from paths, writes them to a private
folder (0700, files 0600; in /dev/shm when it exists, so the key never reaches a disk)
that is removed when the server stops.

A CA makes TLS mutual: the server then asks for a client certificate signed by it and
refuses the handshake without one, and SutazAI's clients verify servers against the same
CA and present ``tls_client_cert_file``/``tls_client_key_file``.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sutazai.errors import ConfigError

if TYPE_CHECKING:
    from sutazai.config import Settings


@dataclass(frozen=True)
class ServerTLS:
    certfile: Path
    keyfile: Path
    ca_file: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.ca_file is not None

    def uvicorn_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ssl_certfile": str(self.certfile),
                                   "ssl_keyfile": str(self.keyfile)}
        if self.ca_file is not None:
            options |= {"ssl_ca_certs": str(self.ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return options

    def check(self) -> ServerTLS:
        """Load the pair once, so a wrong file fails now with a message, not in uvicorn."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
            if self.ca_file is not None:
                context.load_verify_locations(self.ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"TLS: cannot load the certificate {self.certfile} with key "
                              f"{self.keyfile}" + (f" and CA {self.ca_file}" if self.ca_file
                                                  else "") + f" ({exc}); check they are PEM "
                              "and that the key matches the certificate") from None
        return self


def _private_key_file(path: Path) -> Path:
    from sutazai.security.secrets import SecretError, read_private_file

    try:
        read_private_file(path, "TLS private key")
    except FileNotFoundError:
        raise ConfigError(f"TLS: the key file {path} does not exist (tls_key_file)") from None
    except SecretError as exc:
        raise ConfigError(str(exc)) from None
    return path


@contextlib.contextmanager
def server_tls(settings: Settings) -> Iterator[ServerTLS | None]:
    """The server's certificates while it runs, or None when TLS is off."""
    if settings.tls == "off":
        yield None
        return
    if settings.tls == "files":
        if settings.tls_cert_file is None or settings.tls_key_file is None:
            raise ConfigError("tls=files needs SUTAZAI_TLS_CERT_FILE and SUTAZAI_TLS_KEY_FILE "
                              "(PEM); add SUTAZAI_TLS_CA_FILE for mutual TLS")
        yield ServerTLS(settings.tls_cert_file, _private_key_file(settings.tls_key_file),
                        settings.tls_ca_file).check()
        return
    from sutazai.security.secrets import SecretNotFoundError, settings_provider

    provider = settings_provider(settings)
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="sutazai-tls-", dir=shm if shm.is_dir() else None))
    try:
        paths: dict[str, Path] = {}
        for name in ("cert", "key", "ca"):
            try:
                pem = provider.get(f"tls/{name}").get_secret_value()
            except SecretNotFoundError:
                if name == "ca":
                    continue
                raise
            paths[name] = folder / f"{name}.pem"
            paths[name].touch(mode=0o600)
            paths[name].write_text(pem if pem.endswith("\n") else pem + "\n")
        yield ServerTLS(paths["cert"], paths["key"], paths.get("ca")).check()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def client_ssl(settings: Settings) -> ssl.SSLContext | bool:
    """What SutazAI's own HTTP clients pass as ``verify``: the system trust store, or a
    context that trusts ``tls_ca_file`` and presents the client certificate when given."""
    if settings.tls_ca_file is None:
        return True
    context = ssl.create_default_context(cafile=str(settings.tls_ca_file))
    if settings.tls_client_cert_file is not None:
        key = settings.tls_client_key_file
        context.load_cert_chain(settings.tls_client_cert_file,
                                _private_key_file(key) if key is not None else None)
    return context
