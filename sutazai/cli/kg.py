"""``sutazai kg ...``: documents to a knowledge graph, and looking into it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from sutazai.cli.output import console, emit_json, errors
from sutazai.config import load_settings
from sutazai.errors import ConfigError
from sutazai.knowledge.models import Citation

app = typer.Typer(help="Turn documents into a knowledge graph (FalkorDB or Neo4j) and query it.",
                  no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON instead of tables.")


@app.command("ingest")
def ingest_command(
    paths: list[str] = typer.Argument(..., help="Files, folders (txt, md, html, pdf) or URLs."),
    relations: str = typer.Option("svo", help="svo (spaCy), llm (the served model), both, "
                                              "or none"),
    follow_links: bool | None = typer.Option(
        None, "--follow-links/--no-follow-links", show_default=False,
        help="Follow links that lead out of a folder given (default: the setting "
             "kg_follow_links, off); links inside a folder are always followed."),
    valid_from: str = typer.Option(
        None, "--valid-from", "--as-of", show_default=False,
        help="The date these versions became valid (ISO 8601, e.g. 2025-01-15); default "
             "the date a document states (PDF, HTML meta, front matter), else now."),
    embed: bool = typer.Option(True, "--embed/--no-embed",
                               help="Embed the new chunks with the embeddings champion."),
    as_json: bool = JSON,
) -> None:
    """Extract entities and relations and upsert them; unchanged documents are skipped, and
    a changed one becomes the current version (the previous one is kept, superseded)."""
    from sutazai.cli.progress import RichProgress
    from sutazai.knowledge.service import ingest

    settings = load_settings()
    with RichProgress(errors) as progress:
        report = ingest(settings, paths, relations=relations, follow_links=follow_links,
                        valid_from=_moment(valid_from, "--valid-from"), embed=embed,
                        progress=progress)
    if as_json:
        emit_json(report.model_dump(mode="json"))
    else:
        table = Table(title=f"Ingested into {report.store}")
        for column in ("documents", "unchanged", "replaced", "failed", "chunks", "entities",
                       "mentions", "relations", "seconds"):
            table.add_column(column, justify="right")
        table.add_row(str(report.documents_ingested), str(report.documents_unchanged),
                      str(report.documents_replaced), str(len(report.documents_failed)),
                      str(report.chunks), str(report.entities), str(report.mentions),
                      str(report.relations), f"{report.seconds:.1f}")
        console.print(table)
        if report.entities_dropped:
            reasons = ", ".join(f"{reason} {count}" for reason, count in
                                sorted(report.entities_dropped.items(), key=lambda x: -x[1]))
            console.print(f"Entity candidates dropped (not names): {reasons}", highlight=False)
        if report.chunks_embedded:
            console.print(f"Embedded {report.chunks_embedded} chunk(s) with "
                          f"{report.embedding_model}", highlight=False)
        for note in report.notes:
            console.print(f"note: {escape(note)}", highlight=False)
        if relations in ("llm", "both"):
            console.print(f"LLM: {report.llm_invalid_outputs} invalid answer(s), "
                          f"{report.llm_chunks_skipped} chunk(s) skipped, "
                          f"{report.relations_dropped} fact(s) dropped (names not in the text)")
    for failed in report.documents_failed:
        errors.print(f"[bold red]error:[/] {escape(failed.error)}", highlight=False)
    if report.documents_failed:
        raise typer.Exit(1)


AS_OF = typer.Option(None, "--as-of", show_default=False,
                     help="Read the graph as it was at this date or time (ISO 8601, e.g. "
                          "2025-06-01 or 2025-06-01T12:00:00Z); default now.")


def _moment(value: str | None, option: str = "--as-of") -> int | None:
    """An ISO 8601 date or time as epoch ms (None stays None); a clear error otherwise."""
    from sutazai.knowledge.documents import parse_date

    if value is None:
        return None
    moment = parse_date(value)
    if moment is None:
        raise ConfigError(f"{option} {value!r} is not a date; write it as ISO 8601, e.g. "
                          "2025-06-01 or 2025-06-01T12:00:00Z")
    return moment


@app.command("stats")
def stats_command(as_of: str = AS_OF, as_json: bool = JSON) -> None:
    """Documents, chunks, entities by type and relations by type."""
    from sutazai.knowledge.service import graph_stats

    stats = graph_stats(load_settings(), _moment(as_of))
    if as_json:
        emit_json(stats.model_dump(mode="json"))
        return
    console.print(f"[bold]{stats.store}[/]: {stats.documents} document(s), {stats.chunks} "
                  f"chunk(s), {stats.entities} entities, {stats.mentions} mention(s), "
                  f"{stats.relations} relation(s)", highlight=False)
    for title, counts in (("entities by type", stats.entities_by_type),
                          ("relations by type", stats.relations_by_type)):
        if counts:
            table = Table(title=title)
            table.add_column("type")
            table.add_column("count", justify="right")
            for name, count in counts.items():
                table.add_row(name, str(count))
            console.print(table)


@app.command("entity")
def entity_command(name: str = typer.Argument(..., help="A name, alias or entity id."),
                   limit: int = typer.Option(20, help="Neighbours and mentions shown."),
                   as_of: str = AS_OF, as_json: bool = JSON) -> None:
    """An entity's neighbours, and its mentions with snippets."""
    from sutazai.knowledge.service import open_store

    moment = _moment(as_of)
    with open_store(load_settings(), read_only=True) as store:
        views = store.entity(name, limit=limit, as_of=moment)
    if as_json:
        emit_json([v.model_dump(mode="json") for v in views])
        return
    for view in views:
        aliases = f"  aliases: {', '.join(view.aliases)}" if view.aliases else ""
        console.print(f"[bold]{escape(view.name)}[/] ({view.type}, {view.id}, confidence "
                      f"{view.confidence:.2f}){escape(aliases)}", highlight=False)
        if view.neighbours:
            table = Table(title="neighbours")
            for column in ("relation", "entity", "type", "confidence"):
                table.add_column(column)
            for n in view.neighbours:
                arrow = f"-[{n.type}]->" if n.direction == "out" else f"<-[{n.type}]-"
                table.add_row(arrow, n.name, n.entity_type, f"{n.confidence:.2f}")
            console.print(table)
        table = Table(title="mentions")
        for column in ("document", "snippet", "extractor"):
            table.add_column(column)
        for m in view.mentions:
            table.add_row(Path(m.uri).name or m.uri, escape(m.snippet), m.extractor)
        console.print(table)


