"""Backups: `graft snapshot create PATH` and `graft snapshot restore PATH`.

A snapshot is one tar archive of a gateway's state, taken while it runs:

- `manifest.json`: the format, the database kind, the data folder it came from, and the sha256 of
  every other member;
- the database: `graft.db` (SQLite's online backup API: a consistent copy while the gateway
  writes) or `graft.pgdump` (pg_dump's custom format, taken in the same transaction snapshot that
  listed the files below, through `pg_export_snapshot`);
- `data/...`: the files that database points at: each corpus's current index generation, the raw
  uploads of its documents (rebuilds read them) and every adapter version not deleted.

Those files never change once written, but the gateway removes them once nothing points at them
(a newer generation, a replaced document, a deleted version). So each is hard-linked (in the data
folder's `tmp/`) the moment the database view lists it, and archived from the link; one that went
in that instant makes the run start again from a new database view, a few times at most.

Restore writes a new data folder (it must be empty) and database (SQLite: in that folder;
PostgreSQL: `GRAFT_DATABASE_URL` must name an empty database), checks every member against the
manifest first, and rewrites the stored paths from the old data folder to the new one.
"""

import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from adapters_store.durable import fsync_dir
from adapters_store.models import AdapterVersion, Corpus, Document, IndexGeneration, JobItem
from indexer.generation import GenerationStore
from service.settings import Settings

FORMAT = 1
ATTEMPTS = 5  # database copies tried before giving up on a gateway that keeps replacing files
MANIFEST = "manifest.json"
# Columns that hold paths inside the data folder: rewritten on restore.
PATH_COLUMNS = ((IndexGeneration, IndexGeneration.path), (Document, Document.raw_path),
                (JobItem, JobItem.raw_path), (AdapterVersion, AdapterVersion.path))


class SnapshotError(Exception):
    """A snapshot that cannot be made or restored; the message says why."""


class FileGone(Exception):
    """A file the database copy pointed at was removed meanwhile: take a new copy."""


@dataclass(frozen=True)
class Summary:
    path: Path
    files: int
    bytes: int
    corpora: int
    adapter_versions: int


def create(settings: Settings, destination: Path) -> Summary:
    """Write a snapshot of the gateway's database and files to `destination` (a new .tar file)."""
    destination = Path(destination)
    if destination.exists():
        raise SnapshotError(f"{destination} exists already; name a new file")
    last_error = None
    for _ in range(ATTEMPTS):
        try:
            return _create_once(settings, destination)
        except FileGone as exc:
            last_error = exc
            time.sleep(0.2)
    raise SnapshotError(f"the gateway kept removing files the database pointed at ({last_error}); try again")


def _create_once(settings: Settings, destination: Path) -> Summary:
    data_dir = settings.data_dir.resolve()
    # Hard links in the data folder's own file system: taken the moment the files are listed, they
    # keep each file whatever the gateway removes meanwhile, while the database is dumped and the
    # archive written (seconds on a busy corpus, which would otherwise outrun every attempt).
    links = data_dir / "tmp" / f"snapshot-{uuid.uuid4().hex}"
    links.mkdir(parents=True)
    try:
        with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
            scratch = Path(scratch)
            db_member, members, counts = _copy_database(settings, scratch, links)
            partial = destination.with_name(destination.name + ".partial")
            # Paths are stored as the gateway wrote them: under its data folder resolved, or as configured.
            manifest = {"format": FORMAT, "created_at": int(time.time()), "database": db_member,
                        "data_dirs": sorted({str(data_dir), str(settings.data_dir)}), "files": {}, **counts}
            total = 0
            with tarfile.open(partial, "w") as archive:
                manifest["files"][db_member] = _add(archive, scratch / db_member, db_member)
                for member in sorted(members):
                    manifest["files"][member] = _add(archive, links / member, member)
                    total += (links / member).stat().st_size
                body = json.dumps(manifest, indent=1, sort_keys=True).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mtime = len(body), manifest["created_at"]
                archive.addfile(info, io.BytesIO(body))
            with open(partial, "rb+") as handle:  # durable before it takes its name
                os.fsync(handle.fileno())
            partial.rename(destination)
            fsync_dir(destination.parent)
    finally:
        shutil.rmtree(links, ignore_errors=True)
    return Summary(destination, len(manifest["files"]), total, counts["corpora"], counts["adapter_versions"])


