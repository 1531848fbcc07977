"""Shared fixtures: the prepared base model, a real local vLLM engine, a fake one, a real PostgreSQL server.

A module runs each of its gateway tests on SQLite and on PostgreSQL with one line,

    pytestmark = pytest.mark.databases("sqlite", "postgresql")

which parametrizes the `database_url` fixture (ids `[sqlite]`, `[postgresql]`; the PostgreSQL ones
carry the `postgres` marker): `make_settings` then points the gateway at a fresh database of the
session's throwaway server, migrated like SQLite. Modules without the marker stay on SQLite.
"""

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from service.basemodel import prepare_base_model
from service.engine.supervisor import LocalEngine
from service.settings import Settings
from tests.adapters_store.lora_factory import make_lora
from tests.fake_engine import FakeEngine
from tests.harness import free_port

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """The SmolLM2 folder `make model` prepares (prepared here too if missing)."""
    return prepare_base_model(REPO / "data" / "models" / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
async def local_engine(base_model_dir, tmp_path_factory) -> LocalEngine:
    """One real vLLM server on CPU for the whole session, supervised like `graft serve` does."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("engine"), base_model=str(base_model_dir),
                        engine_port=free_port(), max_loras=4, max_lora_rank=16)
    engine = LocalEngine(settings)
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's local Ray cluster, for the tests marked `ray` (tests/ray_cluster.py)."""
    pytest.importorskip("ray", reason="the `ray` extra is not installed")  # make install installs it
    from tests.ray_cluster import ray_cluster as start

    with start() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def embedding_cache_dir(tmp_path_factory) -> Path:
    """One folder of exported embedding models for the session (an export takes ~2 s)."""
    return tmp_path_factory.mktemp("embedders")


DATABASES = ("sqlite", "postgresql")


def pytest_configure(config):
    config.addinivalue_line("markers", "databases(*names): run the module's tests that use "
                                       "make_settings on each database named (sqlite, postgresql)")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """`make test` runs two pytest-xdist workers (`--dist loadgroup`). A module's tests stay on one
    worker, so its module-scoped fixtures are set up once, and every test on the real engine runs on
    one worker: one session engine and at most one more vLLM beside it, as in a serial run (a vLLM
    on CPU holds about 4 GiB; four at once would not fit beside the rest)."""
    for item in items:
        # Ray tests share one session cluster and run vLLM replicas: with the engine tests, on one worker.
        on_engine = item.get_closest_marker("engine") or item.get_closest_marker("ray")
        group = "engine" if on_engine else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("databases")
    if marker is None or "database_url" not in metafunc.fixturenames:
        return
    names = marker.args or DATABASES
    unknown = set(names) - set(DATABASES)
    if unknown:
        raise pytest.UsageError(f"databases marker: unknown {sorted(unknown)}; known: {DATABASES}")
    metafunc.parametrize("database_url", [
        pytest.param(name, id=name, marks=[pytest.mark.postgres] if name == "postgresql" else [])
        for name in names], indirect=True)


@contextmanager
def fresh_postgres_database(server_url: str):
    """A new, empty database on the server at `server_url`; dropped (connections and all) on exit."""
    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    name = f"graft_{uuid.uuid4().hex[:12]}"

    def admin(statement: str) -> None:
        with psycopg.connect(host=server.host, port=server.port, user=server.username, dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)

    admin(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(request):
    """The database make_settings uses: None (the SQLite file in the data dir) unless the module's
    `databases` marker parametrizes it; for "postgresql", a fresh database for this test alone."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        yield None
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def make_settings(tmp_path, base_model_dir, embedding_cache_dir, database_url):
    """Settings for a gateway in a fresh data dir with a migrated database (SQLite in the data dir
    unless the module asks for PostgreSQL too: see `database_url`). Every call in one test shares
    the data dir and the database, as replicas of one deployment do."""
    from migrations.runner import upgrade

    def make(**overrides) -> Settings:
        overrides.setdefault("embedding_cache_dir", embedding_cache_dir)
        if database_url is not None:
            overrides.setdefault("database_url", database_url)
        settings = Settings(data_dir=tmp_path / "data", base_model=str(base_model_dir),
                            port=free_port(), **overrides)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.resolved_database_url)
        return settings

    return make


@pytest.fixture
async def fake_engine():
    """The echoing fake engine (tests/fake_engine.py), served on a loopback port."""
    engine = FakeEngine()
    async with engine.serving():
        yield engine


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server from Debian's binaries, for the whole session."""
    from tests.postgres_server import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def good_lora(base_model_dir, tmp_path_factory) -> Path:
    """A real, untrained PEFT LoRA (rank 8, q_proj + v_proj) for the base model. Do not modify."""
    return make_lora(base_model_dir, tmp_path_factory.mktemp("good-lora"))
