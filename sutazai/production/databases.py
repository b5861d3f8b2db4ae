"""Connecting to PostgreSQL without a password in any URL, setting or command line.

A URL in the settings (``postgresql://sutazai@db:5432/mlflow``) names the role only; the
password is the secret ``postgres/password`` from the secret provider. In-process engines get
it as a connect argument, server processes (MLflow, Airflow, ``pg_dump``) as ``PGPASSWORD``
in their environment, which libpq reads.
"""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from sutazai.config import Settings
from sutazai.errors import ConfigError
from sutazai.security.secret_base import POSTGRES_PASSWORD


def is_postgres(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def _needs_password(url: str) -> bool:
    if not is_postgres(url):
        return False
    try:
        return make_url(url).password is None
    except ArgumentError as exc:
        raise ConfigError(f"{url!r} is not a database URL ({exc})") from None


def database_password(settings: Settings) -> str:
    from sutazai.security.secrets import read_secret

    return read_secret(settings, POSTGRES_PASSWORD).get_secret_value()


def connect_args(settings: Settings, url: str) -> dict[str, str]:
    """SQLAlchemy ``connect_args`` for ``url``: the role's password for a PostgreSQL URL
    that carries none, nothing otherwise."""
    return {"password": database_password(settings)} if _needs_password(url) else {}


def client_environment(settings: Settings, *urls: str) -> dict[str, str]:
    """``PGPASSWORD`` for a process that connects to any of ``urls`` (libpq reads it)."""
    if any(_needs_password(url) for url in urls):
        return {"PGPASSWORD": database_password(settings)}
    return {}


def redacted(url: str) -> str:
    """``url`` with any password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def outage_message(exc: BaseException) -> str | None:
    """One line for a database that did not answer or refused the login, which would
    otherwise surface as a driver traceback; None for any other error."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if not isinstance(exc, OperationalError | InterfaceError):
        return None
    reason = str(exc.orig or exc).strip().splitlines()[0]
    return (f"a database did not answer: {reason}. Start it (SUTAZAI_PROFILE=production make "
            "up starts the local PostgreSQL) or check the *_url settings and the secret "
            "postgres/password")
