"""The embedded MLflow database (SQLite under the home), created and migrated safely.

MLflow creates and migrates a SQLite database the first time a client touches it, in
whichever process gets there first; two processes doing so at once corrupt it (see
:mod:`sutazai.embedded_db`). SutazAI does that step itself, under the home's setup lock,
once per process, before MLflow's own stores open the file and find it ready. A database
left half-migrated by a killed process is migrated the rest of the way.

MLflow has no public API for this step; the helpers used are those ``mlflow db upgrade``
and MLflow's own SQL store call (pinned MLflow, see constraints.txt).
"""

from __future__ import annotations

from sutazai.embedded_db import drop_alembic_leftovers, first_use, sqlite_file
from sutazai.errors import ConfigError, RegistryError

_READY: set[str] = set()


def prepare(tracking_uri: str) -> None:
    """Create MLflow's tables, or finish their migration, if ``tracking_uri`` is SQLite."""
    path = sqlite_file(tracking_uri)
    if path is None or tracking_uri in _READY:
        return
    import sqlalchemy
    from mlflow.store.db import utils

    with first_use(path.parent, "MLflow's database"):
        engine = sqlalchemy.create_engine(tracking_uri)
        try:
            drop_alembic_leftovers(engine, "MLflow's database")
            if not utils._all_tables_exist(engine):
                utils._initialize_tables(engine)  # a new home: tables, then every migration
            elif utils._get_schema_version(engine) != utils._get_latest_schema_revision():
                utils._upgrade_db(engine)  # cut short earlier, or made by an older MLflow
        except ConfigError:
            raise
        except Exception as exc:  # sqlalchemy's, alembic's and MLflow's errors alike
            raise RegistryError(
                f"MLflow's database {path} cannot be set up ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}); back it up and move it aside to start a new "
                "one, or repair it with 'mlflow db upgrade sqlite:///...'") from None
        finally:
            engine.dispose()
    _READY.add(tracking_uri)
