"""Loading documents as text and chunking them with offsets; malformed input is refused
with a message that says what to do."""

from __future__ import annotations

import codecs
import itertools
from pathlib import Path

import pytest

from sutazai.errors import DocumentError
from sutazai.knowledge.documents import chunk, expand, load
from sutazai.knowledge.models import LoadedDocument
from tests.knowledge_helpers import DOC_B, tiny_pdf, write_corpus
from tests.servers import Nginx

MiB = 2**20


def test_a_folder_inside_a_hidden_folder_is_read(tmp_path: Path) -> None:
    """The default documents folder is .sutazai/documents: only hidden entries *inside*
    the folder given are skipped."""
    folder = write_corpus(tmp_path / ".sutazai" / "documents")
    assert [Path(s).name for s in expand([str(folder)])] == ["amazon.md", "apple.html",
                                                            "curie.txt"]


def test_text_markdown_html_and_pdf_become_text(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "docs")
    (folder / "paper.pdf").write_bytes(tiny_pdf(["Ada Lovelace was born in London."]))
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # not a document: not taken
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "secret.txt").write_text("skip me")
    sources = list(expand([str(folder)]))
    assert [Path(s).name for s in sources] == ["amazon.md", "apple.html", "curie.txt",
                                               "paper.pdf"]
    docs = {Path(s).name: load(s, max_bytes=MiB) for s in sources}
    html = docs["apple.html"]
    assert html.media_type == "text/html" and html.title == "Apple"
    assert "Steve Jobs and Steve Wozniak founded Apple" in html.text
    assert "Google Chrome" not in html.text  # scripts are not text
    assert "Apple history\n\nSteve Jobs" in html.text  # blocks stay apart
    assert docs["paper.pdf"].text == "Ada Lovelace was born in London."
    assert docs["paper.pdf"].media_type == "application/pdf"
    assert docs["amazon.md"].media_type == "text/markdown"
    again = load(sources[2], max_bytes=MiB)
    assert again.id == docs["curie.txt"].id and len(again.id) == 64  # sha256 of the bytes
    assert again.uri == str((folder / "curie.txt").resolve())


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty"),
    (b"\x00\x01\x02\x03binary\x00" * 20, "binary"),
    ("Café Zürich".encode("latin-1"), r"not valid UTF-8 \(byte 0xe9 at offset 3\).*iconv"),
    (b"   \n\n  \t ", "no text"),
    (b"%PDF-1.4\nthis is not really a pdf", "not a readable PDF|no text"),
])
def test_malformed_documents_are_refused_clearly(tmp_path: Path, content: bytes,
                                                 message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DocumentError, match=message):
        load(str(path), max_bytes=MiB)


def test_huge_and_missing_documents(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    path.write_text("word " * 100_000)
    with pytest.raises(DocumentError, match=r"0.5 MiB is over the limit.*kg_max_document_mib"):
        load(str(path), max_bytes=100_000)
    with pytest.raises(DocumentError, match="no such file"):
        load(str(tmp_path / "nope.txt"), max_bytes=MiB)


def test_an_encrypted_pdf_says_to_decrypt_it(tmp_path: Path) -> None:
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(tiny_pdf(["Secret plans of ACME Corp."]))))
    writer.encrypt("owner-and-user", algorithm="RC4-128")
    path = tmp_path / "locked.pdf"
    with path.open("wb") as handle:
        writer.write(handle)
    with pytest.raises(DocumentError, match="encrypted; decrypt it first"):
        load(str(path), max_bytes=MiB)


def test_utf16_with_a_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "utf16.txt"
    path.write_bytes(codecs.BOM_UTF16_LE + "Zoë lives in Zürich.".encode("utf-16-le"))
    assert load(str(path), max_bytes=MiB).text == "Zoë lives in Zürich."


def test_chunks_keep_offsets_and_sentences(tmp_path: Path) -> None:
    sentences = [f"Sentence number {i} mentions Paris and Berlin." for i in range(60)]
    text = " ".join(sentences[:30]) + "\n\n" + " ".join(sentences[30:])
    doc = LoadedDocument(id="a" * 64, uri="x", title="x", media_type="text/plain",
                         size=len(text), text=text)
    chunks = chunk(doc, max_chars=400)
    assert len(chunks) > 5
    for c in chunks:
        assert text[c.start:c.end] == c.text and len(c.text) <= 400
        assert c.text.endswith(".")  # cut after a sentence, never inside one
    assert [c.index for c in chunks] == list(range(len(chunks)))
    covered = "".join(text[c.start:c.end] for c in chunks).replace(" ", "").replace("\n", "")
    assert covered == text.replace(" ", "").replace("\n", "")
    overlapping = chunk(doc, max_chars=400, overlap=120)
    assert len(overlapping) > len(chunks)
    assert all(b.start < a.end for a, b in itertools.pairwise(overlapping))
    assert all(text[c.start:c.end] == c.text for c in overlapping)


def test_a_document_over_http_is_fetched(tmp_path: Path) -> None:
    """A real nginx on 127.0.0.1 serves the page."""
    server = Nginx(tmp_path / "nginx", tmp_path / "site")
    (server.root / "apple.html").write_text(DOC_B)
    server.start()
    try:
        doc = load(f"{server.url}/apple.html", max_bytes=MiB)
        assert doc.uri == f"{server.url}/apple.html" and doc.media_type == "text/html"
        assert "founded Apple" in doc.text
        with pytest.raises(DocumentError, match="HTTP 404"):
            load(f"{server.url}/missing.html", max_bytes=MiB)
        with pytest.raises(DocumentError, match="over the limit"):
            load(f"{server.url}/apple.html", max_bytes=100)
    finally:
        server.stop()
