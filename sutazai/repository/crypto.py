"""Encryption at rest of repository blobs: a streaming, chunked AES-256-GCM format.

Why this shape. Blobs stay named by the sha256 of their *plaintext*, so digests,
manifests, MLflow registrations and deduplication are the same whether a blob is
encrypted or not, and a repository can hold both kinds (a blob says which it is by its
header). Models are many GB, so a blob is sealed in 1 MiB chunks that are encrypted and
authenticated one at a time: nothing is ever held whole in memory, and a reader releases
a chunk's bytes only after that chunk authenticated.

Layout of an encrypted blob (all integers big-endian)::

    header (80 bytes)
        magic        8   b"\\x89SZAIENC"  (a high first byte, like PNG: never ASCII text)
        version      1   1
        chunk_shift  1   20  (chunks of 2**20 bytes)
        reserved     6   zeros
        key_id       8   HMAC-SHA256(key, "sutazai repository key id")[:8]: which key
        plain_size   8   bytes of plaintext
        salt        16   random per blob
        digest      32   sha256 of the plaintext (the blob's name)
    chunk 0 .. n-1       ciphertext of min(chunk, rest) bytes + 16-byte GCM tag
                         (n = max(1, ceil(plain_size / chunk)): an empty file has one
                         empty final chunk, so even it cannot be truncated silently)

Keys and nonces. The repository key (32 bytes, the secret ``repository/key``) is never
used directly: each blob gets its own AES-256 key and 8-byte nonce prefix from
HKDF-SHA256(key, salt=header salt, info="sutazai repository blob v1" + digest), and chunk
``i`` uses nonce ``prefix || i`` (4 bytes). A nonce therefore never repeats under a key,
without relying on random 96-bit nonces over millions of chunks.

What the authentication catches. The associated data of chunk ``i`` is the whole header
plus ``i`` (8 bytes) plus a final-chunk flag (1 byte). So a flipped bit anywhere (header
included), chunks swapped or reordered, a truncated blob (the last chunk left lacks the
final flag, or the size disagrees with the header), and the sealed blob of another
digest copied over this one (the header names another digest; and its chunks were
sealed under another per-blob key) are all refused. A wrong repository key is told
apart from tampering by the key id, so the operator gets "wrong key", not "corrupt".

Key handling: :func:`load_repository_key` reads the secret once per process through the
audited secret provider (one audit record, by name) and caches it; the key object's
``repr`` shows only its id, so it cannot leak through a log line or a traceback.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sutazai.errors import ConfigError, IntegrityError

if TYPE_CHECKING:
    from sutazai.config import Settings
    from sutazai.progress import ProgressTask

KEY_SECRET = "repository/key"
# During a key rotation: the key being retired, until `sutazai models rekey` is done with it.
PREVIOUS_KEY_SECRET = "repository/previous-key"
KEY_BYTES = 32
MAGIC = b"\x89SZAIENC"
FORMAT_VERSION = 1
CHUNK_SHIFT = 20
CHUNK_BYTES = 1 << CHUNK_SHIFT
TAG_BYTES = 16
_HEADER = struct.Struct(">8sBB6s8sQ16s32s")
HEADER_BYTES = _HEADER.size  # 80
_KEY_ID_INFO = b"sutazai repository key id"
_BLOB_INFO = b"sutazai repository blob v1"
_MIN_SHIFT, _MAX_SHIFT = 12, 26
CREATE_KEY = "python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'"


class WrongKeyError(ConfigError):
    """The blob was sealed with another repository key than the one configured."""


class BlobAuthenticationError(IntegrityError):
    """An encrypted blob failed authentication: modified, truncated or reordered."""


# ----------------------------------------------------------------------------- keys
@dataclass(frozen=True, repr=False, eq=False)
class RepositoryKey:
    """The 32-byte repository key. ``repr``/``str`` show its id only, never the bytes."""

    material: bytes

    def __post_init__(self) -> None:
        if len(self.material) != KEY_BYTES:
            raise ConfigError(f"the repository key must be {KEY_BYTES} bytes, got "
                              f"{len(self.material)}; create one with: {CREATE_KEY}")

    @property
    def id_bytes(self) -> bytes:
        return hmac.new(self.material, _KEY_ID_INFO, hashlib.sha256).digest()[:8]

    @property
    def key_id(self) -> str:
        """A short public fingerprint (a PRF of the key: reveals nothing about it)."""
        return self.id_bytes.hex()

    def __repr__(self) -> str:
        return f"RepositoryKey(id={self.key_id})"

    __str__ = __repr__

    @classmethod
    def generate(cls) -> RepositoryKey:
        return cls(os.urandom(KEY_BYTES))

    def to_text(self) -> str:
        """The base64 form stored in the secret provider."""
        return base64.b64encode(self.material).decode()

    @classmethod
    def parse(cls, text: str, where: str = "the secret provider") -> RepositoryKey:
        """Decode the secret's value: base64 (standard or URL-safe) of exactly 32 bytes."""
        cleaned = "".join(text.split())
        try:
            material = base64.b64decode(cleaned.replace("-", "+").replace("_", "/"),
                                        validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"secret {KEY_SECRET!r} from {where} is not base64; create a "
                              f"key with: {CREATE_KEY}") from None
        if len(material) != KEY_BYTES:
            raise ConfigError(f"secret {KEY_SECRET!r} from {where} decodes to "
                              f"{len(material)} bytes, not {KEY_BYTES}; create a key with: "
                              f"{CREATE_KEY}")
        return cls(material)


