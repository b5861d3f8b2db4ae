"""The feedback and training-data store, and the immutable snapshots training reads.

Why a database and not a folder of files: the serving gateway appends one row per request
(opt-in ``request_logging``) from a worker thread while the nightly cycle reads, people rate
rows by id, and files dropped in the inbox must be imported exactly once. SQLAlchemy keeps
one code path for the embedded SQLite file (WAL mode, so the writer never blocks the nightly
reader) and a PostgreSQL server in production (``SUTAZAI_LEARNING_DB_URL``).

Ratings use one scale everywhere: a float from -1 (bad) through 0 (neutral) to 1 (good), or
None when nobody rated the row (imported training data usually has none). Rows rated below 0
are feedback about what the model must *not* say; they are kept for analysis but never become
training targets (:func:`training_texts`).

Training never reads the live tables: :func:`snapshot` freezes the rows into a parquet file
named by the sha256 of their content, so a gate report, a fine-tuning run and its MLflow
lineage all point at exactly the same bytes (:func:`log_snapshot_input`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy import (
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sutazai.embedded_db import first_use_of
from sutazai.errors import DataError, NotFoundError

if TYPE_CHECKING:
    import pandas as pd

    from sutazai.config import Settings

RATING_MIN = -1.0
RATING_MAX = 1.0
SUPPORTED_SUFFIXES = (".jsonl", ".csv", ".parquet")
REQUIRED_COLUMNS = ("prompt", "response")
OPTIONAL_COLUMNS = ("rating", "label", "created")
SNAPSHOT_COLUMNS = ("id", "prompt", "response", "rating", "label", "source", "model", "created")
_DIGEST_FORMAT = b"sutazai-feedback-snapshot-v1\n"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RESERVED_NAMES = ("inbox",)  # <home>/datasets/inbox is where files wait to be imported
_IN_BATCH = 500


# --------------------------------------------------------------------------- tables
class _Base(DeclarativeBase):
    pass


class FeedbackRow(_Base):
    """One prompt/response pair: served and logged, or imported from a file."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    rating: Mapped[float | None] = mapped_column(Float, default=None)
    label: Mapped[str | None] = mapped_column(String(64), default=None)
    source: Mapped[str] = mapped_column(String(255))
    model: Mapped[str | None] = mapped_column(String(255), default=None)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Content hash of an imported row, unique: importing it again adds nothing. NULL for
    # served requests, which are separate events even when the text repeats.
    row_digest: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)


class ImportedFile(_Base):
    """A file already imported (by content), so the inbox is read once per file."""

    __tablename__ = "imported_files"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(1024))
    rows: Mapped[int] = mapped_column(Integer)
    added: Mapped[int] = mapped_column(Integer)
    imported: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# --------------------------------------------------------------------------- results
class ImportResult(BaseModel):
    """What one file import did."""

    path: str
    source: str
    file_digest: str
    rows: int
    added: int
    duplicates: int
    already_imported: bool = False
    ignored_columns: list[str] = []


class StoreStats(BaseModel):
    rows: int
    rated: int
    negative: int
    mean_rating: float | None
    by_source: dict[str, int]
    by_label: dict[str, int]
    imported_files: int


class DatasetSnapshot(BaseModel):
    """An immutable parquet file of store rows, named by the sha256 of its content."""

    name: str
    digest: str
    path: Path
    rows: int
    created: datetime

    @property
    def short_digest(self) -> str:
        return self.digest[:12]


# --------------------------------------------------------------------------- helpers
def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes: they were written as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def check_rating(rating: float, where: str = "rating") -> float:
    """The rating as a float on SutazAI's -1..1 scale, or a DataError that says so."""
    if isinstance(rating, bool) or not isinstance(rating, int | float):
        raise DataError(f"{where} {rating!r} is not a number: give a rating between "
                        f"{RATING_MIN:g} (bad) and {RATING_MAX:g} (good)")
    value = float(rating)
    if math.isnan(value) or not RATING_MIN <= value <= RATING_MAX:
        raise DataError(f"{where} {rating!r} is outside {RATING_MIN:g}..{RATING_MAX:g}: SutazAI "
                        f"rates from {RATING_MIN:g} (bad) through 0 (neutral) to "
                        f"{RATING_MAX:g} (good); rescale it (a 1-5 star s becomes (s-3)/2)")
    return value


