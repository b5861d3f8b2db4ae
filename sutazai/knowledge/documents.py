"""Documents in, text and chunks out: txt, md, html and pdf from folders or URIs.

A document's id is the sha256 of its bytes, so an unchanged file is recognised without
re-reading the graph, and its ``uri`` (absolute path or URL) says which earlier version a
changed file replaces. Anything that cannot be read as text raises :class:`DocumentError`
with what to do; the caller records it and goes on with the rest of the batch.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from sutazai.errors import DocumentError
from sutazai.knowledge import structure
from sutazai.knowledge.models import Block, Chunk, LoadedDocument, SkippedLink

SUFFIXES = {".txt": "text/plain", ".text": "text/plain", ".md": "text/markdown",
            ".markdown": "text/markdown", ".html": "text/html", ".htm": "text/html",
            ".pdf": "application/pdf"}


def expand(paths: list[str], *, follow_links: bool = False,
           skipped: list[SkippedLink] | None = None) -> Iterator[str]:
    """Files named, and supported files inside folders (sorted), URIs as they are.

    Files named explicitly are kept whatever their suffix (their content decides); inside
    folders only known suffixes are taken, so a folder of mixed files just works.

    A folder is not left through links: a link (to a file or a folder) whose target lies
    outside the folder is skipped unless ``follow_links``, and so is a broken or looping
    one; each skipped link goes into ``skipped``. Links that stay inside are followed.
    Exclusions hold for links either way: a link with a hidden name or an unsupported
    suffix, or to a hidden target (``notes.txt -> ~/.netrc``, or anything hidden inside
    the folder), is never taken. Each file is yielded once, as its resolved path.
    """
    for raw in paths:
        if is_url(raw):
            yield raw
            continue
        path = Path(raw[7:] if raw.startswith("file://") else raw).expanduser()
        if path.is_dir():
            root = path.resolve()
            walk = _Walk(root, follow_links, skipped if skipped is not None else [])
            yield from walk.folder(path, root)
        else:
            yield str(path.resolve()) if path.exists() else raw


def _excluded(relative: Path) -> bool:
    """Hidden files and folders *inside* the folder are skipped; the folder itself may
    live under a hidden one (the default .sutazai/documents)."""
    return any(part.startswith(".") for part in relative.parts)


class _Walk:
    """One folder's walk: sorted, depth first, each real folder and file visited once (so
    link loops end), leaving the folder only when ``follow_links``."""

    def __init__(self, root: Path, follow_links: bool, skipped: list[SkippedLink]) -> None:
        self.root, self.follow_links, self.skipped = root, follow_links, skipped
        self.folders: set[Path] = set()
        self.files: set[Path] = set()

    def folder(self, folder: Path, real: Path) -> Iterator[str]:
        if real in self.folders:
            return
        self.folders.add(real)
        try:
            children = sorted(folder.iterdir())
        except OSError:  # unreadable (or gone): nothing in it to take
            return
        for child in children:
            if child.name.startswith("."):
                continue
            target = self._target(child)
            if target is None:
                continue
            if target.is_dir():
                yield from self.folder(child, target)
            elif (target.is_file() and target not in self.files
                  and child.suffix.lower() in SUFFIXES):
                self.files.add(target)
                yield str(target)

    def _target(self, child: Path) -> Path | None:
        """Where ``child`` really is, or None when it is a link not to follow."""
        if not child.is_symlink():
            return child.resolve()
        try:
            target = child.resolve(strict=True)
        except (OSError, RuntimeError):  # broken, or a loop of links (RuntimeError < 3.13)
            if child.suffix.lower() in SUFFIXES:
                self.skipped.append(SkippedLink(path=str(child), target=_readlink(child),
                                                reason="broken, or a loop of links"))
            return None
        inside = target.is_relative_to(self.root)
        if target.name.startswith(".") or (inside and _excluded(target.relative_to(self.root))):
            return None  # excluded wherever the link points
        if inside or self.follow_links:
            return target
        if target.is_dir() or child.suffix.lower() in SUFFIXES:
            self.skipped.append(SkippedLink(path=str(child), target=str(target),
                                            reason="leads outside the folder"))
        return None


def _readlink(link: Path) -> str:
    try:
        return str(link.readlink())
    except OSError:
        return "?"


def is_url(value: str) -> bool:
    return urlparse(value).scheme in ("http", "https")


def load(source: str, *, max_bytes: int, timeout_s: float = 60.0) -> LoadedDocument:
    """Read one document as text (raises DocumentError, never a half-read document)."""
    if is_url(source):
        data, media_type = _fetch(source, max_bytes, timeout_s)
        uri = source
        name = Path(unquote(urlparse(source).path)).name or source
    else:
        path = Path(source)
        if not path.is_file():
            raise DocumentError(f"{source}: no such file or folder; check the path")
        size = path.stat().st_size
        if size > max_bytes:
            raise DocumentError(_too_large(source, size, max_bytes))
        data = path.read_bytes()
        uri = str(path.resolve())
        name = path.name
        media_type = SUFFIXES.get(path.suffix.lower(), "")
    if not data:
        raise DocumentError(f"{source}: the file is empty; nothing to ingest")
    media_type = media_type or _sniff(data)
    blocks: list[Block] = []
    masks: list[tuple[int, int]] = []
    title = ""
    dated: int | None = None
    if media_type == "application/pdf" or data.startswith(b"%PDF-"):
        pages, dated = _pdf_pages(source, data)
        text, blocks, masks = structure.pages(pages)
        media_type = "application/pdf"
        if not text.strip():
            raise DocumentError(f"{source}: the PDF has no text layer (scanned pages?); "
                                "run OCR first, e.g. ocrmypdf IN.pdf OUT.pdf")
    else:
        raw = _decode(source, data).replace("\r\n", "\n").replace("\r", "\n")
        dated = stated_date(raw)
        if media_type == "text/html" or (not media_type and _looks_html(raw)):
            text, title, blocks, masks = structure.html(raw)
            media_type = "text/html"
        elif media_type == "text/markdown":
            text, blocks, masks = structure.markdown(raw)
        else:
            text = raw
            blocks, masks = structure.plain(raw)
            media_type = media_type or "text/plain"
    if not text.strip():
        raise DocumentError(f"{source}: no text in it (markup or white space only); "
                            "nothing to ingest")
    return LoadedDocument(id=hashlib.sha256(data).hexdigest(), uri=uri,
                          title=title or name, media_type=media_type, size=len(data),
                          text=text, blocks=blocks, masks=masks, dated=dated)


# The date a text document states of itself: an HTML date meta tag, or a ``date:`` line in
# markdown's YAML front matter. Only the first 4 KB are looked at.
_STATED = re.compile(
    r"<meta\s+(?:name|property|http-equiv)=[\"'](?:date|dc\.date|dcterms\.modified|"
    r"article:modified_time|last-modified)[\"']\s+content=[\"']([^\"']+)[\"']"
    r"|\A---\n(?:.*\n)*?(?:date|updated|last_modified):\s*[\"']?([^\"'\n]+)", re.I)


def stated_date(text: str) -> int | None:
    """Epoch ms of the date the document states (None: none, or one that does not parse)."""
    found = _STATED.search(text[:4096])
    return parse_date(found.group(1) or found.group(2)) if found else None


def parse_date(value: str) -> int | None:
    """An ISO-8601 date or time (UTC unless it says), or a PDF date (``D:20250115...``), as
    epoch ms; None when it does not parse."""
    from datetime import UTC, datetime

    text = value.strip()
    if text.startswith("D:"):  # PDF: D:YYYYMMDDHHmmSS, the rest optional
        digits = re.sub(r"\D", "", text[2:16]).ljust(14, "0")
        text = (f"{digits[:4]}-{digits[4:6] or '01'}-{digits[6:8] or '01'}T{digits[8:10]}:"
                f"{digits[10:12]}:{digits[12:14]}")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _too_large(source: str, size: int, max_bytes: int) -> str:
    return (f"{source}: {size / 2**20:.1f} MiB is over the limit of {max_bytes / 2**20:.1f} "
            "MiB; split it, or raise kg_max_document_mib (SUTAZAI_KG_MAX_DOCUMENT_MIB)")


def _fetch(url: str, max_bytes: int, timeout_s: float) -> tuple[bytes, str]:
    import urllib3

    try:
        response = urllib3.request("GET", url, preload_content=False, timeout=timeout_s,
                                   retries=urllib3.Retry(2, redirect=5))
    except urllib3.exceptions.HTTPError as exc:
        raise DocumentError(f"{url}: cannot fetch it ({exc}); check the URL and network"
                            ) from None
    try:
        if response.status != 200:
            raise DocumentError(f"{url}: the server answered HTTP {response.status}")
        body = bytearray()
        for part in response.stream(1 << 16):
            body += part
            if len(body) > max_bytes:
                raise DocumentError(_too_large(url, len(body), max_bytes))
    finally:
        response.release_conn()
    content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    known = {"text/html": "text/html", "application/xhtml+xml": "text/html",
             "application/pdf": "application/pdf", "text/markdown": "text/markdown",
             "text/plain": "text/plain"}
    suffix = Path(urlparse(url).path).suffix.lower()
    return bytes(body), known.get(content_type) or SUFFIXES.get(suffix, "")


def _sniff(data: bytes) -> str:
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    return ""


def _looks_html(text: str) -> bool:
    head = text[:1024].lstrip().lower()
    return head.startswith(("<!doctype html", "<html")) or "<body" in head


def _decode(source: str, data: bytes) -> str:
    """UTF-8 (BOM or not) or BOM-marked UTF-16/32; anything else is refused, not guessed."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise DocumentError(f"{source}: invalid {encoding} ({exc.reason} at byte "
                                    f"{exc.start}); re-save it as UTF-8") from None
    sample = data[:8192]
    if b"\x00" in sample or _control_ratio(sample) > 0.1:
        raise DocumentError(f"{source}: looks like a binary file, not text, HTML or PDF; "
                            "only .txt, .md, .html and .pdf documents can be ingested")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            f"{source}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert it, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8"
        ) from None


