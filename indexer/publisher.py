"""Make a change to a corpus durable and visible: new generation on disk, then SQL, then memory.

Order matters for crash safety: the generation folder is complete and fsynced before SQL
points at it; SQL commits before the in-memory searcher switches; old folders go last.
A change is built on the generation in memory; if SQL has moved past it (another gateway
published meanwhile), the commit is refused rather than undoing that gateway's change.
"""

import logging
from collections.abc import Callable, Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from adapters_store.errors import Conflict
from adapters_store.models import Chunk, Corpus, IndexGeneration
from indexer.headers import indexed_text
from indexer.lexical import LexicalIndex
from indexer.metadata_map import MetadataMap
from indexer.registry import CorpusEntry, CorpusRegistry

log = logging.getLogger(__name__)


class StaleGeneration(Conflict):
    """The corpus was changed elsewhere since the generation this change was built on."""
    default_code = "corpus_changed"


def publish_change(
    sessions: sessionmaker[Session],
    registry: CorpusRegistry,
    entry: CorpusEntry,
    *,
    remove_ids: Sequence[int],
    add_ids: Sequence[int],
    add_vectors: np.ndarray | None,
    add_texts: Sequence[str],  # as indexed: with the chunk's header, if it has one
    apply_rows: Callable[[Session], None],
) -> int:
    """Apply a change under `entry.write_lock` (the caller holds it); return the new generation."""
    vector = entry.searcher.vector.copy()
    if remove_ids:
        vector.remove(np.asarray(remove_ids, dtype=np.int64))
    if add_ids:
        vector.add(np.asarray(add_ids, dtype=np.int64), add_vectors)

    removed = set(remove_ids)
    with sessions() as session:
        rows = session.execute(select(Chunk.id, Chunk.text, Chunk.header)
                               .where(Chunk.corpus_id == entry.corpus_id).order_by(Chunk.id)).all()
    ids = [row.id for row in rows if row.id not in removed] + list(add_ids)
    texts = [indexed_text(row.text, row.header) for row in rows if row.id not in removed] + list(add_texts)
    lexical = LexicalIndex.build(ids, texts)

    number = (entry.generation or 0) + 1
    with sessions() as session, session.begin():
        # One writer of a corpus at a time across gateways: the row stays locked (PostgreSQL) from
        # this check to the commit, with the generation's files written in between.
        corpus = session.get(Corpus, entry.corpus_id, with_for_update=True)
        if corpus is None:
            raise LookupError("the corpus was deleted while it was being changed")
        if corpus.current_generation != entry.generation:
            raise StaleGeneration(f"corpus {corpus.name!r} moved to generation {corpus.current_generation} "
                                  f"(another gateway changed it) while this change was built on "
                                  f"{entry.generation}; retry it")
        # Under the lock, a folder of this number is an orphan of a writer that died before its commit.
        path = registry.store.write(entry.corpus_id, number, vector, lexical, replace=True)
        apply_rows(session)
        session.add(IndexGeneration(corpus_id=corpus.id, number=number, path=str(path),
                                    chunk_count=len(vector), index_kind=vector.kind))
        corpus.current_generation = number
        session.flush()
        # What filtered searches of the new generation read: exactly the rows it commits with.
        metadata = MetadataMap.read(session, corpus.id)
    registry.publish(entry.corpus_id, number, vector, lexical, metadata)
    try:
        registry.store.remove_superseded(entry.corpus_id, number)
    except OSError:  # the change is committed: a failed cleanup must not fail it
        log.warning("removing the old generations of corpus %s failed", entry.corpus_id, exc_info=True)
    return number