def row_digest(prompt: str, response: str, rating: float | None, label: str | None) -> str:
    """Content hash of an imported row (its identity for idempotent imports)."""
    payload = json.dumps([prompt, response, rating, label], ensure_ascii=False,
                         separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Raw records and the column names of a jsonl, csv or parquet file."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unknown file type {path.suffix or '(none)'!r}; import "
                        f"{', '.join(SUPPORTED_SUFFIXES)} files with columns prompt, response "
                        "(and optionally rating, label, created)")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return table.to_pylist(), list(table.column_names)
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                records = [{k: (v if v != "" or k in REQUIRED_COLUMNS else None)
                            for k, v in row.items() if k is not None} for row in reader]
                return records, list(reader.fieldnames or [])
        records, columns = [], {}
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{path}: line {number} is not JSON ({exc}); fix or "
                                    "remove that line and import again") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}: line {number} is not a JSON object; each line "
                                    'must look like {"prompt": ..., "response": ...}')
                records.append(record)
                columns.update(dict.fromkeys(record))
        return records, list(columns)
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as {suffix[1:]} ({exc}); check the file "
                        "and import again") from None
    except Exception as exc:  # pyarrow's ArrowInvalid and friends
        raise DataError(f"{path}: cannot be read as {suffix[1:]} ({type(exc).__name__}: "
                        f"{exc}); check the file and import again") from None


def _parse_created(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, str):
        try:
            return _utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            pass
    raise DataError(f"{where}: created {value!r} is not an ISO 8601 time (e.g. "
                    "2026-11-25T08:00:00Z); fix it or drop the column")


def _clean(record: dict[str, Any], path: Path, number: int) -> dict[str, Any]:
    """One record checked and normalised: prompt/response strings, rating, label, created."""
    where = f"{path}: row {number}"
    out: dict[str, Any] = {}
    for column in REQUIRED_COLUMNS:
        value = record.get(column)
        if not isinstance(value, str):
            what = "is empty" if value is None else f"is a {type(value).__name__}, not text"
            raise DataError(f"{where}: column {column!r} {what}; every row needs a text "
                            "prompt and response: fix or remove the row and import again")
        out[column] = value
    rating = record.get("rating")
    if isinstance(rating, float) and math.isnan(rating):
        rating = None
    if isinstance(rating, str):
        try:
            rating = float(rating)
        except ValueError:
            raise DataError(f"{where}: rating {rating!r} is not a number; use "
                            f"{RATING_MIN:g}..{RATING_MAX:g} or leave it empty") from None
    out["rating"] = None if rating is None else check_rating(rating, f"{where}: rating")
    label = record.get("label")
    if label is not None and not isinstance(label, str):
        raise DataError(f"{where}: label {label!r} is not text")
    label = label.strip() if isinstance(label, str) else None
    if label is not None and len(label) > 64:
        raise DataError(f"{where}: label is longer than 64 characters; labels are short "
                        "category names such as good, bad, incorrect")
    out["label"] = label or None
    out["created"] = _parse_created(record.get("created"), where)
    return out


