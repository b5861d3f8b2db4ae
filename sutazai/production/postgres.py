"""A PostgreSQL cluster of SutazAI's own, on 127.0.0.1, for the production profile and tests.

Debian's PostgreSQL (``/usr/lib/postgresql/<v>/bin``), never its system service: the cluster
lives in a folder SutazAI chooses. ``initdb`` and ``postgres`` refuse to run as root, so a
root caller runs them as the ``postgres`` user, which must be able to reach that folder.
Local connections on the cluster's private socket (mode 0700, in its folder) are trusted and
used for administration only; TCP connections need a password (SCRAM), which the roles get
from the secret provider, never from a command line.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from sutazai.errors import ConfigError, EngineError
from sutazai.serving.process import ManagedProcess, require_free_port, tail

SUPERUSER = "postgres"


def binaries() -> Path:
    """The newest installed PostgreSQL's bin folder."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        raise ConfigError("PostgreSQL is not installed: run make system-deps "
                          "(scripts/install-system-deps.sh installs Debian's postgresql)")
    return found[-1].parent


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to the postgres user (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ConfigError("running as root, PostgreSQL needs the 'postgres' user, which the "
                          "postgresql package creates: run make system-deps") from None
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


class LocalPostgres:
    """One cluster in ``data_dir`` listening on 127.0.0.1:``port``."""

    def __init__(self, data_dir: Path, port: int, log_path: Path | None = None, *,
                 durable: bool = True) -> None:
        """``durable=False`` (tests, scratch drills) turns fsync off: a crash of the machine
        may lose the cluster, and creating a database takes milliseconds, not a second."""
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path or data_dir.parent / f"{data_dir.name}.log"
        self.durable = durable
        self.process: ManagedProcess | None = None

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def command(self) -> list[str]:
        return [str(binaries() / "postgres"), "-D", str(self.data_dir),
                "-c", "listen_addresses=127.0.0.1", "-p", str(self.port),
                "-c", f"unix_socket_directories={self.data_dir}",
                "-c", "unix_socket_permissions=0700", "-c", "max_connections=200",
                "-c", "shared_buffers=64MB",
                *([] if self.durable else ["-c", "fsync=off", "-c", "synchronous_commit=off",
                                           "-c", "full_page_writes=off"])]

    def popen_options(self) -> dict[str, Any]:
        return _run_as()

    def init(self) -> bool:
        """Create the cluster unless it exists; whether it was created."""
        if self.initialized:
            return False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        owner = _run_as()
        if owner:
            os.chown(self.data_dir, owner["user"], owner["group"])
            self._check_reachable(owner)
        done = subprocess.run(
            [str(binaries() / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
             "-E", "UTF8", "--locale=C.UTF-8", "--auth-local=trust",
             "--auth-host=scram-sha-256", "--no-instructions"],
            capture_output=True, text=True, cwd="/", timeout=300, **owner)
        if done.returncode != 0:
            raise EngineError(f"initdb in {self.data_dir} failed: "
                              f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return True

    def _check_reachable(self, owner: dict[str, Any]) -> None:
        done = subprocess.run(["test", "-w", str(self.data_dir)], cwd="/", **owner)
        if done.returncode != 0:
            raise ConfigError(
                f"PostgreSQL runs as the user {SUPERUSER}, which cannot reach {self.data_dir}: "
                "let it through the parent folders (chmod o+x) or set SUTAZAI_POSTGRES_DIR to "
                "a folder it can reach")

    # -------------------------------------------------------------------- running
    def start(self) -> LocalPostgres:
        """Start the cluster in a process group of its own (tests; the stack has its own)."""
        self.init()
        require_free_port("127.0.0.1", self.port)
        self.process = ManagedProcess(
            "postgres", self.command(), self.log_path, url=f"postgresql://127.0.0.1:{self.port}",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
            cwd=Path("/"), popen_options=self.popen_options(), stop_signal=signal.SIGINT
        ).start()
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and not self.process.alive():
                raise EngineError(f"postgres exited while starting; last lines of "
                                  f"{self.log_path}:\n{tail(self.log_path)}")
            if self.ready():
                return
            time.sleep(0.1)
        raise EngineError(f"postgres did not accept connections within {timeout_s:.0f}s; "
                          f"see {self.log_path}")

    def ready(self) -> bool:
        import psycopg

        try:
            self.admin().close()
        except psycopg.Error:  # starting up, or not listening yet
            return False
        return True

    def stop(self, grace_s: float = 30.0) -> None:
        """PostgreSQL's fast shutdown (SIGINT: rolls back sessions, then a checkpoint)."""
        if self.process is not None:
            self.process.stop(grace_s)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------- administration
    def admin(self, database: str = "postgres") -> Any:
        """A superuser connection over the private socket (autocommit)."""
        import psycopg

        return psycopg.connect(host=str(self.data_dir), port=self.port, user=SUPERUSER,
                               dbname=database, connect_timeout=2, autocommit=True)

    def ensure_role(self, role: str, password: str, databases: list[str]) -> list[str]:
        """The login role with ``password`` (set again each time, so a rotated secret takes
        effect), owning ``databases``; the databases it created."""
        from psycopg import sql

        created = []
        connection = self.admin()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                verb = "ALTER" if cursor.fetchone() else "CREATE"
                # a utility statement takes no bound parameters: quoted client-side
                cursor.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)))
                for database in databases:
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                    if cursor.fetchone() is None:
                        cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(database), sql.Identifier(role)))
                        created.append(database)
        finally:
            connection.close()
        return created
