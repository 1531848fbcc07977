"""A fleet replica's engine, without a Ray cluster: how its vLLM is told to place its threads."""

from service.engine.ray_replica import replica_engine_env
from service.engine.supervisor import LocalEngine
from service.settings import Settings


def test_a_replica_engine_leaves_thread_placement_to_the_os_unless_the_node_says_otherwise():
    # Two replicas on one node would otherwise both pin vLLM's threads to the same cores.
    assert replica_engine_env({"OMP_NUM_THREADS": "1"}) == {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    assert replica_engine_env({"VLLM_CPU_OMP_THREADS_BIND": "0-3"}) == {}


def test_the_engine_gets_what_its_starter_adds_on_top_of_its_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    engine = LocalEngine(Settings(data_dir=tmp_path), env={"VLLM_CPU_OMP_THREADS_BIND": "nobind"})
    env = engine.environment()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env["OMP_NUM_THREADS"] == "1"  # Ray's share for the replica, passed through
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    assert "VLLM_CPU_OMP_THREADS_BIND" not in LocalEngine(Settings(data_dir=tmp_path)).environment()
