"""``sutazai backup create | list | verify | restore | prune`` of a home, either profile.

One backup is a consistent snapshot of what cannot be rebuilt: the model repository
(manifests and blobs; caches are left out), MLflow's database and artifacts, the learning
store, the NAS storage, the graph, the audit log with its anchor, the nightly reports and
the settings; secrets only with ``--include-secrets``, then sealed (AES-256-GCM) with the
secret ``backup/sealing-key``. The manifest is signed with the secret
``backup/signing-key`` (HMAC-SHA256).

Consistent while writers run, by order: MLflow's database is copied first (SQLite's online
backup API: a point in time), then the repository's manifests, then its blobs (a pull
publishes blobs before its manifest, and registers in MLflow after both), so every model
version MLflow knows has its manifest and every manifest its blobs. The graph is FalkorDB's
own ``BGSAVE`` (a point in time; a document's chunks without their Document node are an
interrupted ingest, which the next ingest finishes).

In the production profile the stores on PostgreSQL are ``pg_dump -Fc`` files (each in one
repeatable-read snapshot) in the same pool, restored with ``pg_restore`` onto the databases
the restoring settings name. A backup restores only under the profile it was taken with:
the other profile would not read its databases, and the restored home would silently lack
them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sutazai.backup.archive import BackupArchive, BackupFile, BackupManifest, new_id
from sutazai.config import Settings
from sutazai.embedded_db import sqlite_file
from sutazai.errors import ConfigError, DiskFullError, GraphStoreError, IntegrityError
from sutazai.production.databases import client_environment, is_postgres, redacted
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.security.audit import anchor_store, audit, audit_path

SIGNING_KEY = "backup/signing-key"
SEALING_KEY = "backup/sealing-key"
#: Repository folders that are rebuilt from the blobs (or are locks and scratch space).
REPOSITORY_CACHES = ("snapshots", "tmp", "locks", "plaintext")
REPOSITORY_CACHE_FILES = ("verified.db",)
HOME_FOLDERS = ("mlflow-artifacts", "reports", "datasets")  # copied as files
POSTGRES_FOLDER = "postgres"  # where a manifest names its pg_dump files (not restored as files)
MLFLOW_TABLES = ("registered_models", "model_versions", "runs", "registered_model_aliases")


def backup_root(settings: Settings) -> Path:
    return settings.backup_dir or settings.home.parent / f"{settings.home.name}-backups"


def _key(settings: Settings, name: str) -> bytes:
    from sutazai.security.secrets import read_secret

    return hashlib.sha256(read_secret(settings, name, generate=True)
                          .get_secret_value().encode()).digest()


def create(settings: Settings, *, include_secrets: bool = False,
           progress: Progress = NULL_PROGRESS) -> BackupManifest:
    """Snapshot the home (see the module docstring); only changed bytes are written.

    All or nothing: a create that fails (a full disk, a database that cannot be dumped,
    Ctrl-C) removes the objects it added and leaves no backup behind; one killed outright
    leaves scratch files and objects that the next ``prune`` collects."""
    home = settings.home
    if not home.is_dir():
        raise ConfigError(f"no SutazAI home at {home}: nothing to back up")
    archive = BackupArchive(backup_root(settings))
    key = _key(settings, SIGNING_KEY)
    with archive.lock():
        try:
            manifest = _create(settings, archive, key, include_secrets, progress)
        except BaseException as exc:
            archive.discard_added()
            if _is_disk_full(exc):
                raise _disk_full(archive.root) from None
            raise
    audit(settings, "backup.create", manifest.id,
          details={"files": len(manifest.files), "bytes": manifest.size,
                   "written": archive.written, "secrets": include_secrets,
                   "root": str(archive.root), "databases": sorted(manifest.databases)})
    manifest.notes.append(f"wrote {archive.written} new byte(s) of {manifest.size}")
    return manifest


def _create(settings: Settings, archive: BackupArchive, key: bytes, include_secrets: bool,
            progress: Progress) -> BackupManifest:
    home = settings.home
    manifest = BackupManifest(id=new_id(), created=datetime.now(UTC), home=str(home),
                              secrets=include_secrets, profile=settings.profile)
    sources: list[tuple[str, Path]] = []
    with tempfile.TemporaryDirectory(dir=archive._tmp()) as scratch:
        staging = Path(scratch)
        for name, url in database_urls(settings).items():  # MLflow first: see the docstring
            database = sqlite_file(url)
            if database is not None:
                if database.is_file():
                    copy = staging / f"{name}.db"
                    sqlite_snapshot(database, copy)
                    sources.append((f"{name}.db", copy))
                    if name == "mlflow":
                        manifest.counts |= mlflow_counts(copy)
            elif is_postgres(url):
                dump = staging / f"{name}.dump"
                manifest.counts |= pg_snapshot(settings, url, dump, count_mlflow=name == "mlflow")
                sources.append((f"{POSTGRES_FOLDER}/{name}.dump", dump))
                manifest.databases[name] = redacted(url)
            else:
                manifest.notes.append(f"{name}: a server SutazAI does not run ({redacted(url)}),"
                                      " not in the backup; back it up with its own tool")
        sources += repository_files(settings)
        for folder in HOME_FOLDERS:
            sources += [(p.relative_to(home).as_posix(), p) for p in _files(home / folder)]
        log = audit_path(settings)
        anchor = getattr(anchor_store(settings), "path", None)
        # the anchor before the log, as 'audit verify' reads them: a record appended in
        # between leaves the log ahead of its anchor, which is no alarm (the reverse is)
        for path, name in ((anchor, "audit-anchor/audit.jsonl.anchor"),
                           (log, "audit/audit.jsonl")):
            if path is not None and Path(path).is_file():
                sources.append((name, Path(path)))
        graph = graph_dump(settings, staging, manifest)
        if graph is not None:
            sources.append(("graph/dump.rdb", graph))
        settings_copy = staging / "settings.json"
        settings_copy.write_text(settings.model_dump_json(indent=1))
        sources.append(("backup/settings.json", settings_copy))
        total = sum(p.stat().st_size for _, p in sources)
        bar = progress.task(f"backing up {home}", total=total)
        try:
            for name, path in sources:
                digest, size = archive.put(path)
                manifest.files.append(BackupFile(path=name, sha256=digest, size=size))
                bar.advance(size)
            if include_secrets:
                manifest.files += _sealed_secrets(settings, archive)
        finally:
            bar.close()
    manifest.counts["repository_versions"] = sum(
        1 for f in manifest.files if f.path.startswith("repository/manifests/")
        and f.path.endswith(".json"))
    archive.save(manifest, key)
    return manifest


def database_urls(settings: Settings) -> dict[str, str]:
    """The databases a backup holds, MLflow's first: the store behind the stack's own
    MLflow server in the production profile, else whatever the tracking URI names."""
    mlflow = settings.tracking_uri
    if settings.production and mlflow == f"http://127.0.0.1:{settings.mlflow_port}":
        mlflow = settings.mlflow_store_url
    return {"mlflow": mlflow, "learning": settings.learning_url, "nas": settings.nas_storage}


def list_backups(settings: Settings) -> list[BackupManifest]:
    archive = BackupArchive(backup_root(settings))
    return [archive.load(i, None) for i in archive.ids()]


def verify(settings: Settings, backup_id: str, progress: Progress = NULL_PROGRESS
           ) -> tuple[BackupManifest, list[str]]:
    """The manifest, and every problem found: a signature that does not match, an object
    missing or damaged. Empty: the backup restores what it says."""
    archive = BackupArchive(backup_root(settings))
    try:
        manifest = archive.load(backup_id, _key(settings, SIGNING_KEY))
    except IntegrityError as exc:
        return archive.load(backup_id, None), [str(exc)]
    bar = progress.task(f"verifying backup {manifest.id}", total=manifest.size)
    problems = []
    try:
        for entry in manifest.files:
            problem = archive.check_object(entry)
            if problem:
                problems.append(problem)
            bar.advance(entry.size)
    finally:
        bar.close()
    audit(settings, "backup.verify", manifest.id, result="ok" if not problems else "error",
          details={"problems": len(problems)})
    return manifest, problems


def restore(settings: Settings, backup_id: str, target: Path, *, force: bool = False,
            progress: Progress = NULL_PROGRESS, onto: Mapping[str, str] | None = None,
            replace_databases: bool = False) -> BackupManifest:
    """Write the backup into ``target`` (a new home): refused when it holds anything,
    unless ``force``. Each file is checked against its sha256 as it is written; the graph's
    dump becomes the server's append-only file.

    PostgreSQL dumps (production profile) are restored onto the databases ``settings``
    name, or ``onto`` (other URLs by dump name: mlflow, learning, nas; scratch databases
    for a drill). A database that already holds tables is refused unless
    ``replace_databases`` (the CLI's ``--force`` sets both): ``force`` alone never
    overwrites a live database. A backup is restored only by settings of the profile it
    was taken with (see :func:`_check_profile`)."""
    archive = BackupArchive(backup_root(settings))
    manifest = archive.load(backup_id, _key(settings, SIGNING_KEY))
    target = target.expanduser().resolve()
    _check_profile(settings, manifest)
    dumps = [f for f in manifest.files if _dump_name(f) is not None]
    urls = {**database_urls(settings), **(onto or {})}
    for entry in dumps:  # every refusal before anything is written
        url = urls.get(str(_dump_name(entry)), "")
        if not is_postgres(url):
            raise ConfigError(f"backup {manifest.id} holds a PostgreSQL dump of "
                              f"{_dump_name(entry)} but these settings keep it in "
                              f"{redacted(url) or 'nothing'}; restore it with settings whose "
                              "store is PostgreSQL (SUTAZAI_PROFILE=production)")
        if not replace_databases and pg_has_tables(settings, url):
            raise ConfigError(f"{redacted(url)} is not empty; restore onto an empty database, "
                              "or add --force to replace what the backup holds there")
        problem = archive.check_object(entry)  # a damaged dump touches no database
        if problem:
            raise IntegrityError(f"{problem}; nothing was restored")
    if target.exists() and any(target.iterdir()) and not force:
        raise ConfigError(f"{target} is not empty; restore into an empty folder, or add "
                          "--force to write over what is there")
    sealing = _key(settings, SEALING_KEY) if manifest.secrets else None
    bar = progress.task(f"restoring {manifest.id} into {target}", total=manifest.size)
    try:
        for entry in manifest.files:  # files first: a damaged one stops before any database
            if _dump_name(entry) is None:
                _restore_file(archive, entry, target, sealing)
                bar.advance(entry.size)
        for entry in dumps:
            pg_restore(settings, archive, entry, urls[str(_dump_name(entry))])
            bar.advance(entry.size)
    finally:
        bar.close()
    _relink_snapshots(target / "repository")
    dump = target / "graph" / "dump.rdb"
    if dump.is_file():
        from sutazai.knowledge.server import adopt_dump

        adopt_dump(target / "graph")
    audit(settings, "backup.restore", manifest.id, details={
        "to": str(target), "files": len(manifest.files),
        "databases": {str(_dump_name(e)): redacted(urls[str(_dump_name(e))]) for e in dumps}})
    return manifest


def _check_profile(settings: Settings, manifest: BackupManifest) -> None:
    """A production backup's databases are PostgreSQL dumps that only a production
    profile's servers take; an embedded one's are SQLite files that a production profile
    would not read. Either way the restored home would silently lack its data, so refuse."""
    if manifest.profile == settings.profile:
        return
    if manifest.profile == "production":
        raise ConfigError(f"backup {manifest.id} was taken with the production profile (its "
                          "databases are PostgreSQL dumps); restore it with "
                          "SUTAZAI_PROFILE=production, onto the stack's PostgreSQL")
    raise ConfigError(f"backup {manifest.id} is of an {manifest.profile} home (its databases "
                      f"are SQLite files); restore it with SUTAZAI_PROFILE={manifest.profile}, "
                      "then move that home onto PostgreSQL with the production migration")


def _dump_name(entry: BackupFile) -> str | None:
    """The database a PostgreSQL dump entry restores (mlflow, learning, nas), else None."""
    folder, _, name = entry.path.partition("/")
    if folder == POSTGRES_FOLDER and name.endswith(".dump") and not entry.sealed:
        return name.removesuffix(".dump")
    return None


def prune(settings: Settings, keep: int) -> tuple[list[str], int]:
    """Keep the ``keep`` newest backups; (ids removed, bytes freed). Also collects what
    interrupted creates left: objects no manifest names, scratch files."""
    if keep < 1:
        raise ConfigError("--keep must be at least 1: prune never removes every backup")
    archive = BackupArchive(backup_root(settings))
    with archive.lock():
        old = archive.ids()[:-keep]
        for backup_id in old:
            archive.remove(backup_id)
        freed = archive.collect_garbage()
    audit(settings, "backup.prune", str(archive.root),
          details={"removed": old, "freed": freed, "kept": keep})
    return old, freed


def _relink_snapshots(root: Path) -> None:
    """The repository's snapshot folders (links into the blobs, left out of backups),
    made again; an encrypted repository's are made when an engine first needs them."""
    from sutazai.errors import SutazAIError
    from sutazai.repository.store import Repository

    if not (root / "manifests").is_dir():
        return
    repo = Repository(root)
    for manifest in repo.all_versions():
        try:
            repo.ensure_snapshot(manifest)
        except SutazAIError:
            continue  # encrypted without its key here: decrypted on first use


# ---------------------------------------------------------------------- parts
def sqlite_snapshot(source: Path, target: Path) -> None:
    """A point-in-time copy of a live SQLite database (its online backup API)."""
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as live, \
            sqlite3.connect(target) as copy:
        live.backup(copy)
    copy.close()


def mlflow_counts(database: Path) -> dict[str, int]:
    counts = {}
    with sqlite3.connect(database) as db:
        for table in MLFLOW_TABLES:
            try:
                counts[f"mlflow_{table}"] = int(db.execute(
                    f"SELECT count(*) FROM {table}").fetchone()[0])  # table names are constants
            except sqlite3.Error:
                continue
    return counts


def repository_files(settings: Settings) -> list[tuple[str, Path]]:
    """The repository's files, manifests before blobs (see the module docstring).

    Listed as well as copied in that order: the blobs folder is walked only after the
    manifests were listed (one walk of the root could list blobs first, and a pull that
    published in between would leave a manifest without its blob). A writer's
    half-written ``.<name>.*.tmp`` (renamed into place or removed at any moment) is
    left out."""
    root = settings.repository_root
    top = sorted(root.iterdir()) if root.is_dir() else []
    files = [p for p in top if p.is_file() and not p.is_symlink()]
    for folder in top:
        if folder.is_dir() and folder.name not in (*REPOSITORY_CACHES, "blobs"):
            files += _files(folder)
    files += _files(root / "blobs")
    return [(f"repository/{p.relative_to(root).as_posix()}", p) for p in files
            if p.name not in REPOSITORY_CACHE_FILES
            and not (p.name.startswith(".") and p.name.endswith(".tmp"))]


def graph_dump(settings: Settings, staging: Path, manifest: BackupManifest) -> Path | None:
    """FalkorDB's BGSAVE of the embedded graph (the running server's, else one started for
    it), with its document and chunk counts; None without an embedded graph."""
    from sutazai.knowledge.server import EmbeddedFalkorDB, graph_password, running_server

    data = settings.home / "graph"
    if settings.kg_uri or settings.kg_store != "falkordb":
        manifest.notes.append("graph: a server SutazAI does not run, not in the backup; use "
                              "its own dump (neo4j-admin database dump, or BGSAVE)")
        return None
    if not data.is_dir():
        return None
    password = graph_password(settings)
    shared = running_server(data)
    if shared is not None:
        return _bgsave(*shared, password, data, staging, settings.kg_graph, manifest)
    with EmbeddedFalkorDB(data, password) as server:
        return _bgsave(server.host, server.port, password, data, staging, settings.kg_graph,
                       manifest)


def _bgsave(host: str, port: int, password: str, data: Path, staging: Path, graph: str,
            manifest: BackupManifest) -> Path:
    import redis

    client = redis.Redis(host=host, port=port, password=password, socket_timeout=60)
    try:
        for label in ("Document", "Chunk"):
            try:
                rows = client.execute_command("GRAPH.RO_QUERY", graph,
                                              f"MATCH (n:{label}) RETURN count(n)")
                manifest.counts[f"graph_{label.lower()}s"] = int(rows[1][0][0])
            except redis.ResponseError:  # no graph yet
                manifest.counts[f"graph_{label.lower()}s"] = 0
        saves = int(client.info("persistence").get("rdb_saves", 0))
        client.bgsave()
        deadline = time.monotonic() + 300
        while True:
            info = client.info("persistence")
            if int(info.get("rdb_saves", 0)) > saves and not info["rdb_bgsave_in_progress"]:
                break
            if time.monotonic() > deadline:
                raise GraphStoreError("FalkorDB's BGSAVE did not finish within 300 s")
            time.sleep(0.05)
        if info.get("rdb_last_bgsave_status") != "ok":
            raise GraphStoreError("FalkorDB's BGSAVE failed; see falkordb.log in the graph "
                                  "folder (a full disk?)")
    except redis.RedisError as exc:
        raise GraphStoreError(f"cannot snapshot the graph at {host}:{port} ({exc})") from None
    finally:
        client.close()
    dump = staging / "dump.rdb"
    # moved, not left in the home (it would go stale there); the backup root may be
    # another filesystem, where a rename fails (EXDEV)
    shutil.move(data / "dump.rdb", dump)
    return dump


# ------------------------------------------------------------------ PostgreSQL
def _libpq(settings: Settings, url: str) -> tuple[str, dict[str, str]]:
    """``url`` as a libpq connection string without its password, and the environment
    that gives libpq the password (never a command line: ``ps`` shows those)."""
    from psycopg.conninfo import make_conninfo
    from sqlalchemy.engine import make_url

    parts = make_url(url)
    options = {k: str(v) for k, v in parts.query.items() if isinstance(v, str)}
    conninfo = make_conninfo(host=parts.host, port=parts.port, user=parts.username,
                             dbname=parts.database, **options)
    env = ({"PGPASSWORD": parts.password} if parts.password
           else client_environment(settings, url))
    return conninfo, env


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(found).is_file():
        raise ConfigError(f"{name} is not installed; install PostgreSQL's client tools "
                          "(apt-get install postgresql-client) to back up or restore "
                          "PostgreSQL")
    return found


def _connect(settings: Settings, url: str) -> Any:
    import psycopg

    conninfo, env = _libpq(settings, url)
    try:
        return psycopg.connect(conninfo, password=env.get("PGPASSWORD"), connect_timeout=10)
    except psycopg.Error as exc:
        raise ConfigError(f"cannot connect to {redacted(url)} ({_first_line(exc)}); is the "
                          "production stack up ('make up')?") from None


def pg_snapshot(settings: Settings, url: str, dump: Path, *, count_mlflow: bool = False
                ) -> dict[str, int]:
    """``pg_dump -Fc`` of ``url`` into ``dump``, and MLflow's row counts taken in the very
    snapshot the dump reads (a repeatable-read transaction exports it to pg_dump)."""
    from psycopg import IsolationLevel

    connection = _connect(settings, url)
    try:
        connection.read_only = True
        connection.isolation_level = IsolationLevel.REPEATABLE_READ
        snapshot = connection.execute("SELECT pg_export_snapshot()").fetchone()[0]
        counts: dict[str, int] = {}
        for table in MLFLOW_TABLES if count_mlflow else ():
            if connection.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]:
                counts[f"mlflow_{table}"] = int(connection.execute(
                    f"SELECT count(*) FROM {table}").fetchone()[0])  # constant names
        conninfo, env = _libpq(settings, url)
        done = subprocess.run(
            [_pg_tool("pg_dump"), "--format=custom", "--no-password",
             f"--snapshot={snapshot}", f"--file={dump}", f"--dbname={conninfo}"],
            env={**os.environ, **env}, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            if "No space left" in done.stderr or "Disk quota" in done.stderr:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dump))
            raise ConfigError(f"pg_dump of {redacted(url)} failed: "
                              f"{_first_line(done.stderr)}")
        return counts
    finally:
        connection.close()