def _control_ratio(sample: bytes) -> float:
    if not sample:
        return 0.0
    controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return controls / len(sample)


def _pdf_pages(source: str, data: bytes) -> tuple[list[str], int | None]:
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # warnings per odd object, not useful
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError(f"{source}: the PDF is encrypted; decrypt it first "
                                "(qpdf --decrypt)")
        pages = [page.extract_text() or "" for page in reader.pages]
        info: Any = reader.metadata or {}
        stated = info.get("/ModDate") or info.get("/CreationDate")
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise DocumentError(f"{source}: not a readable PDF ({exc}); repair or re-export it"
                            ) from None
    return pages, parse_date(str(stated)) if stated else None


def chunk(document: LoadedDocument, max_chars: int, overlap: int = 0) -> list[Chunk]:
    """Split the text into chunks of at most ``max_chars``, at paragraph, then sentence, then
    word boundaries, with character offsets into the document's text.

    A chunk never crosses a section (a heading, or a PDF page), so each carries one heading
    path and one page. Chunks never cut a sentence unless one sentence is longer than a
    chunk, so the dependency parse behind subject-verb-object relations sees whole sentences.
    """
    text = document.text
    overlap = min(overlap, max_chars // 2)
    chunks: list[Chunk] = []
    for lo, hi, heading, page in _sections(document):
        for start, end in _split(text, lo, hi, max_chars, overlap):
            chunks.append(Chunk(id=f"{document.id[:32]}:{len(chunks)}", document=document.id,
                                index=len(chunks), start=start, end=end,
                                text=text[start:end], page=page, heading=heading,
                                masks=_within(document.masks, start, end)))
    return chunks


def _sections(document: LoadedDocument) -> list[tuple[int, int, list[str], int | None]]:
    """(start, end, heading path, page) of each run of blocks under one heading and page;
    a heading opens the section it names."""
    blocks = document.blocks
    if not blocks:
        return [(0, len(document.text), [], None)]
    sections: list[tuple[int, int, list[str], int | None]] = []
    for block in blocks:
        key = (block.heading, block.page)
        if sections and block.kind != "heading" and (sections[-1][2], sections[-1][3]) == key:
            lo, _, heading, page = sections[-1]
            sections[-1] = (lo, block.end, heading, page)
        else:
            sections.append((block.start, block.end, block.heading, block.page))
    return sections


def _within(masks: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    return [(max(a, start), min(b, end)) for a, b in masks if a < end and b > start]


def _split(text: str, lo: int, hi: int, max_chars: int, overlap: int
           ) -> list[tuple[int, int]]:
    """(start, end) of the chunks of text[lo:hi]."""
    spans: list[tuple[int, int]] = []
    start = _skip_space(text, lo)
    while start < hi:
        end = min(hi, start + max_chars)
        if end < hi:
            end = _boundary(text, start, end)
        body_end = end
        while body_end > start and text[body_end - 1].isspace():
            body_end -= 1
        if body_end > start:
            spans.append((start, body_end))
        if end >= hi:
            break
        next_start = _skip_space(text, end)
        if overlap:
            back = _overlap_start(text, max(start + 1, body_end - overlap), body_end)
            if start < back < body_end:
                next_start = back
        start = next_start
    return spans


def _overlap_start(text: str, lo: int, hi: int) -> int:
    """Where the next chunk starts to repeat text[lo:hi]: a sentence start, else a word."""
    window = text[lo:hi]
    found = _SENTENCE_END.search(window)
    if found and lo + found.end() < hi:
        return _skip_space(text, lo + found.end())
    space = window.find(" ")
    return _skip_space(text, lo + space + 1) if space >= 0 else hi


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s")


def _boundary(text: str, start: int, end: int) -> int:
    """The best cut in text[start:end]: after a paragraph, a sentence, a word; else ``end``.
    Cuts in the first third are not taken, so chunks do not come out tiny."""
    window = text[start:end]
    floor = len(window) // 3
    cut = window.rfind("\n\n", floor)
    if cut > 0:
        return start + cut + 2
    found = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() > floor]
    if found:
        return start + found[-1]
    cut = window.rfind(" ", floor)
    if cut > 0:
        return start + cut + 1
    return end
