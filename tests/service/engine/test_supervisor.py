import os
import sys

import pytest

from service.engine.supervisor import LocalEngine
from service.settings import Settings


def test_engine_wraps_only_the_configured_lora_layers(tmp_path, monkeypatch):
    default = LocalEngine(Settings(data_dir=tmp_path)).command()
    assert "--enable-lora" in default and "--lora-target-modules" not in default

    monkeypatch.setenv("GRAFT_LORA_TARGET_MODULES", "q_proj, v_proj")
    command = LocalEngine(Settings(data_dir=tmp_path)).command()
    at = command.index("--lora-target-modules")
    assert command[at + 1:at + 3] == ["q_proj", "v_proj"]


async def _niceness_of_child(settings: Settings, monkeypatch) -> tuple[int, str]:
    """The spawned child's thread niceness and its /proc/self/autogroup line ("" where none)."""
    engine = LocalEngine(settings)
    probe = ("import os; print(os.nice(0)); "
             "print(open('/proc/self/autogroup').read().strip() if os.path.exists('/proc/self/autogroup') else '')")
    monkeypatch.setattr(engine, "command", lambda: [sys.executable, "-c", probe])
    await engine._spawn()
    assert await engine.process.wait() == 0
    niceness, _, autogroup = engine.log_path.read_text().partition("\n")
    return int(niceness), autogroup.strip()


async def test_engine_processes_run_niced(tmp_path, monkeypatch):
    """vLLM busy-polls after every step; niced, it yields the CPU to the gateway's planning."""
    ours = os.nice(0)
    niced, _ = await _niceness_of_child(Settings(data_dir=tmp_path / "a"), monkeypatch)
    assert niced == min(ours + 10, 19)
    not_niced, _ = await _niceness_of_child(Settings(data_dir=tmp_path / "b", engine_nice=0), monkeypatch)
    assert not_niced == ours


async def test_engine_session_autogroup_runs_niced(tmp_path, monkeypatch):
    """The engine leads a session of its own, so with autogroups the group needs the niceness too:
    thread niceness alone only orders threads inside one group (a burst's plans got half the CPU)."""
    if not os.path.exists("/proc/self/autogroup"):
        pytest.skip("this kernel has no scheduling autogroups (CONFIG_SCHED_AUTOGROUP)")
    ours = os.nice(0)
    _, autogroup = await _niceness_of_child(Settings(data_dir=tmp_path / "a"), monkeypatch)
    assert autogroup.endswith(f"nice {min(ours + 10, 19)}"), autogroup
    _, autogroup = await _niceness_of_child(Settings(data_dir=tmp_path / "b", engine_nice=0), monkeypatch)
    assert autogroup.endswith("nice 0"), autogroup


async def test_engine_shares_the_cpu_equally_while_told_to(tmp_path, monkeypatch):
    """While the gateway ingests it turns the engine's yielding off (autogroup back to 0), and on
    again after; a restart in between keeps what it was told."""
    if not os.path.exists("/proc/self/autogroup"):
        pytest.skip("this kernel has no scheduling autogroups (CONFIG_SCHED_AUTOGROUP)")
    niced = f"nice {min(os.nice(0) + 7, 19)}"
    engine = LocalEngine(Settings(data_dir=tmp_path, engine_nice=7))
    monkeypatch.setattr(engine, "command", lambda: [sys.executable, "-c", "import time; time.sleep(60)"])

    def autogroup() -> str:
        with open(f"/proc/{engine.process.pid}/autogroup") as file:
            return file.read().strip()

    await engine._spawn()
    try:
        assert autogroup().endswith(niced)
        engine.yield_cpu(False)
        assert autogroup().endswith("nice 0")
        await engine._kill_group()
        await engine._spawn()  # a restart while ingesting
        assert autogroup().endswith("nice 0")
        engine.yield_cpu(True)
        assert autogroup().endswith(niced)
    finally:
        await engine._kill_group()
