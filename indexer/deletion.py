"""Delete a document: when this returns, a new generation without its chunks is live."""

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from adapters_store.models import Chunk, Document
from indexer.pipeline import drop_unused_raw
from indexer.publisher import publish_change
from indexer.registry import CorpusEntry, CorpusRegistry


def delete_document(sessions: sessionmaker[Session], registry: CorpusRegistry, entry: CorpusEntry,
                    document_id: int) -> int:
    """Remove one document (by its row id) from SQL and the index; return the new generation.
    Its raw upload goes too, unless another document of the same file still uses it."""
    with entry.write_lock:
        with sessions() as session:
            chunk_ids = list(session.scalars(select(Chunk.id).where(Chunk.document_id == document_id)))
            raw_path = session.scalar(select(Document.raw_path).where(Document.id == document_id))

        def apply_rows(session: Session) -> None:
            session.execute(delete(Chunk).where(Chunk.document_id == document_id))
            session.execute(delete(Document).where(Document.id == document_id))

        generation = publish_change(sessions, registry, entry, remove_ids=chunk_ids, add_ids=[],
                                    add_vectors=None, add_texts=[], apply_rows=apply_rows)
    drop_unused_raw(sessions, [raw_path])
    return generation