@app.command("search")
def search_command(
    query: str = typer.Argument(..., help="What to look for, in words."),
    top: int = typer.Option(5, "--top", "-k", min=1, max=100, help="Passages to return."),
    use: list[str] = typer.Option(None, "--use", help="Only these retrievers: vector, "
                                                      "fulltext, graph (repeatable)."),
    as_of: str = AS_OF,
    as_json: bool = JSON,
) -> None:
    """Hybrid search: vector, full text and the graph, fused; every hit cited."""
    from sutazai.knowledge.retrieve import RETRIEVERS
    from sutazai.knowledge.service import search

    result = search(load_settings(), query, top=top, as_of=_moment(as_of),
                    use=use or RETRIEVERS)
    if as_json:
        emit_json(result.model_dump(mode="json"))
        return
    for note in result.notes:
        errors.print(f"note: {escape(note)}", highlight=False)
    if not result.hits:
        console.print("No passage matches.")
        return
    table = Table(title=f"{len(result.hits)} passage(s) for {result.query!r} "
                        f"({', '.join(result.retrievers)}; {result.seconds * 1000:.0f} ms)")
    for column in ("#", "source", "passage", "found by"):
        table.add_column(column, overflow="fold")
    for hit in result.hits:
        found = ", ".join(f"{name} #{rank}" for name, rank in hit.ranks.items() if rank)
        table.add_row(str(hit.rank), escape(_source(hit.citation)),
                      escape(hit.citation.snippet), found)
    console.print(table)


