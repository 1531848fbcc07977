"""Crash-safe file writes: a file is complete under its final name or absent.

The pattern is the usual one: write a temp file in the same folder, fsync it, `os.replace`
it over the final name, then fsync the folder so the rename itself survives a power loss.
"""

import os
import uuid
from pathlib import Path


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the entries of a folder (created, renamed or removed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durably(folder: Path) -> None:
    """`mkdir -p` that fsyncs the parent of each folder it makes: a file later made durable in
    `folder` is then reachable after a crash too."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
        fsync_dir(made.parent)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under root (root included), deepest first."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(Path(folder) / name)
        fsync_dir(Path(folder))


def temp_sibling(path: Path) -> Path:
    """A unique temp name in the folder of path (same file system, so rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")


def replace_durably(tmp: Path, path: Path) -> None:
    """Atomically move a written temp file onto path, fsyncing the file and the folder."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_bytes_durably(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
