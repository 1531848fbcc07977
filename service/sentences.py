"""Sentences of a chunk: pysbd's rule-based splitter, on blocks that keep headings and list items
of extracted documentation apart (a heading line "DESCRIPTION" is not the start of a sentence)."""

import re
import threading

import pysbd

_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_local = threading.local()  # a Segmenter keeps state while it segments: one per thread


def _segmenter() -> pysbd.Segmenter:
    if not hasattr(_local, "segmenter"):
        _local.segmenter = pysbd.Segmenter(language="en", clean=False)
    return _local.segmenter


def _is_heading(line: str) -> bool:
    letters = [c for c in line if c.isalpha()]
    return bool(letters) and all(c.isupper() for c in letters) and len(line.split()) <= 4


def blocks(text: str) -> list[str]:
    """Runs of wrapped lines joined with spaces; a heading, a list item, or a blank line ends a run."""
    out: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        starts_new = not stripped or _is_heading(stripped) or _ITEM.match(line) is not None
        if starts_new and current:
            out.append(current)
            current = []
        if stripped:
            current.append(_ITEM.sub("", stripped))
        if stripped and _is_heading(stripped):
            out.append(current)
            current = []
    if current:
        out.append(current)
    return [" ".join(b) for b in out if b]


def sentences(text: str) -> list[str]:
    """The sentences of `text`, whitespace collapsed, in order."""
    found = []
    for block in blocks(text):
        for sentence in _segmenter().segment(block):
            sentence = " ".join(sentence.split())
            if sentence:
                found.append(sentence)
    return found


def supporting_sentence(text: str, answer: str, max_words: int = 30) -> str:
    """The first sentence of `text` that holds `answer` (case and whitespace aside), cut to a window
    of about `max_words` words around the answer when longer; the answer itself when no one
    sentence holds it."""
    wanted = " ".join(answer.split())
    for sentence in sentences(text):
        at = sentence.lower().find(wanted.lower())
        if at < 0:
            continue
        words = sentence.split()
        if len(words) <= max_words:
            return sentence
        before, length = len(sentence[:at].split()), len(wanted.split())
        side = max(0, (max_words - length) // 2)
        return " ".join(words[max(0, before - side):before + length + side])
    return wanted
