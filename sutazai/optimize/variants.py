"""Quantised variants of a model version: make, measure, accept or reject, publish with lineage.

``optimize_model(settings, manifest, method)`` is the one entry point (CLI ``sutazai
optimize``, the nightly cycle). The chains:

- GGUF version (the Gemma Q4_K_M champion): its HF safetensors version (existing
  :func:`~sutazai.optimize.derive.convert_to_safetensors`, published once as
  ``<name>-hf``) -> F16 GGUF written with the version itself as template
  (:mod:`~sutazai.optimize.hf_to_gguf`) -> llama.cpp's quantizer.
- HF safetensors version (``gemma3-270m-hf``, a fine-tune of it): F16 GGUF with the
  nearest GGUF ancestor on its ``parent`` chain as template -> quantizer. Without a GGUF
  ancestor there are no llama.cpp tokenizer tables to copy: refused, with what to do.
- ``int8-dynamic``: torch dynamic int8 of an HF version, evaluated only (see
  :mod:`~sutazai.optimize.int8` for why it is not stored).

**Before and after** are measured in-process on the same data (``benchmarks/data``): for
GGUF methods, "before" is the parent as llama.cpp runs it (the parent GGUF itself; for an
HF parent its F16 GGUF, the same weights), "after" the variant.

**The decision.** The primary metric is perplexity on the held-out passages:
``quality_drop = perplexity_after / perplexity_before - 1`` (0.03 = 3 % worse; negative
is better). A variant is accepted when ``quality_drop <= tolerance``
(``settings.optimize_tolerance``, 0.05). Multiple-choice accuracy is measured, logged and
shown, but does not decide: the set has 20 questions, so one flipped answer moves it by
five points, more than the differences between good quantisation types; perplexity over
every held-out token is continuous and moves with the weights' error.

**Records.** An accepted variant is published as ``<parent name>-<type>`` (e.g.
``gemma3-270m-q8_0``) with ``parent`` = the version asked for, ``source``
``quantize:<parent ref>:<method>`` and ``revision`` the parent's digest, and registered in
MLflow. Every decision, accepted or not, is an MLflow run ``optimize <ref> <method>`` in
``settings.learning_experiment`` with the before/after metrics and the tags
``sutazai.accepted`` and ``sutazai.reason``. Asking again for a published variant returns
it (with the figures of the run that made it) without redoing any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sutazai.config import Settings
from sutazai.errors import OptimizationError
from sutazai.optimize.quantize import GGUF_METHODS
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.registry import open_registry
from sutazai.repository import open_repository, provenance
from sutazai.repository.manifest import Manifest, parse_ref
from sutazai.repository.store import Repository

INT8_DYNAMIC = "int8-dynamic"
METHODS = (*GGUF_METHODS, INT8_DYNAMIC)
METRICS = ("size_bytes", "tokens_per_s", "perplexity", "mc_accuracy")


class OptimizeResult(BaseModel):
    """What one optimisation established, and what (if anything) it published."""

    method: str
    parent: str
    variant: Manifest | None
    accepted: bool
    reason: str
    before: dict[str, float]
    after: dict[str, float]
    quality_drop: float | None
    tolerance: float
    run_id: str | None = None
    reused: bool = False


def method_suffix(method: str) -> str:
    return method.split(":", 1)[-1].replace("-", "_")


def variant_name(parent: Manifest, method: str) -> str:
    return f"{parent.name}-{method_suffix(method)}"


def check_method(manifest: Manifest, method: str) -> None:
    """Refuse what cannot work before any work is done, saying what would."""
    if method not in METHODS:
        raise OptimizationError(f"unknown optimisation method {method!r}; use one of "
                                f"{', '.join(METHODS)}")
    if "text-generation" not in manifest.tasks:
        raise OptimizationError(f"{manifest.ref} is a {', '.join(manifest.tasks)} model; only "
                                "text-generation models (causal LMs) are quantised")
    if method == INT8_DYNAMIC and manifest.format != "safetensors":
        raise OptimizationError(
            f"{manifest.ref} is {manifest.format}; int8-dynamic quantises Hugging Face "
            f"safetensors models in torch. For GGUF use a gguf:* method (gguf:q8_0 is int8)")
    if method in GGUF_METHODS and manifest.format not in ("gguf", "safetensors"):
        raise OptimizationError(f"{manifest.ref} is {manifest.format}; GGUF quantisation takes "
                                "a GGUF or Hugging Face safetensors version")


def gguf_ancestor(repo: Repository, manifest: Manifest) -> Manifest:
    """The nearest GGUF version on ``manifest``'s parent chain (itself if it is GGUF)."""
    seen: list[str] = []
    current: Manifest | None = manifest
    while current is not None:
        if current.format == "gguf":
            return current
        seen.append(current.ref)
        if current.parent is None or current.parent in seen:
            break
        name, version = parse_ref(current.parent)
        current = repo.get(name, version)
    raise OptimizationError(
        f"{manifest.ref} has no GGUF ancestor ({' <- '.join(seen)}): writing a GGUF copies "
        "llama.cpp's tokenizer tables and hyper-parameters from one. Quantise a model that "
        "came from a GGUF (e.g. gemma3-270m-hf or a fine-tune of it), or use int8-dynamic")


