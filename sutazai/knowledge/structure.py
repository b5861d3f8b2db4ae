"""Documents as structure, not just characters: markdown through markdown-it-py, HTML
through the standard library's parser, plain text by paragraphs (with reStructuredText's
underlined headings), PDFs by page.

Each parser renders the text a reader sees (no markup, no link targets, no image alt
text) as blocks — headings, paragraphs, list items, table rows (cells joined by `` | ``),
quotes, code — separated by blank lines, and records each block's heading path and page.
Code blocks, inline code, URLs, e-mail addresses, file paths, file names and option names
stay in the text, for search, but their spans are *masked*: the extractors never see them,
so they never become entities.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from html.parser import HTMLParser

from sutazai.knowledge.models import Block, BlockKind

_FILE_SUFFIXES = (r"py|pyi|pyc|md|rst|txt|cfg|toml|ya?ml|json|ini|conf|sh|bash|ps1|bat|po|mo|"
                  r"c|h|cc|cpp|hpp|rs|go|js|ts|java|rb|pl|so|dll|exe|whl|tar|gz|tgz|zip|xz|"
                  r"html?|xml|csv|lock|log|pdf|png|jpe?g|svg|gif|g4|mk")
# Spans of prose that are not words: masked wherever they occur.
_MASKED = re.compile("|".join((
    r"<(?:https?://|mailto:)?[^\s<>]+[@/][^\s<>]+>",  # <URL>, <e-mail address>
    r"\b(?:https?|ftp|file|git|ssh)://[^\s<>()\[\]]*[^\s<>()\[\].,;:!?'\"]",  # URLs
    r"\bwww\.[^\s<>()\[\]]*[^\s<>()\[\].,;:!?'\"]",
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail addresses
    r"(?<![\w/.])(?:~|\.{1,2})?/[\w.@+~-]*[\w@+~-](?:/[\w.@+~-]*[\w@+~-])*/?",  # /etc/x
    r"\b[\w.-]+(?:/[\w.-]*\w){2,}/?",  # a/b/c
    rf"(?<![\w.])[\w-]+(?:\.[\w-]+)*\.(?:{_FILE_SUFFIXES})\b(?!\.\w)",  # file names
    r"(?<![\w-])--?[A-Za-z][\w-]*(?:=\S+)?",  # --option, -c
    r"``[^`\n]+``",  # reStructuredText literals
    r"^\.\. .*$",  # reStructuredText directives
    r"\|[^|\s][^|\n]{0,40}[^|\s]\|_?(?=[\s.,;:]|$)",  # reStructuredText |substitutions|
)), re.I | re.M)
_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+<>:_.])\1{2,}\s*$")


class _Builder:
    """Blocks appended to one text, each with its heading path, page and masked spans."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.blocks: list[Block] = []
        self.masks: list[tuple[int, int]] = []
        self.heading: list[str] = []
        self._levels: list[int] = []  # the level of each heading in self.heading
        self.page: int | None = None

    def add(self, kind: BlockKind, segments: Iterable[tuple[str, bool]]) -> None:
        """A block from (text, masked) segments; empty blocks are left out."""
        text, masks = _join(segments, keep_space=kind in ("code", "page"))
        if not text:
            return
        if self.parts:
            self.parts.append("\n\n")
            self.length += 2
        start = self.length
        self.blocks.append(Block(kind=kind, start=start, end=start + len(text),
                                 heading=list(self.heading), page=self.page))
        if kind == "code":
            masks = [(0, len(text))]
        self.masks += [(start + a, start + b) for a, b in masks]
        self.parts.append(text)
        self.length += len(text)

    def set_heading(self, level: int, segments: list[tuple[str, bool]]) -> None:
        """A heading of ``level`` (1 = outermost): it and what follows sit under it."""
        title, _ = _join(segments, keep_space=False)
        if not title:
            return
        # the headings above it are the open ones of a lower level (a document may skip
        # levels: "## A" then "## B" are siblings even without a "# Title" above them)
        keep = 0
        while keep < len(self._levels) and self._levels[keep] < level:
            keep += 1
        self.heading = [*self.heading[:keep], title]
        self._levels = [*self._levels[:keep], level]
        self.add("heading", segments)

    def result(self) -> tuple[str, list[Block], list[tuple[int, int]]]:
        text = "".join(self.parts)
        return text, self.blocks, _merge(self.masks + regex_masks(text))


