import json

import pytest

from indexer.extract import ExtractionError, detect_kind, extract


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page (xref offsets computed)."""
    n = len(pages)
    font_id = 3 + 2 * n
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
                   b" ".join(b"%d 0 R" % (3 + 2 * i) for i in range(n)), n)]
    for i, text in enumerate(pages):
        stream = b"BT /F1 12 Tf 72 720 Td (%s) Tj ET" % text.encode("latin-1")
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>" % (font_id, 4 + 2 * i))
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@pytest.mark.parametrize("filename, content_type, kind", [
    ("notes.txt", None, "txt"), ("README.MD", None, "md"), ("a.markdown", None, "md"),
    ("page.htm", None, "html"), ("paper.pdf", "application/octet-stream", "pdf"),
    ("docs.jsonl", None, "jsonl"), ("upload", "text/html; charset=utf-8", "html"),
    ("upload", "application/x-ndjson", "jsonl"), ("blob.bin", "application/octet-stream", None),
    ("image.png", None, None),
])
def test_detect_kind(filename, content_type, kind):
    assert detect_kind(filename, content_type) == kind


def test_text_and_markdown_decode_utf8_with_bom():
    [doc] = extract("txt", "\ufeffcafé au lait".encode())
    assert (doc.id, doc.text, doc.metadata) == (None, "café au lait", {})
    assert extract("md", b"# Title\n\nBody")[0].text == "# Title\n\nBody"


@pytest.mark.parametrize("data, message", [
    (b"", "file is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not valid UTF-8"),
    (b"caf\xe9", "not valid UTF-8"),
    (b"  \n\t ", "no text"),
])
def test_text_errors(data, message):
    with pytest.raises(ExtractionError, match=message):
        extract("txt", data)


def test_html_drops_navigation_and_footer_and_keeps_title():
    html = b"""<html><head><title>Graft  docs</title></head><body>
    <nav><ul><li><a href="/">Home</a></li><li><a href="/pricing">Pricing plans</a></li></ul></nav>
    <main><article><h1>Installing graft</h1>
    <p>Graft injects domain knowledge into a language model at request time, retrieving
    passages from the corpora of a domain and building the prompt for the engine.</p>
    <p>Operators upload corpora over REST and swap adapter versions with no downtime.</p>
    </article></main>
    <footer><p>Copyright 2025 Example Corp. Privacy policy and cookie settings.</p></footer>
    </body></html>"""
    [doc] = extract("html", html)
    assert "injects domain knowledge" in doc.text and "swap adapter versions" in doc.text
    assert "Pricing plans" not in doc.text and "Copyright" not in doc.text
    assert doc.metadata == {"title": "Graft docs"}


def test_html_with_little_prose_still_gives_text():
    [doc] = extract("html", b"<html><body><h1>API</h1><ul><li>connect()</li><li>close()</li></ul></body></html>")
    assert "connect()" in doc.text and "close()" in doc.text
    assert "title" not in doc.metadata


def test_html_without_text_is_an_error():
    with pytest.raises(ExtractionError):
        extract("html", b"<html><body><div></div></body></html>")


def test_pdf_text_of_every_page():
    [doc] = extract("pdf", make_pdf(["Hello from page one", "Second page text"]))
    assert "Hello from page one" in doc.text and "Second page text" in doc.text
    assert doc.id is None and doc.metadata["pages"] == 2


def test_pdf_errors():
    with pytest.raises(ExtractionError, match="more than the limit of 1"):
        extract("pdf", make_pdf(["a", "b"]), max_pdf_pages=1)
    with pytest.raises(ExtractionError, match="no extractable text"):
        extract("pdf", make_pdf([""]))
    with pytest.raises(ExtractionError, match="not a readable PDF"):
        extract("pdf", b"%PDF-1.4 this is not really a pdf")


def test_pdf_timeout():
    with pytest.raises(ExtractionError, match="PDF extraction timed out after 0.001s"):
        extract("pdf", make_pdf(["slow"]), timeout_s=0.001)


def test_jsonl_records():
    lines = [{"id": "a", "text": "first", "metadata": {"lang": "en"}}, {"text": "second"}, {"id": 7, "text": "third"}]
    data = ("\n".join(json.dumps(line) for line in lines) + "\n\n").encode()
    docs = extract("jsonl", data)
    assert [(d.id, d.text, d.metadata) for d in docs] == [
        ("a", "first", {"lang": "en"}), (None, "second", {}), ("7", "third", {})]


@pytest.mark.parametrize("data, message", [
    (b'{"text": "ok"}\n{"text": broken}\n', "line 2: invalid JSON"),
    (b'{"text": "ok"}\n\n["a list"]\n', "line 3: expected a JSON object"),
    (b'{"id": "x", "text": ""}\n', "line 1: \"text\" must be a non-empty string"),
    (b'{"text": "a", "metadata": [1]}\n', "line 1: \"metadata\" must be a JSON object"),
    (b'{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n', "line 2: duplicate id 'x'"),
    (b"\n\n", "no records"),
])
def test_jsonl_errors(data, message):
    with pytest.raises(ExtractionError, match=message):
        extract("jsonl", data)


def test_jsonl_record_limit():
    with pytest.raises(ExtractionError, match="more than 2 records"):
        extract("jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n', max_jsonl_records=2)


def test_unknown_kind():
    with pytest.raises(ExtractionError, match="unsupported"):
        extract("docx", b"PK\x03\x04")


def test_pdf_worker_memory_limit(monkeypatch):
    # Far below what parsing needs: the worker must fail cleanly, not take the machine down.
    monkeypatch.setattr("indexer.extract.PDF_MEMORY_LIMIT", 1024**2)
    with pytest.raises(ExtractionError, match="PDF extraction ran out of memory"):
        extract("pdf", make_pdf(["fits in memory normally"]))
