import os
from pathlib import Path

from service.settings import Settings


def test_lists_from_comma_separated_env(monkeypatch):
    monkeypatch.setenv("GRAFT_ENGINE_URLS", "http://a:8000, http://b:8000")
    monkeypatch.setenv("GRAFT_API_KEYS", "k1,k2")
    settings = Settings()
    assert settings.engine_urls == ["http://a:8000", "http://b:8000"]
    assert settings.api_keys == ["k1", "k2"]


def test_defaults_live_in_the_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'graft.db'}"
    assert Path(settings.resolved_base_model) == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert Settings(data_dir=tmp_path, base_model="/m").resolved_base_model == "/m"


def test_plan_threads_default_to_the_usable_cores(monkeypatch):
    assert Settings().resolved_plan_threads == len(os.sched_getaffinity(0))
    monkeypatch.setenv("GRAFT_PLAN_THREADS", "3")
    assert Settings().resolved_plan_threads == 3
