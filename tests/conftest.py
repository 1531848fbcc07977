"""Shared fixtures: the prepared base model, a real local vLLM engine, a fake one, a real PostgreSQL server."""

import os
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
def embedding_cache_dir(tmp_path_factory) -> Path:
    """One folder of exported embedding models for the session (an export takes ~2 s)."""
    return tmp_path_factory.mktemp("embedders")


@pytest.fixture
def make_settings(tmp_path, base_model_dir, embedding_cache_dir):
    """Settings for a gateway in a fresh data dir with a migrated SQLite database."""
    from migrations.runner import upgrade

    def make(**overrides) -> Settings:
        overrides.setdefault("embedding_cache_dir", embedding_cache_dir)
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
