"""``sutazai learn ...``: continuous learning by hand (the nightly pipeline does the same).

``learn finetune`` takes its data from a file rather than the validated data store, so a
person can try a fine-tune on a few examples: JSON lines with ``prompt`` and ``response``
(each row becomes ``prompt`` + newline + ``response``) or a text file, one text a line.
About a tenth of the texts, chosen by a seeded shuffle, is held out to measure the loss
before and after; the file's sha256 is the dataset digest (the version's revision).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import typer

from sutazai.cli.output import console, emit_json, errors
from sutazai.cli.progress import RichProgress
from sutazai.config import load_settings
from sutazai.errors import TrainingError

app = typer.Typer(help="Continuous learning: fine-tune the champion on new data.",
                  no_args_is_help=True)
HELD_OUT_FRACTION = 0.1


@app.callback()
def learn() -> None:
    """Continuous learning: fine-tune the champion on new data."""
    # With one command only, typer would make it the whole app; a callback keeps
    # ``learn finetune`` a sub-command, as it is under ``sutazai``.


def read_texts(path: Path) -> list[str]:
    """Texts of a ``.jsonl`` file (prompt/response rows) or of any other text file (lines)."""
    if not path.is_file():
        raise TrainingError(f"no data file {path}: give --data a .jsonl file with prompt and "
                            "response fields, or a text file with one text per line")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        return [line.strip() for line in lines if line.strip()]
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{path}:{number} is not JSON ({exc.msg}); each line needs "
                                '{"prompt": ..., "response": ...}') from None
        if not (isinstance(row, dict) and isinstance(row.get("prompt"), str)
                and isinstance(row.get("response"), str)):
            raise TrainingError(f"{path}:{number} needs string fields prompt and response")
        texts.append(f"{row['prompt']}\n{row['response']}")
    return texts


def split_held_out(texts: list[str], fraction: float = HELD_OUT_FRACTION,
                   seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held out): at least one text held out, the same split for the same file."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    count = max(1, round(len(texts) * fraction))
    held = set(order[:count])
    return ([t for i, t in enumerate(texts) if i not in held],
            [t for i, t in enumerate(texts) if i in held])


@app.command("finetune")
def finetune_command(
    model: str = typer.Argument(
        None, help="NAME, NAME:VERSION or NAME@ALIAS; default: the text-generation champion."),
    data: Path = typer.Option(..., "--data", "-d",
                              help=".jsonl with prompt/response rows, or a text file of lines."),
    method: str = typer.Option(None, "--method", "-m", help="lora or full (default: settings)."),
    steps: int = typer.Option(None, "--steps", min=1, help="Optimizer steps (default: settings)."),
    seed: int = typer.Option(None, "--seed", min=0, help="Seed (default: settings)."),
    learning_rate: float = typer.Option(None, "--lr", help="Learning rate (default per method)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Fine-tune a model version on a data file and publish it as NAME-ft (resumable)."""
    from transformers.utils import logging as hf_logging

    from sutazai.learning.finetune import finetune
    from sutazai.serving.service import resolve_target

    hf_logging.disable_progress_bar()  # its load/save bars would tear the step bar
    hf_logging.set_verbosity_error()
    settings = load_settings()
    texts = read_texts(data)
    if len(texts) < 3:
        raise TrainingError(f"{data} holds {len(texts)} text(s); fine-tuning needs at least 3 "
                            "(two to train on, one held out)")
    train, held_out = split_held_out(texts)
    base = resolve_target(settings, model).manifest
    with RichProgress(errors) as progress:
        result = finetune(settings, base, train, held_out,
                          dataset_digest=hashlib.sha256(data.read_bytes()).hexdigest(),
                          method=method, steps=steps, seed=seed, learning_rate=learning_rate,
                          progress=progress)
    if as_json:
        emit_json({**json.loads(result.model_dump_json()), "train_texts": len(train),
                   "eval_texts": len(held_out)})
        return
    what = "published" if result.created else "already published"
    resumed = (f", resumed from step {result.resumed_from_step}"
               if result.resumed_from_step is not None else "")
    console.print(f"{what} {result.manifest.ref} (parent {result.manifest.parent}): "
                  f"{result.method}, {result.steps} steps on {result.device}{resumed}, "
                  f"{result.seconds:.1f} s", highlight=False)
    console.print(f"held-out loss {result.eval_loss_before:.4f} -> {result.eval_loss_after:.4f} "
                  f"({len(held_out)} held-out, {len(train)} training texts); mean training "
                  f"loss {result.train_loss:.4f}", highlight=False)
    console.print(f"MLflow run {result.run_id} in experiment {settings.learning_experiment}",
                  highlight=False)