def _copy_database(settings: Settings, scratch: Path, links: Path) -> tuple[str, list[str], dict]:
    """(archive member of the database copy, members of the files it points at, counts), all from
    one consistent view; the files are linked under `links` before anything else is done."""
    url = make_url(settings.resolved_database_url)
    data_dir = settings.data_dir.resolve()
    if url.get_backend_name() == "sqlite":
        copy = scratch / "graft.db"
        source = sqlite3.connect(url.database)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)  # consistent: pages copied under SQLite's own locking
        finally:
            source.close()
            target.close()
        engine = create_engine(f"sqlite:///{copy}")
        try:
            with Session(engine) as session:
                files, counts = _pointed_at(session, settings)
        finally:
            engine.dispose()
        return "graft.db", _link(files, data_dir, links), counts
    engine = create_engine(settings.resolved_database_url, isolation_level="REPEATABLE READ")
    try:
        with engine.connect() as connection, connection.begin():
            snapshot_id = connection.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            with Session(bind=connection) as session:
                files, counts = _pointed_at(session, settings)
            members = _link(files, data_dir, links)
            _pg_dump(url, snapshot_id, scratch / "graft.pgdump")  # the same view, while it is open
    finally:
        engine.dispose()
    return "graft.pgdump", members, counts


def _link(files: list[Path], data_dir: Path, links: Path) -> list[str]:
    """Hard-link each file under `links` by its archive member name; FileGone if one went already."""
    members = []
    for path in sorted(set(files)):  # versions with the same content share their folder
        member = f"data/{path.resolve().relative_to(data_dir).as_posix()}"
        target = links / member
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except FileNotFoundError as exc:
            raise FileGone(str(path)) from exc
        members.append(member)
    return members


def _pointed_at(session: Session, settings: Settings) -> tuple[list[Path], dict]:
    store = GenerationStore(settings.indexes_dir)
    files: list[Path] = []
    corpora = list(session.execute(select(Corpus.id, Corpus.current_generation)))
    for corpus_id, generation in corpora:
        if generation is not None:
            files += _files_under(store.generation_dir(corpus_id, generation))
    files += [Path(p) for p in session.scalars(select(Document.raw_path).where(Document.raw_path.is_not(None)))]
    versions = list(session.scalars(select(AdapterVersion.path).where(AdapterVersion.deleted.is_(False))))
    for folder in versions:
        files += _files_under(Path(folder))
    return files, {"corpora": len(corpora), "adapter_versions": len(versions)}


def _files_under(folder: Path) -> list[Path]:
    try:
        if not folder.is_dir():
            raise FileNotFoundError(folder)
        return [p for p in folder.rglob("*") if p.is_file()]
    except FileNotFoundError as exc:  # removed as it was listed
        raise FileGone(str(folder)) from exc


class _Hashing(io.RawIOBase):
    """A file read through, hashing what tarfile reads (large index files are never held whole)."""

    def __init__(self, handle):
        self.handle, self.digest = handle, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.handle.readinto(buffer)
        self.digest.update(memoryview(buffer)[:count])
        return count


def _add(archive: tarfile.TarFile, path: Path, member: str) -> str:
    """Add one file; its sha256."""
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        info = tarfile.TarInfo(member)
        info.size, info.mtime = stat.st_size, int(stat.st_mtime)
        reader = _Hashing(handle)
        archive.addfile(info, io.BufferedReader(reader, 1 << 20))
        return reader.digest.hexdigest()


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise SnapshotError(f"{name} is needed for a PostgreSQL database: install Debian's postgresql-client")
    return str(found)


def _pg_args(url) -> list[str]:
    args = ["--host", url.host or "localhost", "--port", str(url.port or 5432), "--dbname", url.database]
    if url.username:
        args += ["--username", url.username]
    return args


def _pg_env(url) -> dict:
    return {**os.environ, **({"PGPASSWORD": url.password} if url.password else {})}


