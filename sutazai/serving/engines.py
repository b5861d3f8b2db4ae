"""Serving engines behind one interface, each started from a repository version.

An engine turns a model version (its snapshot folder in the offline repository) into an
OpenAI-compatible HTTP endpoint on 127.0.0.1. Engines never reach a hub: they are given
local paths and ``HF_HUB_OFFLINE=1``. Which engine can load which format is declared
here, so a wrong pairing fails before anything starts, with the engines that would work.

- ``llamacpp``: ``llama_cpp.server`` with a GGUF file; the CPU default. One request at a
  time, lowest single-stream latency.
- ``vllm``: vLLM's OpenAI server from its own venv (``scripts/setup-vllm.sh``), HF
  safetensors folders; batches concurrent requests, so it wins throughput.
- ``ollama``: an existing Ollama server at ``OLLAMA_HOST``; the repository's GGUF is
  uploaded as a blob (by its sha256, so only once) and a model is created from it.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import urllib3

from sutazai.config import Settings
from sutazai.errors import EngineError
from sutazai.repository.manifest import Manifest
from sutazai.serving.process import ManagedProcess, free_port, tail

EMBEDDING_TASKS = frozenset({"embeddings", "feature-extraction", "sentence-similarity"})
GENERATION_TASKS = frozenset({"text-generation", "chat"})


@dataclass
class RunningEngine:
    """An engine answering the OpenAI API at ``base_url`` (``/v1/...`` below it)."""

    engine: str
    model: str  # the name clients put in the request's "model" field
    base_url: str
    manifest: Manifest
    capabilities: frozenset[str]  # of "completions", "chat", "embeddings"
    process: ManagedProcess | None = None
    load_seconds: float = 0.0
    health_path: str = "/health"
    details: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.process is None or self.process.alive()

    def death(self) -> str:
        """Empty while the engine runs; once it has died, its exit code and last log lines."""
        if self.alive() or self.process is None or self.process.process is None:
            return ""
        return (f"engine {self.engine} exited with code {self.process.process.returncode}; "
                f"last lines of {self.process.log_path}:\n{tail(self.process.log_path)}")

    @property
    def peak_rss_bytes(self) -> int | None:
        return self.process.peak_rss_bytes if self.process is not None else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def capabilities_for(manifest: Manifest, *, chat_template: bool) -> frozenset[str]:
    if EMBEDDING_TASKS & set(manifest.tasks):
        return frozenset({"embeddings"})
    return frozenset({"completions", "chat"} if chat_template else {"completions"})


class Engine(ABC):
    """How to serve one family of model formats."""

    name: ClassVar[str]
    formats: ClassVar[frozenset[str]]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def can_serve(self, manifest: Manifest) -> bool:
        return manifest.format in self.formats

    def check(self, manifest: Manifest) -> None:
        if not self.can_serve(manifest):
            able = [e.name for e in (cls(self.settings) for cls in ENGINES.values())
                    if e.can_serve(manifest)]
            raise EngineError(
                f"engine {self.name} cannot load {manifest.ref}: its format is "
                f"{manifest.format!r} and {self.name} loads {', '.join(sorted(self.formats))}. "
                + (f"Use --engine {' or '.join(able)}" if able else
                   "No engine loads it; convert it first (sutazai models convert)")
            )

    @abstractmethod
    def start(self, manifest: Manifest, model_dir: Path, workdir: Path) -> RunningEngine:
        """Start serving; return once the endpoint answers (or raise EngineError)."""

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        return env

    def _launch(self, manifest: Manifest, command: list[str], port: int, workdir: Path,
                health_path: str, env: dict[str, str]) -> ManagedProcess:
        process = ManagedProcess(
            f"{self.name} serving {manifest.ref}", command, workdir / f"{self.name}.log",
            url=f"http://127.0.0.1:{port}", health_path=health_path, env=env, cwd=workdir,
        ).start()
        process.wait_ready(self.settings.engine_ready_timeout_s)
        return process


def single_file(model_dir: Path, suffix: str, manifest: Manifest) -> Path:
    found = sorted(model_dir.rglob(f"*{suffix}"))
    if len(found) != 1:
        raise EngineError(
            f"{manifest.ref} has {len(found)} {suffix} files in {model_dir}; an engine needs "
            "exactly one. Narrow the catalog entry with 'include'"
        )
    return found[0]


def gguf_has_chat_template(path: Path) -> bool:
    """Whether a GGUF file carries a chat template (read with the vocabulary only, ~0.4 s,
    once per file: a restarted engine does not pay it again)."""
    stat = path.stat()
    try:
        return _gguf_has_chat_template(str(path.resolve()), stat.st_ino, stat.st_size,
                                       stat.st_mtime_ns)
    except ValueError as exc:  # llama.cpp could not parse the file; name it as the user does
        raise EngineError(f"{path.name} is not a GGUF file llama.cpp can read ({exc}); "
                          "check the catalog entry's format and files") from None


@functools.lru_cache(maxsize=64)
def _gguf_has_chat_template(path: str, inode: int, size: int, mtime_ns: int) -> bool:
    from llama_cpp import Llama

    model = Llama(path, vocab_only=True, verbose=False)
    try:
        return "tokenizer.chat_template" in model.metadata
    finally:
        model.close()


class LlamaCppEngine(Engine):
    name = "llamacpp"
    formats = frozenset({"gguf"})

    def start(self, manifest: Manifest, model_dir: Path, workdir: Path) -> RunningEngine:
        self.check(manifest)
        gguf = single_file(model_dir, ".gguf", manifest)
        capabilities = capabilities_for(manifest, chat_template=gguf_has_chat_template(gguf))
        port = free_port()
        threads = str(self.settings.engine_threads)
        command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
            "--model_alias", manifest.name, "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(self.settings.llamacpp_context), "--n_threads", threads,
            "--n_threads_batch", threads, "--embedding", str("embeddings" in capabilities),
            "--verbose", "False",  # per-request perf lines would bury real errors in the log
            # The server's default computes the output layer (262k words for Gemma 3) for every
            # prompt token, for echoed logprobs; quality is scored in-process instead.
            "--logits_all", "False",
            # Its default aborts the running request when another arrives; queue them instead.
            "--interrupt_requests", "False",
        ]
        env = self._environment()
        # llama.cpp's OpenMP threads busy-wait between tokens. When they fill every core, the
        # gateway relaying tokens waits for a time slice: multi-second outliers on 2 cores.
        # A short spin keeps the speed and removes them (benchmarks/serving_overhead.py).
        env.setdefault("GOMP_SPINCOUNT", "10000")
        process = self._launch(manifest, command, port, workdir, "/v1/models", env)
        return RunningEngine(self.name, manifest.name, process.url, manifest, capabilities,
                             process, process.ready_seconds or 0.0, "/v1/models",
                             {"file": gguf.name})


def hf_has_chat_template(model_dir: Path) -> bool:
    if (model_dir / "chat_template.jinja").exists() or (model_dir / "chat_template.json").exists():
        return True
    config = model_dir / "tokenizer_config.json"
    return config.exists() and bool(json.loads(config.read_text()).get("chat_template"))


class VllmEngine(Engine):
    name = "vllm"
    formats = frozenset({"safetensors"})

    @property
    def python(self) -> Path:
        return self.settings.vllm_venv / "bin" / "python"

    @property
    def installed(self) -> bool:
        return self.python.exists()

    def max_model_len(self, model_dir: Path) -> int:
        """The setting, capped by the model's own limits: vLLM refuses to start above them
        (MiniLM: 512 positions, but sentence-transformers' max_seq_length 256)."""
        limits = [self.settings.vllm_max_model_len]
        for name, key in (("config.json", "max_position_embeddings"),
                          ("sentence_bert_config.json", "max_seq_length")):
            path = model_dir / name
            value = json.loads(path.read_text()).get(key) if path.exists() else None
            if isinstance(value, int) and value > 0:
                limits.append(value)
        return min(limits)

    def start(self, manifest: Manifest, model_dir: Path, workdir: Path) -> RunningEngine:
        self.check(manifest)
        if not self.installed:
            raise EngineError(
                f"vLLM is not set up at {self.settings.vllm_venv}: run 'make vllm' "
                "(scripts/setup-vllm.sh), or set SUTAZAI_VLLM_VENV to an existing vLLM venv"
            )
        if not (model_dir / "config.json").exists():
            raise EngineError(f"{manifest.ref} has no config.json: vLLM needs a Hugging Face "
                              "model folder (config, tokenizer, safetensors)")
        capabilities = capabilities_for(manifest, chat_template=hf_has_chat_template(model_dir))
        port = free_port()
        command = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", manifest.name,
            "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", str(self.max_model_len(model_dir)),
        ]
        if "embeddings" in capabilities:
            command += ["--runner", "pooling"]
        else:
            command += ["--dtype", "bfloat16"]
        env = self._environment()
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.settings.vllm_cpu_kvcache_gib))
        process = self._launch(manifest, command, port, workdir, "/health", env)
        return RunningEngine(self.name, manifest.name, process.url, manifest, capabilities,
                             process, process.ready_seconds or 0.0)


