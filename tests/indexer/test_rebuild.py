"""Index rebuilds and contextual headers in the ingestion worker, with the real embedder, FAISS,
BM25 and SQLite (no gateway): what is embedded and indexed, kept raw uploads, failures, resumption."""

import asyncio
import hashlib
import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select, update

from adapters_store import corpus_repo
from adapters_store.models import Chunk, Corpus, Document, Job, JobItem
from indexer.generation import GenerationStore
from indexer.jobs import IngestionWorker, IngestLimits
from indexer.registry import CorpusRegistry

HANDBOOK = b"""# Quillon Handbook

Welcome text for new staff members who join the team this season.

## Payroll

Salaries are paid on the last working day of each month by bank transfer.

## Parking

Each employee gets one reserved space in the north garage behind the depot.
"""


class World:
    def __init__(self, sessions, embedder, root: Path):
        self.sessions = sessions
        self.embedder = embedder
        self.uploads = root / "uploads"
        self.uploads.mkdir()
        self.registry = CorpusRegistry(GenerationStore(root / "indexes"), load_embedder=lambda name: embedder)
        self.worker = IngestionWorker(sessions, self.registry, IngestLimits(embed_batch=16))

    def corpus(self, name: str, chunk_size: int = 200, overlap: int = 16, headers: bool = False) -> int:
        with self.sessions() as session, session.begin():
            return corpus_repo.create_corpus(session, name, chunk_size, overlap, "minilm", headers).id

    def ingest(self, name: str, files: list[tuple[str, bytes, str]]) -> dict:
        """Upload files (name, bytes, kind) as the REST route does, and run the job here."""
        with self.sessions() as session, session.begin():
            items = []
            for filename, data, kind in files:
                path = self.uploads / f"{uuid.uuid4().hex}.raw"
                path.write_bytes(data)
                items.append(JobItem(filename=filename, kind=kind, item_metadata={"filename": filename},
                                     raw_path=str(path), bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
            job_id = corpus_repo.create_job(session, corpus_repo.get_corpus(session, name), items).id
        return self.run(job_id)

    def rebuild_job(self, name: str, **settings) -> str:
        with self.sessions() as session, session.begin():
            return corpus_repo.create_rebuild_job(session, corpus_repo.get_corpus(session, name), **settings).id

    def run(self, job_id: str) -> dict:
        self.worker.run_job(job_id)
        return self.job(job_id)

    def job(self, job_id: str) -> dict:
        with self.sessions() as session:
            return corpus_repo.job_as_dict(session.get(Job, job_id))

    def stats(self, name: str) -> dict:
        with self.sessions() as session:
            return corpus_repo.corpus_stats(session, corpus_repo.get_corpus(session, name)).as_dict()

    def search(self, name: str, query: str, mode: str, k: int = 3) -> list[str]:
        """Texts of the hits, from the generation in memory."""
        with self.sessions() as session:
            corpus = corpus_repo.get_corpus(session, name)
            ranked = self.registry.entry_for(corpus).searcher.search(query, k, mode)
            texts = dict(session.execute(select(Chunk.id, Chunk.text).where(
                Chunk.id.in_([cid for cid, _ in ranked]))).all())
        return [texts[cid] for cid, _ in ranked]

    def chunks(self, name: str) -> list[Chunk]:
        with self.sessions() as session:
            corpus = corpus_repo.get_corpus(session, name)
            return list(session.scalars(select(Chunk).where(Chunk.corpus_id == corpus.id).order_by(Chunk.id)))

    def raw_files(self) -> set[str]:
        return {str(p) for p in self.uploads.iterdir()}


@pytest.fixture
def world(sessions, embedder, tmp_path) -> World:
    return World(sessions, embedder, tmp_path)


def test_headers_are_embedded_and_indexed_but_not_the_chunk_text(world):
    world.corpus("plain", chunk_size=32, overlap=0)
    world.corpus("headed", chunk_size=32, overlap=0, headers=True)
    for name in ("plain", "headed"):
        assert world.ingest(name, [("handbook.md", HANDBOOK, "md")])["status"] == "succeeded"

    chunks = {c.text: c for c in world.chunks("headed")}
    parking = next(c for text, c in chunks.items() if "north garage" in text)
    assert parking.header == "Quillon Handbook > Parking"
    assert "Quillon" not in parking.text and "Parking" not in parking.text.split("\n", 1)[-1]
    assert all(c.header is None for c in world.chunks("plain"))

    # The vector FAISS holds is the embedding of header + text.
    expected = world.embedder.encode([f"{parking.header}\n\n{parking.text}"])[0]
    vector = world.registry.get(parking.corpus_id).searcher.vector
    [(top, score)] = vector.search_one(expected, 1)
    assert top == parking.id and score == pytest.approx(1.0, abs=1e-4)

    # "Quillon" is only in the title: without headers only the chunk holding the title line has it.
    assert world.search("plain", "quillon", "bm25", k=5) == [next(t for t in chunks if "# Quillon" in t)]
    found = world.search("headed", "quillon", "bm25", k=5)
    assert sorted(found) == sorted(chunks) and len(found) == 3
    assert all("Quillon Handbook >" not in text for text in found)  # hits carry the plain chunk text


def test_rebuild_rechunks_reembeds_and_switches_generation(world):
    world.corpus("book", chunk_size=128, overlap=8)
    record = {"id": "rec-1", "text": "Otters hold hands while they sleep so they do not drift apart."}
    second = {"id": "rec-2", "text": "Koalas sleep up to twenty-two hours a day in eucalyptus trees."}
    world.ingest("book", [("handbook.md", HANDBOOK, "md"),
                          ("animals.jsonl", f"{json.dumps(record)}\n{json.dumps(second)}\n".encode(), "jsonl")])
    before = world.stats("book")
    raw_before = world.raw_files()
    assert before["generation"] == 1 and len(raw_before) == 2  # each kept while a document uses it

    job = world.run(world.rebuild_job("book", chunk_size=16, chunk_overlap=0, contextual_headers=True))
    assert job["status"] == "succeeded", job
    assert job["kind"] == "rebuild" and job["errors"] == []
    after = world.stats("book")
    assert (after["generation"], after["chunk_size"], after["chunk_overlap"], after["contextual_headers"]) == (
        2, 16, 0, True)
    assert after["chunks"] > before["chunks"] and after["documents"] == 3
    assert job["result"] == {"generation": 2, "documents": 3, "chunks": after["chunks"], "chunk_size": 16,
                             "chunk_overlap": 0, "contextual_headers": True}
    assert job["progress"]["chunks_done"] == job["progress"]["chunks_total"] == after["chunks"]
    chunks = world.chunks("book")
    assert len(chunks) == after["chunks"] and all(c.header for c in chunks)
    assert world.registry.store.generations(chunks[0].corpus_id) == [2]  # the old files are gone
    assert len(world.registry.get(chunks[0].corpus_id).searcher.vector) == len(chunks)
    assert world.search("book", "which animals hold hands", "dense", k=1)[0].startswith("Otters hold hands")
    assert world.raw_files() == raw_before  # still kept: a next rebuild reads them again

    # Later ingestion uses the corpus's new settings.
    world.ingest("book", [("more.txt", b"Walruses use their tusks to haul out onto the ice. " * 8, "txt")])
    more = [c for c in world.chunks("book") if "Walruses" in c.text]
    assert len(more) > 2 and all(c.header == "more" for c in more)


def test_raw_uploads_are_kept_while_used_and_deleted_after(world):
    world.corpus("c")
    world.ingest("c", [("a.txt", b"Alpha text about apples.", "txt"), ("bad.txt", b"", "txt")])
    [kept] = world.raw_files()
    world.ingest("c", [("a.txt", b"Alpha text about apples.", "txt")])  # unchanged: the new copy goes
    assert world.raw_files() == {kept}
    world.ingest("c", [("a.txt", b"Alpha text about apricots.", "txt")])  # replaced: the old copy goes
    [replacement] = world.raw_files()
    assert replacement != kept
    from indexer.deletion import delete_document

    with world.sessions() as session:
        corpus = corpus_repo.get_corpus(session, "c")
        row_id = corpus_repo.get_document(session, corpus, "a.txt").id
    delete_document(world.sessions, world.registry, world.registry.entry_for(corpus), row_id)
    assert world.raw_files() == set()


def test_documents_without_a_raw_upload_are_reported_and_kept(world):
    world.corpus("c", chunk_size=64, overlap=0)
    world.ingest("c", [("old.txt", b"Legacy text about lighthouses on rocky coasts.", "txt"),
                       ("new.txt", b"Fresh text about windmills in flat country. " * 6, "txt")])
    with world.sessions() as session, session.begin():  # as if ingested before uploads were kept
        old = session.scalar(select(Document).where(Document.external_id == "old.txt"))
        Path(old.raw_path).unlink()
        session.execute(update(Document).where(Document.id == old.id).values(raw_path=None, raw_kind=None))
    old_chunks = [c.id for c in world.chunks("c") if "lighthouses" in c.text]

    job = world.run(world.rebuild_job("c", chunk_size=16))
    assert job["status"] == "succeeded"
    assert [(e["document_id"], e["file"]) for e in job["errors"]] == [("old.txt", "old.txt")]
    assert "not kept" in job["errors"][0]["error"]
    assert job["progress"]["documents_done"] == 1 and job["progress"]["documents_total"] == 2
    assert [c.id for c in world.chunks("c") if "lighthouses" in c.text] == old_chunks  # as it was
    assert world.search("c", "lighthouses", "bm25", k=1)[0].startswith("Legacy text")

    # Uploading the same content again gives it a raw upload; then it rebuilds too.
    world.ingest("c", [("old.txt", b"Legacy text about lighthouses on rocky coasts.", "txt")])
    job = world.run(world.rebuild_job("c", chunk_size=32))
    assert job["status"] == "succeeded" and job["errors"] == [] and job["progress"]["documents_done"] == 2


def test_a_rebuild_with_no_rebuildable_document_fails_and_changes_nothing(world):
    world.corpus("c", chunk_size=64, overlap=0)
    world.ingest("c", [("a.txt", b"Text about canals and locks. " * 5, "txt")])
    before, chunks_before = world.stats("c"), world.chunks("c")
    for path in world.uploads.iterdir():
        path.unlink()
    job = world.run(world.rebuild_job("c", chunk_size=16))
    assert job["status"] == "failed" and "no document could be rebuilt" in job["reason"]
    assert job["errors"][0]["document_id"] == "a.txt" and "missing" in job["errors"][0]["error"]
    assert world.stats("c") == before
    assert [c.id for c in world.chunks("c")] == [c.id for c in chunks_before]
    assert world.search("c", "canals", "bm25", k=1)[0].startswith("Text about canals")


def test_a_rebuild_failing_while_it_publishes_leaves_the_old_generation_serving(world, monkeypatch):
    world.corpus("c", chunk_size=64, overlap=0)
    world.ingest("c", [("a.txt", b"Text about canals and locks. " * 5, "txt")])
    before = world.stats("c")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(world.registry.store, "write", disk_full)
    job = world.run(world.rebuild_job("c", chunk_size=16, contextual_headers=True))
    assert job["status"] == "failed" and "No space left" in job["reason"]
    assert world.stats("c") == before  # same generation, same settings
    assert world.registry.store.generations(world.chunks("c")[0].corpus_id) == [1]
    assert all(c.header is None for c in world.chunks("c"))
    assert world.search("c", "canals", "bm25", k=1)[0].startswith("Text about canals")


def test_an_empty_corpus_rebuild_only_changes_settings(world):
    world.corpus("c", chunk_size=64, overlap=8)
    job = world.run(world.rebuild_job("c", contextual_headers=True))
    assert job["status"] == "succeeded" and job["result"]["documents"] == 0
    stats = world.stats("c")
    assert (stats["chunk_size"], stats["chunk_overlap"], stats["contextual_headers"], stats["generation"]) == (
        64, 8, True, None)


def test_rebuild_settings_are_checked(world):
    from adapters_store.errors import Invalid

    world.corpus("c", chunk_size=64, overlap=20)
    for settings in ({"chunk_size": 8}, {"chunk_size": 5000}, {"chunk_size": 16},  # overlap 20 >= 16
                     {"chunk_size": 32, "chunk_overlap": 32}, {"chunk_overlap": -1}):
        with pytest.raises(Invalid):
            world.rebuild_job("c", **settings)
    with world.sessions() as session:
        assert session.scalars(select(Job).where(Job.kind == "rebuild")).all() == []


async def test_an_interrupted_rebuild_is_run_again_at_start_up(world):
    world.corpus("c", chunk_size=64, overlap=0)
    world.ingest("c", [("a.txt", b"Text about canals and locks. " * 5, "txt")])
    job_id = world.rebuild_job("c", chunk_size=16)
    with world.sessions() as session, session.begin():  # the gateway died while it ran
        session.get(Job, job_id).status = "running"
    restarted = IngestionWorker(world.sessions, world.registry, IngestLimits())
    restarted.start()
    try:
        await asyncio.wait_for(restarted.wait_idle(), 120)
    finally:
        await restarted.stop()
    job = world.job(job_id)
    assert job["status"] == "succeeded" and job["result"]["generation"] == 2
    with world.sessions() as session:
        assert session.scalar(select(Corpus.chunk_size)) == 16


async def test_the_worker_leaves_jobs_of_other_kinds_alone(world):
    with world.sessions() as session, session.begin():
        session.add(Job(id="e", kind="eval", status="queued"))
    world.worker.run_job("e")
    assert world.job("e")["status"] == "queued"