def _chunks(items: Sequence[Any], size: int = _IN_BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --------------------------------------------------------------------------- the store
class FeedbackStore:
    """Rows of (prompt, response, rating, label, source, model, created) in a SQL database.

    Thread-safe: each call uses its own session, so the serving gateway may log from a
    worker thread while another thread imports or snapshots.
    """

    def __init__(self, url: str, connect_args: dict[str, str] | None = None) -> None:
        """``connect_args``: e.g. the PostgreSQL password, which no URL should carry
        (:func:`sutazai.production.databases.connect_args`)."""
        self.url = url
        self.engine: Engine = create_engine(url, connect_args=connect_args or {},
                                            pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        with first_use_of(url, "the learning store"):  # two creators at once race
            _Base.metadata.create_all(self.engine)

    @classmethod
    def open(cls, settings: Settings) -> FeedbackStore:
        from sutazai.production.databases import connect_args

        return cls(settings.learning_url, connect_args(settings, settings.learning_url))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- writes
    def log_interaction(self, prompt: str, response: str, *, model: str | None = None,
                        source: str = "serving") -> int:
        """Keep one served request; returns its id for a later :meth:`rate` (one INSERT)."""
        row = FeedbackRow(prompt=prompt, response=response, source=source, model=model,
                          created=datetime.now(UTC))
        with Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()
            return row.id

    def rate(self, interaction_id: int, rating: float, label: str | None = None) -> None:
        """Rate a row (-1 bad .. 1 good) and optionally label it; the label stays if None."""
        value = check_rating(rating)
        if label is not None and (not label.strip() or len(label) > 64):
            raise DataError(f"label {label!r} must be 1 to 64 characters, e.g. good, bad, "
                            "incorrect")
        with Session(self.engine) as session, session.begin():
            row = session.get(FeedbackRow, interaction_id)
            if row is None:
                raise NotFoundError(
                    f"no feedback row with id {interaction_id} in {self._where()}: list ids "
                    "with `sutazai data stats` or use the id log_interaction returned")
            row.rating = value
            if label is not None:
                row.label = label.strip()

    def remove(self, ids: Sequence[int]) -> int:
        """Delete rows by id (the gate report names them); returns how many existed.

        A removed imported row does not come back from the same file: the file's digest is
        remembered, so only a corrected (changed) file is read again."""
        with Session(self.engine) as session, session.begin():
            removed = 0
            for part in _chunks(list(ids)):
                removed += session.execute(  # type: ignore[attr-defined]
                    delete(FeedbackRow).where(FeedbackRow.id.in_(part))).rowcount
        return int(removed)

    def import_file(self, path: str | Path, source: str | None = None) -> ImportResult:
        """Import a jsonl, csv or parquet file, all rows or none; a second import adds nothing.

        Columns ``prompt`` and ``response`` are required; ``rating`` (-1..1), ``label`` and
        ``created`` (ISO 8601, UTC when naive) are optional; others are ignored and reported.
        Rows already in the store (same prompt, response, rating and label) are counted as
        duplicates, whichever file brought them.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file; give the path of a "
                            f"{'/'.join(s[1:] for s in SUPPORTED_SUFFIXES)} file")
        source = source or f"file:{path.name}"
        file_digest = _file_digest(path)
        with Session(self.engine) as session:
            seen = session.get(ImportedFile, file_digest)
            if seen is not None:
                return ImportResult(path=str(path), source=source, file_digest=file_digest,
                                    rows=seen.rows, added=0, duplicates=seen.rows,
                                    already_imported=True)
        records, columns = _read_records(path)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DataError(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)} (found: {', '.join(columns) or 'none'}); "
                            "every file needs prompt and response columns")
        now = datetime.now(UTC)
        rows: dict[str, FeedbackRow] = {}
        for number, record in enumerate(records, 1):
            clean = _clean(record, path, number)
            digest = row_digest(clean["prompt"], clean["response"], clean["rating"],
                                clean["label"])
            rows.setdefault(digest, FeedbackRow(
                prompt=clean["prompt"], response=clean["response"], rating=clean["rating"],
                label=clean["label"], source=source, model=None,
                created=clean["created"] or now, row_digest=digest))
        with Session(self.engine) as session, session.begin():
            digests = list(rows)
            known: set[str] = set()
            for part in _chunks(digests):
                known.update(d for d in session.scalars(
                    select(FeedbackRow.row_digest).where(FeedbackRow.row_digest.in_(part)))
                    if d is not None)
            new = [rows[d] for d in digests if d not in known]
            session.add_all(new)
            session.merge(ImportedFile(digest=file_digest, name=str(path), rows=len(records),
                                       added=len(new), imported=now))
        extra = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        return ImportResult(path=str(path), source=source, file_digest=file_digest,
                            rows=len(records), added=len(new),
                            duplicates=len(records) - len(new), ignored_columns=extra)

    def import_inbox(self, settings: Settings) -> list[ImportResult]:
        """Import every file of the inbox folder (sorted by name); files seen before add
        nothing. Hidden files (.gitkeep, editors' swap files) are skipped."""
        inbox = settings.learning_inbox_dir
        if not inbox.is_dir():
            return []
        files = sorted(p for p in inbox.iterdir() if p.is_file() and not p.name.startswith("."))
        return [self.import_file(p) for p in files]

    # ---------------------------------------------------------------- reads
    def count(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(FeedbackRow)) or 0)

    def get(self, interaction_id: int) -> dict[str, Any]:
        with Session(self.engine) as session:
            row = session.get(FeedbackRow, interaction_id)
            if row is None:
                raise NotFoundError(f"no feedback row with id {interaction_id} in "
                                    f"{self._where()}")
            return _as_dict(row)

    def rows(self, min_rating: float | None = None) -> list[dict[str, Any]]:
        """All rows in id order; with ``min_rating``, rows rated below it are left out
        (unrated rows stay: imported training data usually carries no rating)."""
        query = select(FeedbackRow).order_by(FeedbackRow.id)
        if min_rating is not None:
            query = query.where(or_(FeedbackRow.rating.is_(None),
                                    FeedbackRow.rating >= min_rating))
        with Session(self.engine) as session:
            return [_as_dict(row) for row in session.scalars(query)]

    def stats(self) -> StoreStats:
        with Session(self.engine) as session:
            rows = int(session.scalar(select(func.count()).select_from(FeedbackRow)) or 0)
            rated = int(session.scalar(select(func.count(FeedbackRow.rating))) or 0)
            negative = int(session.scalar(select(func.count()).select_from(FeedbackRow)
                                          .where(FeedbackRow.rating < 0)) or 0)
            mean = session.scalar(select(func.avg(FeedbackRow.rating)))
            by_source = {str(s): int(n) for s, n in session.execute(
                select(FeedbackRow.source, func.count()).group_by(FeedbackRow.source)
                .order_by(FeedbackRow.source))}
            by_label = {str(s): int(n) for s, n in session.execute(
                select(FeedbackRow.label, func.count()).where(FeedbackRow.label.is_not(None))
                .group_by(FeedbackRow.label).order_by(FeedbackRow.label))}
            files = int(session.scalar(select(func.count()).select_from(ImportedFile)) or 0)
        return StoreStats(rows=rows, rated=rated, negative=negative,
                          mean_rating=None if mean is None else float(mean),
                          by_source=by_source, by_label=by_label, imported_files=files)

    def _where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL: the gateway's writes and the nightly's reads do not block each other; a busy
    timeout instead of 'database is locked' when two writers meet."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _as_dict(row: FeedbackRow) -> dict[str, Any]:
    return {"id": row.id, "prompt": row.prompt, "response": row.response,
            "rating": row.rating, "label": row.label, "source": row.source,
            "model": row.model, "created": _utc(row.created)}


# --------------------------------------------------------------------------- snapshots
def snapshot_digest(rows: Sequence[dict[str, Any]]) -> str:
    """sha256 of the rows' canonical JSON lines (id, prompt, response, rating, label, source,
    model; in the given order). ``created`` is left out: it is bookkeeping, not content."""
    digest = hashlib.sha256(_DIGEST_FORMAT)
    for row in rows:
        rating = row["rating"]
        line = [row["id"], row["prompt"], row["response"],
                None if rating is None or rating != rating else float(rating),
                row["label"], row["source"], row["model"]]
        digest.update(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def snapshot_dir(settings: Settings, name: str) -> Path:
    return settings.home / "datasets" / name


def snapshot(store: FeedbackStore, settings: Settings, *, name: str = "feedback",
             min_rating: float | None = None) -> DatasetSnapshot:
    """Freeze the store's rows (optionally without those rated below ``min_rating``) into
    ``<home>/datasets/<name>/<digest>.parquet``. Same rows, same digest, same file: an
    existing snapshot is reused, a new one appears atomically (no reader sees half a file)."""
    if not _NAME.match(name) or name in _RESERVED_NAMES:
        raise DataError(f"dataset name {name!r} is not allowed: use letters, digits, '.', '_' "
                        f"or '-' (up to 64), not {', '.join(_RESERVED_NAMES)}")
    if min_rating is not None:
        min_rating = check_rating(min_rating, "min_rating")
    rows = store.rows(min_rating=min_rating)
    digest = snapshot_digest(rows)
    folder = snapshot_dir(settings, name)
    path = folder / f"{digest}.parquet"
    if not path.is_file():
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(rows, schema=_snapshot_schema())
        partial = folder / f".{digest}.{os.getpid()}.partial"
        try:
            pq.write_table(table, partial)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    created = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    return DatasetSnapshot(name=name, digest=digest, path=path, rows=len(rows), created=created)


def _snapshot_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("id", pa.int64()), ("prompt", pa.string()), ("response", pa.string()),
                      ("rating", pa.float64()), ("label", pa.string()), ("source", pa.string()),
                      ("model", pa.string()), ("created", pa.timestamp("us", tz="UTC"))])


def load_snapshot(snap: DatasetSnapshot) -> pd.DataFrame:
    """The snapshot's rows as a DataFrame (columns: SNAPSHOT_COLUMNS)."""
    import pandas as pd

    if not snap.path.is_file():
        raise NotFoundError(f"snapshot {snap.name} {snap.short_digest} is gone ({snap.path}); "
                            "take a new one with `sutazai data snapshot`")
    return pd.read_parquet(snap.path)


def log_snapshot_input(snap: DatasetSnapshot, context: str = "training", *,
                       run_id: str | None = None, client: Any = None) -> None:
    """Record the snapshot as an MLflow dataset input of a run, so the run shows which
    bytes it trained or was gated on.

    Without ``run_id`` it logs to the active fluent run (``mlflow.start_run()``); with one,
    through ``client`` (an ``MlflowClient``; default one on the current tracking URI).
    MLflow keeps at most 36 characters of digest: the dataset's digest is the first 36 hex
    digits, the full sha256 is the input tag ``sutazai.digest``.
    """
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise RuntimeError("log_snapshot_input needs an active MLflow run "
                               "(with mlflow.start_run(): ...) or a run_id")
        run_id = active.info.run_id
    with warnings.catch_warnings():
        # "source can be interpreted in multiple ways" (file: is registered twice) and the
        # integer-column schema hint: both noise for a dataset input.
        warnings.simplefilter("ignore", UserWarning)
        dataset = from_pandas(load_snapshot(snap), source=snap.path.as_uri(), name=snap.name,
                              digest=snap.digest[:36])._to_mlflow_entity()
    entry = DatasetInput(dataset=dataset,
                         tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=context),
                               InputTag(key="sutazai.digest", value=snap.digest)])
    (client or MlflowClient()).log_inputs(run_id, datasets=[entry])


