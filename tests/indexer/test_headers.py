"""Contextual chunk headers: titles and section paths of markdown and HTML documents."""

from indexer.chunking import Chunker
from indexer.extract import EXTENSIONS, extract
from indexer.headers import Heading, chunk_headers, document_title, indexed_text, locate_headings, markdown_headings

MARKDOWN = """---
title: front matter is not a heading
---
# Zorblax Institute

Founded long ago.

## History
### The founding years

Elira Vantress opened the doors in 1847.

```sh
# not a heading: a shell comment in a fenced block
```

Later decades
-------------

- a list item
---

## Governance ##

The board meets twice a year.
"""


def _path_at(document, marker: str) -> str | None:
    title = document_title(document.metadata, document.title, "notes.md", "sha", tuple(EXTENSIONS))
    return chunk_headers(title, document.headings, [document.text.index(marker)])[0]


def test_markdown_headings_skip_code_front_matter_and_lists():
    doc = extract("md", MARKDOWN.encode())[0]
    assert [(h.level, h.text) for h in doc.headings] == [
        (1, "Zorblax Institute"), (2, "History"), (3, "The founding years"), (2, "Later decades"),
        (2, "Governance")]
    for heading in doc.headings:  # offsets point at the heading's line
        assert doc.text[heading.start:].lstrip("# ").startswith(heading.text)
    assert doc.title == "Zorblax Institute"
    assert _path_at(doc, "Founded long") == "Zorblax Institute"  # the h1 is the title, not repeated
    assert _path_at(doc, "Elira Vantress") == "Zorblax Institute > History > The founding years"
    assert _path_at(doc, "a shell comment") == "Zorblax Institute > History > The founding years"
    assert _path_at(doc, "a list item") == "Zorblax Institute > Later decades"  # a setext h2
    assert _path_at(doc, "The board") == "Zorblax Institute > Governance"


HTML = b"""<html><head><title>Install guide - Thing</title></head><body>
<nav><h2>Site menu</h2><a href="/">Home</a></nav>
<main><h1>Installing Thing</h1>
<p>This page explains how to install Thing on the machines we support, step by step.</p>
<h2>Linux</h2><p>On Linux you run the installer script from a terminal window with sudo rights.</p>
<h3>Debian <code>apt</code></h3><p>Use apt-get install thing to get the package on Debian machines.</p>
<h2>Windows</h2><p>On Windows double click the installer and follow the wizard to the end.</p>
</main><footer>Copyright 2026</footer></body></html>"""


def test_html_section_paths_from_the_headings_the_text_keeps():
    doc = extract("html", HTML)[0]
    assert doc.title == "Install guide - Thing" and doc.metadata["title"] == "Install guide - Thing"
    assert "Site menu" not in doc.text  # navigation dropped by extraction, so not a section either
    assert [h.text for h in doc.headings] == ["Installing Thing", "Linux", "Debian apt", "Windows"]
    assert _path_at(doc, "Use apt-get") == "Install guide - Thing > Installing Thing > Linux > Debian apt"
    assert _path_at(doc, "On Windows") == "Install guide - Thing > Installing Thing > Windows"
    untitled = extract("html", HTML.replace(b"<title>Install guide - Thing</title>", b""))[0]
    assert untitled.title == "Installing Thing"  # the first h1, not repeated in the path
    assert chunk_headers(untitled.title, untitled.headings, [untitled.text.index("On Linux")]) == [
        "Installing Thing > Linux"]


def test_locate_headings_in_order_and_skips_missing_ones():
    text = "Intro\nSetup\nbody\nUsage\nmore\nSetup\nend"
    found = locate_headings(text, [(2, "Missing"), (2, "Usage"), (2, "setup"), (2, "Usage")])
    assert found == [Heading(text.index("Usage"), 2, "Usage"), Heading(text.rindex("Setup"), 2, "setup")]


def test_titles_and_headers():
    assert document_title({"title": "Given"}, "Found", "a.md", "s", (".md",)) == "Given"
    assert document_title({}, "Found", "a.md", "s", (".md",)) == "Found"
    assert document_title({}, None, "notes.md", "s", (".md",)) == "notes"
    assert document_title({}, None, "koala", "s", (".md",)) == "koala"
    assert document_title({}, None, "abc123", "abc123", (".md",)) is None  # a content-hash id says nothing
    assert chunk_headers(None, [], [0]) == [None]
    assert markdown_headings("# `git bisect` and [links](http://x) **bold**\n") == [
        Heading(0, 1, "git bisect and links bold")]
    assert indexed_text("body", "Title > Section") == "Title > Section\n\nbody"
    assert indexed_text("body", None) == "body"


def test_every_chunk_gets_the_path_it_starts_under(embedder):
    sections = "".join(f"## Section {n}\n\n" + f"Sentence number {n} about topic {n}. " * 30 + "\n\n"
                       for n in range(1, 4))
    doc = extract("md", f"# Handbook\n\n{sections}".encode())[0]
    chunks = Chunker(embedder.tokenizer, 64, 8).split(doc.text, "md")
    headers = chunk_headers(doc.title, doc.headings, [c.start for c in chunks])
    assert len(chunks) > 6
    for chunk, header in zip(chunks, headers):
        section = doc.text.rfind("## Section ", 0, chunk.start + len("## Section "))
        expected = "Handbook" if section < 0 else f"Handbook > Section {doc.text[section + 11]}"
        assert header == expected, (chunk.text[:40], header)