def optimize_model(settings: Settings, manifest: Manifest, method: str, *,
                   tolerance: float | None = None,
                   progress: Progress = NULL_PROGRESS) -> OptimizeResult:
    """Make the ``method`` variant of ``manifest``, measure it against its parent, and publish
    it when its quality drop is within ``tolerance`` (default ``settings.optimize_tolerance``).

    Raises ``OptimizationError`` for an unknown method, a format or task the method cannot
    take, or a missing GGUF ancestor.
    """
    check_method(manifest, method)
    limit = settings.optimize_tolerance if tolerance is None else tolerance
    repo = open_repository(settings)
    if method in GGUF_METHODS:
        from sutazai.optimize.derive import find_derived

        existing = find_derived(repo, variant_name(manifest, method), manifest)
        if existing is not None:
            return _reused(settings, manifest, method, existing, limit)
        return _gguf_variant(settings, repo, manifest, method, limit, progress)
    return _int8_variant(settings, repo, manifest, limit, progress)


def decide(before: dict[str, float], after: dict[str, float], tolerance: float
           ) -> tuple[bool, float, str]:
    drop = after["perplexity"] / before["perplexity"] - 1.0
    accepted = drop <= tolerance
    mc = after["mc_accuracy"] - before["mc_accuracy"]
    reason = (f"perplexity {before['perplexity']:.3f} -> {after['perplexity']:.3f} "
              f"({drop:+.2%}), {'within' if accepted else 'beyond'} the tolerance of "
              f"{tolerance:.2%}; MC accuracy {mc:+.2f} (not deciding: 20 questions)")
    return accepted, drop, reason


def _gguf_variant(settings: Settings, repo: Repository, manifest: Manifest, method: str,
                  tolerance: float, progress: Progress) -> OptimizeResult:
    from sutazai.optimize.derive import convert_to_safetensors, publish_derived
    from sutazai.optimize.hf_to_gguf import convert_hf_to_gguf
    from sutazai.optimize.quantize import measure_gguf, quantize_gguf
    from sutazai.serving.engines import single_file

    ancestor = gguf_ancestor(repo, manifest)
    template = single_file(repo.ensure_snapshot(ancestor), ".gguf", ancestor)
    if manifest.format == "gguf":
        hf, _ = convert_to_safetensors(settings, manifest, progress=progress)
    else:
        hf = manifest
    threads, data = settings.engine_threads, settings.benchmark_data_dir
    name = variant_name(manifest, method)
    with repo.staging_dir("optimize") as stage:
        task = progress.task(f"write F16 GGUF of {hf.ref}")
        f16 = convert_hf_to_gguf(repo.ensure_snapshot(hf), template, stage / "f16.gguf")
        task.close()
        out = stage / "variant"
        out.mkdir()
        variant_file = out / f"{name}.gguf"
        task = progress.task(f"quantise {manifest.ref} with {method}")
        if GGUF_METHODS[method] is None:
            f16.replace(variant_file)
        else:
            quantize_gguf(f16, variant_file, method, threads)
        task.close()
        task = progress.task(f"measure {manifest.ref} and its {method} variant", total=2)
        reference = template if manifest.format == "gguf" else (
            f16 if f16.exists() else variant_file)
        before = measure_gguf(reference, data, threads)
        task.advance(1)
        after = measure_gguf(variant_file, data, threads)
        task.close()
        accepted, drop, reason = decide(before, after, tolerance)
        variant = None
        if accepted:
            variant, _ = publish_derived(
                settings, out, name=name, parent=manifest,
                source=provenance.quantized_from(manifest, method), revision=manifest.digest,
                format="gguf", progress=progress,
                description=f"{manifest.description or manifest.name}, {method} variant of "
                            f"{manifest.ref} (via {hf.ref}, llama.cpp quantize)")
            reason = f"accepted: {reason}"
        else:
            reason = f"rejected: {reason}; not published"
    result = OptimizeResult(method=method, parent=manifest.ref, variant=variant,
                            accepted=accepted, reason=reason, before=before, after=after,
                            quality_drop=drop, tolerance=tolerance)
    result.run_id = log_decision(settings, manifest, result, via=hf.ref)
    return result


