"""Quality per task, from the log-probabilities a model gives to known text.

Text generation: bits per byte and perplexity of held-out passages, and accuracy on a
multiple-choice set (the choice whose tokens get the highest mean logprob after the
question wins, as lm-evaluation-harness scores such sets). No sampling is involved, so a
model version gets the same numbers every time. The primary score, used by the selection,
is the accuracy. Perplexity is per token, so it only compares models that share a
tokenizer (a quantisation and its parent); across models, bits per byte is the fair
figure: every model is scored on exactly the same bytes (each passage after its first
word), whatever its tokens.

Chat: greedy replies through the engine's ``/v1/chat/completions`` (the model's own chat
template) to short instructions and questions with checkable answers; the share right is
``chat_accuracy``. A model with both tasks gets one report with both scores;
:func:`QualityReport.score_for` picks the one a task's selection uses.

Two scorers give the logprobs:
- :class:`ApiScorer` asks an OpenAI-compatible endpoint (``echo`` + ``logprobs``); right
  for vLLM, which returns prompt logprobs cheaply.
- :class:`LlamaCppScorer` evaluates a GGUF file in-process and reads llama.cpp's logits.
  llama-cpp-python's server sorts the whole 262k-token vocabulary in Python for every
  echoed token (~250 ms a token for Gemma 3), which made the data set take 210 s over the
  API; in-process it takes seconds, from the same weights.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
from pydantic import BaseModel

from sutazai.errors import BenchmarkError

#: The score each task's selection uses (higher is better).
PRIMARY_SCORES = {"text-generation": "mc_accuracy", "chat": "chat_accuracy",
                  "embeddings": "spearman", "ner": "entity_f1"}


class QualityReport(BaseModel):
    task: str
    primary: str  # the name of the score the selection uses (higher is better)
    scores: dict[str, float]
    scorer: str = ""
    details: list[dict[str, object]] = []

    @property
    def score(self) -> float:
        return self.scores[self.primary]

    def score_for(self, task: str) -> float | None:
        """The score ``task``'s selection uses; None when this report has none for it."""
        return self.scores.get(PRIMARY_SCORES.get(task, self.primary))


class Scorer(Protocol):
    name: str

    def continuation_logprobs(self, context: str, continuation: str) -> list[float]:
        """Logprobs of ``continuation``'s tokens after ``context`` ('' scores the whole text
        after its first token)."""


class ApiScorer:
    """Prompt logprobs from an engine's OpenAI API (vLLM): ``echo`` + ``logprobs``.

    The continuation is found by token count (the engine's ``/tokenize`` of the context),
    not by ``text_offset``: vLLM counts the BOS token's text (``<bos>``) in the offsets.
    """

    name = "api"

    def __init__(self, base_url: str, model: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=300.0)
        self.model = model

    def _post(self, path: str, body: dict[str, object]) -> dict[str, Any]:
        response = self.client.post(path, json={"model": self.model, **body})
        if response.status_code != 200:
            raise BenchmarkError(f"the engine refused {path} (HTTP {response.status_code}: "
                                 f"{response.text[:200]}); quality over the API needs prompt "
                                 "logprobs with echo and /tokenize, as vLLM offers")
        return dict(response.json())

    def continuation_logprobs(self, context: str, continuation: str) -> list[float]:
        whole = f"{context} {continuation}" if context else continuation
        # Without a context, skip BOS and the first token (nothing to predict it from).
        first = int(self._post("/tokenize", {"prompt": context})["count"]) if context else 2
        answer = self._post("/v1/completions", {
            "prompt": whole, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0.0})
        prompt_tokens = int(answer["usage"]["prompt_tokens"])
        values = (answer["choices"][0].get("logprobs") or {}).get("token_logprobs") or []
        picked = [float(v) for v in values[first:prompt_tokens] if v is not None]
        if not picked:
            raise BenchmarkError("the engine returned no prompt logprobs for an echoed prompt")
        return picked

    def close(self) -> None:
        self.client.close()


