"""A throwaway PostgreSQL server for tests, run from Debian's `postgresql` package binaries.

    with postgres_server() as url:   # postgresql+psycopg://postgres@127.0.0.1:PORT/graft_test
        ...

The server lives in a temp folder (data dir, unix socket dir, log), listens on a free loopback
TCP port, trusts local connections, runs with fsync off, and is stopped with
`pg_ctl stop -m immediate` and deleted on exit. initdb and postgres refuse to run as root, so
under root both run as the unprivileged `postgres` user (created by the Debian package) or
`nobody`, and the temp folder belongs to that user. Missing binaries are an error, not a skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

MISSING_BINARIES = "PostgreSQL server binaries not found: install Debian's postgresql package"
SUPERUSER = "postgres"
DATABASE = "graft_test"
_PROGRAMS = ("initdb", "postgres", "pg_ctl")


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin (or $GRAFT_PG_BIN, or initdb on PATH)."""
    candidates = []
    if os.environ.get("GRAFT_PG_BIN"):
        candidates.append(Path(os.environ["GRAFT_PG_BIN"]))

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", Path(path).parent.parent.name)) or (0,)

    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                                                   key=version, reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in _PROGRAMS):
            return folder
    raise RuntimeError(MISSING_BINARIES)


def _server_user() -> pwd.struct_passwd | None:
    """None when we are not root (run as ourselves); else an unprivileged account to run as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, but neither a 'postgres' nor a 'nobody' user exists "
                       "to run PostgreSQL as (initdb refuses root)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class PostgresServer:
    """One PostgreSQL server in a temp folder. `start()` returns the SQLAlchemy URL."""

    def __init__(self, start_timeout_s: float = 60.0, database: str = DATABASE):
        self.bin_dir = find_bin_dir()
        self.start_timeout_s = start_timeout_s
        self.database = database
        self.user = _server_user()
        self.root: Path | None = None
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.url: str | None = None
        self.startup_seconds: float | None = None

    # -- paths -------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    # -- running programs as the server user ------------------------------------------------
    def _as_user(self) -> dict:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        if self.user is not None:
            env.update(HOME=str(self.root), USER=self.user.pw_name, LOGNAME=self.user.pw_name)
        return env

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin_dir / args[0]), *args[1:]], cwd=self.root,
                              env=self._env(), capture_output=True, text=True, timeout=timeout,
                              **self._as_user())

    def _temp_parent(self) -> str | None:
        """Where the folder goes: the usual temp dir, or /tmp if the server user cannot reach it."""
        parent = Path(tempfile.gettempdir()).resolve()
        if self.user is None:
            return None
        reachable = all(p.stat().st_mode & 0o001 for p in (parent, *parent.parents))
        return None if reachable else "/tmp"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> str:
        began = time.monotonic()
        self.root = Path(tempfile.mkdtemp(prefix="graft-pg-", dir=self._temp_parent()))
        try:
            self.socket_dir.mkdir()
            if self.user is not None:
                for path in (self.root, self.socket_dir):
                    os.chown(path, self.user.pw_uid, self.user.pw_gid)
            init = self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                             "-E", "UTF8", "--no-locale", "--no-sync")
            if init.returncode != 0:
                raise RuntimeError(f"initdb failed (exit {init.returncode}):\n"
                                   f"{(init.stdout + init.stderr).strip()}")
            for attempt in range(3):  # the free port may be taken before the server binds it
                self.port = _free_port()
                try:
                    self._launch_and_wait(began)
                    break
                except _PortTaken:
                    if attempt == 2:
                        raise RuntimeError(f"PostgreSQL could not bind a loopback port; log:\n"
                                           f"{_tail(self.log_path)}") from None
            self._create_database()
        except BaseException:
            self.stop()
            raise
        self.url = f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{self.database}"
        self.startup_seconds = time.monotonic() - began
        return self.url

    def _launch_and_wait(self, began: float) -> None:
        options = [
            "-D", str(self.data_dir), "-p", str(self.port), "-k", str(self.socket_dir),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=100", "-c", "shared_buffers=32MB",
        ]
        with open(self.log_path, "ab") as log:
            if self.user is not None:
                os.fchown(log.fileno(), self.user.pw_uid, self.user.pw_gid)
            self.process = subprocess.Popen(
                [str(self.bin_dir / "postgres"), *options], cwd=self.root, env=self._env(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **self._as_user())
        deadline = began + self.start_timeout_s
        last_error = "no attempt yet"
        while True:
            code = self.process.poll()
            if code is not None:
                log_tail = _tail(self.log_path)
                self.process = None
                if "could not bind" in log_tail or "already in use" in log_tail:
                    raise _PortTaken()
                raise RuntimeError(f"PostgreSQL exited during start-up (exit {code}); "
                                   f"last lines of {self.log_path}:\n{log_tail}")
            try:
                with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER,
                                     dbname="postgres", connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                last_error = str(exc).strip()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL did not accept connections on 127.0.0.1:{self.port} within "
                    f"{self.start_timeout_s:.0f} s (last error: {last_error}); "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(0.1)

    def _create_database(self) -> None:
        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}" ENCODING \'UTF8\' TEMPLATE template0')

    def stop(self) -> None:
        """Stop immediately (no checkpoint) and delete the folder. Safe to call twice."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                try:
                    self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w",
                              "-t", "30", timeout=40)
                except subprocess.TimeoutExpired:
                    pass
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        root, self.root = self.root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


@contextmanager
def postgres_server(start_timeout_s: float = 60.0) -> Iterator[str]:
    """Start a throwaway server and yield its SQLAlchemy URL; stop and delete it on exit."""
    with PostgresServer(start_timeout_s=start_timeout_s) as server:
        yield server.url
