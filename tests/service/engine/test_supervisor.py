from service.engine.supervisor import LocalEngine
from service.settings import Settings


def test_engine_wraps_only_the_configured_lora_layers(tmp_path, monkeypatch):
    default = LocalEngine(Settings(data_dir=tmp_path)).command()
    assert "--enable-lora" in default and "--lora-target-modules" not in default

    monkeypatch.setenv("GRAFT_LORA_TARGET_MODULES", "q_proj, v_proj")
    command = LocalEngine(Settings(data_dir=tmp_path)).command()
    at = command.index("--lora-target-modules")
    assert command[at + 1:at + 3] == ["q_proj", "v_proj"]

