"""The searchable state of every corpus: its current generation loaded in memory.

A corpus's generation is replaced as a whole (`publish`), after it is durable on disk and
committed in SQL, so a search always sees one consistent generation. Gateways sharing the index
folder and database follow SQL's generation pointer (`current`): a generation another gateway
published is loaded on the first request that sees the pointer move.

Beside each generation's indexes sits its MetadataMap (chunk id → document metadata), which filtered
searches read: the publisher reads it in the transaction that commits the generation, and a
generation loaded from disk gets it from SQL (`sessions`). A registry without `sessions` gives
loaded generations an empty map, so their filtered searches find nothing.
"""

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from indexer.embedding import Embedder
from indexer.generation import GenerationStore
from indexer.lexical import LexicalIndex
from indexer.metadata_map import MetadataMap
from indexer.search import CorpusSearcher
from indexer.vector_index import EF_CONSTRUCTION, EF_SEARCH, HNSW_M, VectorIndex

log = logging.getLogger(__name__)


class NotLoaded(LookupError):
    """The corpus's current generation is not in memory: serving it means reading it from disk."""


@dataclass
class CorpusEntry:
    corpus_id: int
    embedding_model: str
    generation: int | None
    searcher: CorpusSearcher
    # Serialises the writers of this corpus (ingestion jobs, deletes); readers never take it.
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    # Tells a corpus from a later one that got the same id (SQLite reuses the largest id after a
    # delete): its created_at, compared as read from SQL.
    incarnation: object = None


class CorpusRegistry:
    """`exact_max`, `hnsw_m` and `ef_construction` configure the vector index of a corpus created
    from now on (an existing corpus keeps those its index generations record); `ef_search` is a
    search-time setting, so it applies to every corpus loaded. `load_embedder` turns a corpus's
    embedding model name into an Embedder (once per name)."""

    def __init__(self, store: GenerationStore, exact_max: int = 50_000, *, hnsw_m: int = HNSW_M,
                 ef_construction: int = EF_CONSTRUCTION, ef_search: int = EF_SEARCH,
                 load_embedder: Callable[[str], Embedder] = Embedder.load, sessions=None):
        self.store = store
        self.load_embedder = load_embedder
        self.sessions = sessions  # a sessionmaker: where loaded generations read their MetadataMap
        self.exact_max = exact_max
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self._entries: dict[int, CorpusEntry] = {}
        self._embedders: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    def embedder(self, name: str) -> Embedder:
        with self._lock:
            if name not in self._embedders:
                self._embedders[name] = self.load_embedder(name)
            return self._embedders[name]

    def load(self, corpus_id: int, embedding_model: str, generation: int | None,
             incarnation: object = None) -> CorpusEntry:
        """Load a corpus at its committed generation (an empty index when it has none yet)."""
        embedder = self.embedder(embedding_model)
        if generation is None:
            vector = VectorIndex.empty(embedder.dimension, exact_max=self.exact_max, hnsw_m=self.hnsw_m,
                                       ef_construction=self.ef_construction, ef_search=self.ef_search)
            lexical, metadata = LexicalIndex.build([], []), MetadataMap.empty()
        else:
            vector, lexical, metadata = self._read(corpus_id, generation)
        entry = CorpusEntry(corpus_id, embedding_model, generation,
                            CorpusSearcher(embedder, vector, lexical, metadata), incarnation=incarnation)
        with self._lock:
            previous = self._entries.get(corpus_id)
            if previous is not None:
                entry.write_lock = previous.write_lock
            self._entries[corpus_id] = entry
        return entry

    def get(self, corpus_id: int) -> CorpusEntry | None:
        return self._entries.get(corpus_id)

    def current(self, corpus_id: int, embedding_model: str, generation: int | None,
                incarnation: object = None, *, may_load: bool = True) -> CorpusEntry:
        """The corpus's entry at SQL's `generation` or newer, loading it when another gateway has
        published it (or deleted the corpus and created another under its id). Never waits for a
        writer: while one holds the corpus's write lock here, the generation in memory is served
        (the writer publishes its own in a moment). With `may_load` false, raises NotLoaded
        instead of reading anything (or taking any lock)."""
        entry = self._entries.get(corpus_id)
        stale = entry is None or entry.incarnation != incarnation
        if not may_load and (stale or _is_behind(entry, generation)):
            raise NotLoaded(corpus_id)
        if stale:
            return self.load(corpus_id, embedding_model, generation, incarnation)
        if not _is_behind(entry, generation) or not entry.write_lock.acquire(blocking=False):
            return entry
        try:
            if _is_behind(entry, generation):
                _switch(entry, generation, *self._read(corpus_id, generation))
        except FileNotFoundError as exc:  # already superseded and removed by its writer
            log.warning("corpus %s stays at generation %s: %s", corpus_id, entry.generation, exc)
        finally:
            entry.write_lock.release()
        return entry

    def entry_for(self, corpus, *, may_load: bool = True) -> CorpusEntry:
        """`current` for a corpus row as read from SQL (id, embedding_model, current_generation,
        created_at)."""
        return self.current(corpus.id, corpus.embedding_model, corpus.current_generation, corpus.created_at,
                            may_load=may_load)

    def _read(self, corpus_id: int, generation: int) -> tuple[VectorIndex, LexicalIndex, MetadataMap]:
        vector, lexical = self.store.load(corpus_id, generation)
        vector.ef_search = self.ef_search
        return vector, lexical, self.read_metadata(corpus_id)

    def read_metadata(self, corpus_id: int) -> MetadataMap:
        """The corpus's chunk → document metadata map as SQL holds it now (SQL is at the generation
        just read or newer: a chunk deleted since is allowed by no filter; one added since is not in
        the index)."""
        if self.sessions is None:
            return MetadataMap.empty()
        with self.sessions() as session:
            return MetadataMap.read(session, corpus_id)

    def publish(self, corpus_id: int, generation: int, vector: VectorIndex, lexical: LexicalIndex,
                metadata: MetadataMap | None = None) -> None:
        _switch(self._entries[corpus_id], generation, vector, lexical, metadata)

    def drop(self, corpus_id: int) -> None:
        with self._lock:
            self._entries.pop(corpus_id, None)


def _switch(entry: CorpusEntry, generation: int, vector: VectorIndex, lexical: LexicalIndex,
            metadata: MetadataMap | None) -> None:
    entry.searcher = CorpusSearcher(entry.searcher.embedder, vector, lexical, metadata)
    entry.generation = generation


def _is_behind(entry: CorpusEntry, generation: int | None) -> bool:
    return generation is not None and (entry.generation is None or entry.generation < generation)