# --------------------------------------------------------------------------- training view
def _side(prompt: str, response: str, seed: int) -> float:
    """A row's fixed position in [0, 1): by content, so it never changes side as data grows."""
    key = f"{seed}\0{prompt}\0{response}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


def train_heldout_split(df: pd.DataFrame, heldout_fraction: float = 0.1,
                        seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into (train, held-out) by a hash of (seed, prompt, response), never by a
    shuffle: a row stays on its side night after night, so held-out scores stay honest."""
    if not 0 <= heldout_fraction < 1:
        raise DataError(f"heldout_fraction {heldout_fraction} must be at least 0 and below 1")
    mask = [_side(str(p), str(r), seed) < heldout_fraction
            for p, r in zip(df["prompt"], df["response"], strict=True)]
    held = df[mask].reset_index(drop=True)
    train = df[[not m for m in mask]].reset_index(drop=True)
    return train, held


def join_text(prompt: str, response: str) -> str:
    """Prompt and response as one training text.

    A completion continues its prompt, so when the response starts with whitespace (" Paris.")
    or the prompt ends with it, the text is ``prompt + response`` exactly as the model would
    produce it; otherwise a newline separates them (``f"{prompt}\\n{response}"``).
    """
    if response[:1].isspace() or prompt[-1:].isspace():
        return prompt + response
    return f"{prompt}\n{response}"


def training_texts(df: pd.DataFrame) -> list[str]:
    """The texts a causal LM trains on, one per row (:func:`join_text`), in row order.

    Rows rated below 0 are left out: they record answers the model should not give, so they
    are feedback, never targets. Unrated and non-negative rows are kept; rows without a
    prompt or response (the gate blocks those) are left out too.
    """
    texts = []
    ratings = df["rating"] if "rating" in df.columns else [None] * len(df)
    for prompt, response, rating in zip(df["prompt"], df["response"], ratings, strict=True):
        if rating is not None and rating == rating and float(rating) < 0:
            continue
        if not isinstance(prompt, str) or not isinstance(response, str):
            continue
        texts.append(join_text(prompt, response))
    return texts