def _join(segments: Iterable[tuple[str, bool]], keep_space: bool
          ) -> tuple[str, list[tuple[int, int]]]:
    """Segments as one string (runs of white space as one space unless ``keep_space``),
    stripped, with the masked segments' spans."""
    out: list[str] = []
    masks: list[tuple[int, int]] = []
    length = 0
    for text, masked in segments:
        if not keep_space:
            text = re.sub(r"\s+", " ", text)
            if out and out[-1].endswith(" ") and text.startswith(" "):
                text = text[1:]
            if not out and text.startswith(" "):
                text = text.lstrip()
        if not text:
            continue
        if masked:
            masks.append((length, length + len(text)))
        out.append(text)
        length += len(text)
    joined = "".join(out)
    if not keep_space:
        stripped = joined.rstrip()
    else:
        stripped = joined.rstrip("\n ")
        lead = len(stripped) - len(stripped.lstrip("\n"))
        if lead:
            stripped = stripped[lead:]
            masks = [(a - lead, b - lead) for a, b in masks]
    end = len(stripped)
    masks = [(max(a, 0), min(b, end)) for a, b in masks if min(b, end) > max(a, 0)]
    return stripped, masks


def regex_masks(text: str) -> list[tuple[int, int]]:
    """URLs, e-mail addresses, paths, file names, option names and reST markup in text."""
    return [(m.start(), m.end()) for m in _MASKED.finditer(text)]


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        elif b > a:
            merged.append((a, b))
    return merged


# ------------------------------------------------------------------------------ markdown
def markdown(source: str) -> tuple[str, list[Block], list[tuple[int, int]]]:
    """Markdown (CommonMark with tables) as blocks; raw HTML blocks are read as HTML."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(source)
    out = _Builder()
    kinds: list[str] = []  # enclosing containers: list item, quote
    row: list[list[tuple[str, bool]]] | None = None
    heading_level = 0
    for token in tokens:
        kind = token.type
        if kind == "heading_open":
            heading_level = int(token.tag[1])
        elif kind == "heading_close":
            heading_level = 0
        elif kind in ("list_item_open", "blockquote_open"):
            kinds.append(kind)
        elif kind in ("list_item_close", "blockquote_close") and kinds:
            kinds.pop()
        elif kind == "tr_open":
            row = []
        elif kind == "tr_close" and row is not None:
            cells: list[tuple[str, bool]] = []
            for i, cell in enumerate(c for c in row if "".join(t for t, _ in c).strip()):
                if i:
                    cells.append((" | ", False))
                cells += cell
            out.add("table_row", cells)
            row = None
        elif kind == "inline":
            segments = _inline(token.children or [])
            if heading_level:
                out.set_heading(heading_level, segments)
            elif row is not None:
                row.append(segments)
            elif kinds and kinds[-1] == "list_item_open":
                out.add("list_item", segments)
            elif kinds:
                out.add("quote", segments)
            else:
                out.add("paragraph", segments)
        elif kind in ("fence", "code_block"):
            out.add("code", [(token.content, True)])
        elif kind == "html_block":
            _add_html(out, _HTMLBlocks.parse(token.content))
    return out.result()


def _inline(children: Sequence[object]) -> list[tuple[str, bool]]:
    """Inline tokens as (text, masked) segments: link text without its target, no images,
    inline code masked."""
    segments: list[tuple[str, bool]] = []
    for child in children:
        kind, content = getattr(child, "type", ""), getattr(child, "content", "")
        if kind == "text":
            segments.append((content, False))
        elif kind == "code_inline":
            segments.append((content, True))
        elif kind == "softbreak":
            segments.append((" ", False))
        elif kind == "hardbreak":
            segments.append(("\n", False))
        elif kind == "html_inline" and re.match(r"<br\b", content, re.I):
            segments.append((" ", False))
    return segments


# ---------------------------------------------------------------------------------- HTML
_BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article",
               "header", "footer", "pre", "blockquote", "title", "dd", "dt", "dl", "hr",
               "h1", "h2", "h3", "h4", "h5", "h6", "nav", "main", "aside", "figure",
               "figcaption", "form", "thead", "tbody", "tfoot", "caption", "address", "center"}
_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "select"}
_CODE_TAGS = {"code", "tt", "kbd", "samp", "var"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_VOID_TAGS = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed",
              "param", "source", "track", "wbr"}


class _HTMLBlocks(HTMLParser):
    """HTML as (kind, segments) blocks; tolerant of unclosed and stray tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[BlockKind, list[tuple[str, bool]], int]] = []
        self.title: list[str] = []
        self.current: list[tuple[str, bool]] = []
        self.cells: list[list[tuple[str, bool]]] | None = None
        self.open: list[str] = []
        self.skip = 0
        self.in_title = False

    @classmethod
    def parse(cls, html: str) -> list[tuple[BlockKind, list[tuple[str, bool]], int]]:
        parser = cls()
        parser.feed(html)
        parser.close()
        parser.flush()
        return parser.blocks

    def _inside(self, *tags: str) -> bool:
        return any(t in self.open for t in tags)

    def flush(self) -> None:
        if self.cells is not None and self.current:
            self.cells.append(self.current)
            self.current = []
            return
        if "".join(t for t, _ in self.current).strip():
            headings = [int(t[1]) for t in self.open if t in _HEADINGS]
            kind: BlockKind = (
                "code" if self._inside("pre") else "heading" if headings else
                "list_item" if self._inside("li", "dt", "dd") else
                "quote" if self._inside("blockquote") else "paragraph")
            self.blocks.append((kind, self.current, headings[-1] if headings else 0))
        self.current = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skip += 1
            return
        if tag == "title":
            self.in_title = True
        if tag in _BLOCK_TAGS or tag in ("td", "th"):
            self.flush()
        if tag == "tr":
            self.cells = []
        if tag not in _VOID_TAGS:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skip = max(self.skip - 1, 0)
            return
        if tag == "title":
            self.in_title = False
        if tag in _BLOCK_TAGS or tag in ("td", "th"):
            self.flush()
        if tag == "tr" and self.cells is not None:
            cells, self.cells = self.cells, None
            row: list[tuple[str, bool]] = []
            for i, cell in enumerate(c for c in cells if "".join(t for t, _ in c).strip()):
                if i:
                    row.append((" | ", False))
                row += cell
            if row:
                self.blocks.append(("table_row", row, 0))
        if tag in self.open:  # close it and anything left open inside it
            while self.open and self.open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.in_title:
            self.title.append(data)
            return
        self.current.append((data, self._inside(*_CODE_TAGS) or self._inside("pre")))


