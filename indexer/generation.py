"""Index generations on disk: immutable, durable snapshots of a corpus's indexes.

Layout: <root>/corpus-<id>/gen-<number:08d>/{vectors.faiss, lexical/, manifest.json}.
A generation is written under <root>/corpus-<id>/tmp-<uuid>/, fsynced, then renamed to its
final name and the corpus folder fsynced; so a gen-* folder is always complete, and a crash
leaves at most a tmp-* folder, which `remove_except` cleans up.
"""

import json
import os
import re
import shutil
import uuid
from pathlib import Path

from adapters_store.durable import fsync_dir, write_bytes_durably
from indexer.lexical import LexicalIndex
from indexer.vector_index import LEGACY_EF_CONSTRUCTION, VectorIndex

_VECTORS = "vectors.faiss"
_LEXICAL = "lexical"
_MANIFEST = "manifest.json"
_GENERATION = re.compile(r"^gen-(\d{8,})$")


class GenerationStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def corpus_dir(self, corpus_id: int) -> Path:
        return self.root / f"corpus-{corpus_id}"

    def generation_dir(self, corpus_id: int, number: int) -> Path:
        return self.corpus_dir(corpus_id) / f"gen-{number:08d}"

    def write(self, corpus_id: int, number: int, vector_index: VectorIndex, lexical: LexicalIndex) -> Path:
        """Write generation `number` durably and return its folder (only once it is on disk)."""
        final = self.generation_dir(corpus_id, number)
        if final.exists():
            raise FileExistsError(f"generation {number} of corpus {corpus_id} already exists")
        self._make_corpus_dir(corpus_id)
        tmp = self.corpus_dir(corpus_id) / f"tmp-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            vector_index.save(tmp / _VECTORS)
            lexical.save(tmp / _LEXICAL)
            manifest = {"corpus_id": corpus_id, "generation": number, "dimension": vector_index.dimension,
                        "chunks": len(vector_index), "exact_max": vector_index.exact_max,
                        "hnsw_m": vector_index.hnsw_m, "ef_construction": vector_index.ef_construction,
                        "ef_search": vector_index.ef_search}
            write_bytes_durably(tmp / _MANIFEST, json.dumps(manifest, indent=2).encode())
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(final.parent)
        return final

    def load(self, corpus_id: int, number: int) -> tuple[VectorIndex, LexicalIndex]:
        folder = self.generation_dir(corpus_id, number)
        if not folder.is_dir():
            raise FileNotFoundError(f"generation {number} of corpus {corpus_id} not found at {folder}")
        manifest = json.loads((folder / _MANIFEST).read_text())
        vector = VectorIndex.load(folder / _VECTORS, exact_max=manifest["exact_max"], hnsw_m=manifest["hnsw_m"],
                                  ef_construction=manifest.get("ef_construction", LEGACY_EF_CONSTRUCTION),
                                  ef_search=manifest["ef_search"])
        return vector, LexicalIndex.load(folder / _LEXICAL)

    def generations(self, corpus_id: int) -> list[int]:
        """Numbers of the complete generations on disk, ascending."""
        folder = self.corpus_dir(corpus_id)
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _GENERATION.match(p.name)))

    def remove_except(self, corpus_id: int, keep: set[int]) -> None:
        """Delete every generation not in keep, and leftover temp folders.

        It also removes a tmp-* folder being written, so call it only while holding the
        corpus's writer lock (as after a publish) or before any writer starts.
        """
        folder = self.corpus_dir(corpus_id)
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            match = _GENERATION.match(path.name)
            if path.name.startswith("tmp-") or (match and int(match.group(1)) not in keep):
                shutil.rmtree(path)
        fsync_dir(folder)

    def remove_corpus(self, corpus_id: int) -> None:
        folder = self.corpus_dir(corpus_id)
        if folder.is_dir():
            shutil.rmtree(folder)
            fsync_dir(self.root)

    def _make_corpus_dir(self, corpus_id: int) -> None:
        folder = self.corpus_dir(corpus_id)
        if folder.is_dir():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        folder.mkdir(exist_ok=True)
        fsync_dir(self.root)
