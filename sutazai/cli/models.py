"""``sutazai models ...``: the offline model repository."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from sutazai.cli.output import console, emit_json, errors, short, size
from sutazai.cli.progress import RichProgress
from sutazai.config import load_settings
from sutazai.errors import IntegrityError
from sutazai.repository import encryption, open_repository
from sutazai.repository.bundle import export_bundle, import_bundle
from sutazai.repository.manifest import parse_ref
from sutazai.repository.store import repair_hint
from sutazai.workflows.mirror import (
    MirrorOutcome,
    mirror_catalog,
    remove_version,
    resolve_refs,
    verify_repository,
)

if TYPE_CHECKING:
    from sutazai.config import Settings
    from sutazai.registry.task_aliases import AliasBook

app = typer.Typer(help="Mirror, inspect, verify and move models in the offline repository.",
                  no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def outcome_table(outcomes: list[MirrorOutcome], title: str) -> Table:
    table = Table(title=title)
    for column in ("model", "version", "digest", "size", "MLflow", "status", "seconds"):
        table.add_column(column, justify="right" if column in ("size", "seconds") else "left")
    for o in outcomes:
        status = ("[red]failed[/]" if o.error else "unchanged" if o.unchanged
                  else "[green]new[/]" if o.created
                  else f"[yellow]repaired[/] {len(o.repaired)} file(s)" if o.repaired
                  else "stored")
        table.add_row(o.name, str(o.version or "-"), short(o.digest), size(o.size),
                      o.mlflow_version or "-", status, f"{o.seconds:.1f}")
    return table


def report_failures(outcomes: list[MirrorOutcome]) -> None:
    failed = [o for o in outcomes if o.error]
    for o in failed:  # printed once, here: the library logs it at DEBUG only
        errors.print(f"[bold red]error:[/] {escape(o.name)}: {escape(o.error or '')}",
                     highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command("pull")
def pull_command(
    names: list[str] = typer.Argument(None, help="Catalog names; all when omitted."),
    register: bool = typer.Option(True, help="Register new versions in MLflow."),
    as_json: bool = JSON,
) -> None:
    """Mirror catalog models: resumable, verified, idempotent."""
    settings = load_settings()
    with RichProgress(errors) as progress:
        outcomes = mirror_catalog(settings, names or None, register=register, progress=progress)
    if as_json:
        emit_json([o.as_dict() for o in outcomes])
    else:
        console.print(outcome_table(outcomes, "Pulled models"))
    report_failures(outcomes)


def _aliases(settings: Settings) -> AliasBook:
    """Who holds which alias; read once per command (see ``read_aliases``)."""
    from sutazai.registry.task_aliases import current_aliases

    return current_aliases(settings)


@app.command("list")
def list_command(as_json: bool = JSON) -> None:
    """List every version in the repository, with the MLflow aliases each holds."""
    settings = load_settings()
    repo = open_repository(settings)
    manifests = repo.all_versions()
    book = _aliases(settings)
    if as_json:
        emit_json([m.model_dump(mode="json", exclude={"files"})
                   | {"size": m.size, "aliases": book.names_of(m.name, m.version)}
                   for m in manifests])
        return
    table = Table(title=f"Model repository {repo.root}")
    for column in ("model", "version", "format", "tasks", "size", "digest", "created",
                   "aliases"):
        table.add_column(column, justify="right" if column == "size" else "left",
                         no_wrap=column in ("model", "tasks", "aliases"))  # these one a line
    for m in manifests:
        table.add_row(m.name, str(m.version), m.format, "\n".join(m.tasks), size(m.size),
                      short(m.digest), m.created.strftime("%Y-%m-%d %H:%M"),
                      "\n".join(book.names_of(m.name, m.version)) or "-")
    console.print(table)


@app.command("show")
def show_command(ref: str = typer.Argument(..., help="NAME or NAME:VERSION"),
                 as_json: bool = JSON) -> None:
    """Show one version's manifest and the MLflow aliases it holds."""
    settings = load_settings()
    repo = open_repository(settings)
    name, version = parse_ref(ref)
    manifest = repo.get(name, version)
    aliases = _aliases(settings).names_of(manifest.name, manifest.version)
    if as_json:
        emit_json(manifest.model_dump(mode="json") | {"path": str(repo.snapshot_path(manifest)),
                                                      "aliases": aliases})
        return
    console.print(f"[bold]{manifest.ref}[/]  {manifest.format}  {', '.join(manifest.tasks)}  "
                  f"licence {manifest.license}")
    console.print(f"source    {manifest.source}\nrevision  {manifest.revision}\n"
                  f"digest    {manifest.digest}\ncreated   {manifest.created:%Y-%m-%d %H:%M:%S}"
                  f"\nparent    {manifest.parent or '-'}\naliases   {', '.join(aliases) or '-'}"
                  f"\npath      {repo.snapshot_path(manifest)}", highlight=False)
    table = Table()
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("sha256")
    for f in manifest.files:
        table.add_row(f.path, size(f.size), f.digest)
    console.print(table)