class LlamaCppScorer:
    name = "llama.cpp in-process"

    def __init__(self, gguf: Path, threads: int, context: int = 512) -> None:
        from llama_cpp import Llama

        self.model = Llama(str(gguf), logits_all=True, n_ctx=context, n_batch=context,
                           n_threads=threads, n_threads_batch=threads, verbose=False)

    def continuation_logprobs(self, context: str, continuation: str) -> list[float]:
        whole = f"{context} {continuation}" if context else continuation
        tokens = self.model.tokenize(whole.encode())
        # Without a context, skip BOS and the first token (nothing to predict it from), as
        # the API scorer does.
        first = len(self.model.tokenize(context.encode())) if context else 2
        if first >= len(tokens):
            raise BenchmarkError(f"nothing to score after {context!r}")
        self.model.reset()
        self.model.eval(tokens)
        logits = np.asarray(self.model.scores[first - 1:len(tokens) - 1], dtype=np.float64)
        peak = logits.max(axis=1, keepdims=True)
        log_norm = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
        targets = np.asarray(tokens[first:])
        return list(logits[np.arange(len(targets)), targets] - log_norm)

    def close(self) -> None:
        self.model.close()


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise BenchmarkError(f"quality data {path} is missing; it ships in benchmarks/data")
    return [line for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def text_generation_quality(scorer: Scorer, data_dir: Path) -> QualityReport:
    total, count, scored_bytes = 0.0, 0, 0
    for passage in _lines(data_dir / "heldout.txt"):
        # The first word is the context, so every tokenizer is scored on the same bytes.
        first, _, rest = passage.strip().partition(" ")
        if not rest.strip():
            continue  # a single word: nothing after the context to score
        values = scorer.continuation_logprobs(first, rest)
        total += sum(values)
        count += len(values)
        scored_bytes += len(f" {rest}".encode())
    if not count:
        raise BenchmarkError(f"{data_dir / 'heldout.txt'} has no passage of two words or more "
                             "to score")
    details: list[dict[str, object]] = []
    questions = [json.loads(line) for line in _lines(data_dir / "multiple_choice.jsonl")]
    correct = 0
    for item in questions:
        means = []
        for choice in item["choices"]:
            values = scorer.continuation_logprobs(item["question"], choice)
            means.append(sum(values) / len(values))
        chosen = max(range(len(means)), key=lambda i: (means[i], -i))
        correct += chosen == item["answer"]
        details.append({"question": item["question"], "chosen": item["choices"][chosen],
                        "correct": chosen == item["answer"]})
    return QualityReport(
        task="text-generation", primary="mc_accuracy", scorer=scorer.name, details=details,
        scores={"mc_accuracy": correct / len(questions), "perplexity": math.exp(-total / count),
                "bits_per_byte": -total / math.log(2) / scored_bytes,
                "heldout_tokens": float(count), "heldout_bytes": float(scored_bytes)},
    )


def _answered(reply: str, answers: list[str], match: str) -> bool:
    if match == "exact":
        said = reply.strip().rstrip(".").strip().casefold()
        return any(said == a.casefold() for a in answers)
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", reply, re.IGNORECASE)
               for a in answers)


def chat_quality(base_url: str, model: str, data_dir: Path, max_tokens: int = 48
                 ) -> QualityReport:
    """The share of ``chat.jsonl``'s prompts the model answers right, each asked alone with
    greedy decoding through the served ``/v1/chat/completions``."""
    items = [json.loads(line) for line in _lines(data_dir / "chat.jsonl")]
    details: list[dict[str, object]] = []
    with httpx.Client(base_url=base_url, timeout=300.0) as client:
        for item in items:
            response = client.post("/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": item["prompt"]}],
                "max_tokens": max_tokens, "temperature": 0.0, "seed": 0})
            if response.status_code != 200:
                raise BenchmarkError(f"the engine refused /v1/chat/completions (HTTP "
                                     f"{response.status_code}: {response.text[:200]})")
            reply = str(response.json()["choices"][0]["message"].get("content") or "")
            details.append({"prompt": item["prompt"], "reply": reply,
                            "correct": _answered(reply, item["answers"],
                                                 item.get("match", "contains"))})
    right = sum(bool(d["correct"]) for d in details)
    return QualityReport(task="chat", primary="chat_accuracy", scorer="api", details=details,
                         scores={"chat_accuracy": right / len(items),
                                 "chat_prompts": float(len(items))})


