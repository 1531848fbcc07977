import os
import sys

from service.engine.supervisor import LocalEngine
from service.settings import Settings


def test_engine_wraps_only_the_configured_lora_layers(tmp_path, monkeypatch):
    default = LocalEngine(Settings(data_dir=tmp_path)).command()
    assert "--enable-lora" in default and "--lora-target-modules" not in default

    monkeypatch.setenv("GRAFT_LORA_TARGET_MODULES", "q_proj, v_proj")
    command = LocalEngine(Settings(data_dir=tmp_path)).command()
    at = command.index("--lora-target-modules")
    assert command[at + 1:at + 3] == ["q_proj", "v_proj"]


async def test_engine_processes_run_niced(tmp_path, monkeypatch):
    """vLLM busy-polls after every step; niced, it yields the CPU to the gateway's planning."""
    async def niceness_of_child(settings: Settings) -> int:
        engine = LocalEngine(settings)
        monkeypatch.setattr(engine, "command", lambda: [sys.executable, "-c", "import os; print(os.nice(0))"])
        await engine._spawn()
        assert await engine.process.wait() == 0
        return int(engine.log_path.read_text().split()[-1])

    ours = os.nice(0)
    assert await niceness_of_child(Settings(data_dir=tmp_path / "a")) == min(ours + 10, 19)
    assert await niceness_of_child(Settings(data_dir=tmp_path / "b", engine_nice=0)) == ours
