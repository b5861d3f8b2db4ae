"""The data gate: Great Expectations checks every dataset snapshot before anything trains.

Why a gate: the nightly cycle fine-tunes on whatever people and the serving gateway put in
the store. One leaked API key or e-mail address, a thousand copies of the same pair, or a
truncated 50 kB response would be learned verbatim and served back. The gate turns those
risks into named checks with counts, blocks the run (:func:`require_pass` raises
:class:`~sutazai.errors.DataGateError`; a failing gate trains nothing), and leaves a
report a person can act on: which check failed, how many rows, which row ids, with every
matched secret masked so the report itself leaks nothing.

Great Expectations takes ~1.6 s to import: it is imported inside the functions that run it.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator

from sutazai.errors import DataGateError
from sutazai.learning.datastore import RATING_MAX, RATING_MIN, DatasetSnapshot, load_snapshot

if TYPE_CHECKING:
    import pandas as pd

    from sutazai.config import Settings

REPORT_MD = "gate-report.md"
REPORT_JSON = "gate-report.json"
_EXAMPLE_CHARS = 80


class SecretPattern(BaseModel):
    """A regular expression for a secret or personal datum that must never be trained on.

    ``keep`` leading characters of a match survive in report examples (``sk-***``); e-mail
    addresses are masked as ``a***@***.com`` whatever ``keep`` says.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    regex: str
    keep: int = Field(default=0, ge=0, le=12)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        re.compile(value)
        return value


DEFAULT_SECRET_PATTERNS: tuple[SecretPattern, ...] = (
    SecretPattern(name="email", regex=r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                                      r"\.[A-Za-z]{2,}"),
    SecretPattern(name="aws_access_key", regex=r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", keep=4),
    SecretPattern(name="sk_api_key", regex=r"\bsk-[A-Za-z0-9_-]{16,}", keep=3),
    SecretPattern(name="github_token", regex=r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|"
                                             r"github_pat_[A-Za-z0-9_]{30,})", keep=4),
    SecretPattern(name="slack_token", regex=r"\bxox[abprs]-[A-Za-z0-9-]{10,}", keep=5),
    SecretPattern(name="private_key", regex=r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----",
                  keep=11),
    SecretPattern(name="jwt", regex=r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\."
                                    r"[A-Za-z0-9_-]{8,}", keep=3),
    # Separators required, so arithmetic ("123 + 456 =") and years do not match.
    SecretPattern(name="phone_number", regex=r"(?:\+\d{1,3}[ .-]?)?\(?\b\d{3}\)?[ .-]\d{3}"
                                             r"[ .-]\d{4}\b"),
)

DEFAULT_LABELS = ("good", "bad", "neutral", "correct", "incorrect", "helpful", "unhelpful",
                  "harmful", "off-topic")


class GateSuite(BaseModel):
    """What a dataset must satisfy before training; every field has a sensible default."""

    name: str = "sutazai-training-data"
    required_columns: list[str] = Field(default_factory=lambda: ["prompt", "response"])
    min_rows: int = Field(default=20, ge=0, description="Fewer rows are not worth a run.")
    min_prompt_chars: int = Field(default=1, ge=0)
    max_prompt_chars: int = Field(default=4000, ge=1)
    min_response_chars: int = Field(default=1, ge=0)
    max_response_chars: int = Field(default=4000, ge=1)
    allowed_labels: list[str] | None = Field(
        default_factory=lambda: list(DEFAULT_LABELS),
        description="Labels rows may carry (unlabelled rows always pass); None: any label.")
    rating_min: float = RATING_MIN
    rating_max: float = RATING_MAX
    unique_pairs: bool = Field(default=True, description="No (prompt, response) twice.")
    secret_columns: list[str] = Field(default_factory=lambda: ["prompt", "response"])
    secret_patterns: list[SecretPattern] = Field(
        default_factory=lambda: list(DEFAULT_SECRET_PATTERNS))


class CheckResult(BaseModel):
    """One expectation's outcome; ``examples`` are redacted and cut short."""

    name: str
    column: str | None = None
    expectation: str
    success: bool
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[str] = []
    row_ids: list[int] = []
    note: str | None = None


class GateReport(BaseModel):
    """The verdict on one snapshot, readable by people (``to_markdown``) and machines."""

    dataset: str
    digest: str
    success: bool
    rows: int
    checks: list[CheckResult]
    suite: str
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    report_path: str | None = None
    run_id: str | None = None
    experiment: str | None = None

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]

    def to_markdown(self) -> str:
        verdict = "PASSED" if self.success else "FAILED: nothing may be trained on it"
        lines = [f"# Data gate: {self.dataset} {self.digest[:12]} {verdict}", "",
                 f"- dataset: `{self.dataset}`, digest `{self.digest}`",
                 f"- rows: {self.rows}; checks: {len(self.checks)}, failed: {len(self.failed)}",
                 f"- suite: `{self.suite}`; checked {self.created:%Y-%m-%d %H:%M:%S} UTC"]
        if self.run_id:
            lines.append(f"- MLflow run `{self.run_id}` in experiment `{self.experiment}`")
        lines += ["", "| check | column | result | unexpected |", "|---|---|---|---:|"]
        for c in self.checks:
            count = "" if c.unexpected_count is None else str(c.unexpected_count)
            lines.append(f"| {c.name} | {c.column or ''} | {'ok' if c.success else 'FAILED'} "
                         f"| {count} |")
        for c in self.failed:
            where = f" on `{c.column}`" if c.column else ""
            lines += ["", f"## {c.name}{where} failed ({c.expectation})", ""]
            if c.note:
                lines.append(f"- {c.note}")
            if c.unexpected_count is not None:
                lines.append(f"- {c.unexpected_count} row(s) "
                             f"({(c.unexpected_percent or 0):.1f}%) do not meet it")
            if c.row_ids:
                lines.append(f"- row ids: {', '.join(str(i) for i in c.row_ids)}")
            if c.examples:
                lines += ["", "Examples (secrets masked):", ""]
                lines += [f"- `{_md_code(e)}`" for e in c.examples]
        if not self.success:
            lines += ["", "## What to do", "",
                      "Remove the rows named above with `sutazai data remove ID...`; if they "
                      "came from a file, import a corrected copy (`sutazai data import FILE`). "
                      "Then run `sutazai data validate` again. Never train around a failed "
                      "gate."]
        return "\n".join(lines) + "\n"


