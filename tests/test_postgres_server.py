"""The throwaway PostgreSQL helper: starts, serves SQL through SQLAlchemy, and is gone after stop."""

import os
import socket

import pytest
import sqlalchemy as sa

from tests.postgres_server import PostgresServer, find_bin_dir, postgres_server

pytestmark = pytest.mark.postgres


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_binaries_are_installed():
    bin_dir = find_bin_dir()  # raises RuntimeError with the install hint, never skips
    assert (bin_dir / "initdb").is_file() and (bin_dir / "postgres").is_file()


def test_server_serves_sql_and_is_gone_after_stop():
    server = PostgresServer()
    with server as running:
        url = running.url
        assert url.startswith("postgresql+psycopg://") and "127.0.0.1" in url
        assert running.process.pid > 0 and running.process.poll() is None
        root, port, process = running.root, running.port, running.process
        if os.geteuid() == 0:  # the server never runs as root
            assert root.stat().st_uid != 0
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:
                version = conn.execute(sa.text("select version()")).scalar_one()
                assert version.startswith("PostgreSQL ")
                assert conn.execute(sa.text("show server_encoding")).scalar_one() == "UTF8"
                conn.execute(sa.text("create table t (id serial primary key, body text not null)"))
                conn.execute(sa.text("insert into t (body) values (:b)"), [{"b": "héllo"}, {"b": "wörld"}])
            with engine.connect() as conn:
                rows = conn.execute(sa.text("select body from t order by id")).scalars().all()
                assert rows == ["héllo", "wörld"]
        finally:
            engine.dispose()
        assert _port_open(port)
    assert process.poll() is not None  # the postmaster exited
    assert not _port_open(port)
    assert not root.exists()
    assert server.process is None and server.root is None
    with pytest.raises(sa.exc.OperationalError):
        probe = sa.create_engine(url, connect_args={"connect_timeout": 2})
        try:
            with probe.connect():
                pass
        finally:
            probe.dispose()


def test_context_manager_yields_a_fresh_database():
    with postgres_server() as url:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("select current_database()")).scalar_one() == "graft_test"
                tables = conn.execute(sa.text(
                    "select count(*) from information_schema.tables where table_schema = 'public'"
                )).scalar_one()
                assert tables == 0
        finally:
            engine.dispose()


def test_missing_binaries_is_a_clear_error(monkeypatch, tmp_path):
    import tests.postgres_server as helper

    monkeypatch.setenv("GRAFT_PG_BIN", str(tmp_path))
    monkeypatch.setattr(helper.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(helper.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="PostgreSQL server binaries not found: install Debian's postgresql package"):
        with postgres_server():
            pass
