"""Continuous fine-tuning: the champion, trained a little on newly validated data, becomes a
challenger version ``<name>-ft`` with lineage (parent = the base version, revision = the
dataset snapshot's digest).

Why it is built this way:

- transformers' ``Trainer`` does the loop, because it already gives seeded, reproducible
  data order and initialisation, checkpoints with optimizer and RNG state, and exact
  resume. LoRA comes from peft; the adapter is merged into the base before publishing so
  every engine (vLLM, transformers) serves the result as a plain Hugging Face model.
- A run is identified by a key hashed from everything that decides its result (base
  digest, dataset digest and texts, method, hyper-parameters, seed). Its checkpoints live
  in ``<home>/learning/checkpoints/<key>``: a nightly job killed half-way resumes from its
  last checkpoint when started again with the same inputs, and a finished key is not
  trained again (the published version is returned).
- One MLflow run per key in ``settings.learning_experiment`` holds parameters, the loss of
  every step, eval loss before and after, a loss-curve plot and tags naming the published
  version. transformers' own MLflow callback is off, so it cannot open a second run.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from sutazai.config import Settings
from sutazai.errors import TrainingError
from sutazai.progress import NULL_PROGRESS, Progress, ProgressTask
from sutazai.repository import provenance
from sutazai.repository.manifest import Manifest

if TYPE_CHECKING:
    import torch
    from mlflow.tracking import MlflowClient

FT_SUFFIX = "-ft"
METHODS = ("lora", "full")
FULL_MAX_PARAMETERS = 500_000_000
"""Above this, full fine-tuning is refused: weights, gradients and Adam state take about
16 bytes per parameter in fp32 (8 GB at this size), more than a nightly job on one machine
should claim. LoRA trains well under 1% of the parameters instead."""
DEFAULT_LEARNING_RATE = {"lora": 2e-4, "full": 2e-5}
MIN_TRAIN_TEXTS = 2
RESULT_FILE = "result.json"
RUN_FILE = "mlflow_run_id"
KEY_SCHEMA = 1  # bump when the training recipe changes, so old keys are not reused
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
_NOT_COPIED = {"config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json",
               "README.md", ".gitattributes"}
_DTYPES = ("float32", "bfloat16", "float16")


class LoraOptions(BaseModel):
    """LoRA hyper-parameters; ``target_modules`` None means peft's default for the
    architecture (``q_proj``/``v_proj`` for Llama, Gemma, Qwen, Mistral...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(default=8, ge=1, le=1024)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None


class Recipe(BaseModel):
    """Everything that decides a fine-tune's result besides the base and the data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str
    steps: int
    seed: int
    learning_rate: float
    batch_size: int
    max_length: int
    save_every: int
    lora_rank: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    target_modules: list[str] | None = None

    def params(self) -> dict[str, str]:
        return {k: ",".join(v) if isinstance(v, list) else str(v)
                for k, v in self.model_dump().items() if v is not None}


class FinetuneResult(BaseModel):
    """What one ``finetune`` call produced (or found already produced)."""

    manifest: Manifest = Field(description="the published <base>-ft version")
    created: bool = Field(description="False when this key had already been fine-tuned")
    resumed_from_step: int | None = Field(
        description="the checkpoint step this call continued from; None when it started "
        "from the base (or did not train at all)")
    steps: int
    method: str
    eval_loss_before: float
    eval_loss_after: float
    train_loss: float = Field(description="mean training loss over all steps of the run")
    seconds: float = Field(description="wall time of the call that trained and published")
    train_seconds: float = Field(description="time in the training loop of that call")
    run_id: str
    device: str
    key: str


def finetune(
    settings: Settings,
    base: Manifest,
    train_texts: list[str],
    eval_texts: list[str],
    *,
    dataset_digest: str,
    method: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    learning_rate: float | None = None,
    lora: LoraOptions | None = None,
    max_length: int = 128,
    batch_size: int = 4,
    save_every: int | None = None,
    progress: Progress = NULL_PROGRESS,
) -> FinetuneResult:
    """Fine-tune ``base`` on ``train_texts`` and publish ``<name>-ft`` (idempotent, resumable).

    ``eval_texts`` are held out: their mean per-token loss is measured on the base and on
    the result. A GGUF base is first converted to its safetensors version (the Gemma GGUF
    champion). ``save_every`` is the checkpoint interval in steps (default: a quarter of
    the run); it is left out of the key since it decides only where a resume can start.
    """
    from filelock import FileLock

    from sutazai.repository import open_repository

    started = time.monotonic()
    method = method or settings.finetune_method
    if method not in METHODS:
        raise TrainingError(f"unknown fine-tuning method {method!r}: use lora or full")
    steps = settings.finetune_steps if steps is None else steps
    seed = settings.finetune_seed if seed is None else seed
    if steps < 1 or seed < 0 or batch_size < 1:
        raise TrainingError("steps and batch size must be at least 1 and the seed not negative")
    if max_length < 8:
        raise TrainingError(f"max_length {max_length} is too short: use at least 8 tokens")
    train = _usable(train_texts, "training", MIN_TRAIN_TEXTS)
    held_out = _usable(eval_texts, "held-out evaluation", 1)

    if base.format == "gguf":
        from sutazai.optimize.derive import convert_to_safetensors

        base, _ = convert_to_safetensors(settings, base, progress=progress)
    elif base.format != "safetensors":
        raise TrainingError(f"{base.ref} is {base.format}: fine-tuning needs a Hugging Face "
                            "safetensors version (or a GGUF one, converted first)")
    repo = open_repository(settings)
    base_dir = repo.ensure_snapshot(base)
    config = causal_lm_config(base, base_dir)
    if method == "full":
        parameters = count_parameters(base_dir)
        if parameters > FULL_MAX_PARAMETERS:
            raise TrainingError(
                f"{base.ref} has {parameters / 1e6:,.0f}M parameters; full fine-tuning is "
                f"limited to {FULL_MAX_PARAMETERS / 1e6:,.0f}M. Use --method lora (LoRA "
                "trains a small adapter and merges it)")
    recipe = _recipe(method, steps, seed, learning_rate, lora, max_length, batch_size,
                     save_every, str(config.get("model_type", "")))
    key = run_key(base.digest, dataset_digest, recipe, train, held_out)
    workdir = settings.home / "learning" / "checkpoints" / key
    workdir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(workdir.parent / f"{key}.lock")):
        done = _finished(settings, workdir)
        if done is not None:
            return done
        return _train(settings, base, base_dir, config, recipe, key, workdir, train, held_out,
                      dataset_digest, started, progress)


def _usable(texts: list[str], what: str, least: int) -> list[str]:
    kept = [t for t in texts if isinstance(t, str) and t.strip()]
    if len(kept) < least:
        raise TrainingError(
            f"{len(kept)} non-empty {what} text(s); fine-tuning needs at least {least}. "
            "Add validated data to the dataset (or more lines to the --data file)")
    return kept


def _recipe(method: str, steps: int, seed: int, learning_rate: float | None,
            lora: LoraOptions | None, max_length: int, batch_size: int,
            save_every: int | None, model_type: str) -> Recipe:
    rate = DEFAULT_LEARNING_RATE[method] if learning_rate is None else learning_rate
    if not 0 < rate < 1:
        raise TrainingError(f"learning rate {rate} is out of range: use a value like 2e-4")
    every = save_every if save_every is not None else max(1, steps // 4)
    if every < 1:
        raise TrainingError("save_every must be at least 1 step")
    common: dict[str, Any] = {"method": method, "steps": steps, "seed": seed, "learning_rate": rate,
              "batch_size": batch_size, "max_length": max_length, "save_every": every}
    if method == "full":
        return Recipe(**common)
    options = lora or LoraOptions()
    targets = options.target_modules or default_target_modules(model_type)
    return Recipe(**common, lora_rank=options.rank, lora_alpha=options.alpha,
                  lora_dropout=options.dropout, target_modules=sorted(targets))


def default_target_modules(model_type: str) -> list[str]:
    """peft's LoRA targets for the architecture (attention query and value projections)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if not targets:
        raise TrainingError(f"no default LoRA target modules for model type {model_type!r}: "
                            "name them (LoraOptions(target_modules=['q_proj', 'v_proj']))")
    return list(targets)


def run_key(base_digest: str, dataset_digest: str, recipe: Recipe, train: list[str],
            held_out: list[str]) -> str:
    """The identity of a fine-tune: same key, same result, same checkpoint folder.

    The texts are hashed too (besides the dataset digest the caller vouches for), so a
    different split of the same snapshot never resumes another run's checkpoints.
    """
    texts = hashlib.sha256(json.dumps([train, held_out]).encode()).hexdigest()
    payload = json.dumps({"schema": KEY_SCHEMA, "base": base_digest, "dataset": dataset_digest,
                          "texts": texts, "recipe": recipe.model_dump(exclude={"save_every"})},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def causal_lm_config(base: Manifest, folder: Path) -> dict[str, Any]:
    """The base's config.json, if it is a causal language model transformers can train."""
    path = folder / "config.json"
    if not path.is_file():
        raise TrainingError(f"{base.ref} has no config.json: fine-tuning needs a Hugging Face "
                            "model folder (config, tokenizer, safetensors weights)")
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    if not any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise TrainingError(
            f"{base.ref} is not a causal language model (architectures: "
            f"{', '.join(architectures) or 'none'}; tasks: {', '.join(base.tasks)}): fine-tune "
            "a text-generation model such as the text-generation champion")
    return config


def count_parameters(folder: Path) -> int:
    """Parameters stored in the folder's safetensors files, read from their headers only."""
    from safetensors import safe_open

    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                total += math.prod(weights.get_slice(name).get_shape())
    return total


def _finished(settings: Settings, workdir: Path) -> FinetuneResult | None:
    """The stored result of a finished key, if its version is still in the repository."""
    from sutazai.errors import NotFoundError
    from sutazai.repository import open_repository

    path = workdir / RESULT_FILE
    if not path.is_file():
        return None
    result = FinetuneResult.model_validate_json(path.read_text(encoding="utf-8"))
    try:
        current = open_repository(settings).get(result.manifest.name, result.manifest.version)
    except NotFoundError:
        current = None
    if current is None or current.digest != result.manifest.digest:
        path.unlink()  # the version was removed: train again, in a new MLflow run
        (workdir / RUN_FILE).unlink(missing_ok=True)
        return None
    return result.model_copy(update={"created": False, "resumed_from_step": None})


# ---------------------------------------------------------------------------- training
def training_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _encode(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text (the tokenizer's BOS, truncated, EOS appended so the model also
    learns where an answer stops)."""
    eos = tokenizer.eos_token_id
    room = max_length - (1 if eos is not None else 0)
    rows = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True, truncation=True,
                             max_length=room)["input_ids"])
        rows.append([*ids, eos] if eos is not None else ids)
    return rows


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise TrainingError("the tokenizer has neither a pad nor an end-of-sequence token; "
                            "add one to tokenizer_config.json of the base")
    return int(pad)


def _batch(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask, and labels that ignore the padding."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "labels": ids.masked_fill(mask == 0, -100)}


def evaluate_loss(model_dir: Path, texts: list[str], max_length: int = 128,
                  batch_size: int = 8) -> float:
    """Mean per-token cross-entropy of the model in ``model_dir`` on ``texts``.

    Loaded afresh with transformers (fp32 on CPU), so measuring a published folder also
    proves that it loads. Token-weighted, not text-weighted, so long texts count as much
    as the tokens they hold.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = training_device()
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() \
        else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = model.to(device).eval()
    rows = _encode(tokenizer, texts, max_length)
    pad = _pad_id(tokenizer)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in _batch(rows[start:start + batch_size],
                                                        pad).items()}
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            total += float(torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    if count == 0:
        raise TrainingError("the evaluation texts hold no token to predict; use longer texts")
    return total / count


def _last_checkpoint(workdir: Path) -> tuple[Path | None, int | None]:
    """The newest complete checkpoint; incomplete ones (killed while saving) are removed.

    Trainer writes ``trainer_state.json`` last, so its presence marks a complete save.
    """
    found: list[tuple[int, Path]] = []
    for folder in workdir.glob("checkpoint-*"):
        suffix = folder.name.removeprefix("checkpoint-")
        if not (folder.is_dir() and suffix.isdigit()):
            continue
        if (folder / "trainer_state.json").is_file():
            found.append((int(suffix), folder))
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if not found:
        return None, None
    step, folder = max(found)
    return folder, step


def _callback(task: ProgressTask, on_loss: Callable[[int, dict[str, float]], None]) -> Any:
    """A Trainer callback feeding the progress bar (steps) and MLflow (loss per step)."""
    from transformers import TrainerCallback

    class StepReporter(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            task.reset(completed=state.global_step, total=state.max_steps)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            task.advance(1)

        def on_log(self, args: Any, state: Any, control: Any,
                   logs: dict[str, float] | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                on_loss(state.global_step, logs)

    return StepReporter()


def _open_run(settings: Settings, client: MlflowClient, workdir: Path, base: Manifest,
              recipe: Recipe, key: str, dataset_digest: str, device: str,
              sizes: tuple[int, int]) -> tuple[str, bool]:
    """The key's MLflow run: the one a killed attempt started, or a new one."""
    from sutazai.registry import open_registry

    saved = workdir / RUN_FILE
    if saved.is_file():
        run_id = saved.read_text(encoding="utf-8").strip()
        try:
            client.get_run(run_id)
        except Exception:  # deleted, or another tracking store: start a new run
            pass
        else:
            client.update_run(run_id, status="RUNNING")
            return run_id, False
    run_id = open_registry(settings).start_run(
        f"finetune {base.ref}",
        tags={"sutazai.step": "finetune", "sutazai.base": base.ref,
              "sutazai.parent": base.ref, "sutazai.key": key},
        params={**recipe.params(), "base": base.ref, "base_digest": base.digest,
                "dataset_digest": dataset_digest, "train_texts": sizes[0],
                "eval_texts": sizes[1], "device": device},
        experiment=settings.learning_experiment)
    saved.write_text(run_id, encoding="utf-8")
    return run_id, True


def _train(settings: Settings, base: Manifest, base_dir: Path, config: dict[str, Any],
           recipe: Recipe, key: str, workdir: Path, train: list[str], held_out: list[str],
           dataset_digest: str, started: float, progress: Progress) -> FinetuneResult:
    from sutazai.registry import open_registry

    device = training_device()
    client = open_registry(settings).client
    eval_before = evaluate_loss(base_dir, held_out, recipe.max_length)
    run_id, new_run = _open_run(settings, client, workdir, base, recipe, key, dataset_digest,
                                device, (len(train), len(held_out)))
    if new_run:
        client.log_metric(run_id, "eval_loss_before", eval_before, step=0)
    task = progress.task(f"fine-tune {base.ref} ({recipe.method})", total=recipe.steps)
    try:
        checkpoint, resumed = _last_checkpoint(workdir)
        model, train_seconds = _fit(base_dir, recipe, workdir, train, checkpoint, device,
                                    client, run_id, task)
        task.close()
        result = _publish(settings, base, config, model, recipe, key, held_out,
                          dataset_digest, eval_before, resumed, started, train_seconds,
                          client, run_id, device, progress)
    except BaseException:
        task.close()
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    from sutazai.repository.fsutil import atomic_write_text

    atomic_write_text(workdir / RESULT_FILE, result.model_dump_json(indent=2))
    for folder in workdir.glob("checkpoint-*"):  # the result is published; free the disk
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _fit(base_dir: Path, recipe: Recipe, workdir: Path, train: list[str],
         checkpoint: Path | None, device: str, client: MlflowClient, run_id: str,
         task: ProgressTask) -> tuple[Any, float]:
    """Run (or continue) Trainer to ``recipe.steps``: (trained model, seconds it took)."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    pad = _pad_id(tokenizer)
    rows = [{"input_ids": ids} for ids in _encode(tokenizer, train, recipe.max_length)]
    set_seed(recipe.seed)  # LoRA's initial A matrices come from the global RNG
    # A frozen base can sit in bf16 on a GPU; trained weights stay fp32 (mixed precision).
    dtype = torch.bfloat16 if bf16 and recipe.method == "lora" else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    if recipe.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=recipe.lora_rank or 8, lora_alpha=recipe.lora_alpha or 16,
            lora_dropout=recipe.lora_dropout or 0.0, target_modules=recipe.target_modules,
            task_type="CAUSAL_LM"))

    def on_loss(step: int, logs: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        names = {"loss": "train_loss", "learning_rate": "learning_rate",
                 "grad_norm": "grad_norm"}
        client.log_batch(run_id, metrics=[Metric(names[k], float(v), now, step)
                                          for k, v in logs.items() if k in names])

    args = TrainingArguments(
        output_dir=str(workdir), max_steps=recipe.steps,
        per_device_train_batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
        # constant: a nightly run is a handful of steps; a decaying rate would waste half
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        seed=recipe.seed, data_seed=recipe.seed, logging_strategy="steps", logging_steps=1,
        save_strategy="steps", save_steps=recipe.save_every, save_total_limit=2,
        eval_strategy="no", report_to="none", use_cpu=device == "cpu", bf16=bf16,
        disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=lambda batch: _batch([r["input_ids"] for r in batch], pad),
                      callbacks=[_callback(task, on_loss)])
    trainer.remove_callback(PrinterCallback)  # it prints every log line to stdout
    clock = time.monotonic()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    return trainer.model, time.monotonic() - clock


def finetuned_name(base: Manifest) -> str:
    """``<base>-ft``; a fine-tune of a fine-tune is a new version of the same name, so that
    nightly fine-tuning from the champion does not grow ``-ft-ft-ft...``."""
    return base.name if base.name.endswith(FT_SUFFIX) else base.name + FT_SUFFIX


def _saved_dtype(config: dict[str, Any]) -> str:
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return name if name in _DTYPES else "float32"


def _publish(settings: Settings, base: Manifest, config: dict[str, Any], model: Any,
             recipe: Recipe, key: str, held_out: list[str], dataset_digest: str,
             eval_before: float, resumed: int | None, started: float, train_seconds: float,
             client: MlflowClient, run_id: str, device: str,
             progress: Progress) -> FinetuneResult:
    """Merge, save in the base's dtype with its tokenizer files, check, publish, record."""
    import torch

    from sutazai.optimize.derive import publish_derived
    from sutazai.registry import open_registry
    from sutazai.repository import open_repository

    if recipe.method == "lora":
        model = model.merge_and_unload()
    model = model.to(device="cpu", dtype=getattr(torch, _saved_dtype(config)))
    repo = open_repository(settings)
    base_dir = repo.ensure_snapshot(base)
    with repo.staging_dir("finetune") as stage:
        out = stage / "model"
        model.save_pretrained(out)
        del model
        for path in sorted(base_dir.iterdir()):  # tokenizer, chat template, generation config
            if path.is_file() and path.name not in _NOT_COPIED \
                    and not path.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copyfile(path, out / path.name)
        _check_family(base, config, out)
        eval_after = evaluate_loss(out, held_out, recipe.max_length)
        losses = _history(client, run_id, "train_loss")
        manifest, created = publish_derived(
            settings, out, name=finetuned_name(base), parent=base,
            source=provenance.finetuned_from(base), revision=dataset_digest, format="safetensors",
            description=f"{base.description or base.name}, {recipe.method} fine-tuned for "
                        f"{recipe.steps} steps on dataset {dataset_digest[:12]} (held-out "
                        f"loss {eval_before:.3f} -> {eval_after:.3f})",
            progress=progress)
    seconds = time.monotonic() - started
    client.log_metric(run_id, "eval_loss_after", eval_after, step=recipe.steps)
    client.log_metric(run_id, "seconds", seconds)
    client.log_metric(run_id, "train_seconds", train_seconds)
    for name, value in {"sutazai.model": manifest.name, "sutazai.version": str(manifest.version),
                        "sutazai.ref": manifest.ref, "sutazai.digest": manifest.digest,
                        "sutazai.parent": base.ref}.items():
        client.set_tag(run_id, name, value)
    _log_curve(client, run_id, base, manifest, losses, eval_before, eval_after)
    registered = open_registry(settings).find(manifest)
    if registered is not None:  # the registry version points back at the run that made it
        client.set_model_version_tag(manifest.name, str(registered.version),
                                     "sutazai.finetune_run", run_id)
    return FinetuneResult(
        manifest=manifest, created=created, resumed_from_step=resumed, steps=recipe.steps,
        method=recipe.method, eval_loss_before=eval_before, eval_loss_after=eval_after,
        train_loss=sum(losses.values()) / len(losses) if losses else math.nan,
        seconds=seconds, train_seconds=train_seconds, run_id=run_id, device=device, key=key)


def _check_family(base: Manifest, config: dict[str, Any], out: Path) -> None:
    """What is published must be the same kind of model as the base, and safetensors."""
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    same = (saved.get("model_type") == config.get("model_type")
            and saved.get("architectures") == config.get("architectures"))
    if not same or not any(out.glob("*.safetensors")):
        raise TrainingError(
            f"the fine-tuned {base.ref} was saved as {saved.get('architectures')} "
            f"({saved.get('model_type')}), not like its base {config.get('architectures')}; "
            "report this: nothing was published")


def _history(client: MlflowClient, run_id: str, metric: str) -> dict[int, float]:
    """Step -> value, the latest logged value per step (a resumed run may log a step twice)."""
    latest: dict[int, tuple[int, float]] = {}
    for point in client.get_metric_history(run_id, metric):
        if point.step not in latest or point.timestamp >= latest[point.step][0]:
            latest[point.step] = (point.timestamp, point.value)
    return {step: value for step, (_, value) in sorted(latest.items())}


def _log_curve(client: MlflowClient, run_id: str, base: Manifest, manifest: Manifest,
               losses: dict[int, float], eval_before: float, eval_after: float) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    axis.plot(list(losses), list(losses.values()), marker="o", markersize=3,
              label="training loss")
    last = max(losses, default=1)
    axis.scatter([0, last], [eval_before, eval_after], color="tab:red", zorder=3,
                 label="held-out loss (before, after)")
    axis.set_xlabel("step")
    axis.set_ylabel("cross-entropy per token")
    axis.set_title(f"{base.ref} -> {manifest.ref}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    client.log_figure(run_id, figure, "loss_curve.png")
