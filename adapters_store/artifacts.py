"""Safe unpacking of adapter uploads and content-addressed, durable storage of adapter versions.

Client file and member names are only ever compared against a fixed set of basenames; the
files land under those fixed names, and a stored version's folder is named by its sha256.
"""

import errno
import gzip
import hashlib
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from adapters_store.durable import fsync_dir, fsync_tree
from adapters_store.errors import Invalid, TooLarge, Unsupported
from adapters_store.validation import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME

log = logging.getLogger(__name__)

README_NAME = "README.md"
KEPT_NAMES = (CONFIG_NAME, WEIGHTS_NAME, README_NAME)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
OTHER_ARCHIVE_SUFFIXES = (".7z", ".rar", ".gz", ".bz2", ".xz", ".zst", ".tbz2", ".txz")
CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Budget:
    """Counts bytes actually read or written, so lying archive headers cannot exceed a limit."""

    def __init__(self, limit: int, what: str = "upload"):
        self.limit = self.left = limit
        self.what = what

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise TooLarge(f"{self.what} exceeds {self.limit} bytes uncompressed",
                           param="files", code="too_large")


class _LimitedReader:
    """Caps the decompressed tar stream: tarfile buffers some headers (pax) whole in memory."""

    def __init__(self, inner, budget: _Budget):
        self.inner = inner
        self.budget = budget

    def read(self, n: int = -1) -> bytes:
        left = self.budget.left + 1
        data = self.inner.read(left if n is None or n < 0 else min(n, left))
        self.budget.take(len(data))
        return data


def unpack_upload(
    files: list[tuple[str, Path]], dest: Path, *, max_members: int = 64, max_total_bytes: int
) -> None:
    """Put the adapter files of an upload into dest (created if missing, must be empty).

    On rejection, the files written so far are removed again.
    """
    if not files:
        raise Invalid("no files were uploaded", param="files", code="no_files")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"unpack destination {dest} is not empty")
    written: list[Path] = []
    budget = _Budget(max_total_bytes)
    try:
        if len(files) == 1 and files[0][0].lower().endswith(ARCHIVE_SUFFIXES):
            unpack = _unpack_zip if files[0][0].lower().endswith(".zip") else _unpack_tar
            unpack(Path(files[0][1]), dest, _Plan(max_members, max_total_bytes), budget, written)
        else:
            _copy_loose(files, dest, budget, written)
        if not (dest / CONFIG_NAME).is_file():
            raise Invalid(f"the upload has no {CONFIG_NAME}", param="files", code="missing_config")
        if not (dest / WEIGHTS_NAME).is_file():
            raise Invalid(f"the upload has no {WEIGHTS_NAME}", param="files", code="missing_weights")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _kept_name(basename: str) -> bool:
    """True for the files to keep; refuses pickles; False for other, ignorable names."""
    if basename.lower().endswith(PICKLE_SUFFIXES):
        raise Unsupported(f"{basename!r}: pickle files are refused, upload {WEIGHTS_NAME}",
                          param="files", code="pickle_refused")
    return basename in KEPT_NAMES


def _copy_loose(files, dest: Path, budget: _Budget, written: list[Path]) -> None:
    for name, path in files:
        _kept_name(name.replace("\\", "/").rsplit("/", 1)[-1])  # refuses pickles with 415
        if name.lower().endswith(OTHER_ARCHIVE_SUFFIXES):
            raise Unsupported(f"{name!r}: archives must be {', '.join(ARCHIVE_SUFFIXES)}",
                              param="files", code="unsupported_archive")
        if name not in KEPT_NAMES:
            hint = f"upload {CONFIG_NAME} and {WEIGHTS_NAME}, or one {'/'.join(ARCHIVE_SUFFIXES)} archive of them"
            raise Invalid(f"unexpected file {name!r}: {hint}", param="files", code="unknown_file")
        if (dest / name).exists():
            raise Invalid(f"{name} was uploaded twice", param="files", code="duplicate_file")
        with open(path, "rb") as src:
            _write(src, dest / name, budget, written)


def _write(src, target: Path, budget: _Budget, written: list[Path]) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    written.append(target)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(CHUNK):
            budget.take(len(chunk))
            out.write(chunk)


