"""Text extraction from uploaded files: txt, md, html, pdf and jsonl."""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trafilatura
from lxml import etree
from lxml import html as lxml_html

from adapters_store import strict_json
from indexer.headers import Heading, locate_headings, markdown_headings

KINDS = ("txt", "md", "html", "pdf", "jsonl")

EXTENSIONS = {
    ".txt": "txt", ".text": "txt",
    ".md": "md", ".markdown": "md",
    ".html": "html", ".htm": "html",
    ".pdf": "pdf",
    ".jsonl": "jsonl",
}
_CONTENT_TYPES = {
    "text/plain": "txt",
    "text/markdown": "md", "text/x-markdown": "md",
    "text/html": "html", "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/jsonl": "jsonl", "application/x-ndjson": "jsonl",
    "application/x-jsonlines": "jsonl", "application/jsonlines": "jsonl",
}
_PDF_WORKER = Path(__file__).with_name("_pdf_worker.py")
PDF_MEMORY_LIMIT = 2 * 1024**3


class ExtractionError(Exception):
    """The file cannot be turned into text; the message says why (shown to the uploader)."""


@dataclass
class ExtractedDocument:
    id: str | None
    text: str
    metadata: dict = field(default_factory=dict)
    title: str | None = None  # HTML <title> or first h1, markdown's first # heading
    headings: list[Heading] = field(default_factory=list)  # positions in `text`, for chunk headers


def detect_kind(filename: str, content_type: str | None) -> str | None:
    """The extraction kind from the file extension, else from the content type; None if unsupported."""
    kind = EXTENSIONS.get(Path(filename or "").suffix.lower())
    if kind is None and content_type:
        kind = _CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
    return kind


def extract(kind: str, data: bytes, *, max_pdf_pages: int = 2000, timeout_s: float = 60.0,
            max_jsonl_records: int = 100_000) -> list[ExtractedDocument]:
    """Documents in the file. Single-document kinds give one document with id None."""
    if not data:
        raise ExtractionError("file is empty")
    if kind == "txt":
        docs = [ExtractedDocument(None, decode_text(data), {})]
    elif kind == "md":
        docs = [extract_markdown(data)]
    elif kind == "html":
        docs = [extract_html(data)]
    elif kind == "pdf":
        docs = [extract_pdf(data, max_pages=max_pdf_pages, timeout_s=timeout_s)]
    elif kind == "jsonl":
        docs = extract_jsonl(data, max_records=max_jsonl_records)
    else:
        raise ExtractionError(f"unsupported document kind {kind!r} (expected one of {', '.join(KINDS)})")
    if not docs or any(not doc.text.strip() for doc in docs):
        raise ExtractionError("no text found in the file")
    return docs


def decode_text(data: bytes) -> str:
    # A NUL byte is valid UTF-8 but a sure sign of a binary file.
    if b"\x00" in data:
        raise ExtractionError("not valid UTF-8 text (binary content)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExtractionError(f"not valid UTF-8 text (invalid byte at offset {exc.start})") from None


def extract_markdown(data: bytes) -> ExtractedDocument:
    text = decode_text(data)
    headings = markdown_headings(text)
    title = next((h.text for h in headings if h.level == 1), None)
    return ExtractedDocument(None, text, {}, title=title, headings=headings)


def extract_html(data: bytes) -> ExtractedDocument:
    # Main text first; docs pages with little prose (lists, tables) may come out empty, so
    # retry in recall mode, and last take all the visible text.
    text = (trafilatura.extract(data, include_comments=False)
            or trafilatura.extract(data, include_comments=False, favor_recall=True)
            or trafilatura.html2txt(data))
    if not text or not text.strip():
        raise ExtractionError("HTML has no extractable text")
    metadata = {}
    tree = _parse_html(data)
    title = html_title(data, tree)
    if title:
        metadata["title"] = title
    headings = _html_headings(tree)
    first_h1 = next((heading for level, heading in headings if level == 1), None)
    return ExtractedDocument(None, text, metadata, title=title or first_h1,
                             headings=locate_headings(text, headings))


def html_title(data: bytes, tree=None) -> str | None:
    tree = tree if tree is not None else _parse_html(data)
    title = tree.findtext(".//title") if tree is not None else None
    return " ".join(title.split()) if title else None


def _parse_html(data: bytes):
    try:
        return lxml_html.document_fromstring(data)
    except (etree.ParserError, ValueError):
        return None


def _html_headings(tree) -> list[tuple[int, str]]:
    """The page's h1-h6 (level, text) in document order; trafilatura's text keeps each one it
    keeps as a line of its own, where `locate_headings` finds it."""
    if tree is None:
        return []
    found = []
    for element in tree.iter("h1", "h2", "h3", "h4", "h5", "h6"):
        text = " ".join(element.text_content().split())
        if text:
            found.append((int(element.tag[1]), text))
    return found


def extract_pdf(data: bytes, *, max_pages: int, timeout_s: float) -> ExtractedDocument:
    """pypdf text of every page, parsed in a child process limited in time and memory."""
    try:
        proc = subprocess.run([sys.executable, str(_PDF_WORKER), str(max_pages), str(PDF_MEMORY_LIMIT)],
                              input=data, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ExtractionError(f"PDF extraction timed out after {timeout_s:g}s") from None
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        # No JSON: the worker died (a signal, or an error outside its handlers).
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise ExtractionError(f"PDF extraction failed ({last[0][:200]})") from None
    if "error" in result:
        raise ExtractionError(result["error"])
    pages = result["pages"]
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise ExtractionError("PDF has no extractable text")
    metadata = {"pages": len(pages)}
    if result.get("title"):
        metadata["title"] = result["title"]
    return ExtractedDocument(None, text, metadata)


def extract_jsonl(data: bytes, *, max_records: int) -> list[ExtractedDocument]:
    """One JSON object per line: {"id"?: str, "text": str, "metadata"?: object}."""
    docs: list[ExtractedDocument] = []
    seen: set[str] = set()
    for number, line in enumerate(decode_text(data).splitlines(), start=1):
        if not line.strip():
            continue
        if len(docs) >= max_records:
            raise ExtractionError(f"more than {max_records} records")
        doc = parse_record(line, number)
        if doc.id is not None:
            if doc.id in seen:
                raise ExtractionError(f"line {number}: duplicate id {doc.id!r}")
            seen.add(doc.id)
        docs.append(doc)
    if not docs:
        raise ExtractionError("no records in the JSONL file")
    return docs


def parse_record(line: str, number: int) -> ExtractedDocument:
    try:
        record = strict_json.loads(line)
    except ValueError as exc:
        raise ExtractionError(f"line {number}: invalid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise ExtractionError(f"line {number}: expected a JSON object")
    text, doc_id, metadata = record.get("text"), record.get("id"), record.get("metadata", {})
    if not isinstance(text, str) or not text.strip():
        raise ExtractionError(f"line {number}: \"text\" must be a non-empty string")
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if doc_id is not None and (not isinstance(doc_id, str) or not doc_id):
        raise ExtractionError(f"line {number}: \"id\" must be a non-empty string")
    if not isinstance(metadata, dict):
        raise ExtractionError(f"line {number}: \"metadata\" must be a JSON object")
    return ExtractedDocument(doc_id, text, metadata)
