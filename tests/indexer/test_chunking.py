import pytest

from indexer.chunking import Chunker

TEXT = " ".join(f"Sentence number {i} talks about naïve café façades and retrieval." for i in range(60))
MARKDOWN = "\n\n".join(f"# Section {i}\n\nThe body of section {i} explains indexes, chunks and "
                       f"embeddings in some detail.\n\n- item one\n- item two" for i in range(15))


@pytest.mark.parametrize("kind, text", [("txt", TEXT), ("md", MARKDOWN)])
def test_chunks_fit_the_token_budget_and_point_into_the_text(embedder, kind, text):
    chunker = Chunker(embedder.tokenizer, chunk_size=48, chunk_overlap=12)
    chunks = chunker.split(text, kind)
    assert len(chunks) > 3
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert text[chunk.start:chunk.end] == chunk.text
        assert embedder.count_tokens(chunk.text) <= 48
    # Together the chunks cover the whole text (up to trimmed whitespace).
    assert chunks[0].start == 0 and chunks[-1].end == len(text.rstrip())


def test_consecutive_chunks_overlap(embedder):
    chunks = Chunker(embedder.tokenizer, chunk_size=40, chunk_overlap=15).split(TEXT)
    assert all(nxt.start < prev.end for prev, nxt in zip(chunks, chunks[1:]))
    no_overlap = Chunker(embedder.tokenizer, chunk_size=40, chunk_overlap=0).split(TEXT)
    assert all(nxt.start >= prev.end for prev, nxt in zip(no_overlap, no_overlap[1:]))
    assert len(no_overlap) < len(chunks)


def test_markdown_splits_on_headings(embedder):
    chunks = Chunker(embedder.tokenizer, chunk_size=40, chunk_overlap=0).split(MARKDOWN, "md")
    assert all(chunk.text.startswith("# Section") for chunk in chunks)


def test_the_model_tokenizer_is_not_changed(embedder):
    before = embedder.tokenizer.backend_tokenizer.to_str()
    Chunker(embedder.tokenizer, chunk_size=32, chunk_overlap=4)
    assert embedder.tokenizer.backend_tokenizer.to_str() == before


def test_short_and_empty_text(embedder):
    chunker = Chunker(embedder.tokenizer, chunk_size=64, chunk_overlap=8)
    [chunk] = chunker.split("  Just one line.  ")
    assert (chunk.text, chunk.start, chunk.end, chunk.index) == ("Just one line.", 2, 16, 0)
    assert chunker.split("") == []


@pytest.mark.parametrize("size, overlap", [(32, 32), (32, 40), (0, 0), (32, -1)])
def test_invalid_sizes(embedder, size, overlap):
    with pytest.raises(ValueError):
        Chunker(embedder.tokenizer, chunk_size=size, chunk_overlap=overlap)