def _member_parts(name: str) -> list[str]:
    if not name or "\x00" in name or "\\" in name:
        raise Invalid(f"archive member name {name!r} is not allowed", param="files", code="unsafe_path")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise Invalid(f"archive member {name!r} has an absolute path", param="files", code="unsafe_path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Invalid(f"archive member {name!r} has a '..' component", param="files", code="unsafe_path")
    return parts


@dataclass
class _Plan:
    """Checks archive members one by one, from their headers, and picks the ones to extract."""

    max_members: int
    max_total_bytes: int
    count: int = 0
    declared: int = 0
    folder: str | None = None
    chosen: set[str] = field(default_factory=set)

    def admit(self, name: str, kind: str, size: int) -> str | None:
        """Returns the basename to extract the member as, or None to skip it."""
        self.count += 1
        if self.count > self.max_members:
            raise TooLarge(f"archive has more than {self.max_members} members",
                           param="files", code="too_many_members")
        parts = _member_parts(name)
        if kind == "dir":
            if len(parts) > 1:
                raise Invalid(f"{name!r}: at most one folder level is allowed",
                              param="files", code="archive_layout")
            return None
        if kind != "file":
            raise Invalid(f"archive member {name!r} is a {kind}, not a regular file",
                          param="files", code="unsafe_member")
        self.declared += size
        if self.declared > self.max_total_bytes:
            raise TooLarge(f"archive holds more than {self.max_total_bytes} bytes",
                           param="files", code="too_large")
        if parts[0] == "__MACOSX":  # resource forks that macOS adds to zips
            return None
        if len(parts) > 2:
            raise Invalid(f"{name!r}: at most one folder level is allowed",
                          param="files", code="archive_layout")
        if not _kept_name(parts[-1]):
            return None
        folder = parts[0] if len(parts) == 2 else ""
        if self.folder is not None and folder != self.folder:
            raise Invalid("the adapter files are spread over several folders",
                          param="files", code="archive_layout")
        self.folder = folder
        if parts[-1] in self.chosen:
            raise Invalid(f"{parts[-1]} appears twice in the archive",
                          param="files", code="duplicate_member")
        self.chosen.add(parts[-1])
        return parts[-1]


def _unpack_zip(path: Path, dest: Path, plan: _Plan, budget: _Budget, written) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            targets = []
            for info in archive.infolist():
                # Unix file type bits; zips written without them (type 0) hold plain files.
                file_type = stat.S_IFMT(info.external_attr >> 16)
                kind = "dir" if info.is_dir() else "file" if file_type in (0, stat.S_IFREG) else "link or device"
                if info.flag_bits & 0x1:
                    raise Invalid(f"{info.filename!r} is encrypted", param="files", code="bad_archive")
                basename = plan.admit(info.filename, kind, info.file_size)
                if basename:
                    targets.append((info, basename))
            # zipfile stops each member at its declared size; the budget bounds the sum.
            for info, basename in targets:
                with archive.open(info) as src:
                    _write(src, dest / basename, budget, written)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise Invalid(f"not a readable zip archive: {exc}", param="files", code="bad_archive") from None


def _unpack_tar(path: Path, dest: Path, plan: _Plan, budget: _Budget, written) -> None:
    # Stream mode, one pass: members are checked from their headers before their bytes are read.
    stream = _Budget(budget.limit + (plan.max_members + 4) * 64 * 1024, "tar stream")
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        inner = gzip.GzipFile(fileobj=raw) if gzipped else raw
        try:
            with tarfile.open(fileobj=_LimitedReader(inner, stream), mode="r|") as archive:
                for member in archive:
                    kind = "file" if member.isreg() else "dir" if member.isdir() else "link or device"
                    basename = plan.admit(member.name, kind, member.size)
                    if basename:
                        _write(archive.extractfile(member), dest / basename, budget, written)
        except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise Invalid(f"not a readable tar archive: {exc}",
                          param="files", code="bad_archive") from None


def content_sha256(folder: Path) -> str:
    """sha256 over the (name, size, bytes) of a folder's files in name order."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir(), key=lambda p: p.name):
        if path.is_symlink() or not path.is_file():
            raise ValueError(f"{path} is not a regular file")
        name = path.name.encode()
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


class AdapterArtifactStore:
    """Immutable adapter versions under root/<sha256>/; staging and trash are dot-folders."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.staging_root = self.root / ".staging"
        self.staging_root.mkdir(parents=True, exist_ok=True)

    def new_staging(self) -> Path:
        """An empty folder on the store's filesystem, so store() can rename it into place."""
        return Path(tempfile.mkdtemp(dir=self.staging_root))

    def path_for(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256

    def store(self, adapter: str, staging_folder: Path) -> tuple[str, Path]:
        """Moves a validated folder (on the store's filesystem: see new_staging) into place."""
        staging_folder = Path(staging_folder)
        digest = content_sha256(staging_folder)
        final = self.path_for(digest)
        if final.is_dir():
            shutil.rmtree(staging_folder)
            return digest, final
        fsync_tree(staging_folder)
        try:
            os.rename(staging_folder, final)
        except OSError as exc:
            # A concurrent store of the same content won the rename.
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.is_dir():
                raise
            shutil.rmtree(staging_folder)
        fsync_dir(self.root)
        log.info("stored adapter %s version content %s", adapter, digest)
        return digest, final

    def remove(self, sha256: str) -> None:
        final = self.path_for(sha256)
        if not final.exists():
            return
        # Rename first, so a crash never leaves a half-deleted folder under a valid name.
        trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=self.root))
        os.rename(final, trash / sha256)
        fsync_dir(self.root)
        shutil.rmtree(trash)

    def sweep_leftovers(self, older_than_s: float = 3600) -> None:
        """Removes trash and stale staging folders left by a crash."""
        cutoff = time.time() - older_than_s
        for path in [*self.root.glob(".trash-*"), *self.staging_root.iterdir()]:
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
