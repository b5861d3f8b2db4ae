"""Quality per task, measured through the same OpenAI-compatible endpoint that is served.

Text generation: perplexity of held-out passages and accuracy on a multiple-choice set,
both from prompt logprobs (``echo`` + ``logprobs`` on ``/v1/completions``), so they need
no generation and no sampling: the same model gives the same numbers on any engine that
reports logprobs. The primary score, used by the selection, is the accuracy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
from pydantic import BaseModel

from sutazai.errors import BenchmarkError


class QualityReport(BaseModel):
    task: str
    primary: str  # the name of the score the selection uses (higher is better)
    scores: dict[str, float]
    details: list[dict[str, object]] = []

    @property
    def score(self) -> float:
        return self.scores[self.primary]


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise BenchmarkError(f"quality data {path} is missing; it ships in benchmarks/data")
    return [line for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def _prompt_logprobs(client: httpx.Client, model: str, text: str, start: int
                     ) -> list[float]:
    """Logprobs of the prompt's tokens that begin at or after character ``start``."""
    response = client.post("/v1/completions", json={
        "model": model, "prompt": text, "max_tokens": 1, "echo": True, "logprobs": 1,
        "temperature": 0.0,
    })
    if response.status_code != 200:
        raise BenchmarkError(f"the endpoint refused a logprobs request (HTTP "
                             f"{response.status_code}: {response.text[:200]}); quality needs "
                             "an engine that returns prompt logprobs with echo")
    logprobs = response.json()["choices"][0].get("logprobs") or {}
    offsets = logprobs.get("text_offset") or []
    values = logprobs.get("token_logprobs") or []
    picked = [float(v) for v, offset in zip(values, offsets, strict=False)
              if v is not None and start <= offset < len(text)]
    if not picked:
        raise BenchmarkError("the endpoint returned no prompt logprobs for an echoed prompt")
    return picked


def text_generation_quality(base_url: str, model: str, data_dir: Path) -> QualityReport:
    details: list[dict[str, object]] = []
    with httpx.Client(base_url=base_url, timeout=120.0) as client:
        total, count = 0.0, 0
        for passage in _lines(data_dir / "heldout.txt"):
            values = _prompt_logprobs(client, model, passage, 1)
            total += sum(values)
            count += len(values)
        perplexity = math.exp(-total / count)
        correct = 0
        questions = [json.loads(line) for line in _lines(data_dir / "multiple_choice.jsonl")]
        for item in questions:
            question = item["question"]
            scores = [
                sum(v := _prompt_logprobs(client, model, f"{question} {choice}",
                                          len(question))) / len(v)
                for choice in item["choices"]
            ]
            chosen = max(range(len(scores)), key=lambda i: (scores[i], -i))
            correct += chosen == item["answer"]
            details.append({"question": question, "chosen": item["choices"][chosen],
                            "correct": chosen == item["answer"]})
    return QualityReport(
        task="text-generation", primary="mc_accuracy", details=details,
        scores={"mc_accuracy": correct / len(questions), "perplexity": perplexity,
                "heldout_tokens": float(count)},
    )
