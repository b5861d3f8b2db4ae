"""Where a version SutazAI made itself came from, as written in its manifest's ``source``.

Learned versions name their origin instead of a catalog source: ``finetune:<base ref>``,
``quantize:<ref>:<method>``, ``nas:<study>#<trial>``. The writers (fine-tuning,
quantisation, architecture search) and the readers (the nightly selection, which leaves
learned versions to the promotion, and the fine-tuning base) share these definitions.
"""

from __future__ import annotations

from sutazai.repository.manifest import Manifest

FINETUNE = "finetune:"
QUANTIZE = "quantize:"
NAS = "nas:"
LEARNED = (FINETUNE, QUANTIZE, NAS)


def finetuned_from(base: Manifest) -> str:
    return f"{FINETUNE}{base.ref}"


def quantized_from(manifest: Manifest, method: str) -> str:
    return f"{QUANTIZE}{manifest.ref}:{method}"


def searched_in(study: str, trial: int) -> str:
    return f"{NAS}{study}#{trial}"


def made_by_learning(manifest: Manifest) -> bool:
    """A version SutazAI trained or derived from a trained one (judged on held-out data by
    the promotion, so the nightly selection and vLLM's derived copies leave it alone)."""
    return manifest.source.startswith(LEARNED)


def is_finetuned(manifest: Manifest) -> bool:
    return manifest.source.startswith(FINETUNE)


def is_quantized(manifest: Manifest) -> bool:
    return manifest.source.startswith(QUANTIZE)
