"""Small causal language models trained from scratch on a list of texts, on CPU, in seconds.

Architecture search needs the same three things for every trial: one tokenizer shared by
all trials (so validation losses are comparable: same vocabulary, same tokens), a Llama
built from the trial's numbers, and a short, deterministic training loop that reports the
validation loss after every epoch (what a pruner decides on). A plain torch loop is used
rather than ``transformers.Trainer``: for models of a few hundred thousand parameters the
Trainer's set-up costs more than the training.

torch, tokenizers and transformers are imported inside the functions: the CLI must start
without them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sutazai.errors import TrainingError

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS = "<s>", "</s>"
SCHEDULES = ("cosine", "constant")
ARCHITECTURE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads",
                     "intermediate_size")


def train_tokenizer_json(texts: Sequence[str], vocab_size: int) -> str:
    """A byte-level BPE tokenizer trained on ``texts``, as tokenizer.json text.

    Serialised so a study can keep it in its storage: every worker, on any machine, then
    uses exactly the same vocabulary (BPE training is not promised to break ties the same
    way on every platform, so it is trained once per study, not once per process).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(list(texts), trainer=trainer)
    bos_id = bpe.token_to_id(BOS)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)],
    )
    return str(bpe.to_str())


def load_tokenizer(tokenizer_json: str) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json), bos_token=BOS, eos_token=EOS,
        pad_token=EOS, model_max_length=4096,
    )


def token_blocks(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], seq_len: int,
                 what: str) -> torch.Tensor:
    """All texts as one token stream (each ``<s> text </s>``) cut into rows of ``seq_len``.

    Packing wastes no compute on padding, which matters more than document boundaries for
    ranking architectures against each other.
    """
    import torch

    eos = int(tokenizer.eos_token_id)
    stream: list[int] = []
    encoded: list[list[int]] = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    for ids in encoded:
        stream.extend(ids)
        stream.append(eos)
    rows = len(stream) // seq_len
    if rows == 0:
        raise TrainingError(
            f"the {what} texts hold {len(stream)} tokens, fewer than one sequence of "
            f"{seq_len}: pass more {what} texts or lower training.seq_len in the space file"
        )
    return torch.tensor(stream[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def build_model(params: dict[str, Any], tokenizer: PreTrainedTokenizerFast, seq_len: int,
                seed: int) -> LlamaForCausalLM:
    """A randomly initialised Llama from a trial's architecture numbers; same seed, same
    weights (the global torch RNG is left as it was)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    width, heads = int(params["hidden_size"]), int(params["num_attention_heads"])
    config = LlamaConfig(
        hidden_size=width, num_hidden_layers=int(params["num_hidden_layers"]),
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=width // heads,
        intermediate_size=int(params["intermediate_size"]), vocab_size=len(tokenizer),
        max_position_embeddings=max(seq_len, 128), tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    seen: dict[int, int] = {}
    for tensor in model.parameters():
        seen[id(tensor)] = tensor.numel()
    return sum(seen.values())


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the caller's setting.

    The matrices of these models are tiny: intra-op threads cost more than they give, and
    on a busy machine spinning threads collapse (measured on 2 cores under load: 20 batches
    in 0.63 s with 1 thread, 12.8 s with 2). One thread also makes a trial's result the same
    on every machine whatever its core count; parallelism comes from workers instead.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class EpochResult:
    epoch: int
    val_loss: float
    train_loss: float
    seconds: float


def evaluate(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int) -> float:
    """Mean next-token cross-entropy over every held-out token (nats per token)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, blocks.shape[0], batch_size):
            batch = blocks[start:start + batch_size]
            out = model(input_ids=batch, labels=batch)
            tokens = batch.shape[0] * (batch.shape[1] - 1)
            total += float(out.loss) * tokens
            count += tokens
    model.train()
    return total / count


def train(model: torch.nn.Module, train_blocks: torch.Tensor, eval_blocks: torch.Tensor, *,
          learning_rate: float, epochs: int, batch_size: int, seed: int,
          max_batches_per_epoch: int | None = None, schedule: str = "cosine",
          on_epoch: Callable[[EpochResult], None] | None = None) -> list[EpochResult]:
    """AdamW with a learning-rate ``schedule``; ``on_epoch`` sees each epoch's validation
    loss and may raise to stop (a pruned trial). Deterministic for a given seed (one torch
    thread).

    ``cosine``: warmup over the first 10% of all steps, then cosine decay to zero — the
    best final loss for a fixed budget, but a trial's loss after its first epochs says
    little about its last (still warming up, then the decay changes the ranking).
    ``constant``: warmup over at most half the first epoch, then flat — the early loss
    predicts the final one, which is what early stopping (Hyperband, median) decides on.
    """
    if schedule not in SCHEDULES:
        raise TrainingError(f"learning-rate schedule {schedule!r} is not known: use "
                            f"{' or '.join(SCHEDULES)}")
    with one_thread():
        return _train(model, train_blocks, eval_blocks, learning_rate=learning_rate,
                      epochs=epochs, batch_size=batch_size, seed=seed,
                      max_batches_per_epoch=max_batches_per_epoch, schedule=schedule,
                      on_epoch=on_epoch)


def _train(model: torch.nn.Module, train_blocks: torch.Tensor, eval_blocks: torch.Tensor, *,
           learning_rate: float, epochs: int, batch_size: int, seed: int,
           max_batches_per_epoch: int | None, schedule: str,
           on_epoch: Callable[[EpochResult], None] | None) -> list[EpochResult]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    rows = train_blocks.shape[0]
    per_epoch = math.ceil(rows / batch_size)
    if max_batches_per_epoch is not None:
        per_epoch = min(per_epoch, max_batches_per_epoch)
    total_steps = max(1, per_epoch * epochs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    warmup = max(1, total_steps // 10)
    if schedule == "constant":
        warmup = max(1, min(warmup, per_epoch // 2))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    results: list[EpochResult] = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        order = torch.randperm(rows, generator=generator)
        losses = []
        for index in range(per_epoch):
            batch = train_blocks[order[index * batch_size:(index + 1) * batch_size]]
            loss = model(input_ids=batch, labels=batch).loss
            if not torch.isfinite(loss):
                raise TrainingError(f"the training loss diverged (epoch {epoch}) at learning "
                                    f"rate {learning_rate:g}: lower the learning-rate range")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        result = EpochResult(epoch=epoch, val_loss=evaluate(model, eval_blocks, batch_size),
                             train_loss=sum(losses) / len(losses),
                             seconds=time.perf_counter() - started)
        results.append(result)
        if on_epoch is not None:
            on_epoch(result)
    return results


def forward_latency_ms(model: torch.nn.Module, seq_len: int, repeats: int = 5) -> float:
    """Median wall time of one forward pass over one sequence: a rough, noisy latency."""
    import torch

    model.eval()
    batch = torch.zeros((1, seq_len), dtype=torch.long)
    timings = []
    with torch.no_grad(), one_thread():
        model(input_ids=batch)  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            model(input_ids=batch)
            timings.append((time.perf_counter() - started) * 1000)
    model.train()
    return sorted(timings)[len(timings) // 2]


def save(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, folder: Path) -> Path:
    """An HF model folder (safetensors, config, tokenizer) that transformers and vLLM load."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)  # type: ignore[operator]
    tokenizer.save_pretrained(folder)
    return folder