def _md_code(text: str) -> str:
    return text.replace("`", "'").replace("\n", " ")


# --------------------------------------------------------------------------- redaction
def _mask(match: str, keep: int) -> str:
    if "@" in match:
        local, _, domain = match.partition("@")
        tld = domain.rsplit(".", 1)[-1] if "." in domain else ""
        return f"{local[:1]}***@***.{tld}" if tld else f"{local[:1]}***@***"
    return match[:keep] + "***"


def redact(text: str, patterns: list[SecretPattern] | tuple[SecretPattern, ...] = ()) -> str:
    """``text`` with every match of ``patterns`` and of the default patterns masked."""
    for pattern in (*patterns, *DEFAULT_SECRET_PATTERNS):
        keep = pattern.keep

        def masked(match: re.Match[str], keep: int = keep) -> str:
            return _mask(match.group(0), keep)

        text = re.sub(pattern.regex, masked, text)
    return text


def _example(value: Any, patterns: list[SecretPattern]) -> str:
    """A redacted, shortened rendering of an unexpected value (redact first, then cut, so a
    secret is never cut in half and left readable)."""
    if isinstance(value, dict):
        text = ", ".join(f"{k}={redact(str(v), patterns)!r}" for k, v in value.items())
    elif isinstance(value, str):
        masked = redact(value, patterns)
        text = repr(masked[:_EXAMPLE_CHARS])
        if len(masked) > _EXAMPLE_CHARS:
            text += f"… ({len(value)} chars)"
    else:
        text = redact(str(value), patterns)
    return text if len(text) <= 2 * _EXAMPLE_CHARS else text[:2 * _EXAMPLE_CHARS] + "…"


# --------------------------------------------------------------------------- checks
@dataclass
class _Planned:
    name: str
    column: str | None
    expectation: Any = None  # a GX expectation; None when it cannot run (column missing)
    note: str | None = None


