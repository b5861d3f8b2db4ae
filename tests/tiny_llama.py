"""A tiny, randomly initialised Llama causal LM in Hugging Face format, made offline.

vLLM (and anything else that serves or loads an HF-format causal LM) needs a real model folder in
its tests, and no model hub is reachable from this machine kind. `make_tiny_llama` builds one in a
few seconds from nothing but `tokenizers`, `transformers` and `torch`: a byte-level BPE tokenizer
trained on a generated corpus and a 2-layer Llama with random weights (its text is gibberish, but
every endpoint, token count and stream behaves as with a real model).
"""

from __future__ import annotations

import random
from pathlib import Path

VOCAB_SIZE = 1000
BOS, EOS = "<s>", "</s>"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_WORDS = (  # split in _corpus
    "the a an of to in on for with by from at as is are was were be been being have has had do "
    "does did will would can could should may might must model models data dataset pipeline "
    "server serving request requests token tokens batch batches stream streaming latency "
    "throughput memory cache kernel layer layers attention head heads vector vectors embedding "
    "embeddings prompt prompts completion completions train training test tests metric metrics "
    "registry artifact artifacts version versions checksum bundle catalog source sources local "
    "network offline online quick brown fox jumps over lazy dog river mountain forest ocean city "
    "village garden window door table chair paper letter number seven eleven twenty hundred "
    "thousand morning evening night summer winter spring autumn red green blue yellow purple "
    "orange silver golden bright dark quiet loud slow fast small large tiny huge simple complex "
    "careful clever honest gentle brave curious patient engineer teacher doctor farmer writer "
    "painter sailor pilot baker runs walks reads writes builds measures checks loads saves "
    "starts stops waits answers asks finds keeps gives takes makes sees hears knows thinks"
)


def _corpus(seed: int, lines: int = 400) -> list[str]:
    """Deterministic pseudo-English lines: enough distinct words and digits for ~1000 tokens."""
    rng = random.Random(seed)
    text = []
    for i in range(lines):
        words = rng.choices(_WORDS.split(), k=rng.randint(6, 16))
        text.append(f"{' '.join(words).capitalize()} {i * 37 % 1009}, line {i}.")
    return text


def make_tiny_llama(target: Path, seed: int = 0) -> Path:
    """Write a tiny Llama model folder that vLLM and transformers load, and return it.

    The folder holds config.json, generation_config.json, model.safetensors (bfloat16, 1.2 MB),
    tokenizer.json, tokenizer_config.json and chat_template.jinja. Same `seed`, same bytes;
    no network; about a second on one CPU core. The global torch RNG state is left unchanged.
    """
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from sutazai.learning.tinylm import train_tokenizer_json

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer.from_str(train_tokenizer_json(_corpus(seed), VOCAB_SIZE))
    bos_id, eos_id = bpe.token_to_id(BOS), bpe.token_to_id(EOS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=EOS,
        model_max_length=1024,
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    config = LlamaConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=64, intermediate_size=256, vocab_size=VOCAB_SIZE, max_position_embeddings=1024,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id, tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.bfloat16)  # the dtype vLLM serves on CPU
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target