def ollama_base_url(host: str) -> str:
    """``OLLAMA_HOST`` may be ``host:port`` without a scheme, as Ollama itself accepts."""
    host = host.rstrip("/")
    return host if "://" in host else f"http://{host}"


class OllamaEngine(Engine):
    """Serve through an Ollama server someone else runs; SutazAI only creates the model."""

    name = "ollama"
    formats = frozenset({"gguf"})

    def start(self, manifest: Manifest, model_dir: Path, workdir: Path) -> RunningEngine:
        self.check(manifest)
        gguf = single_file(model_dir, ".gguf", manifest)
        digest = next(f.digest for f in manifest.files if model_dir / f.path == gguf)
        base = ollama_base_url(self.settings.ollama_host)
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=600), retries=False)
        try:
            version = http.request("GET", f"{base}/api/version")
        except urllib3.exceptions.HTTPError as exc:
            raise EngineError(f"no Ollama server answers at {base} ({exc}); start one or set "
                              "OLLAMA_HOST") from None
        blob = f"{base}/api/blobs/sha256:{digest}"
        if http.request("HEAD", blob).status != 200:
            with gguf.open("rb") as body:
                uploaded = http.request("POST", blob, body=body, preload_content=True,
                                        headers={"Content-Length": str(gguf.stat().st_size)})
            if uploaded.status not in (200, 201):
                raise EngineError(f"Ollama refused the GGUF upload of {manifest.ref}: HTTP "
                                  f"{uploaded.status} {uploaded.data[:300]!r}")
        tag = f"{manifest.name}:{manifest.version}"
        created = http.request("POST", f"{base}/api/create", json={
            "model": tag, "files": {gguf.name: f"sha256:{digest}"}, "stream": False,
        })
        if created.status != 200:
            raise EngineError(f"Ollama could not create {tag}: HTTP {created.status} "
                              f"{created.data[:300]!r}")
        return RunningEngine(
            self.name, tag, base, manifest,
            capabilities_for(manifest, chat_template=True), health_path="/api/version",
            details={"ollama_version": str(version.json().get("version", "?"))},
        )


