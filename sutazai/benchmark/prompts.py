"""Seeded prompts: the same seed gives the same prompts on every machine and engine."""

from __future__ import annotations

import random
from pathlib import Path

from sutazai.errors import BenchmarkError


def load_corpus(path: Path) -> list[str]:
    """Words of a plain-text corpus, in order (``benchmarks/data/*.txt``)."""
    if not path.is_file():
        raise BenchmarkError(f"prompt corpus {path} is missing; it ships in benchmarks/data "
                             "(set SUTAZAI_BENCHMARK_DATA_DIR if you moved it)")
    words = [w for line in path.read_text().splitlines() if not line.startswith("#")
             for w in line.split()]
    if len(words) < 50:
        raise BenchmarkError(f"prompt corpus {path} has only {len(words)} words")
    return words


def make_prompts(words: list[str], count: int, length: int, seed: int) -> list[str]:
    """``count`` prompts of ``length`` consecutive corpus words from seeded offsets."""
    rng = random.Random(seed)
    span = max(len(words) - length, 1)
    prompts = []
    for _ in range(count):
        start = rng.randrange(span)
        prompts.append(" ".join(words[start:start + length]))
    return prompts