def pg_has_tables(settings: Settings, url: str) -> bool:
    """Whether the database at ``url`` holds any table of its own (a restore target that
    is not empty)."""
    connection = _connect(settings, url)
    try:
        return bool(connection.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN "
            "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
        ).fetchone()[0])
    finally:
        connection.close()


def pg_restore(settings: Settings, archive: BackupArchive, entry: BackupFile,
               url: str) -> None:
    """Restore a dump (its bytes checked by the caller) onto ``url`` in one transaction:
    a failure changes nothing there."""
    conninfo, env = _libpq(settings, url)
    done = subprocess.run(
        [_pg_tool("pg_restore"), "--clean", "--if-exists", "--no-owner",
         f"--role={settings.postgres_user}", "--single-transaction", "--exit-on-error",
         "--no-password", f"--dbname={conninfo}", str(archive.object_path(entry.sha256))],
        env={**os.environ, **env}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ConfigError(f"pg_restore onto {redacted(url)} failed, which changed nothing "
                          f"there: {_first_line(done.stderr)}")


def _first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


def _disk_full(root: Path) -> DiskFullError:
    try:
        free = f" ({shutil.disk_usage(root).free / 2**20:.1f} MiB free)"
    except OSError:
        free = ""
    return DiskFullError(f"{root} ran out of space while writing a backup{free}; nothing of "
                         "it was kept and earlier backups are intact: free space there "
                         "('sutazai backup prune --keep N'), or set SUTAZAI_BACKUP_DIR to "
                         "a larger disk")


def _sealed_secrets(settings: Settings, archive: BackupArchive) -> list[BackupFile]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from sutazai.security.secrets import secret_folder

    folder = secret_folder(settings)
    sealing = AESGCM(_key(settings, SEALING_KEY))
    sealed = []
    for path in _files(folder):
        name = path.relative_to(settings.home).as_posix() if path.is_relative_to(
            settings.home) else f"secrets/{path.relative_to(folder).as_posix()}"
        if name.endswith(SEALING_KEY) or name.endswith(SIGNING_KEY):
            continue  # the keys that open the backup are never inside it
        nonce = os.urandom(12)
        digest, size = archive.put_bytes(nonce + sealing.encrypt(nonce, path.read_bytes(),
                                                                 name.encode()))
        sealed.append(BackupFile(path=name, sha256=digest, size=size, sealed=True))
    return sealed


def _restore_file(archive: BackupArchive, entry: BackupFile, target: Path,
                  sealing: bytes | None) -> None:
    destination = (target / entry.path).resolve()
    if not destination.is_relative_to(target):
        raise IntegrityError(f"backup entry {entry.path!r} points outside the target")
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as writer:
            if entry.sealed:
                from cryptography.hazmat.primitives.ciphers.aead import AESGCM

                data = b"".join(archive.read_object(entry))
                digest.update(data)
                if sealing is None:
                    raise IntegrityError("the backup holds sealed secrets but no sealing key")
                writer.write(AESGCM(sealing).decrypt(data[:12], data[12:], entry.path.encode()))
            else:
                for block in archive.read_object(entry):
                    digest.update(block)
                    writer.write(block)
        if digest.hexdigest() != entry.sha256:
            raise IntegrityError(f"{entry.path}: its object is damaged (sha256 differs); "
                                 "'sutazai backup verify' lists every damaged object")
        os.chmod(tmp, 0o600 if entry.sealed or entry.path.startswith("secrets/") else 0o644)
        os.replace(tmp, destination)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _files(folder: Path) -> list[Path]:
    """Regular files under ``folder`` (links are not followed), sorted."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found.append(path)
    return found


def as_json(manifest: BackupManifest) -> dict[str, Any]:
    data = json.loads(manifest.model_dump_json())
    data["files"] = len(manifest.files)
    data["bytes"] = manifest.size
    return data
