"""Contextual chunk headers: a document's title and the section path above a chunk, e.g.
"git-bisect(1) > DESCRIPTION > Basic bisect commands: start, bad, good".

A header is embedded and BM25-indexed with its chunk (`indexed_text`), never shown: hits and
citations carry the chunk's own text. Sections come from heading positions in the extracted text:
markdown headings are found in it; an HTML page's h1-h6 are located in it as whole lines.
"""

import bisect
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import PurePosixPath

SEPARATOR = " > "
MAX_PART = 120  # characters kept of a title or a heading

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# Lines a setext underline cannot turn into a heading: blank, indented code, lists, quotes, tables.
_NOT_SETEXT_TEXT = re.compile(r"^(?:\s*$| {4}|\t| {0,3}(?:[-*+>|]|\d+[.)])(?:\s|$))")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MARKUP = re.compile(r"\*\*|__|`")


@dataclass(frozen=True)
class Heading:
    start: int  # offset of the heading's line in the document text
    level: int  # 1 to 6
    text: str


def clean(text: str) -> str:
    """A heading or title as a header shows it: inline markup dropped, one line, bounded."""
    text = " ".join(_MARKUP.sub("", _LINK.sub(r"\1", text)).split())
    return text if len(text) <= MAX_PART else text[:MAX_PART - 1].rstrip() + "…"


def markdown_headings(text: str) -> list[Heading]:
    """ATX (`## x`) and setext (x / ---) headings, outside fenced code and front matter."""
    headings: list[Heading] = []
    lines = text.splitlines(keepends=True)
    offset, index = 0, 0
    if lines and lines[0].rstrip() == "---":  # YAML front matter: skip to its closing line
        for end in range(1, len(lines)):
            if lines[end].rstrip() in ("---", "..."):
                offset, index = sum(len(line) for line in lines[:end + 1]), end + 1
                break
    fence, previous = None, None  # previous: (start, text) of a line a setext underline may follow
    for line in lines[index:]:
        start, offset = offset, offset + len(line)
        line = line.rstrip("\r\n")
        opener = _FENCE.match(line)
        if fence is not None:
            if opener and opener.group(1)[0] == fence[0] and len(opener.group(1)) >= len(fence):
                fence = None
            continue
        if opener:
            fence, previous = opener.group(1), None
            continue
        atx = _ATX.match(line)
        if atx and clean(atx.group(2)):
            headings.append(Heading(start, len(atx.group(1)), clean(atx.group(2))))
            previous = None
            continue
        underline = _SETEXT.match(line)
        if underline and previous is not None and clean(previous[1]):
            headings.append(Heading(previous[0], 1 if underline.group(1)[0] == "=" else 2, clean(previous[1])))
            previous = None
            continue
        previous = None if _NOT_SETEXT_TEXT.match(line) else (start, line)
    return headings


def locate_headings(text: str, wanted: list[tuple[int, str]]) -> list[Heading]:
    """Find headings (level, text), in document order, as whole lines of `text` (whitespace and
    case aside), each after the previous one found; a heading the text lacks is skipped."""
    starts: list[int] = []
    where: dict[str, list[int]] = defaultdict(list)  # line key -> line numbers, ascending
    offset = 0
    for number, line in enumerate(text.splitlines(keepends=True)):
        starts.append(offset)
        offset += len(line)
        where[" ".join(line.split()).casefold()].append(number)
    found, cursor = [], 0
    for level, title in wanted:
        key = " ".join(title.split()).casefold()
        numbers = where.get(key) if key else None
        if not numbers:
            continue
        at = bisect.bisect_left(numbers, cursor)
        if at < len(numbers) and clean(title):
            found.append(Heading(starts[numbers[at]], level, clean(title)))
            cursor = numbers[at] + 1
    return found


def document_title(metadata: dict, extracted: str | None, external_id: str, sha256: str,
                   suffixes=()) -> str | None:
    """metadata "title", else what extraction found (HTML <title> or h1, markdown's first # heading),
    else the file name or document id without a document suffix; None for a content-hash id."""
    given = metadata.get("title")
    if isinstance(given, str) and clean(given):
        return clean(given)
    if extracted and clean(extracted):
        return clean(extracted)
    if not external_id or external_id == sha256:
        return None
    name = external_id
    if PurePosixPath(name).suffix.lower() in suffixes:
        name = name[:-len(PurePosixPath(name).suffix)]
    return clean(name) or None


def chunk_headers(title: str | None, headings: list[Heading], starts: list[int]) -> list[str | None]:
    """The header of a chunk starting at each offset: the title, then the headings it is under."""
    paths: list[list[str]] = []  # the section path just after each heading
    stack: list[Heading] = []
    for heading in headings:
        while stack and stack[-1].level >= heading.level:
            stack.pop()
        stack.append(heading)
        paths.append([h.text for h in stack])
    positions = [h.start for h in headings]
    headers = []
    for start in starts:
        at = bisect.bisect_right(positions, start) - 1
        path = list(paths[at]) if at >= 0 else []
        if title and path and path[0].casefold() == title.casefold():
            path = path[1:]
        parts = ([title] if title else []) + path
        headers.append(SEPARATOR.join(parts) if parts else None)
    return headers


def indexed_text(text: str, header: str | None) -> str:
    """What is embedded and BM25-indexed for a chunk."""
    return f"{header}\n\n{text}" if header else text