def html(source: str) -> tuple[str, str, list[Block], list[tuple[int, int]]]:
    """HTML as (text, title, blocks, masks); h1-h6 give the heading path."""
    parser = _HTMLBlocks()
    parser.feed(source)
    parser.close()
    parser.flush()
    out = _Builder()
    _add_html(out, parser.blocks)
    text, blocks, masks = out.result()
    return text, " ".join("".join(parser.title).split()), blocks, masks


def _add_html(out: _Builder, blocks: list[tuple[BlockKind, list[tuple[str, bool]], int]]
              ) -> None:
    for kind, segments, level in blocks:
        if kind == "heading":
            out.set_heading(level, segments)
        else:
            out.add(kind, segments)


# ------------------------------------------------------------------------ text and PDF
def plain(source: str) -> tuple[list[Block], list[tuple[int, int]]]:
    """Plain text keeps its characters: blocks are its paragraphs, and a line underlined
    with ===, --- or ~~~ (reStructuredText, setext) is a heading, levels in order of use."""
    blocks: list[Block] = []
    masks = regex_masks(source)
    heading: list[str] = []
    styles: list[str] = []
    for match in re.finditer(r"\S(?:.*\S)?(?:\n[ \t]*\S.*)*", source):
        start, end = match.start(), match.end()
        lines = match.group(0).split("\n")
        if len(lines) >= 2 and _RST_UNDERLINE.match(lines[1].strip()) and len(
                lines[1].strip()) >= len(lines[0].strip()) * 0.6:
            style = lines[1].strip()[0]
            if style not in styles:
                styles.append(style)
            level = styles.index(style) + 1
            title = lines[0].strip()
            heading = [*heading[:level - 1], title]
            underline_start = start + len(lines[0]) + 1
            masks.append((underline_start, underline_start + len(lines[1])))
            blocks.append(Block(kind="heading", start=start, end=start + len(lines[0]),
                                heading=list(heading)))
            rest = start + len(lines[0]) + 1 + len(lines[1])
            if len(lines) > 2:
                blocks.append(Block(kind="paragraph", start=rest + 1, end=end,
                                    heading=list(heading)))
            continue
        kind: BlockKind = "list_item" if re.match(r"[*+-] |\d+[.)] ", lines[0]) else "paragraph"
        blocks.append(Block(kind=kind, start=start, end=end, heading=list(heading)))
    return blocks, _merge(masks)


def pages(texts: list[str]) -> tuple[str, list[Block], list[tuple[int, int]]]:
    """PDF pages (1-based numbers kept, empty pages skipped) as one block each."""
    out = _Builder()
    for number, text in enumerate(texts, 1):
        if text.strip():
            out.page = number
            out.add("page", [(text.strip(), False)])
    return out.result()
