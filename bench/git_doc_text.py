"""Text for bench/ingest.py: Debian's git-doc pages (installed by .ci/run), chosen and chunked with
graft's own extraction and chunker, and held-out sentences from other pages as queries."""

import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

GIT_DOC = Path("/usr/share/doc/git-doc")
SEED = 11


@dataclass
class Page:
    name: str
    kind: str  # "txt" (JSON arm) or "html" (multipart arm)
    data: bytes
    chunks: list[str] = field(default_factory=list)


def page_stems() -> list[str]:
    if not GIT_DOC.is_dir():
        sys.exit(f"{GIT_DOC} is missing: install Debian's git-doc package (apt-get install git-doc)")
    stems = sorted({p.stem for p in GIT_DOC.glob("*.txt")} | {p.stem for p in GIT_DOC.glob("*.html")})
    random.Random(SEED).shuffle(stems)
    return stems


def select_pages(stems: list[str], kind: str, target_chunks: int, max_page_chunks: int, embedder, settings,
                 used: set[str]) -> tuple[list[Page], float]:
    """Pages of `kind` (names not in `used`) until they make `target_chunks` chunks, extracted and
    chunked exactly as graft's ingestion worker does; also the seconds that took here. Pages of
    more than `max_page_chunks` chunks are passed over, so that rounds can be balanced."""
    from indexer.chunking import Chunker
    from indexer.extract import ExtractionError, extract

    chunker = Chunker(embedder.tokenizer, settings.default_chunk_size,
                      min(settings.default_chunk_overlap, settings.default_chunk_size // 4))
    pages, total, started = [], 0, time.perf_counter()
    for stem in stems:
        path = GIT_DOC / f"{stem}.{kind}"
        if total >= target_chunks:
            break
        if stem in used or not path.is_file():
            continue
        data = path.read_bytes()
        try:
            (doc,) = extract(kind, data, max_pdf_pages=settings.max_pdf_pages, timeout_s=settings.extract_timeout_s)
        except ExtractionError:
            continue
        chunks = [c.text for c in chunker.split(doc.text, kind) if c.text.strip()]
        if not chunks or len(chunks) > max_page_chunks:
            continue
        used.add(stem)
        pages.append(Page(path.name, kind, data, chunks))
        total += len(chunks)
    return pages, time.perf_counter() - started


def split_rounds(pages: list[Page], rounds: int) -> list[list[Page]]:
    """Consecutive groups of pages with about the same number of chunks each."""
    total = sum(len(p.chunks) for p in pages)
    groups, current, seen = [], [], 0
    for page in pages:
        current.append(page)
        seen += len(page.chunks)
        if seen >= total * (len(groups) + 1) / rounds and len(groups) < rounds - 1:
            groups.append(current)
            current = []
    groups.append(current)
    return [g for g in groups if g]


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def query_sentences(stems: list[str], used: set[str], n: int) -> list[str]:
    """Plain-prose sentences (6..30 words) of the .txt pages not ingested, as search queries."""
    out: list[str] = []
    for stem in stems:
        path = GIT_DOC / f"{stem}.txt"
        if stem in used or not path.is_file():
            continue
        for piece in _SENTENCE.split(path.read_text(errors="replace")):
            sentence = " ".join(piece.split())
            words = sentence.split()
            if 6 <= len(words) <= 30 and sentence[0].isalpha() and sum(w.isalpha() for w in words) >= 0.7 * len(words):
                out.append(sentence)
    random.Random(SEED).shuffle(out)
    return out[:n]
