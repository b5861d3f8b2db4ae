"""Dynamic int8 quantisation of a Hugging Face causal LM with PyTorch, measured in-process.

``torch.ao.quantization.quantize_dynamic`` replaces every ``nn.Linear`` with an int8
version (weights int8 per tensor, activations quantised on the fly, qint8). It needs the
float32 model, so "before" is the float32 model and "after" the quantised one, both scored
on the same data with the same code:

- **Quality**: :class:`TorchScorer`, a :class:`~sutazai.benchmark.quality.Scorer` over the
  model's logits, with :func:`~sutazai.benchmark.quality.text_generation_quality`: the
  perplexity and multiple-choice accuracy the GGUF variants get from llama.cpp.
- **Speed**: greedy ``generate`` of :data:`~sutazai.optimize.quantize.SPEED_TOKENS`
  tokens after the same prompt as the GGUF measurement, after a warm-up.
- **Size**: the bytes of the model's serialised ``state_dict`` (tied tensors once), the
  measure PyTorch's own quantisation tutorials use. Serialised in memory only.

**Why the variant is evaluated but not stored.** The quantised modules hold their weights
as ``LinearPackedParams`` (prepacked for fbgemm/onednn): ``save_pretrained`` and
safetensors cannot write them, and ``torch.save`` writes pickle, which the repository
refuses to load from anything it did not allow (loading pickle can run code). Unpacking
to int8 tensors plus scales would be safe to store, but no SutazAI engine serves such a
folder (vLLM and llama.cpp do not read torch dynamic-int8 weights), so a stored copy could
only be re-evaluated, never served: the decision and the numbers go to MLflow, and the
quantisation is redone in seconds (``quantize_dynamic`` of a 270M model takes about a
second) wherever it is wanted. GGUF Q8_0 is the stored, served int8 form.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from sutazai.errors import OptimizationError


class TorchScorer:
    """Continuation logprobs from a transformers causal LM in this process, scored exactly
    as :class:`~sutazai.benchmark.quality.LlamaCppScorer` scores a GGUF."""

    name = "transformers in-process"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer

    def continuation_logprobs(self, context: str, continuation: str) -> list[float]:
        import torch

        whole = f"{context} {continuation}" if context else continuation
        tokens = list(self.tokenizer(whole)["input_ids"])
        first = len(self.tokenizer(context)["input_ids"]) if context else 2
        if first >= len(tokens):
            raise OptimizationError(f"nothing to score after {context!r}")
        with torch.inference_mode():
            logits = self.model(torch.tensor([tokens])).logits[0].to(torch.float64)
        logprobs = torch.log_softmax(logits[first - 1:len(tokens) - 1], dim=-1)
        targets = torch.tensor(tokens[first:])
        return [float(v) for v in logprobs[torch.arange(len(targets)), targets]]


def state_dict_bytes(model: Any) -> int:
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def torch_tokens_per_second(model: Any, tokenizer: Any) -> float:
    import torch

    from sutazai.optimize.quantize import SPEED_PROMPT, SPEED_TOKENS

    inputs = tokenizer(SPEED_PROMPT, return_tensors="pt")
    settings = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id
                or tokenizer.eos_token_id}
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=1, **settings)  # warm-up
        started = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=SPEED_TOKENS, min_new_tokens=SPEED_TOKENS,
                             **settings)
        elapsed = time.perf_counter() - started
    return (out.shape[1] - inputs["input_ids"].shape[1]) / elapsed


def measure_torch(model: Any, tokenizer: Any, data_dir: Path) -> dict[str, float]:
    from sutazai.benchmark.quality import text_generation_quality

    report = text_generation_quality(TorchScorer(model, tokenizer), data_dir)
    return {"size_bytes": float(state_dict_bytes(model)),
            "tokens_per_s": torch_tokens_per_second(model, tokenizer),
            "perplexity": report.scores["perplexity"],
            "mc_accuracy": report.scores["mc_accuracy"]}


def load_float32(model_dir: Path) -> tuple[Any, Any]:
    """The HF causal LM in ``model_dir`` in float32 (what quantize_dynamic takes), eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                     local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise OptimizationError(f"transformers cannot load {model_dir.name} as a causal LM "
                                f"({exc}); int8-dynamic needs a Hugging Face causal LM") from None
    return model.eval(), tokenizer


def quantize_int8_dynamic(model: Any) -> Any:
    """Every ``nn.Linear`` of ``model`` as dynamic int8 (qint8), in a new model."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)


def evaluate_int8_dynamic(model_dir: Path, data_dir: Path
                          ) -> tuple[dict[str, float], dict[str, float]]:
    """(before, after) figures of float32 vs dynamic int8 of the HF model in ``model_dir``."""
    model, tokenizer = load_float32(model_dir)
    before = measure_torch(model, tokenizer, data_dir)
    quantized = quantize_int8_dynamic(model)
    del model
    after = measure_torch(quantized, tokenizer, data_dir)
    return before, after
