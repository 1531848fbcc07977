"""`graft snapshot create|restore`: backups of a gateway's database and files (service/snapshot.py).

They read the same GRAFT_ settings as the gateway (GRAFT_DATA_DIR, GRAFT_DATABASE_URL), and work
on the database and the data folder directly, while the gateway runs."""

from pathlib import Path

import typer

from service import snapshot
from service.settings import Settings

snapshot_app = typer.Typer(no_args_is_help=True, help="Backups: a consistent archive of a gateway's state")


def _fail(message: str) -> None:
    typer.echo(f"graft: error: {message}", err=True)
    raise typer.Exit(1)


@snapshot_app.command("create")
def snapshot_create(path: Path = typer.Argument(..., help="the archive to write (a new .tar file)")) -> None:
    """Archive the database and the files it points at (index generations, uploads, adapter versions)."""
    try:
        made = snapshot.create(Settings(), path)
    except snapshot.SnapshotError as exc:
        _fail(str(exc))
    typer.echo(f"snapshot {made.path}: {made.corpora} corpora, {made.adapter_versions} adapter versions, "
               f"{made.files} files, {made.bytes / 1e6:.1f} MB")


@snapshot_app.command("restore")
def snapshot_restore(path: Path = typer.Argument(..., help="an archive `graft snapshot create` wrote")) -> None:
    """Rebuild an empty GRAFT_DATA_DIR (and database) from a snapshot, every file checked by its sha256."""
    if not path.is_file():
        _fail(f"no snapshot at {path}")
    try:
        restored = snapshot.restore(Settings(), path)
    except snapshot.SnapshotError as exc:
        _fail(str(exc))
    typer.echo(f"restored {restored.corpora} corpora and {restored.adapter_versions} adapter versions from {path}")