def _pg_dump(url, snapshot_id: str, target: Path) -> None:
    run = subprocess.run([_pg_tool("pg_dump"), *_pg_args(url), "--format=custom", "--no-owner",
                          f"--snapshot={snapshot_id}", "--file", str(target)],
                         env=_pg_env(url), capture_output=True, text=True)
    if run.returncode != 0:
        raise SnapshotError(f"pg_dump failed: {run.stderr.strip()[-500:]}")


def restore(settings: Settings, source: Path) -> Summary:
    """Rebuild the data folder (and database) of `settings` from the snapshot at `source`."""
    data_dir = settings.data_dir
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SnapshotError(f"{data_dir} is not empty: restore into a new folder")
    with tarfile.open(source, "r") as archive:
        manifest = _verified_manifest(archive)
        data_dir.mkdir(parents=True, exist_ok=True)
        for member, sha256 in manifest["files"].items():
            target = data_dir / PurePosixPath(member).relative_to("data") if member.startswith("data/") \
                else data_dir / "tmp-restore" / member
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.extractfile(member) as handle, open(target, "wb") as out:
                shutil.copyfileobj(handle, out)
    database = data_dir / "tmp-restore" / manifest["database"]
    url = make_url(settings.resolved_database_url)
    if manifest["database"] == "graft.db":
        if url.get_backend_name() != "sqlite":
            raise SnapshotError("this snapshot holds a SQLite database: unset GRAFT_DATABASE_URL to restore it")
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        database.rename(url.database)
    else:
        if url.get_backend_name() == "sqlite":
            raise SnapshotError("this snapshot holds a PostgreSQL dump: set GRAFT_DATABASE_URL to an empty database")
        run = subprocess.run([_pg_tool("pg_restore"), *_pg_args(url), "--no-owner", "--exit-on-error",
                              str(database)], env=_pg_env(url), capture_output=True, text=True)
        if run.returncode != 0:
            raise SnapshotError(f"pg_restore failed: {run.stderr.strip()[-500:]}")
    shutil.rmtree(data_dir / "tmp-restore", ignore_errors=True)
    _relocate(settings, manifest["data_dirs"])
    return Summary(Path(source), len(manifest["files"]), 0, manifest["corpora"], manifest["adapter_versions"])


def _verified_manifest(archive: tarfile.TarFile) -> dict:
    try:
        manifest = json.load(archive.extractfile(MANIFEST))
    except (KeyError, ValueError) as exc:
        raise SnapshotError(f"not a graft snapshot: no readable {MANIFEST}") from exc
    if manifest.get("format") != FORMAT:
        raise SnapshotError(f"snapshot format {manifest.get('format')!r}; this graft reads {FORMAT}")
    for member, sha256 in manifest["files"].items():
        path = PurePosixPath(member)
        if path.is_absolute() or ".." in path.parts:
            raise SnapshotError(f"snapshot member {member!r} lies outside the data folder")
        try:
            handle = archive.extractfile(member)
        except KeyError as exc:
            raise SnapshotError(f"snapshot member {member!r} is missing") from exc
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if digest.hexdigest() != sha256:
            raise SnapshotError(f"snapshot member {member!r} does not match its sha256: the archive is damaged")
    return manifest


def _relocate(settings: Settings, old_roots: list[str]) -> None:
    """Point the stored paths at the new data folder."""
    new_root = settings.data_dir.resolve()
    engine = create_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session, session.begin():
            for model, column in PATH_COLUMNS:
                for row_id, value in session.execute(select(model.id, column).where(column.is_not(None))):
                    moved = _moved(value, old_roots, new_root)
                    if moved != value:
                        session.execute(update(model).where(model.id == row_id).values({column.key: moved}))
    finally:
        engine.dispose()


def _moved(value: str, old_roots: list[str], new_root: Path) -> str:
    """`value` under the new data folder, if it lay under one of the old one's names."""
    for root in sorted(old_roots, key=len, reverse=True):
        try:
            return str(new_root / Path(value).relative_to(root))
        except ValueError:
            continue
    return value