def _plan(df: pd.DataFrame, suite: GateSuite) -> list[_Planned]:
    """The expectations for ``df``; checks on a missing column are planned as failures."""
    import great_expectations.expectations as gxe

    columns = set(df.columns)
    planned: list[_Planned] = [
        _Planned(name="columns", column=None, expectation=gxe.ExpectTableColumnsToMatchSet(
            column_set=suite.required_columns, exact_match=False)),
        _Planned(name="row_count", column=None, expectation=gxe.ExpectTableRowCountToBeBetween(
            min_value=suite.min_rows)),
    ]

    def on(name: str, column: str, kind: Any, **kwargs: Any) -> None:
        if column in columns:
            planned.append(_Planned(name=name, column=column,
                                    expectation=kind(column=column, **kwargs)))
        else:
            planned.append(_Planned(name=name, column=column,
                                    note=f"column {column!r} is missing, so this cannot pass"))

    bounds = {"prompt": (suite.min_prompt_chars, suite.max_prompt_chars),
              "response": (suite.min_response_chars, suite.max_response_chars)}
    for column, (low, high) in bounds.items():
        on("not_null", column, gxe.ExpectColumnValuesToNotBeNull)
        on("length", column, gxe.ExpectColumnValueLengthsToBeBetween, min_value=low,
           max_value=high)
    if suite.unique_pairs:
        if {"prompt", "response"} <= columns:
            planned.append(_Planned(name="unique_pairs", column="prompt,response",
                                    expectation=gxe.ExpectCompoundColumnsToBeUnique(
                                        column_list=["prompt", "response"])))
        else:
            planned.append(_Planned(name="unique_pairs", column="prompt,response",
                                    note="prompt or response is missing"))
    if (suite.allowed_labels is not None and "label" in columns
            and bool(df["label"].notna().any())):
        planned.append(_Planned(name="label_allowed", column="label",
                                expectation=gxe.ExpectColumnValuesToBeInSet(
                                    column="label", value_set=suite.allowed_labels)))
    if "rating" in columns:
        planned.append(_Planned(name="rating_range", column="rating",
                                expectation=gxe.ExpectColumnValuesToBeBetween(
                                    column="rating", min_value=suite.rating_min,
                                    max_value=suite.rating_max)))
    for column in suite.secret_columns:
        for pattern in suite.secret_patterns:
            on(f"no_{pattern.name}", column, gxe.ExpectColumnValuesToNotMatchRegex,
               regex=pattern.regex)
    for index, item in enumerate(planned):
        if item.expectation is not None:
            item.expectation.meta = {"check": index}
    return planned


def _run_expectations(df: pd.DataFrame, expectations: list[Any], suite_name: str,
                      index_column: str | None) -> list[Any]:
    """Run expectations on ``df`` in a throwaway in-memory GX context; their results."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False))
    context = gx.get_context(mode="ephemeral", project_config=config)
    batch = (context.data_sources.add_pandas("sutazai").add_dataframe_asset("dataset")
             .add_batch_definition_whole_dataframe("all"))
    gx_suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for expectation in expectations:
        gx_suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite_name}-run", data=batch, suite=gx_suite))
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
    if index_column is not None:
        result_format["unexpected_index_column_names"] = [index_column]
    outcome = definition.run(batch_parameters={"dataframe": df}, result_format=result_format)
    return list(outcome.results)


def validate(df: pd.DataFrame, snapshot: DatasetSnapshot,
             suite: GateSuite | None = None) -> GateReport:
    """Run the gate's checks on ``df`` (the rows of ``snapshot``); nothing is logged."""
    suite = suite or GateSuite()
    planned = _plan(df, suite)
    index_column = "id" if "id" in df.columns and df["id"].is_unique else None
    runnable = [p.expectation for p in planned if p.expectation is not None]
    results = _run_expectations(df, runnable, suite.name, index_column) if runnable else []
    by_index = {int(r.expectation_config.meta["check"]): r for r in results}
    checks: list[CheckResult] = []
    for index, item in enumerate(planned):
        if item.expectation is None:
            checks.append(CheckResult(name=item.name, column=item.column, expectation="-",
                                      success=False, note=item.note))
            continue
        checks.append(_check(item, by_index[index], suite, index_column))
    return GateReport(dataset=snapshot.name, digest=snapshot.digest, rows=len(df),
                      success=all(c.success for c in checks), checks=checks, suite=suite.name)


def _check(item: _Planned, result: Any, suite: GateSuite, index_column: str | None
           ) -> CheckResult:
    data = dict(result.result or {})
    kind = str(result.expectation_config.type)
    note = None
    exception = result.exception_info or {}
    messages = [v.get("exception_message") for v in exception.values() if isinstance(v, dict)]
    if exception.get("raised_exception"):
        messages.append(exception.get("exception_message"))
    messages = [m for m in messages if m]
    if messages:
        note = f"could not run: {messages[0]}"
    count = data.get("unexpected_count")
    examples: list[str] = []
    ids: list[int] = []
    if item.name == "columns":
        missing = list(data.get("details", {}).get("mismatched", {}).get("missing", []) or [])
        count = len(missing)
        if missing:
            note = f"missing column(s): {', '.join(missing)}"
    elif item.name == "label_allowed" and not result.success:
        note = f"allowed labels: {', '.join(suite.allowed_labels or [])}"
    if item.name == "row_count":
        observed = data.get("observed_value")
        note = f"{observed} row(s); at least {suite.min_rows} needed"
    if item.name not in ("columns", "row_count"):
        for entry in data.get("partial_unexpected_index_list") or []:
            if index_column is not None and index_column in entry:
                ids.append(int(entry[index_column]))
        for value in (data.get("partial_unexpected_list") or [])[:5]:
            examples.append(_example(value, suite.secret_patterns))
    percent = data.get("unexpected_percent_total", data.get("unexpected_percent"))
    return CheckResult(name=item.name, column=item.column, expectation=kind,
                       success=bool(result.success),
                       unexpected_count=None if count is None else int(count),
                       unexpected_percent=None if percent is None else float(percent),
                       examples=examples, row_ids=sorted(set(ids)), note=note)