_KEYS: dict[str, RepositoryKey] = {}
_KEYS_LOCK = threading.Lock()


def missing_key_help(settings: Settings) -> str:
    from sutazai.security.secrets import env_var, secrets_config

    config = secrets_config(settings)
    folder = config.file_dir or settings.home / "secrets"
    return (
        f"create a key with  {CREATE_KEY}  and store it as the secret {KEY_SECRET!r}: "
        f"in Vault/OpenBao as field 'key' of {config.vault_mount}/{config.vault_path}/"
        f"repository (e.g. 'bao kv put -mount={config.vault_mount} "
        f"{config.vault_path}/repository key=<KEY>'), or in the variable "
        f"{env_var(KEY_SECRET)}, or in a mode-0600 file {folder / KEY_SECRET}. Keep a copy "
        "offline: encrypted blobs cannot be read without it"
    )


def load_repository_key(settings: Settings) -> RepositoryKey:
    """The repository key from the configured (audited) secret provider, cached per process.

    Cached for the life of the process, keyed by the home folder and the secret-provider
    configuration: a server keeps decrypting through a Vault outage, and the audit log
    gets one ``secret.read`` per process instead of one per blob. After a rotation a
    :class:`~sutazai.repository.store.Repository` that meets a blob of an unknown key
    drops the cache (:func:`forget_repository_keys`) and reads the keys again.
    """
    from sutazai.security.secrets import SecretNotFoundError

    key = _cached_key(settings, KEY_SECRET)
    if key is None:
        raise SecretNotFoundError(
            f"the repository key is missing (no secret {KEY_SECRET!r}); "
            f"{missing_key_help(settings)}")
    return key


def load_previous_repository_key(settings: Settings) -> RepositoryKey | None:
    """The key being rotated out (secret ``repository/previous-key``), or None.

    While it is set, blobs sealed with it stay readable, and ``sutazai models rekey``
    re-seals them with the current key; once that is done the secret can be deleted.
    """
    return _cached_key(settings, PREVIOUS_KEY_SECRET)


def _cached_key(settings: Settings, secret: str) -> RepositoryKey | None:
    from sutazai.security.secrets import SecretNotFoundError, secrets_config, settings_provider

    cache_key = f"{settings.home.resolve()}|{secrets_config(settings).model_dump_json()}|{secret}"
    with _KEYS_LOCK:
        cached = _KEYS.get(cache_key)
        if cached is not None:
            return cached
        provider = settings_provider(settings)
        try:
            value = provider.get(secret)
        except SecretNotFoundError:
            return None  # not cached: a key set later is found without a restart
        key = RepositoryKey.parse(value.get_secret_value(), provider.label)
        _KEYS[cache_key] = key
        return key


def forget_repository_keys() -> None:
    """Drop cached keys (tests; after changing the secret in a long-running process)."""
    with _KEYS_LOCK:
        _KEYS.clear()


