"""GGUF quantisation through llama.cpp's own quantizer, and the in-process measurements that
decide whether a quantised variant is good enough.

The quantizer is ``llama_model_quantize`` from the llama.cpp library llama-cpp-python
ships (the same code as the ``llama-quantize`` tool, which the wheel does not ship). It
reads a full-precision GGUF (F16 here, from :mod:`sutazai.optimize.hf_to_gguf`) and
writes the chosen type; llama.cpp decides per tensor (``Q4_K_M`` keeps some tensors at
Q6_K, 1-D tensors stay F32), so SutazAI passes only the file type.

Measurements are in-process, on the same data for every variant:

- **Quality**: :class:`~sutazai.benchmark.quality.LlamaCppScorer` with
  :func:`~sutazai.benchmark.quality.text_generation_quality` (perplexity of
  ``heldout.txt``, accuracy on ``multiple_choice.jsonl``), as the benchmark scores GGUF.
- **Speed**: greedy generation of :data:`SPEED_TOKENS` tokens after a fixed short prompt,
  prompt prefill included, after a one-token warm-up. Not the serving harness
  (:func:`sutazai.benchmark.runner.benchmark`): that starts an engine and a gateway and
  drives a load profile, a minute or more per variant, to measure latency percentiles
  that the choice between quantisation types does not need; decode speed of the weights
  is what changes between them, and this measures exactly that in a few seconds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sutazai.errors import OptimizationError

# method -> llama_cpp's LLAMA_FTYPE_* constant name; None: the F16 file itself, no quantizer
GGUF_METHODS: dict[str, str | None] = {
    "gguf:f16": None,
    "gguf:q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "gguf:q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "gguf:q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "gguf:q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "gguf:q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "gguf:q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "gguf:q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
}
SPEED_PROMPT = "The history of the city begins"
SPEED_TOKENS = 32


def quantize_gguf(source: Path, target: Path, method: str, threads: int) -> Path:
    """Quantise the F16/F32 GGUF ``source`` into ``target`` with ``method`` (``gguf:q8_0``...).

    The file appears only when complete. Raises ``OptimizationError`` for an unknown
    method or when llama.cpp refuses the file.
    """
    import logging

    import llama_cpp

    if method not in GGUF_METHODS or GGUF_METHODS[method] is None:
        raise OptimizationError(f"{method!r} is not a GGUF quantisation type; use one of "
                                f"{', '.join(m for m, t in GGUF_METHODS.items() if t)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, str(GGUF_METHODS[method]))
    params.nthread = threads
    partial = target.with_name(target.name + ".partial")
    # llama.cpp logs a line per tensor through llama-cpp-python's logger; keep errors only
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(),
                                              llama_cpp.byref(params))
        if code != 0 or not partial.is_file():
            raise OptimizationError(f"llama.cpp could not quantise {source.name} to {method} "
                                    f"(status {code}); is it a valid F16/F32 GGUF?")
        partial.replace(target)
    finally:
        log.setLevel(level)
        partial.unlink(missing_ok=True)
    return target


def gguf_tokens_per_second(gguf: Path, threads: int) -> float:
    """Greedy tokens a second, :data:`SPEED_TOKENS` after :data:`SPEED_PROMPT`, in-process."""
    from llama_cpp import Llama

    model = Llama(str(gguf), n_ctx=256, n_batch=64, n_threads=threads,
                  n_threads_batch=threads, verbose=False)
    try:
        prompt = model.tokenize(SPEED_PROMPT.encode())
        next(iter(model.generate(prompt, temp=0.0)))  # warm-up: first-call allocations
        started = time.perf_counter()
        count = 0
        for _ in model.generate(prompt, temp=0.0, reset=True):
            count += 1
            if count == SPEED_TOKENS:
                break
        return count / (time.perf_counter() - started)
    finally:
        model.close()


def measure_gguf(gguf: Path, data_dir: Path, threads: int) -> dict[str, float]:
    """Size, speed and quality of a GGUF file: the before/after figures of a variant."""
    from sutazai.benchmark.quality import LlamaCppScorer, text_generation_quality

    scorer = LlamaCppScorer(gguf, threads)
    try:
        report = text_generation_quality(scorer, data_dir)
    finally:
        scorer.close()
    metrics: dict[str, Any] = {
        "size_bytes": float(gguf.stat().st_size),
        "tokens_per_s": gguf_tokens_per_second(gguf, threads),
        "perplexity": report.scores["perplexity"],
        "mc_accuracy": report.scores["mc_accuracy"],
    }
    return metrics
