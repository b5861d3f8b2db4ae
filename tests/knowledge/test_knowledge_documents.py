"""Loading documents as text and chunking them with offsets; malformed input is refused
with a message that says what to do."""

from __future__ import annotations

import codecs
import itertools
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sutazai.cli import kg
from sutazai.config import Settings
from sutazai.errors import DocumentError
from sutazai.knowledge import service
from sutazai.knowledge.documents import chunk, expand, load
from sutazai.knowledge.models import IngestReport, LoadedDocument, SkippedLink
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


# --- links: a folder ingest does not leave its folder unless asked ------------------------

def linked_folder(tmp_path: Path) -> tuple[Path, Path]:
    """docs/ (the corpus) and outside/ next to it: a secret without a suffix, like
    /etc/passwd, and a folder of documents."""
    docs = write_corpus(tmp_path / "docs")
    outside = tmp_path / "outside"
    (outside / "shared").mkdir(parents=True)
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (outside / "shared" / "notes.md").write_text("Ada Lovelace wrote notes.")
    return docs, outside


def names(sources: list[str]) -> list[str]:
    return [Path(s).name for s in sources]


def test_a_link_to_a_file_outside_is_skipped_and_reported(tmp_path: Path) -> None:
    docs, outside = linked_folder(tmp_path)
    (docs / "secret-link.txt").symlink_to(outside / "passwd")
    skipped: list[SkippedLink] = []
    sources = list(expand([str(docs)], skipped=skipped))
    assert names(sources) == ["amazon.md", "apple.html", "curie.txt"]
    assert all(Path(s).is_relative_to(docs) for s in sources)
    assert skipped == [SkippedLink(path=str(docs / "secret-link.txt"),
                                   target=str(outside / "passwd"),
                                   reason="leads outside the folder")]


def test_a_link_to_a_folder_outside_is_skipped_and_reported(tmp_path: Path) -> None:
    docs, outside = linked_folder(tmp_path)
    (docs / "shared").symlink_to(outside / "shared", target_is_directory=True)
    skipped: list[SkippedLink] = []
    assert names(list(expand([str(docs)], skipped=skipped))) == [
        "amazon.md", "apple.html", "curie.txt"]
    assert [(Path(s.path).name, s.reason) for s in skipped] == [
        ("shared", "leads outside the folder")]


def test_links_inside_the_folder_are_followed_once(tmp_path: Path) -> None:
    docs, _ = linked_folder(tmp_path)
    (docs / "sub").mkdir()
    (docs / "sub" / "real.md").write_text("Marie Curie was born in Warsaw.")
    (docs / "latest.md").symlink_to(docs / "sub" / "real.md")
    (docs / "alias").symlink_to(docs / "sub", target_is_directory=True)
    (docs / ".private").mkdir()
    (docs / ".private" / "secret.txt").write_text("excluded")
    (docs / "hidden-link.txt").symlink_to(docs / ".private" / "secret.txt")  # still excluded
    skipped: list[SkippedLink] = []
    sources = list(expand([str(docs)], skipped=skipped))
    assert sources == [str(docs / "sub" / "real.md"), str(docs / "amazon.md"),
                       str(docs / "apple.html"), str(docs / "curie.txt")]
    assert skipped == []


def test_follow_links_leaves_the_folder_but_not_for_excluded_files(tmp_path: Path) -> None:
    docs, outside = linked_folder(tmp_path)
    (docs / "secret-link.txt").symlink_to(outside / "passwd")
    (docs / "shared").symlink_to(outside / "shared", target_is_directory=True)
    (outside / ".netrc").write_text("machine x password y")
    (docs / "rc.txt").symlink_to(outside / ".netrc")  # a hidden target is never taken
    (docs / "image.png").symlink_to(outside / "shared" / "notes.md")  # nor a wrong suffix
    sources = list(expand([str(docs)], follow_links=True))
    assert sources == [str(docs / "amazon.md"), str(docs / "apple.html"),
                       str(docs / "curie.txt"), str(outside / "passwd"),
                       str(outside / "shared" / "notes.md")]


def test_link_loops_end(tmp_path: Path) -> None:
    docs, _ = linked_folder(tmp_path)
    (docs / "sub").mkdir()
    (docs / "sub" / "up").symlink_to(docs, target_is_directory=True)
    (docs / "again").symlink_to(docs / "sub", target_is_directory=True)
    (docs / "self.txt").symlink_to(docs / "self.txt")
    (docs / "ping.md").symlink_to(docs / "pong.md")
    (docs / "pong.md").symlink_to(docs / "ping.md")
    (tmp_path / "outside" / "back").symlink_to(docs, target_is_directory=True)
    (docs / "out").symlink_to(tmp_path / "outside", target_is_directory=True)
    for follow in (False, True):
        skipped: list[SkippedLink] = []
        sources = names(list(expand([str(docs)], follow_links=follow, skipped=skipped)))
        assert sources[:3] == ["amazon.md", "apple.html", "curie.txt"]
        assert {Path(s.path).name for s in skipped if "loop" in s.reason} == {
            "ping.md", "pong.md", "self.txt"}


def test_skipped_links_are_logged_once_and_the_setting_follows_them(
    tmp_path: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    docs, outside = linked_folder(tmp_path)
    for index in range(3):
        (docs / f"link{index}.txt").symlink_to(outside / "passwd")
    report = IngestReport()
    with caplog.at_level(logging.WARNING, logger="sutazai.knowledge.service"):
        sources = service._expand(settings, [str(docs)], None, report)
    assert str(outside / "passwd") not in sources and len(report.links_skipped) == 3
    [record] = caplog.records
    assert "skipped 3 link(s)" in record.getMessage()
    assert "--follow-links" in record.getMessage()
    following = settings.model_copy(update={"kg_follow_links": True})
    assert str(outside / "passwd") in service._expand(following, [str(docs)], None,
                                                      IngestReport())
    assert str(outside / "passwd") not in service._expand(following, [str(docs)], False,
                                                          IngestReport())


@pytest.mark.parametrize(("flag", "expected"), [([], None), (["--follow-links"], True),
                                                (["--no-follow-links"], False)])
def test_the_cli_passes_follow_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     flag: list[str], expected: bool | None) -> None:
    calls: list[object] = []

    def fake_ingest(settings: Settings, paths: list[str], **options: object) -> IngestReport:
        calls.append(options["follow_links"])
        return IngestReport()

    monkeypatch.setattr(service, "ingest", fake_ingest)
    done = CliRunner().invoke(kg.app, ["ingest", str(tmp_path), *flag, "--json"])
    assert done.exit_code == 0, done.output
    assert calls == [expected]