def merged(first: QualityReport, *more: QualityReport) -> QualityReport:
    """One report holding the scores of several tasks; ``first`` keeps its primary."""
    scores, details = dict(first.scores), list(first.details)
    for report in more:
        scores.update(report.scores)
        details += [{"task": report.task, **d} for d in report.details]
    return first.model_copy(update={"scores": scores, "details": details})


def embedding_quality(base_url: str, model: str, data_dir: Path) -> QualityReport:
    """Spearman correlation between the cosine similarity of the model's sentence embeddings
    (from the engine's ``/v1/embeddings``) and the similarity scores of the pairs (0-5)."""
    from scipy.stats import pearsonr, spearmanr

    pairs = [json.loads(line) for line in _lines(data_dir / "sts_pairs.jsonl")]
    texts = [p["a"] for p in pairs] + [p["b"] for p in pairs]
    with httpx.Client(base_url=base_url, timeout=300.0) as client:
        response = client.post("/v1/embeddings", json={"model": model, "input": texts})
    if response.status_code != 200:
        raise BenchmarkError(f"the engine refused /v1/embeddings (HTTP {response.status_code}: "
                             f"{response.text[:200]})")
    data = sorted(response.json()["data"], key=lambda d: d["index"])
    vectors = np.asarray([d["embedding"] for d in data], dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    half = len(pairs)
    cosine = (vectors[:half] * vectors[half:]).sum(axis=1)
    gold = np.asarray([p["score"] for p in pairs], dtype=np.float64)
    return QualityReport(
        task="embeddings", primary="spearman", scorer="api",
        scores={"spearman": float(spearmanr(cosine, gold).statistic),
                "pearson": float(pearsonr(cosine, gold).statistic), "pairs": float(half)},
    )


def ner_quality(model_dir: Path, data_dir: Path) -> QualityReport:
    """Micro-averaged entity F1 of a spaCy pipeline against gold spans (exact start, end and
    label), plus per-label F1; spaCy runs in-process, as no serving engine loads it."""
    import spacy

    gold_docs = [json.loads(line) for line in _lines(data_dir / "ner_gold.jsonl")]
    try:
        nlp = spacy.load(model_dir)
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"spaCy cannot load {model_dir}: {exc}") from None
    gold = {(i, s, e, label) for i, doc in enumerate(gold_docs)
            for s, e, label in doc["entities"]}
    predicted = {(i, ent.start_char, ent.end_char, ent.label_)
                 for i, doc in enumerate(nlp.pipe(d["text"] for d in gold_docs))
                 for ent in doc.ents}

    def f1(g: set[tuple[int, int, int, str]], p: set[tuple[int, int, int, str]]) -> float:
        hits = len(g & p)
        return 2 * hits / (len(g) + len(p)) if g or p else 1.0

    hits = len(gold & predicted)
    scores = {
        "entity_f1": f1(gold, predicted),
        "precision": hits / len(predicted) if predicted else 0.0,
        "recall": hits / len(gold) if gold else 0.0,
    }
    for label in sorted({g[3] for g in gold}):
        scores[f"f1_{label}"] = f1({g for g in gold if g[3] == label},
                                   {p for p in predicted if p[3] == label})
    return QualityReport(task="ner", primary="entity_f1", scorer="spaCy in-process",
                         scores=scores)