# --------------------------------------------------------------------------- gate runs
def report_path(settings: Settings, snapshot: DatasetSnapshot) -> Path:
    return settings.home / "datasets" / snapshot.name / f"{snapshot.digest}.gate.md"


def run_gate(settings: Settings, snapshot: DatasetSnapshot,
             suite: GateSuite | None = None) -> GateReport:
    """Validate a snapshot and record the verdict: an MLflow run ``data-gate <name>`` in the
    learning experiment (digest tags, rows and failed-check metrics, the markdown and JSON
    report, the snapshot as dataset input) and the markdown next to the snapshot."""
    from mlflow.entities import Metric

    from sutazai.learning.datastore import log_snapshot_input
    from sutazai.registry import open_registry
    from sutazai.repository.fsutil import atomic_write_text

    suite = suite or GateSuite()
    report = validate(load_snapshot(snapshot), snapshot, suite)
    path = report_path(settings, snapshot)
    registry = open_registry(settings)
    client = registry.client
    run_id = registry.start_run(
        f"data-gate {snapshot.name}",
        tags={"sutazai.step": "data-gate", "sutazai.dataset": snapshot.name,
              "sutazai.digest": snapshot.digest,
              "sutazai.gate": "passed" if report.success else "failed"},
        params={"dataset": snapshot.name, "digest": snapshot.digest, "suite": suite.name,
                "min_rows": suite.min_rows, "max_prompt_chars": suite.max_prompt_chars,
                "max_response_chars": suite.max_response_chars,
                "secret_patterns": ",".join(p.name for p in suite.secret_patterns)},
        experiment=settings.learning_experiment,
    )
    report.report_path = str(path)
    report.run_id = run_id
    report.experiment = settings.learning_experiment
    now = int(datetime.now(UTC).timestamp() * 1000)
    client.log_batch(run_id, metrics=[
        Metric("rows", float(report.rows), now, 0),
        Metric("checks", float(len(report.checks)), now, 0),
        Metric("failed_checks", float(len(report.failed)), now, 0),
        Metric("passed", 1.0 if report.success else 0.0, now, 0)])
    log_snapshot_input(snapshot, "gate", run_id=run_id, client=client)
    markdown = report.to_markdown()
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / REPORT_MD).write_text(markdown)
        (Path(folder) / REPORT_JSON).write_text(report.model_dump_json(indent=2))
        client.log_artifacts(run_id, folder)
    client.set_terminated(run_id, "FINISHED")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, markdown)
    return report


def require_pass(report: GateReport) -> None:
    """Raise DataGateError unless the gate passed: the caller must then train nothing."""
    if report.success:
        return
    parts = []
    for check in report.failed:
        where = f" on {check.column}" if check.column else ""
        count = f" ({check.unexpected_count} row(s))" if check.unexpected_count else ""
        ids = f" ids {', '.join(map(str, check.row_ids))}" if check.row_ids else ""
        parts.append(f"{check.name}{where}{count}{ids}")
    where = report.report_path or "the gate report"
    run = (f", MLflow run {report.run_id} in {report.experiment}" if report.run_id else "")
    raise DataGateError(
        f"dataset {report.dataset} {report.digest[:12]} failed its data gate, so nothing was "
        f"trained: {'; '.join(parts)}. Report: {where}{run}. Remove those rows with "
        "`sutazai data remove ID...` (if they came from a file, import a corrected copy with "
        "`sutazai data import FILE`), then run `sutazai data validate` again.")


def gate_summary(report: GateReport) -> dict[str, Any]:
    """A small JSON-able verdict for pipeline outputs and logs."""
    return json.loads(report.model_dump_json(include={"dataset", "digest", "success", "rows",
                                                      "report_path", "run_id"}))
