"""Token-aware chunking with overlap, measured with the embedder's own tokenizer."""

from dataclasses import dataclass

from semantic_text_splitter import MarkdownSplitter, TextSplitter

from indexer.fast_tokenizer import private_copy


@dataclass
class Chunk:
    text: str
    start: int  # character offsets of text in the document: document[start:end] == text
    end: int
    index: int


class Chunker:
    def __init__(self, tokenizer, chunk_size: int, chunk_overlap: int):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if not 0 <= chunk_overlap < chunk_size:
            raise ValueError(f"chunk_overlap must be >= 0 and smaller than chunk_size "
                             f"({chunk_size}), got {chunk_overlap}")
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        # Without truncation: with it every long piece would look max_length tokens long.
        tok = private_copy(tokenizer)
        self._text = TextSplitter.from_huggingface_tokenizer(tok, chunk_size, overlap=chunk_overlap)
        self._markdown = MarkdownSplitter.from_huggingface_tokenizer(tok, chunk_size, overlap=chunk_overlap)

    def split(self, text: str, kind: str = "txt") -> list[Chunk]:
        splitter = self._markdown if kind == "md" else self._text
        return [Chunk(piece, start, start + len(piece), index)
                for index, (start, piece) in enumerate(splitter.chunk_indices(text))]
