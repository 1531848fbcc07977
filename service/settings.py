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
    data_dir: Path = Path("data")
    database_url: str | None = None  # default: SQLite file in data_dir

    # gateway
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)  # bootstrap admin keys
    # Serve FastAPI's interactive API pages (/docs, /redoc). Off by default: they load their scripts
    # from a public CDN, which an air-gapped host cannot reach, without the console's CSP.
    # /openapi.json is always served.
    api_docs_pages: bool = False
    # Request plans (retrieval, prompt) that run at once; 0 = one per CPU core this process may
    # use. Plans are CPU-bound: more at once than cores makes a burst of requests finish later.
    plan_threads: int = Field(default=0, ge=0, le=256)

    # engine: empty engine_urls means "start one local vLLM server as a child process"
    engine_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    base_model: str | None = None  # HF folder or id; default: the prepared SmolLM2 folder
    base_model_name: str = DEFAULT_BASE_MODEL_NAME  # the name clients and the engine use
    max_lora_rank: int = 16
    max_loras: int = 8
    # Layers the engine wraps with LoRA; empty = every one vLLM supports. Narrowing it (e.g.
    # q_proj,v_proj) makes each LoRA step cheaper (bench/adapters.py) and refuses adapters that
    # target other layers at upload.
    lora_target_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_model_len: int = 2048
    engine_port: int = 8100
    engine_dtype: str = "float32"  # the CPU engine; bf16 needs AVX-512 to be fast
    engine_kv_cache_gib: int = 1
    engine_start_timeout_s: float = 300.0
    engine_request_timeout_s: float = 300.0
    engine_connect_timeout_s: float = 5.0
    engine_extra_args: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # indexing and retrieval
    embedding_model: str = "all-MiniLM-L6-v2"  # the default of a new corpus
    # Other embedding models a corpus may name (`embedding_model`): names of packaged models or
    # local sentence-transformers folders the operator allows. Anything else is refused with one
    # message, so a key cannot probe the host's folders or load a model of its choosing.
    allowed_embedding_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # "onnx": the model exported once (by torch, from the local folder) and run by ONNX Runtime,
    # identical embeddings at less cost (bench/ingest.py C); "torch": SentenceTransformer.encode.
    embedding_backend: Literal["onnx", "torch"] = "onnx"
    embedding_cache_dir: Path | None = None  # exported models; default data_dir/models/embedders
    embedding_batch_size: int = 64
    default_chunk_size: int = 200  # tokens of the embedder's tokenizer
    default_chunk_overlap: int = 32
    exact_search_max_vectors: int = 50_000  # above: HNSW
    # HNSW graph degree and build beam: fixed per corpus when its index is created (recorded in
    # each generation); the search beam applies to every corpus at load. See bench/ingest.py (B).
    hnsw_m: int = Field(default=32, ge=4, le=256)
    hnsw_ef_construction: int = Field(default=200, ge=8, le=4096)
    hnsw_ef_search: int = Field(default=256, ge=1, le=32768)
    max_upload_bytes: int = 50 * 1024 * 1024
    max_request_bytes: int = 1 * 1024 * 1024  # JSON bodies
    max_pdf_pages: int = 2000
    extract_timeout_s: float = 60.0

    # adapters
    max_adapter_bytes: int = 512 * 1024 * 1024
    max_archive_members: int = 64
    drain_timeout_s: float = 60.0
    reconcile_interval_s: float = 15.0

    # evaluation
    # Questions of one evaluation run in flight at once: the rest of the engine's batch slots
    # stay free for live traffic.
    eval_concurrency: int = Field(default=2, ge=1, le=64)
    eval_max_items: int = Field(default=5000, ge=1, le=100_000)

    # training (a process of its own per job, niced)
    training_threads: int = Field(default=2, ge=1, le=256)
    training_batch_size: int = Field(default=4, ge=1, le=256)
    training_max_examples: int = Field(default=2000, ge=1, le=100_000)
    # "local": the gateway runs each training as its own child process; "queue": it hands the run to
    # `graft trainer` workers through DATA/trainings (training/queue.py; compose's GPU trainer service).
    trainer: Literal["local", "queue"] = "local"
    # queue: a claimed run whose worker has not touched it for this long fails (the worker died).
    trainer_stale_after_s: float = Field(default=120.0, ge=1.0)
    # Training questions: requests to the question writer (the base engine or a teacher) in flight
    # at once, and the candidates sampled per chunk from the base model (the best good one is kept).
    question_concurrency: int = Field(default=4, ge=1, le=64)
    question_candidates: int = Field(default=4, ge=1, le=16)

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
