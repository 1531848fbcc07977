"""Index generations on disk: immutable, durable snapshots of a corpus's indexes.

Layout: <root>/corpus-<id>/gen-<number:08d>/{vectors.faiss, lexical/, manifest.json}.
A generation is written under <root>/corpus-<id>/tmp-<host>-<pid>-<uuid>/, fsynced, then renamed
to its final name and the corpus folder fsynced; so a gen-* folder is always complete, and a crash
leaves at most a tmp-* folder (and a gen-* folder SQL never pointed at, if it died before its
commit), which `remove_superseded` and the next `write` clean up.

Several gateways may share the folder (scale-out): each writes a corpus's next generation only
while it holds the corpus's row lock (indexer/publisher.py), and cleaning up never touches what
another one may be writing: generations newer than the current one, temp folders of a live
process on this host, or recent ones of another host.
"""

import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

from adapters_store.durable import fsync_dir, write_bytes_durably
from indexer.lexical import LexicalIndex
from indexer.vector_index import LEGACY_EF_CONSTRUCTION, VectorIndex

_VECTORS = "vectors.faiss"
_LEXICAL = "lexical"
_MANIFEST = "manifest.json"
_GENERATION = re.compile(r"^gen-(\d{8,})$")
_TMP = re.compile(r"^tmp-(?P<host>[^-]+)-(?P<pid>\d+)-[0-9a-f]+$")
STALE_TMP_S = 3600.0  # a temp folder of another host (or of an unknown writer) older than this is a leftover


def temp_name(host: str | None = None, pid: int | None = None) -> str:
    """The name a write's temp folder gets: whose it is, so cleanup can tell a live writer's."""
    host = (host or socket.gethostname()).replace("-", "_") or "host"
    return f"tmp-{host}-{pid if pid is not None else os.getpid()}-{uuid.uuid4().hex}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _abandoned(path: Path, now: float) -> bool:
    """A temp folder no live writer owns: its process (on this host) is gone, or it is old."""
    try:
        if now - path.stat().st_mtime > STALE_TMP_S:
            return True
    except FileNotFoundError:
        return False
    match = _TMP.match(path.name)
    mine = socket.gethostname().replace("-", "_")
    return bool(match and match["host"] == mine and int(match["pid"]) != os.getpid()
                and not _pid_alive(int(match["pid"])))


class GenerationStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def corpus_dir(self, corpus_id: int) -> Path:
        return self.root / f"corpus-{corpus_id}"

    def generation_dir(self, corpus_id: int, number: int) -> Path:
        return self.corpus_dir(corpus_id) / f"gen-{number:08d}"

    def write(self, corpus_id: int, number: int, vector_index: VectorIndex, lexical: LexicalIndex, *,
              replace: bool = False) -> Path:
        """Write generation `number` durably and return its folder (only once it is on disk).

        `replace`: a folder of that number already there is one SQL never pointed at (its writer died
        before its commit; the caller holds the corpus's lock and knows it): it is replaced."""
        final = self.generation_dir(corpus_id, number)
        if final.exists():
            if not replace:
                raise FileExistsError(f"generation {number} of corpus {corpus_id} already exists")
            shutil.rmtree(final)
        self._make_corpus_dir(corpus_id)
        tmp = self.corpus_dir(corpus_id) / temp_name()
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

    def remove_superseded(self, corpus_id: int, current: int | None) -> None:
        """Delete the generations older than `current` and abandoned temp folders. Newer generations
        stay (another gateway may be about to commit one; an orphan is replaced by the next write), and
        so do temp folders a live writer may own. Removal is best effort: another gateway may be
        removing the same folders."""
        folder = self.corpus_dir(corpus_id)
        if not folder.is_dir():
            return
        now = time.time()
        for path in list(folder.iterdir()):
            match = _GENERATION.match(path.name)
            old = match is not None and current is not None and int(match.group(1)) < current
            if old or (path.name.startswith("tmp-") and _abandoned(path, now)):
                shutil.rmtree(path, ignore_errors=True)
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