def _int8_variant(settings: Settings, repo: Repository, manifest: Manifest, tolerance: float,
                  progress: Progress) -> OptimizeResult:
    from sutazai.optimize.int8 import evaluate_int8_dynamic

    task = progress.task(f"int8-dynamic of {manifest.ref}: measure float32 and int8")
    before, after = evaluate_int8_dynamic(repo.ensure_snapshot(manifest),
                                          settings.benchmark_data_dir)
    task.close()
    accepted, drop, reason = decide(before, after, tolerance)
    reason = (f"{'accepted' if accepted else 'rejected'}: {reason}; evaluated only, not "
              "stored (torch dynamic-int8 weights are pickle and no engine serves them; "
              "gguf:q8_0 is the served int8 form)")
    result = OptimizeResult(method=INT8_DYNAMIC, parent=manifest.ref, variant=None,
                            accepted=accepted, reason=reason, before=before, after=after,
                            quality_drop=drop, tolerance=tolerance)
    result.run_id = log_decision(settings, manifest, result, via=manifest.ref)
    return result


def log_decision(settings: Settings, parent: Manifest, result: OptimizeResult, via: str
                 ) -> str:
    """One MLflow run per decision, in the learning experiment, with every figure."""
    import time

    from mlflow.entities import Metric

    registry = open_registry(settings)
    run_id = registry.start_run(
        f"optimize {parent.ref} {result.method}",
        tags={"sutazai.step": "optimize", "sutazai.model": parent.name,
              "sutazai.parent": parent.ref, "sutazai.parent_digest": parent.digest,
              "sutazai.method": result.method,
              "sutazai.accepted": str(result.accepted).lower(),
              "sutazai.reason": result.reason[:5000],
              "sutazai.variant": result.variant.ref if result.variant else ""},
        params={"parent": parent.ref, "parent_digest": parent.digest, "method": result.method,
                "tolerance": result.tolerance, "via": via,
                "data_dir": settings.benchmark_data_dir.name,
                "threads": settings.engine_threads},
        experiment=settings.learning_experiment,
    )
    now = int(time.time() * 1000)
    metrics = [Metric(f"{side}_{k}", v, now, 0)
               for side, values in (("before", result.before), ("after", result.after))
               for k, v in values.items()]
    if result.quality_drop is not None:
        metrics.append(Metric("quality_drop", result.quality_drop, now, 0))
    registry.client.log_batch(run_id, metrics=metrics)
    registry.client.set_terminated(run_id)
    return run_id


def _reused(settings: Settings, parent: Manifest, method: str, variant: Manifest,
            tolerance: float) -> OptimizeResult:
    """The published variant, with the figures of the run that accepted it."""
    registry = open_registry(settings)
    runs: list[Any] = []
    experiment = registry.client.get_experiment_by_name(settings.learning_experiment)
    if experiment is not None:
        runs = registry.client.search_runs(
            [experiment.experiment_id],
            f"tags.`sutazai.parent_digest` = '{parent.digest}' and tags.`sutazai.method` = "
            f"'{method}' and tags.`sutazai.accepted` = 'true'",
            order_by=["attributes.start_time DESC"], max_results=1)
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    drop = None
    run_id = None
    if runs:
        metrics = runs[0].data.metrics
        before = {k: metrics[f"before_{k}"] for k in METRICS if f"before_{k}" in metrics}
        after = {k: metrics[f"after_{k}"] for k in METRICS if f"after_{k}" in metrics}
        drop = metrics.get("quality_drop")
        run_id = str(runs[0].info.run_id)
    return OptimizeResult(
        method=method, parent=parent.ref, variant=variant, accepted=True, reused=True,
        reason=f"already published as {variant.ref}; nothing redone", before=before,
        after=after, quality_drop=drop, tolerance=tolerance, run_id=run_id)


def variant_path(settings: Settings, variant: Manifest) -> Path:
    """The variant's GGUF file in the repository (for serving or further measurement)."""
    from sutazai.serving.engines import single_file

    return single_file(open_repository(settings).ensure_snapshot(variant), ".gguf", variant)
