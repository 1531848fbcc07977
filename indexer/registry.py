"""The searchable state of every corpus: its current generation loaded in memory.

A corpus's generation is replaced as a whole (`publish`), after it is durable on disk and
committed in SQL, so a search always sees one consistent generation.
"""

import threading
from dataclasses import dataclass, field

from indexer.embedding import Embedder
from indexer.generation import GenerationStore
from indexer.lexical import LexicalIndex
from indexer.search import CorpusSearcher
from indexer.vector_index import VectorIndex


@dataclass
class CorpusEntry:
    corpus_id: int
    embedding_model: str
    generation: int | None
    searcher: CorpusSearcher
    # Serialises the writers of this corpus (ingestion jobs, deletes); readers never take it.
    write_lock: threading.Lock = field(default_factory=threading.Lock)


class CorpusRegistry:
    def __init__(self, store: GenerationStore, exact_max: int = 50_000):
        self.store = store
        self.exact_max = exact_max
        self._entries: dict[int, CorpusEntry] = {}
        self._embedders: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    def embedder(self, name: str) -> Embedder:
        with self._lock:
            if name not in self._embedders:
                self._embedders[name] = Embedder.load(name)
            return self._embedders[name]

    def load(self, corpus_id: int, embedding_model: str, generation: int | None) -> CorpusEntry:
        """Load a corpus at its committed generation (an empty index when it has none yet)."""
        embedder = self.embedder(embedding_model)
        if generation is None:
            vector = VectorIndex.empty(embedder.dimension, exact_max=self.exact_max)
            lexical = LexicalIndex.build([], [])
        else:
            vector, lexical = self.store.load(corpus_id, generation)
        entry = CorpusEntry(corpus_id, embedding_model, generation,
                            CorpusSearcher(embedder, vector, lexical))
        with self._lock:
            previous = self._entries.get(corpus_id)
            if previous is not None:
                entry.write_lock = previous.write_lock
            self._entries[corpus_id] = entry
        return entry

    def get(self, corpus_id: int) -> CorpusEntry | None:
        return self._entries.get(corpus_id)

    def publish(self, corpus_id: int, generation: int, vector: VectorIndex, lexical: LexicalIndex) -> None:
        entry = self._entries[corpus_id]
        entry.searcher = CorpusSearcher(entry.searcher.embedder, vector, lexical)
        entry.generation = generation

    def drop(self, corpus_id: int) -> None:
        with self._lock:
            self._entries.pop(corpus_id, None)