ENGINES: dict[str, type[Engine]] = {
    engine.name: engine for engine in (LlamaCppEngine, VllmEngine, OllamaEngine)
}
DEFAULT_ENGINE_FOR_FORMAT = {"gguf": "llamacpp", "safetensors": "vllm"}


def engine_for(settings: Settings, manifest: Manifest, name: str | None = None) -> Engine:
    """The engine called ``name``, or the default one for the model's format."""
    if name is None:
        name = DEFAULT_ENGINE_FOR_FORMAT.get(manifest.format)
        if name is None:
            raise EngineError(
                f"no engine serves {manifest.ref} (format {manifest.format!r}); engines load "
                + "; ".join(f"{n}: {', '.join(sorted(c.formats))}" for n, c in ENGINES.items())
            )
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    engine = ENGINES[name](settings)
    engine.check(manifest)
    return engine


def engine_workdir(settings: Settings, manifest: Manifest, engine: str) -> Path:
    return settings.home / "serving" / f"{manifest.name}-{manifest.version}-{engine}"


def start_engine(settings: Settings, manifest: Manifest, engine_name: str | None = None
                 ) -> RunningEngine:
    """Start the engine for ``manifest`` (the format's default unless named)."""
    from sutazai.repository import open_repository

    engine = engine_for(settings, manifest, engine_name)
    model_dir = open_repository(settings).ensure_snapshot(manifest, verify=True)  # bytes it loads
    return engine.start(manifest, model_dir, engine_workdir(settings, manifest, engine.name))