@app.command("verify")
def verify_command(refs: list[str] = typer.Argument(None, help="Versions; all when omitted."),
                   as_json: bool = JSON) -> None:
    """Re-hash stored files; exit 1 when any is missing or corrupted."""
    with RichProgress(errors) as progress:
        manifests, problems = verify_repository(load_settings(), refs, progress)
    if as_json:
        emit_json({"versions": [m.ref for m in manifests],
                   "problems": [p.__dict__ for p in problems], "ok": not problems})
    else:
        for p in problems:
            errors.print(f"[red]{p.problem}[/] {p.ref} {p.path}: expected {p.expected}, "
                         f"found {p.actual or 'nothing'}", highlight=False)
        verdict = "[green]ok[/]" if not problems else f"[red]{len(problems)} problem(s)[/]"
        console.print(f"verified {len(manifests)} version(s), "
                      f"{sum(len(m.files) for m in manifests)} file(s): {verdict}")
    if problems:
        damaged = [m for m in manifests if m.ref in {p.ref for p in problems}]
        raise IntegrityError(f"the repository has missing or corrupted files; "
                             f"{repair_hint(damaged)}")


@app.command("rm")
def rm_command(ref: str = typer.Argument(..., help="NAME:VERSION"),
               force: bool = typer.Option(False, help="Remove even if it holds an alias.")
               ) -> None:
    """Remove a version (its blobs go at the next 'gc')."""
    manifest = remove_version(load_settings(), ref, force=force)
    console.print(f"removed {manifest.ref}; run 'sutazai models gc' to free its blobs")


@app.command("gc")
def gc_command(dry_run: bool = typer.Option(False, "--dry-run"), as_json: bool = JSON) -> None:
    """Delete blobs no version references and what interrupted pulls left behind."""
    report = open_repository(load_settings()).gc(dry_run=dry_run)
    if as_json:
        emit_json(report.__dict__ | {"dry_run": dry_run})
    else:
        verb = "would free" if dry_run else "freed"
        partial = (f", {report.removed_partial} partial download(s) of interrupted pulls"
                   if report.removed_partial else "")
        console.print(f"{report.removed_blobs} unreferenced blob(s){partial}, {verb} "
                      f"{size(report.freed_bytes)}")


def _rewrite_blobs(action: str, as_json: bool, run: Callable[..., Any],
                   summary: Callable[[Any], str], failure: str) -> None:
    """One of the repository's blob rewrites (encrypt, rekey, decrypt): run it with a
    progress bar, audit it with its report, print the report, fail when a blob failed."""
    from dataclasses import asdict

    from sutazai.security.audit import audit

    settings = load_settings()
    repo = open_repository(settings)
    with RichProgress(errors) as progress:
        report = run(repo, progress)
    audit(settings, f"repository.{action}", str(repo.root),
          result="error" if report.failed else "ok", details=asdict(report))
    if as_json:
        emit_json(asdict(report))
    else:
        console.print(summary(report))
    if report.failed:
        raise IntegrityError(f"{len(report.failed)} blob(s) {failure}: run "
                             "'sutazai models verify'")


@app.command("encrypt")
def encrypt_command(as_json: bool = JSON) -> None:
    """Encrypt every plain blob in place (AES-256-GCM, key: the secret repository/key)."""
    _rewrite_blobs(
        "encrypt", as_json, encryption.encrypt_blobs,
        lambda r: (f"encrypted {r.encrypted} blob(s) ({size(r.encrypted_bytes)}); "
                   f"{r.already_encrypted} already were; {r.snapshots_reset} snapshot(s) "
                   "will be made again on demand"),
        "failed verification and stay plain")


@app.command("rekey")
def rekey_command(as_json: bool = JSON) -> None:
    """Re-seal the blobs of a retired key with the current one (key rotation: the old key
    as secret repository/previous-key, the new one as repository/key)."""
    _rewrite_blobs(
        "rekey", as_json, encryption.rekey_blobs,
        lambda r: (f"re-sealed {r.rekeyed} blob(s) ({size(r.rekeyed_bytes)}) with key "
                   f"{r.key_id}; {r.current} already were; {r.plain} plain blob(s) left as "
                   "they are" + ("" if r.failed else "; no blob needs the previous key now: "
                                 "delete the secret repository/previous-key")),
        "failed authentication and keep their old key")


