"""Readers: text, Markdown, code, HTML (visible text) and PDF, each to blocks with positions.

Text files are decoded as UTF-8, else with the encoding charset-normalizer detects; a
file that looks binary, or whose encoding cannot be told, is refused with
:class:`UnreadableDocumentError` (the sync reports it by path and goes on).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from oblix.plugin import DocumentReader, TextBlock, UnreadableDocumentError

#: Single-byte encodings preferred when the detector finds them plausible.
WESTERN = ("cp1252", "latin_1", "iso8859_15")


def decode(path: Path, data: bytes) -> str:
    """The text of a file: UTF-8 (with or without BOM), else its detected encoding."""
    if b"\0" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UnreadableDocumentError(f"{path.name}: a binary file, not text.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None or best.encoding is None:
        raise UnreadableDocumentError(f"{path.name}: not UTF-8 and its encoding cannot be detected.")
    # a short text fits several single-byte encodings; Windows-1252 (Latin-1's superset) is the
    # most common of them, so it wins whenever it fits
    western = next((m for m in matches if m.encoding in WESTERN), None)
    return str(western or best)


def paragraphs(text: str, first_line: int = 1, headings: tuple[str, ...] = ()) -> Iterator[TextBlock]:
    """Blank-line separated paragraphs of ``text`` with their first line."""
    buf: list[str] = []
    start = first_line
    for n, line in enumerate(text.split("\n"), start=first_line):
        if line.strip():
            if not buf:
                start = n
            buf.append(line.rstrip())
        elif buf:
            yield TextBlock("\n".join(buf), start, None, headings)
            buf = []
    if buf:
        yield TextBlock("\n".join(buf), start, None, headings)


class TextReader(DocumentReader):
    """Plain text: paragraphs."""

    name = "text"
    suffixes = (
        ".txt",
        ".text",
        ".rst",
        ".log",
        ".csv",
        ".tsv",
        ".json",
        ".yaml",
        ".yml",
        ".toml",
        ".ini",
        ".cfg",
    )

    def read(self, path: Path, data: bytes) -> list[TextBlock]:
        return list(paragraphs(decode(path, data)))


_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


class MarkdownReader(DocumentReader):
    """Markdown: sections under their heading path, paragraphs; fenced code kept whole."""

    name = "markdown"
    suffixes = (".md", ".markdown", ".mdx")

    def read(self, path: Path, data: bytes) -> list[TextBlock]:
        lines = decode(path, data).split("\n")
        blocks: list[TextBlock] = []
        path_: list[tuple[int, str]] = []
        buf: list[str] = []
        start, fenced = 1, False

        def flush() -> None:
            if any(x.strip() for x in buf):
                heads = tuple(t for _, t in path_)
                blocks.extend(
                    paragraphs("\n".join(buf), start, heads)
                    if not fenced
                    else [TextBlock("\n".join(buf), start, None, heads, "code")]
                )
            buf.clear()

        for n, line in enumerate(lines, start=1):
            if _FENCE.match(line):
                if not fenced:
                    flush()
                    start, fenced = n, True
                    buf.append(line)
                else:
                    buf.append(line)
                    flush()
                    fenced, start = False, n + 1
                continue
            heading = None if fenced else _HEADING.match(line)
            if heading:
                flush()
                level = len(heading.group(1))
                path_ = [(lv, t) for lv, t in path_ if lv < level] + [(level, heading.group(2))]
                start = n + 1
                continue
            if not buf:
                start = n
            buf.append(line)
        flush()
        return blocks


_DEFINITION = re.compile(
    r"^(\s*)(?:async\s+def|def|class|function|func|fn|pub\s+fn|impl|interface|type|struct|enum|"
    r"public|private|protected|export\s+(?:default\s+)?(?:function|class|const)|module|package)\b"
)


class CodeReader(DocumentReader):
    """Source code: split before each top-level definition (def, class, function, fn...)."""

    name = "code"
    suffixes = (
        ".py",
        ".pyi",
        ".js",
        ".jsx",
        ".ts",
        ".tsx",
        ".go",
        ".rs",
        ".java",
        ".kt",
        ".c",
        ".h",
        ".cc",
        ".cpp",
        ".hpp",
        ".cs",
        ".rb",
        ".php",
        ".swift",
        ".scala",
        ".sh",
        ".sql",
        ".lua",
        ".r",
        ".m",
    )

    def read(self, path: Path, data: bytes) -> list[TextBlock]:
        lines = decode(path, data).split("\n")
        blocks: list[TextBlock] = []
        buf: list[str] = []
        start, current = 1, ""
        for n, line in enumerate(lines, start=1):
            match = _DEFINITION.match(line)
            if match and not match.group(1) and buf:
                if any(x.strip() for x in buf):
                    blocks.append(
                        TextBlock(
                            "\n".join(buf).rstrip(),
                            start,
                            None,
                            (path.name, current) if current else (path.name,),
                            "code",
                        )
                    )
                buf, start = [], n
            if match and not match.group(1):
                current = line.strip().split("(")[0].split("{")[0].split(":")[0][:80]
            buf.append(line)
        if any(x.strip() for x in buf):
            blocks.append(
                TextBlock(
                    "\n".join(buf).rstrip(),
                    start,
                    None,
                    (path.name, current) if current else (path.name,),
                    "code",
                )
            )
        return blocks


class _VisibleText(HTMLParser):
    """Collects the text a browser shows, with headings, skipping scripts, styles and the head."""

    HIDDEN = frozenset({"script", "style", "head", "noscript", "template", "svg"})
    #: What a <head> holds; any other tag ends it (HTML lets </head> and <body> be left out).
    HEAD_ONLY = frozenset({"title", "meta", "link", "base", "style", "script", "noscript", "template"})
    BLOCK = frozenset({"p", "div", "li", "br", "tr", "section", "article", "pre", "blockquote", "td", "th"})
    #: Elements whose end tag may be left out (or that have none): a ``hidden`` on them is not
    #: followed, since where they end cannot be told without a full HTML tree.
    OPEN_ENDED = frozenset(
        {"p", "li", "dt", "dd", "option", "tr", "td", "th", "br", "img", "input", "hr", "meta", "link"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[TextBlock] = []
        self._hidden = 0
        self._buf: list[str] = []
        self._heading: int | None = None
        self._heads: list[tuple[int, str]] = []
        self._line = 1
        self._in_head = False
        #: The element hidden by its attributes (``hidden``, ``aria-hidden``, ``display:none``)
        #: that the parser is inside, and how deep in elements of its name.
        self._cloaked: list[str | int] = []

    @staticmethod
    def _cloaks(attrs: list[tuple[str, str | None]]) -> bool:
        found = {k.lower(): (v or "").lower() for k, v in attrs}
        style = found.get("style", "").replace(" ", "")
        return (
            "hidden" in found
            or found.get("aria-hidden") == "true"
            or "display:none" in style
            or "visibility:hidden" in style
        )

    def _track_cloak(self, tag: str, attrs: list[tuple[str, str | None]] | None) -> None:
        """Follow elements hidden by their attributes (``attrs`` None: an end tag)."""
        if self._cloaked and self._cloaked[0] == tag:
            depth = int(self._cloaked[1]) + (1 if attrs is not None else -1)
            self._cloaked = [tag, depth] if depth else []
        elif attrs is not None and not self._cloaked and tag not in self.OPEN_ENDED and self._cloaks(attrs):
            self._cloaked = [tag, 1]

    def _flush(self) -> None:
        text = re.sub(r"[ \t]+", " ", "".join(self._buf)).strip()
        self._buf = []
        if not text:
            return
        if self._heading is not None:
            self._heads = [h for h in self._heads if h[0] < self._heading] + [(self._heading, text)]
            return
        self.blocks.append(TextBlock(text, self._line, None, tuple(t for _, t in self._heads)))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._track_cloak(tag, attrs)
        if self._in_head and tag not in self.HEAD_ONLY:  # the body began without </head>
            self._in_head = False
            self._hidden = max(0, self._hidden - 1)
        if tag == "head":
            self._in_head = True
        if tag in self.HIDDEN:
            self._hidden += 1
        elif re.fullmatch(r"h[1-6]", tag) or tag in self.BLOCK:
            self._flush()
            self._line = self.getpos()[0]
            if tag.startswith("h") and len(tag) == 2:
                self._heading = int(tag[1])

    def handle_endtag(self, tag: str) -> None:
        self._track_cloak(tag, None)
        if tag == "head" and not self._in_head:
            return  # the head was already ended by a body tag
        self._in_head = self._in_head and tag != "head"
        if tag in self.HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self.BLOCK:
            self._flush()
            self._heading = None

    def handle_data(self, data: str) -> None:
        if not self._hidden and not self._cloaked:
            if not self._buf:
                self._line = self.getpos()[0]
            self._buf.append(data)


class HtmlReader(DocumentReader):
    """HTML: the visible text in blocks under their heading path (no scripts, styles or markup)."""

    name = "html"
    suffixes = (".html", ".htm", ".xhtml")

    def read(self, path: Path, data: bytes) -> list[TextBlock]:
        parser = _VisibleText()
        parser.feed(decode(path, data))
        parser.close()
        parser._flush()
        return parser.blocks


class PdfReader(DocumentReader):
    """PDF (pypdf): each page's text, in paragraphs, with its page number."""

    name = "pdf"
    suffixes = (".pdf",)

    def read(self, path: Path, data: bytes) -> list[TextBlock]:
        from pypdf import PdfReader as Pdf
        from pypdf.errors import PdfReadError

        try:
            pdf = Pdf(io.BytesIO(data))
            if pdf.is_encrypted:
                raise UnreadableDocumentError(f"{path.name}: an encrypted PDF; decrypt it first.")
            blocks: list[TextBlock] = []
            for number, page in enumerate(pdf.pages, start=1):
                text = page.extract_text() or ""
                blocks.extend(TextBlock(b.text, b.line, number, b.headings) for b in paragraphs(text))
        except UnreadableDocumentError:
            raise
        except (PdfReadError, ValueError, KeyError, TypeError) as exc:
            raise UnreadableDocumentError(f"{path.name}: not a readable PDF ({exc}).") from exc
        except Exception as exc:  # pypdf on a malformed file raises what it meets (loops, None...)
            raise UnreadableDocumentError(
                f"{path.name}: not a readable PDF ({type(exc).__name__}: {exc})."
            ) from exc
        return blocks


READERS: dict[str, type[DocumentReader]] = {
    "text": TextReader,
    "markdown": MarkdownReader,
    "code": CodeReader,
    "html": HtmlReader,
    "pdf": PdfReader,
}