@app.command("ask")
def ask_command(
    question: str = typer.Argument(..., help="A question about the ingested documents."),
    top: int = typer.Option(None, "--top", "-k", min=1, max=50, show_default=False,
                            help="Passages to retrieve (default: setting kg_ask_passages)."),
    generate: bool = typer.Option(True, "--generate/--no-generate",
                                  help="Let the chat champion write the answer (checked); "
                                       "--no-generate extracts it."),
    as_of: str = AS_OF,
    as_json: bool = JSON,
) -> None:
    """Answer from the documents, citing the passages (or say nothing relevant was found)."""
    from sutazai.knowledge.service import ask

    reply = ask(load_settings(), question, top=top, as_of=_moment(as_of), generate=generate)
    if as_json:
        emit_json(reply.model_dump(mode="json"))
        return
    console.print(escape(reply.answer), highlight=False)
    for number in reply.cited:
        hit = reply.passages[number - 1]
        console.print(f"  [{number}] {escape(_source(hit.citation))}", highlight=False)
    how = {"generated": f"written by {reply.model}, citations checked",
           "extractive": "extracted from the passages", "none": "nothing relevant found"}
    errors.print(f"({how[reply.mode]}; {reply.seconds * 1000:.0f} ms)", highlight=False)
    for note in reply.notes:
        errors.print(f"note: {escape(note)}", highlight=False)


@app.command("embed")
def embed_command(as_json: bool = JSON) -> None:
    """Embed the chunks the embeddings champion has not embedded yet (all of them after
    the champion changed); safe to re-run."""
    from sutazai.cli.progress import RichProgress
    from sutazai.knowledge.service import embed

    with RichProgress(errors) as progress:
        report = embed(load_settings(), progress)
    if as_json:
        emit_json(report.model_dump(mode="json"))
        return
    rebuilt = " (vector index rebuilt for the new dimension)" if report.index_rebuilt else ""
    console.print(f"embedded {report.chunks_embedded} chunk(s) with {report.model}, "
                  f"{report.dimension} dimensions, in {report.seconds:.1f} s{rebuilt}",
                  highlight=False)


def _source(citation: Citation) -> str:
    """``file > heading, p. N, chars A-B``: where a passage is, in one line."""
    name = Path(citation.uri).name or citation.uri
    parts = [" > ".join(x for x in (name, citation.heading) if x)]
    if citation.page is not None:
        parts.append(f"p. {citation.page}")
    parts.append(f"chars {citation.start}-{citation.end}")
    return ", ".join(parts)


@app.command("query")
def query_command(
    statement: str = typer.Argument(..., help="Cypher (read-only unless --write)."),
    param: list[str] = typer.Option(None, "--param", "-p",
                                    help="NAME=VALUE (VALUE as JSON, else a string)."),
    write: bool = typer.Option(False, "--write", help="Allow statements that write."),
    as_json: bool = JSON,
) -> None:
    """Run Cypher against the graph; read-only unless --write."""
    from sutazai.knowledge.service import open_store

    params = {}
    for item in param or []:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise ConfigError(f"--param {item!r}: write NAME=VALUE")
        try:
            params[name] = json.loads(value)
        except ValueError:
            params[name] = value
    with open_store(load_settings(), read_only=not write) as store:
        result = store.query(statement, params, write=write)
    if as_json:
        emit_json([dict(zip(result.columns, row, strict=False)) for row in result.rows])
        return
    table = Table()
    for column in result.columns:
        table.add_column(column)
    for row in result.rows:
        table.add_row(*(escape(v if isinstance(v, str) else json.dumps(v, default=str))
                        for v in row))
    console.print(table)
    console.print(f"{len(result.rows)} row(s)")


@app.command("export")
def export_command(
    fmt: str = typer.Option("graphml", "--format", help="graphml or json."),
    out: Path = typer.Option(None, "--output", "-o", help="File to write; stdout if omitted."),
) -> None:
    """The whole graph for visual tools: GraphML (Gephi, yEd, Cytoscape) or JSON."""
    from sutazai.knowledge.export import FORMATS, export_file, write
    from sutazai.knowledge.service import open_store

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    with open_store(load_settings(), read_only=True) as store:
        nodes, edges = store.export()
    if out is None:
        write(nodes, edges, fmt, sys.stdout)
    else:
        export_file(nodes, edges, fmt, out)
        errors.print(f"wrote {len(nodes)} node(s) and {len(edges)} edge(s) to {out}")


@app.command("rm")
def rm_command(doc: str = typer.Argument(..., help="The document's path, URI or id (prefix).")
               ) -> None:
    """Remove a document, its chunks and mentions, and entities nothing else mentions."""
    from sutazai.knowledge.service import remove_document

    uri, removed = remove_document(load_settings(), doc)
    console.print(f"removed {uri} and {removed} entit{'y' if removed == 1 else 'ies'} only it "
                  "mentioned", highlight=False)