# --------------------------------------------------------------------------- format
def chunk_count(plain_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    return max(1, -(-plain_size // chunk_bytes))


def encrypted_size(plain_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Size on disk of an encrypted blob of ``plain_size`` bytes (never equal to it)."""
    return HEADER_BYTES + plain_size + TAG_BYTES * chunk_count(plain_size, chunk_bytes)


@dataclass(frozen=True)
class BlobHeader:
    version: int
    chunk_shift: int
    key_id: bytes
    plain_size: int
    salt: bytes
    digest: str
    raw: bytes

    @property
    def chunk_bytes(self) -> int:
        return 1 << self.chunk_shift

    @property
    def chunks(self) -> int:
        return chunk_count(self.plain_size, self.chunk_bytes)

    @property
    def encrypted_size(self) -> int:
        return encrypted_size(self.plain_size, self.chunk_bytes)

    @classmethod
    def new(cls, key: RepositoryKey, digest: str, plain_size: int,
            chunk_shift: int = CHUNK_SHIFT) -> BlobHeader:
        salt = os.urandom(16)
        raw = _HEADER.pack(MAGIC, FORMAT_VERSION, chunk_shift, bytes(6), key.id_bytes,
                           plain_size, salt, bytes.fromhex(digest))
        return cls(FORMAT_VERSION, chunk_shift, key.id_bytes, plain_size, salt, digest, raw)

    @classmethod
    def unpack(cls, raw: bytes) -> BlobHeader:
        magic, version, shift, _, key_id, size, salt, digest = _HEADER.unpack(raw)
        assert magic == MAGIC
        return cls(version, shift, key_id, size, salt, digest.hex(), raw)


def peek_header(raw: bytes) -> BlobHeader | None:
    """The header at the start of ``raw`` (a blob's first bytes), unchecked; None when the
    bytes are not an encrypted blob's. :func:`read_header` checks what it says."""
    if len(raw) < HEADER_BYTES or not raw.startswith(MAGIC):
        return None
    return BlobHeader.unpack(raw[:HEADER_BYTES])


def read_header(path: Path, digest: str) -> BlobHeader | None:
    """The header of the blob at ``path`` (named ``digest``), or None for a plain blob.

    Raises :class:`IntegrityError` for a sealed blob that is not this digest's (copied
    over it) or that a newer SutazAI wrote. A plain file cannot pass for an encrypted one
    by accident: it would have to hold its own sha256 at offset 48.
    """
    with path.open("rb") as handle:
        header = peek_header(handle.read(HEADER_BYTES))
    if header is None:
        return None
    if header.digest != digest:
        raise IntegrityError(
            f"blob {digest[:12]}… holds the encrypted blob of {header.digest[:12]}… (a blob "
            "was copied over another); run 'sutazai models verify' and restore it from a "
            "bundle or pull the model again")
    if header.version != FORMAT_VERSION or not _MIN_SHIFT <= header.chunk_shift <= _MAX_SHIFT:
        raise IntegrityError(
            f"blob {digest[:12]}… is in encrypted format v{header.version} (chunk shift "
            f"{header.chunk_shift}), which this SutazAI cannot read; upgrade SutazAI, or "
            "restore the blob if it is damaged")
    return header


class _Sealer:
    """The per-blob AEAD, nonces and associated data for one header and key."""

    def __init__(self, key: RepositoryKey, header: BlobHeader) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        if not hmac.compare_digest(header.key_id, key.id_bytes):
            raise WrongKeyError(
                f"blob {header.digest[:12]}… was encrypted with key id {header.key_id.hex()}, "
                f"but the configured secret {KEY_SECRET!r} has id {key.key_id}: configure "
                "the key that encrypted this repository, or, while rotating keys, set the "
                f"old one as the secret {PREVIOUS_KEY_SECRET!r} and run 'sutazai models "
                "rekey' (the key id is a fingerprint; compare it with "
                "'sutazai.repository.crypto.RepositoryKey.parse(...).key_id')")
        okm = HKDF(algorithm=hashes.SHA256(), length=40, salt=header.salt,
                   info=_BLOB_INFO + bytes.fromhex(header.digest)).derive(key.material)
        self.aead = AESGCM(okm[:32])
        self.prefix = okm[32:]
        self.header = header

    def nonce(self, index: int) -> bytes:
        return self.prefix + struct.pack(">I", index)

    def aad(self, index: int) -> bytes:
        return self.header.raw + struct.pack(">QB", index, index == self.header.chunks - 1)


def _read_full(source: BinaryIO, view: memoryview) -> int:
    got = 0
    while got < len(view):
        count = source.readinto(view[got:])  # type: ignore[attr-defined]
        if not count:
            break
        got += count
    return got


def encrypt_stream(
    source: BinaryIO,
    sink: BinaryIO,
    key: RepositoryKey,
    digest: str,
    size: int,
    progress: ProgressTask | None = None,
) -> str:
    """Seal ``size`` bytes of ``source`` into ``sink``; returns the sha256 of what it read.

    The digest goes into the header (and so into every chunk's associated data) before
    the bytes are read, so the caller must check that the returned sha256 is ``digest``
    and discard ``sink`` otherwise (the source changed since it was hashed). A source
    shorter or longer than ``size`` raises :class:`IntegrityError`.
    """
    header = BlobHeader.new(key, digest, size)
    sealer = _Sealer(key, header)
    chunk = header.chunk_bytes
    plain = memoryview(bytearray(chunk))
    sealed = memoryview(bytearray(chunk + TAG_BYTES))
    hasher = hashlib.sha256()
    sink.write(header.raw)
    for index in range(header.chunks):
        want = min(chunk, size - index * chunk)
        if _read_full(source, plain[:want]) != want:
            raise IntegrityError(f"the file for {digest[:12]}… shrank while it was stored; "
                                 "store it again when nothing is writing it")
        hasher.update(plain[:want])
        sealer.aead.encrypt_into(sealer.nonce(index), plain[:want], sealer.aad(index),
                                 sealed[:want + TAG_BYTES])
        sink.write(sealed[:want + TAG_BYTES])
        if progress is not None:
            progress.advance(want)
    if source.read(1):
        raise IntegrityError(f"the file for {digest[:12]}… grew while it was stored; store "
                             "it again when nothing is writing it")
    return hasher.hexdigest()


class BlobReader(io.RawIOBase):
    """The plaintext of an encrypted blob as a stream, one authenticated chunk at a time.

    Bytes of a chunk are returned only after its tag checked; a bad chunk, a short or
    long file raise :class:`BlobAuthenticationError` (an :class:`IntegrityError`).
    """

    def __init__(self, path: Path, header: BlobHeader, key: RepositoryKey) -> None:
        super().__init__()
        self._sealer = _Sealer(key, header)
        self._header = header
        self._file = path.open("rb")
        try:
            actual = os.fstat(self._file.fileno()).st_size
            if actual != header.encrypted_size:
                raise BlobAuthenticationError(
                    f"encrypted blob {header.digest[:12]}… is {actual} bytes, its header says "
                    f"{header.encrypted_size}: it was truncated or extended; restore it from "
                    "a bundle or pull the model again")
            self._file.seek(HEADER_BYTES)
        except BaseException:
            self._file.close()
            raise
        chunk = header.chunk_bytes
        self._sealed = memoryview(bytearray(chunk + TAG_BYTES))
        self._plain = memoryview(bytearray(chunk))
        self._index = 0
        self._pos = self._end = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos == self._end:
            if self._index == self._header.chunks:
                return 0
            want = self._next_size()
            if len(view) >= want:  # the caller's buffer holds a whole chunk: no extra copy
                self._open_next(view[:want])
                return want
            self._open_next(self._plain[:want])
            self._pos, self._end = 0, want
        count = min(len(view), self._end - self._pos)
        view[:count] = self._plain[self._pos:self._pos + count]
        self._pos += count
        return count

    def _next_size(self) -> int:
        header = self._header
        return min(header.chunk_bytes, header.plain_size - self._index * header.chunk_bytes)

    def _open_next(self, target: memoryview) -> None:
        """Decrypt the next chunk into ``target`` (its exact size), or raise."""
        index = self._index
        want = len(target)
        sealed = self._sealed[:want + TAG_BYTES]
        if _read_full(self._file, sealed) != len(sealed):
            raise self._failure(index, "ends early (truncated)")
        from cryptography.exceptions import InvalidTag

        try:
            self._sealer.aead.decrypt_into(self._sealer.nonce(index), sealed,
                                           self._sealer.aad(index), target)
        except InvalidTag:
            raise self._failure(index, "failed authentication (modified, reordered or "
                                "truncated)") from None
        self._index += 1
        if self._index == self._header.chunks and self._file.read(1):
            raise self._failure(index, "is followed by extra bytes")

    def _failure(self, index: int, what: str) -> BlobAuthenticationError:
        return BlobAuthenticationError(
            f"encrypted blob {self._header.digest[:12]}…: chunk {index} of "
            f"{self._header.chunks} {what}; the blob is corrupted or was tampered with. Run "
            "'sutazai models verify', then restore it from a bundle or pull the model again")

    def close(self) -> None:
        self._file.close()
        super().close()
