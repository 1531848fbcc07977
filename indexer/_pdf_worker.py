"""Child process that extracts PDF text: `python _pdf_worker.py MAX_PAGES MAX_BYTES < file.pdf`.

Run as a script (not `-m indexer...`) so that it imports nothing but pypdf. It caps its own
address space before parsing, so a hostile PDF fails with MemoryError instead of exhausting
the machine; the parent enforces the wall-clock limit. It prints one JSON object:
{"pages": [...], "title": ...} or {"error": "..."}.
"""

import json
import resource
import sys


def main() -> int:
    max_pages, max_bytes = int(sys.argv[1]), int(sys.argv[2])
    data = sys.stdin.buffer.read()
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    try:
        result = extract_pages(data, max_pages)
    except MemoryError:
        result = {"error": "PDF extraction ran out of memory"}
    except Exception as exc:  # pypdf raises many types on malformed files
        result = {"error": f"not a readable PDF ({type(exc).__name__}: {exc})"}
    sys.stdout.write(json.dumps(result))
    return 0


def extract_pages(data: bytes, max_pages: int) -> dict:
    import io

    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        return {"error": "PDF is encrypted"}
    count = len(reader.pages)
    if count > max_pages:
        return {"error": f"PDF has {count} pages, more than the limit of {max_pages}"}
    pages = [page.extract_text() or "" for page in reader.pages]
    title = reader.metadata.title if reader.metadata else None
    return {"pages": pages, "title": title}


if __name__ == "__main__":
    sys.exit(main())
