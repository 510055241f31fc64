"""Chunking on structure: a reader's blocks packed into chunks of at most a token budget.

Blocks (headings, paragraphs, code definitions, pages) are kept whole when they fit and
packed together while they share their heading path; a block larger than the budget is
split on lines, then sentences, then words, then at any token (a text without spaces: Chinese
or Japanese, where each character counts as a token, or a long unbroken string, counted in
pieces of :data:`LONG_WORD` characters). Each chunk starts with the last sentences of
the one before it (about ``overlap`` tokens) when they continue the same section, so a
fact cut at a border is still whole in one chunk. Every chunk keeps its first and last
line, its page and its heading path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

import attrs

from oblix_core.documents.records import Chunk, TextBlock

#: Defaults sized for small embedding models (all-MiniLM reads 256 word pieces).
DEFAULT_BUDGET = 180
DEFAULT_OVERLAP = 30
#: A run of letters longer than this counts as several tokens (a URL, a hash, base64).
LONG_WORD = 20
#: Scripts written without spaces between words (kana, CJK ideographs): a token a character.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]{{1,{LONG_WORD}}}|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|(?<=[\u3002\uff01\uff1f\uff1b])")  # CJK full stops


def _tokens(text: str) -> list[str]:
    """``text`` cut before each token (the cuts, joined, give ``text`` back)."""
    starts = [m.start() for m in _WORD.finditer(text)]
    if not starts:
        return [text]
    starts[0] = 0
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


#: How a block too large for the budget is cut, in turn, and how its parts are joined again.
_SPLITTERS = (
    (lambda t: t.split("\n"), "\n"),
    (_SENTENCE_END.split, " "),
    (str.split, " "),
    (_tokens, ""),
)


def count_tokens(text: str) -> int:
    """An estimate of a text's tokens for a word-piece model: words and punctuation, plus a third."""
    return _estimate(len(_WORD.findall(text)))


def _estimate(words: int) -> int:
    return words + words // 3


@attrs.frozen
class _Piece:
    text: str
    line: int
    line_end: int
    page: int | None
    headings: tuple[str, ...]
    #: Words and punctuation (additive, unlike the token estimate).
    words: int


def _split_text(text: str, budget: int) -> Iterator[str]:
    """``text`` in parts of at most ``budget`` tokens: on lines, then sentences, then words,
    then tokens."""
    parts, joiner = [text], ""
    for splitter, separator in _SPLITTERS:
        found = [p for p in splitter(text) if p.strip()]
        if len(found) > 1:
            parts, joiner = found, separator
            break
    buf: list[str] = []
    size = 0
    for part in parts:
        words = len(_WORD.findall(part))
        if _estimate(words) > budget and len(parts) > 1:
            if buf:
                yield joiner.join(buf)
                buf, size = [], 0
            yield from _split_text(part, budget)
            continue
        if buf and _estimate(size + words) > budget:
            yield joiner.join(buf)
            buf, size = [], 0
        buf.append(part)
        size += words
    if buf:
        yield joiner.join(buf)


def _pieces(blocks: Iterable[TextBlock], budget: int) -> Iterator[_Piece]:
    for block in blocks:
        text = block.text.strip("\n")
        if not text.strip():
            continue
        line = block.line
        for part in _split_text(text, budget) if count_tokens(text) > budget else [text]:
            start = line + text[: text.find(part)].count("\n") if part in text else line
            yield _Piece(
                part, start, start + part.count("\n"), block.page, block.headings, len(_WORD.findall(part))
            )


def _tail(text: str, overlap: int) -> str:
    """The last sentences of ``text`` within ``overlap`` tokens (the words if no sentence fits)."""
    if overlap <= 0:
        return ""
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    kept: list[str] = []
    for sentence in reversed(sentences):
        if count_tokens(" ".join([sentence, *kept])) > overlap:
            break
        kept.insert(0, sentence)
    if kept:
        return " ".join(kept)
    return "".join(_tokens(text)[-max(1, overlap * 3 // 4) :]).strip()


def chunk_blocks(
    doc_id: str, blocks: Sequence[TextBlock], budget: int = DEFAULT_BUDGET, overlap: int = DEFAULT_OVERLAP
) -> list[Chunk]:
    """The chunks of one document, in order, numbered from 0."""
    chunks: list[Chunk] = []
    group: list[_Piece] = []

    def flush(carry: bool) -> str:
        if not group:
            return ""
        text = "\n\n".join(p.text for p in group)
        first, last = group[0], group[-1]
        chunks.append(Chunk(doc_id, len(chunks), text, first.line, last.line_end, first.page, first.headings))
        return _tail(last.text, overlap) if carry else ""

    size = 0  # words in the group
    for piece in _pieces(blocks, budget):
        same_section = bool(group) and group[-1].headings == piece.headings and group[-1].page == piece.page
        if group and (not same_section or _estimate(size + piece.words) > budget):
            carry = flush(same_section)
            group.clear()
            size = 0
            carried = len(_WORD.findall(carry))
            if carry and _estimate(carried + piece.words) <= budget:
                group.append(attrs.evolve(piece, text=carry, words=carried, line_end=piece.line))
                size = carried
        group.append(piece)
        size += piece.words
    flush(False)
    return chunks