@app.command("decrypt")
def decrypt_command(as_json: bool = JSON) -> None:
    """Turn every sealed blob back into a plain one (with SUTAZAI_REPOSITORY_ENCRYPTION=false)."""
    _rewrite_blobs(
        "decrypt", as_json, encryption.decrypt_blobs,
        lambda r: (f"decrypted {r.decrypted} blob(s) ({size(r.decrypted_bytes)}); "
                   f"{r.already_plain} already were plain; {r.snapshots_relinked} "
                   "snapshot(s) relinked"),
        "failed authentication and stay sealed")


@app.command("evict-plaintext")
def evict_plaintext_command(
    refs: list[str] = typer.Argument(None, help="NAME or NAME:VERSION; all when omitted."),
) -> None:
    """Delete the decrypted copies engines loaded (made again on the next serve)."""
    repo = open_repository(load_settings())
    files, freed = repo.evict_plaintext(resolve_refs(repo, refs) if refs else None)
    console.print(f"removed {files} decrypted file(s), {size(freed)}")


@app.command("export")
def export_command(
    out: Path = typer.Argument(..., help="Bundle file to write (.tar)."),
    refs: list[str] = typer.Argument(None, help="NAME or NAME:VERSION; all when omitted."),
    sealed: bool = typer.Option(False, "--sealed", help="Blobs encrypted with the "
                                "repository key (secret repository/key); only a repository "
                                "holding that key can import the bundle."),
) -> None:
    """Write an air-gapped bundle (one tar: manifests, blobs, checksums)."""
    repo = open_repository(load_settings())
    manifests = resolve_refs(repo, refs or [])
    with RichProgress(errors) as progress:
        written = export_bundle(repo, manifests, out, progress, sealed=sealed)
    console.print(f"exported {len(manifests)} version(s) to {out} ({size(written)})"
                  + (", sealed" if sealed else ""))


@app.command("import")
def import_command(
    bundle: Path = typer.Argument(..., exists=True, dir_okay=False, help="Bundle file."),
    register: bool = typer.Option(True, help="Register imported versions in MLflow."),
) -> None:
    """Verify and load a bundle; nothing is published unless all of it checks out."""
    settings = load_settings()
    repo = open_repository(settings)
    with RichProgress(errors) as progress:
        results = import_bundle(repo, bundle, progress)
    if register:
        from sutazai.registry import open_registry

        registry = open_registry(settings)
        for manifest, _ in results:
            registry.register(manifest, repo.ensure_snapshot(manifest))
    for manifest, created in results:
        console.print(f"{'imported' if created else 'already present'} {manifest.ref} "
                      f"({short(manifest.digest)})")


@app.command("rollback")
def rollback_command(task: str = typer.Argument(..., help="The task, e.g. text-generation."),
                     as_json: bool = JSON) -> None:
    """Make the task's previous champion champion again (the current one is remembered)."""
    from sutazai.registry import open_registry
    from sutazai.registry.task_aliases import TaskAliases
    from sutazai.security.audit import audit

    settings = load_settings()
    restored, demoted = TaskAliases(open_registry(settings)).rollback(task)
    audit(settings, "rollback", f"task {task}", before=f"{demoted.ref}@{demoted.engine}",
          after=f"{restored.ref}@{restored.engine}")
    if as_json:
        emit_json({"task": task, "champion": restored.__dict__, "previous": demoted.__dict__})
        return
    console.print(f"{task}: champion is {restored.ref} on {restored.engine} again (was "
                  f"{demoted.ref} on {demoted.engine}; 'sutazai models rollback {task}' "
                  "undoes this)", highlight=False)


@app.command("convert")
def convert_command(model: str = typer.Argument(..., help="NAME[:VERSION] of a GGUF version."),
                    as_json: bool = JSON) -> None:
    """Derive a Hugging Face safetensors version (for vLLM) from a GGUF version, with lineage."""
    from sutazai.optimize.derive import convert_to_safetensors

    settings = load_settings()
    [source] = resolve_refs(open_repository(settings), [model])
    with RichProgress(errors) as progress:
        derived, created = convert_to_safetensors(settings, source, progress=progress)
    if as_json:
        emit_json({"created": created, **derived.model_dump(mode="json")})
        return
    console.print(f"{derived.ref} ({derived.format}, {size(derived.size)}) "
                  f"{'derived from' if created else 'already derived from'} {source.ref}",
                  highlight=False)
