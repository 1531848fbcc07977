"""The one settings class of graft. Built once at start-up and passed in; never read globally."""

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_BASE_MODEL_NAME = "SmolLM2-135M-Instruct"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRAFT_", extra="ignore")

    # storage
    data_dir: Path = Field(Path("data"), description="SQLite file, indexes, uploads, adapters, models, engine log")
    database_url: str | None = Field(None, description="e.g. `postgresql+psycopg://user:pw@host/db`; none: the "
                                                       "SQLite file `graft.db` in the data folder")

    # gateway
    host: str = Field("127.0.0.1", description="gateway bind address (beyond loopback only with a key)")
    port: int = Field(8000, description="gateway port")
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description="bootstrap admin keys "
                                                                                        "(global, no limits)")
    # Off by default: the pages load their scripts from a public CDN, which an air-gapped host
    # cannot reach, without the console's CSP.
    api_docs_pages: bool = Field(False, description="serve FastAPI's `/docs` and `/redoc` (they load scripts from "
                                                    "a public CDN); `/openapi.json` is always served")
    # Plans are CPU-bound: more at once than cores makes a burst of requests finish later.
    plan_threads: int = Field(0, ge=0, le=256, description="request plans (embedding, search, prompt) run at once "
                                                           "off the event loop; 0: one per usable core")

    # engine
    engine_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="vLLM OpenAI servers (`--enable-lora`, runtime LoRA updating on); "
                                          "empty: start one local vLLM as a child process")
    base_model: str | None = Field(None, description="HF folder or id: tokenizer, adapter validation, local "
                                                     "engine; none: the prepared SmolLM2 folder in the data folder")
    base_model_name: str = Field(DEFAULT_BASE_MODEL_NAME, description="its name for clients and engines "
                                                                      "(`--served-model-name`)")
    max_lora_rank: int = Field(16, description="engine `--max-lora-rank`; higher-rank uploads are refused")
    max_loras: int = Field(8, description="engine `--max-loras` (adapters in one batch)")
    # Narrowing it makes each LoRA step cheaper on CPU (bench/adapters.py).
    lora_target_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="layers the local engine wraps with LoRA, e.g. `q_proj,v_proj`; uploads "
                                          "targeting others are refused; empty: every one vLLM supports")
    max_model_len: int = Field(2048, description="engine context length; prompts are fitted into it")
    engine_port: int = Field(8100, description="local engine port")
    engine_dtype: str = Field("float32", description="local engine `--dtype` (bf16 is fast only with AVX-512)")
    engine_kv_cache_gib: int = Field(1, description="local engine KV cache (`VLLM_CPU_KVCACHE_SPACE`)")
    engine_start_timeout_s: float = Field(300.0, description="time the local engine may take to get healthy")
    engine_request_timeout_s: float = Field(300.0, description="timeout of a request to an engine")
    engine_connect_timeout_s: float = Field(5.0, description="connect timeout to an engine")
    engine_extra_args: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                              description="extra flags for the local vLLM")
    engine_backend: Literal["local", "urls", "ray"] | None = Field(
        None, description="`local`: start one vLLM as a child process; `urls`: the servers of `GRAFT_ENGINE_URLS`; "
                          "`ray`: the engine fleet on Ray Serve (`graft ray deploy`); none: `urls` when "
                          "`GRAFT_ENGINE_URLS` is set, else `local`")

    # the engine fleet and trainings on Ray (extra `ray`)
    ray_address: str = Field("auto", description="the Ray cluster `graft ray` and the Ray trainer join, e.g. `auto` "
                                                 "(the one `ray start` runs here) or `ray://head:10001`")
    ray_serve_host: str = Field("127.0.0.1", description="where the gateway reaches the fleet's Serve proxy; a "
                                                         "non-loopback host makes `graft ray deploy` bind it on all "
                                                         "interfaces")
    ray_serve_port: int = Field(8200, description="the fleet's Serve proxy port (Ray's own default, 8000, is the "
                                                  "gateway's)")
    ray_replicas: int = Field(1, ge=1, le=1000, description="engine replicas (`graft ray deploy --replicas`)")
    ray_min_replicas: int | None = Field(None, ge=0, le=1000, description="autoscaling lower bound (with "
                                                                          "`ray_max_replicas`, in place of "
                                                                          "`ray_replicas`)")
    ray_max_replicas: int | None = Field(None, ge=1, le=1000, description="autoscaling upper bound")
    ray_adapters_per_replica: int = Field(4, ge=1, le=1000, description="adapters one replica keeps loaded (LRU "
                                                                        "beyond)")
    ray_replica_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per replica")
    ray_replica_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves per replica")
    ray_adapter_url: str | None = Field(None, description="the gateway as the fleet's replicas reach it, to fetch "
                                                          "adapter files; none: `http://{host}:{port}`")
    ray_shared_folder: bool = Field(True, description="replicas may read adapters from the gateway's folder where "
                                                    "their node sees it (a shared folder); off: always over HTTP")
    ray_adapter_cache_dir: Path | None = Field(None, description="fetched adapters on each node; none: "
                                                                 "`graft-adapter-cache` in the node's temp folder")
    ray_training_gpus: float = Field(0.0, ge=0, description="GPUs a training's Ray task asks for (its CPUs: "
                                                            "`training_threads`)")
    ray_adapter_key: str | None = Field(None, description="the admin key replicas fetch adapter files with (no "
                                                          "key: only a shared folder or a node's cache serves them)")
    ray_retry_window_s: float = Field(60.0, ge=0, le=3600, description="how long the gateway sends again a request "
                                      "whose replica failed before anything reached the client (unreachable, "
                                      "502, 503, 504; Ray replaces a replica whose vLLM died within seconds); "
                                      "another engine error is sent again once")

    # indexing and retrieval
    embedding_model: str = Field("all-MiniLM-L6-v2", description="default embedder of new corpora: the packaged "
                                                                 "one or a local folder")
    # So that a key can neither probe the host's folders nor load a model of its choosing.
    allowed_embedding_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="other embedding models a corpus may name (packaged names or local "
                                          "folders); anything else is refused with one message that names no path")
    embedding_backend: Literal["onnx", "torch"] = Field(
        "onnx", description="`onnx` (exported once, run by ONNX Runtime: the same embeddings at less cost) or "
                            "`torch` (SentenceTransformer.encode)")
    embedding_cache_dir: Path | None = Field(None, description="exported ONNX models; none: "
                                                               "`models/embedders` in the data folder")
    embedding_batch_size: int = Field(64, description="chunks per embedding batch when ingesting")
    default_chunk_size: int = Field(200, description="default chunk size of new corpora, in tokens of the "
                                                     "embedder's tokenizer")
    default_chunk_overlap: int = Field(32, description="default overlap (at most a quarter of the chunk size)")
    exact_search_max_vectors: int = Field(50_000, description="larger corpora are searched with HNSW")
    hnsw_m: int = Field(32, ge=4, le=256, description="HNSW degree, fixed when a corpus's index is created")
    hnsw_ef_construction: int = Field(200, ge=8, le=4096, description="HNSW build beam, fixed likewise")
    hnsw_ef_search: int = Field(256, ge=1, le=32768, description="HNSW search beam, every corpus")
    max_upload_bytes: int = Field(50 * 1024 * 1024, description="per document upload")
    max_request_bytes: int = Field(1 * 1024 * 1024, description="per JSON body (document uploads: the limit above)")
    max_pdf_pages: int = Field(2000, description="longer PDFs become per-file errors")
    extract_timeout_s: float = Field(60.0, description="PDF text extraction time per file")

    # adapters
    max_adapter_bytes: int = Field(512 * 1024 * 1024, description="per adapter upload")
    max_archive_members: int = Field(64, description="files in an adapter archive")
    drain_timeout_s: float = Field(60.0, description="wait for a replaced adapter's requests before unloading it")
    reconcile_interval_s: float = Field(15.0, description="how often engines' adapters are checked against "
                                                          "the domains'")

    # evaluation
    eval_concurrency: int = Field(2, ge=1, le=64, description="questions of one evaluation in flight at once (the "
                                                              "rest of the engine serves live traffic)")
    eval_max_items: int = Field(5000, ge=1, le=100_000, description="items in one evaluation set")

    # tuning (POST /v1/domains/{d}/tunings)
    tuning_max_trials: int = Field(200, ge=1, le=10_000, description="most trials a tuning may ask for "
                                                                      "(`budget.trials`)")
    tuning_seed: int = Field(0, description="the tuning sampler's seed: the same seed, set and answers give the "
                                            "same search")

    # training (a process of its own per job, niced)
    training_threads: int = Field(2, ge=1, le=256, description="CPU threads of a training process (it runs "
                                                               "niced, beside the gateway)")
    training_batch_size: int = Field(4, ge=1, le=256, description="examples per training step")
    training_max_examples: int = Field(2000, ge=1, le=100_000, description="the most examples one training "
                                                                           "may ask for")
    trainer: Literal["local", "ray"] = Field(
        "local", description="`local`: each training runs as the gateway's child process; `ray`: it runs as a Ray "
                             "task on the cluster at `GRAFT_RAY_ADDRESS` (where a GPU is, with "
                             "`GRAFT_RAY_TRAINING_GPUS`)")
    question_concurrency: int = Field(4, ge=1, le=64, description="training questions: requests to the question "
                                                                  "writer (the base engine or a teacher) in flight at once")
    question_candidates: int = Field(4, ge=1, le=16, description="training questions: candidates sampled per "
                                                                 "chunk from the base model (the best good one is kept)")

    @field_validator("api_keys", "engine_urls", "engine_extra_args", "lora_target_modules", "allowed_embedding_models",
                     mode="before")
    @classmethod
    def _split_list(cls, value):
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def resolved_plan_threads(self) -> int:
        if self.plan_threads:
            return self.plan_threads
        try:
            return len(os.sched_getaffinity(0))  # the cores this process may run on (Linux)
        except AttributeError:
            return os.cpu_count() or 1

    @property
    def resolved_engine_backend(self) -> str:
        return self.engine_backend or ("urls" if self.engine_urls else "local")

    @property
    def ray_serve_url(self) -> str:
        return f"http://{self.ray_serve_host}:{self.ray_serve_port}"

    @property
    def resolved_ray_adapter_url(self) -> str:
        return (self.ray_adapter_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def embedding_models(self) -> frozenset[str]:
        """What a corpus may name as its embedding model: the default and the allowed ones."""
        return frozenset([self.embedding_model, *self.allowed_embedding_models])

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'graft.db').resolve()}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def resolved_embedding_cache_dir(self) -> Path:
        return self.embedding_cache_dir or self.models_dir / "embedders"

    @property
    def prepared_model_dir(self) -> Path:
        return self.models_dir / self.base_model_name

    @property
    def resolved_base_model(self) -> str:
        return self.base_model or str(self.prepared_model_dir)

    @property
    def indexes_dir(self) -> Path:
        return self.data_dir / "indexes"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"
