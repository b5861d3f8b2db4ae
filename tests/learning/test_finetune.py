"""Fine-tuning for real, a few steps at a time: transformers Trainer + peft LoRA on the tiny
random Llama of tests/tiny_llama.py (about a second per run of steps on two cores), the
published ``-ft`` version read back from the repository and from MLflow. One slow test
fine-tunes the real Gemma 3 270M (GGUF converted to safetensors first) and reports its
seconds per step.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from sutazai.cli.learn import app, read_texts, split_held_out
from sutazai.config import Settings
from sutazai.errors import TrainingError
from sutazai.learning import finetune as ft
from sutazai.learning.finetune import FinetuneResult, LoraOptions, evaluate_loss, finetune
from sutazai.progress import NULL_PROGRESS, ProgressTask
from sutazai.repository import open_repository
from sutazai.repository.manifest import Manifest
from sutazai.workflows.mirror import mirror_catalog
from tests.conftest import gemma_entry
from tests.tiny_llama import _corpus, make_tiny_llama

DIGEST = "d" * 64
TEXTS = _corpus(seed=7, lines=48)  # the tiny Llama's own kind of text
TRAIN, HELD_OUT = TEXTS[:40], TEXTS[40:]
FAST_LR = 2e-2  # random tiny model, six steps: a large rate makes the loss drop reliably


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made: creating them takes 3-9 s, copying it
    none, and every test still gets its own store."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def make_home(root: Path, tiny_folder: Path, empty_mlflow_db: Path) -> Settings:
    """A SutazAI home with the tiny Llama mirrored as ``tiny-llama:1``."""
    settings = Settings(home=root / ".sutazai", catalog=root / "catalog.yaml")
    settings.home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_mlflow_db, settings.home / "mlflow.db")
    settings.catalog.write_text(yaml.safe_dump({"models": [{
        "name": "tiny-llama", "source": f"file:{tiny_folder}", "format": "safetensors",
        "tasks": ["text-generation"], "license": "apache-2.0"}]}))
    [outcome] = mirror_catalog(settings, register=False)
    assert outcome.error is None, outcome.error
    return settings


@pytest.fixture
def home(tmp_path: Path, tiny_folder: Path, empty_mlflow_db: Path) -> Settings:
    return make_home(tmp_path, tiny_folder, empty_mlflow_db)


def base_of(settings: Settings) -> Manifest:
    return open_repository(settings).get("tiny-llama")


def run(settings: Settings, **options: object) -> FinetuneResult:
    defaults: dict[str, object] = {"dataset_digest": DIGEST, "steps": 6,
                                   "learning_rate": FAST_LR, "seed": 0}
    return finetune(settings, base_of(settings), TRAIN, HELD_OUT,
                    **{**defaults, **options})  # type: ignore[arg-type]


def test_lora_publishes_a_merged_ft_version_with_lineage_and_one_mlflow_run(
        home: Settings) -> None:
    base = base_of(home)
    result = run(home)
    assert result.created and result.resumed_from_step is None and result.device == "cpu"
    assert (result.method, result.steps) == ("lora", 6)

    # Lineage: parent is the base version, revision the dataset snapshot.
    m = result.manifest
    assert (m.name, m.version, m.format) == ("tiny-llama-ft", 1, "safetensors")
    assert m.parent == base.ref and m.revision == DIGEST and m.source == "finetune:tiny-llama:1"
    assert m.tasks == base.tasks and m.license == base.license

    # A plain HF model (adapter merged), bf16 like its base, with the base's tokenizer files,
    # generation config and chat template byte for byte.
    repo = open_repository(home)
    folder, base_folder = repo.ensure_snapshot(m), repo.ensure_snapshot(base)
    assert not any(p.name.startswith("adapter") for p in folder.iterdir())
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "generation_config.json"):
        assert (folder / name).read_bytes() == (base_folder / name).read_bytes(), name
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        assert not any("lora" in k for k in weights.keys())  # noqa: SIM118
        tensor = weights.get_tensor("model.layers.0.self_attn.q_proj.weight")
    with safe_open(str(base_folder / "model.safetensors"), framework="pt") as weights:
        before = weights.get_tensor("model.layers.0.self_attn.q_proj.weight")
        untouched = weights.get_tensor("model.layers.0.mlp.up_proj.weight")
    assert not before.equal(tensor)  # LoRA on q_proj/v_proj, merged in
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        assert weights.get_tensor("model.layers.0.mlp.up_proj.weight").equal(untouched)

    # It learned: the held-out loss (same kind of text) dropped, measured on the saved files.
    assert result.eval_loss_after < result.eval_loss_before - 0.05
    assert evaluate_loss(folder, HELD_OUT) == pytest.approx(result.eval_loss_after, rel=1e-6)

    # MLflow: one run in the learning experiment, params without surprises, the loss of
    # every step, before/after, the plot, tags naming the published version.
    client = MlflowClient(home.tracking_uri)
    experiment = client.get_experiment_by_name(home.learning_experiment)
    assert experiment is not None
    [mlrun] = client.search_runs([experiment.experiment_id])
    assert mlrun.info.run_id == result.run_id and mlrun.info.status == "FINISHED"
    assert mlrun.info.run_name == "finetune tiny-llama:1"
    params = mlrun.data.params
    assert params["method"] == "lora" and params["seed"] == "0" and params["steps"] == "6"
    assert params["dataset_digest"] == DIGEST and params["lora_rank"] == "8"
    assert params["target_modules"] == "q_proj,v_proj" and params["learning_rate"] == "0.02"
    assert [p.step for p in client.get_metric_history(result.run_id, "train_loss")] == \
        [1, 2, 3, 4, 5, 6]
    assert mlrun.data.metrics["eval_loss_before"] == pytest.approx(result.eval_loss_before)
    assert mlrun.data.metrics["eval_loss_after"] == pytest.approx(result.eval_loss_after)
    tags = mlrun.data.tags
    assert (tags["sutazai.model"], tags["sutazai.version"], tags["sutazai.parent"]) == \
        ("tiny-llama-ft", "1", "tiny-llama:1")
    assert "loss_curve.png" in {a.path for a in client.list_artifacts(result.run_id)}
    other_runs = [r for e in client.search_experiments() if e.name != home.learning_experiment
                  for r in client.search_runs([e.experiment_id])
                  if r.data.tags.get("sutazai.step") != "register"]
    assert other_runs == []  # transformers' MLflow callback opened nothing
    [registered] = client.search_model_versions("name = 'tiny-llama-ft'")
    assert registered.tags["sutazai.parent"] == "tiny-llama:1"
    assert registered.tags["sutazai.revision"] == DIGEST
    assert registered.tags["sutazai.finetune_run"] == result.run_id

    # Checkpoints are gone once published; the same key again is a no-op.
    workdir = home.home / "learning" / "checkpoints" / result.key
    assert not list(workdir.glob("checkpoint-*"))
    started = time.monotonic()
    again = run(home)
    assert time.monotonic() - started < 5
    assert not again.created and again.manifest == m and again.run_id == result.run_id
    assert len(repo.versions("tiny-llama-ft")) == 1
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_full_finetune_and_its_size_limit(home: Settings,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(home, method="full", steps=4, learning_rate=2e-3)
    assert result.created and result.method == "full"
    assert result.eval_loss_after < result.eval_loss_before - 0.05
    folder = open_repository(home).ensure_snapshot(result.manifest)
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        mlp = weights.get_tensor("model.layers.0.mlp.up_proj.weight")
    with safe_open(str(open_repository(home).ensure_snapshot(base_of(home))
                       / "model.safetensors"), framework="pt") as weights:
        assert not weights.get_tensor("model.layers.0.mlp.up_proj.weight").equal(mlp)
    # every weight trains, not just attention
    assert ft.count_parameters(folder) == ft.count_parameters(
        open_repository(home).ensure_snapshot(base_of(home)))

    monkeypatch.setattr(ft, "FULL_MAX_PARAMETERS", 100_000)  # the tiny Llama has ~0.6M
    with pytest.raises(TrainingError, match=r"full fine-tuning is limited.*lora"):
        run(home, method="full", steps=2, seed=3)


def test_same_seed_same_weights_across_homes(tmp_path: Path, tiny_folder: Path,
                                             empty_mlflow_db: Path) -> None:
    """Trainer on CPU is bit-exact here: two homes, same seed, identical content digest."""
    first = make_home(tmp_path / "a", tiny_folder, empty_mlflow_db)
    second = make_home(tmp_path / "b", tiny_folder, empty_mlflow_db)
    one, two = run(first, steps=2), run(second, steps=2)
    assert one.manifest.digest == two.manifest.digest
    assert one.eval_loss_after == two.eval_loss_after and one.key == two.key
    other = run(second, steps=2, seed=1)
    assert other.manifest.digest != one.manifest.digest and other.manifest.version == 2


class Killed(Exception):
    """Stands for the nightly job being killed."""


class KillAfter:
    """A Progress whose step bar raises after ``steps`` steps, like a kill mid-run."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def task(self, description: str, total: int | None = None) -> ProgressTask:
        if not description.startswith("fine-tune"):
            return NULL_PROGRESS.task(description, total)
        outer = self

        class Task:
            done = 0

            def advance(self, amount: int) -> None:
                self.done += amount
                if self.done >= outer.steps:
                    raise Killed

            def reset(self, completed: int = 0, total: int | None = None) -> None:
                self.done = completed

            def close(self) -> None:
                return None

        return Task()


def test_killed_run_resumes_from_its_checkpoint_to_the_same_weights(
        tmp_path: Path, tiny_folder: Path, empty_mlflow_db: Path) -> None:
    killed_home = make_home(tmp_path / "killed", tiny_folder, empty_mlflow_db)
    with pytest.raises(Killed):
        run(killed_home, steps=4, save_every=2, progress=KillAfter(3))  # dies in step 3
    [workdir] = [p for p in (killed_home.home / "learning" / "checkpoints").iterdir()
                 if p.is_dir()]
    assert sorted(p.name for p in workdir.glob("checkpoint-*")) == ["checkpoint-2"]
    client = MlflowClient(killed_home.tracking_uri)
    run_id = (workdir / "mlflow_run_id").read_text()
    assert client.get_run(run_id).info.status == "FAILED"
    assert open_repository(killed_home).versions("tiny-llama-ft") == []

    resumed = run(killed_home, steps=4)  # the checkpoint interval is not part of the key
    assert resumed.resumed_from_step == 2 and resumed.created and resumed.run_id == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [p.step for p in client.get_metric_history(run_id, "train_loss")]
    assert set(steps) == {1, 2, 3, 4}

    # Trainer restores optimizer, scheduler, RNG and data order: same bytes as a run that
    # was never interrupted.
    straight = run(make_home(tmp_path / "straight", tiny_folder, empty_mlflow_db),
                   steps=4, save_every=2)
    assert straight.resumed_from_step is None
    assert straight.manifest.digest == resumed.manifest.digest


def test_bad_inputs_say_what_to_do(home: Settings, tmp_path: Path) -> None:
    base = base_of(home)
    with pytest.raises(TrainingError, match="at least 2"):
        finetune(home, base, ["only one"], HELD_OUT, dataset_digest=DIGEST)
    with pytest.raises(TrainingError, match=r"held-out evaluation.*at least 1"):
        finetune(home, base, TRAIN, ["   "], dataset_digest=DIGEST)
    with pytest.raises(TrainingError, match="use lora or full"):
        finetune(home, base, TRAIN, HELD_OUT, dataset_digest=DIGEST, method="qlora")
    with pytest.raises(TrainingError, match="no default LoRA target modules"):
        ft.default_target_modules("no-such-architecture")

    # A real model that is not a causal LM: a tiny BERT encoder.
    import torch
    from transformers import BertConfig, BertModel

    encoder = tmp_path / "encoder"
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, vocab_size=100)).save_pretrained(encoder)
    home.catalog.write_text(yaml.safe_dump({"models": [{
        "name": "encoder", "source": f"file:{encoder}", "format": "safetensors",
        "tasks": ["embeddings"], "license": "apache-2.0"}]}))
    assert mirror_catalog(home, register=False)[0].error is None
    with pytest.raises(TrainingError, match=r"not a causal language model.*BertModel"):
        finetune(home, open_repository(home).get("encoder"), TRAIN, HELD_OUT,
                 dataset_digest=DIGEST)
    not_hf = base.model_copy(update={"format": "spacy"})
    with pytest.raises(TrainingError, match="needs a Hugging Face safetensors version"):
        finetune(home, not_hf, TRAIN, HELD_OUT, dataset_digest=DIGEST)
    assert open_repository(home).versions("tiny-llama-ft") == []


def test_cli_finetune_from_a_jsonl_file(home: Settings, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUTAZAI_HOME", str(home.home))
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}: {line[:20]}",
                                        "response": line[20:]}) + "\n"
                            for i, line in enumerate(TEXTS[:30])))
    assert read_texts(data)[0] == f"Question 0: {TEXTS[0][:20]}\n{TEXTS[0][20:]}"
    train, held_out = split_held_out(read_texts(data))
    assert (len(train), len(held_out)) == (27, 3) and not set(train) & set(held_out)
    assert split_held_out(read_texts(data)) == (train, held_out)  # deterministic

    runner = CliRunner()
    done = runner.invoke(app, ["finetune", "tiny-llama:1", "--data", str(data), "--steps", "2",
                               "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)  # nothing but JSON on stdout
    assert report["manifest"]["name"] == "tiny-llama-ft" and report["created"] is True
    assert report["manifest"]["parent"] == "tiny-llama:1" and report["eval_texts"] == 3
    import hashlib

    assert report["manifest"]["revision"] == hashlib.sha256(data.read_bytes()).hexdigest()

    text = runner.invoke(app, ["finetune", "tiny-llama", "--data", str(data), "--steps", "2"])
    assert text.exit_code == 0, text.output
    assert "already published tiny-llama-ft:1" in text.stdout and "held-out loss" in text.stdout

    lines = tmp_path / "notes.txt"
    lines.write_text("one line\n\n")
    short = runner.invoke(app, ["finetune", "tiny-llama", "--data", str(lines)])
    assert isinstance(short.exception, TrainingError) and "at least 3" in str(short.exception)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "response": "b"}\nnot json\n')
    bad = runner.invoke(app, ["finetune", "tiny-llama", "--data", str(broken)])
    assert isinstance(bad.exception, TrainingError) and "broken.jsonl:2" in str(bad.exception)


@pytest.mark.slow
def test_gemma_270m_lora_from_its_gguf(settings: Settings, gemma_gguf: Path) -> None:
    """The real champion case: Gemma 3 270M GGUF -> safetensors (bf16) -> LoRA, 3 steps.

    Prints seconds per step (CPU, 2 cores, batch 4, 128 tokens) for the report.
    """
    from sutazai.optimize.derive import convert_to_safetensors

    settings.catalog.write_text(yaml.safe_dump({"models": [gemma_entry(gemma_gguf)]}))
    assert mirror_catalog(settings, register=False)[0].error is None
    gguf = open_repository(settings).get("gemma3-270m")
    hf, _ = convert_to_safetensors(settings, gguf, register=False)
    texts = [f"Question: {line}\nAnswer: {line.split()[-1]}" for line in _corpus(3, 24)]
    result = finetune(settings, gguf, texts[:20], texts[20:], dataset_digest=DIGEST, steps=3,
                      learning_rate=2e-4, lora=LoraOptions(rank=8, alpha=16))
    m = result.manifest
    assert (m.name, m.parent, m.revision) == ("gemma3-270m-hf-ft", hf.ref, DIGEST)
    folder = open_repository(settings).ensure_snapshot(m)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["dtype"] == "bfloat16"
    assert ft.count_parameters(folder) == ft.count_parameters(
        open_repository(settings).ensure_snapshot(hf))
    assert result.eval_loss_after < result.eval_loss_before
    per_step = result.train_seconds / result.steps
    print(f"\nGemma 3 270M LoRA r=8 on {result.device}: {per_step:.2f} s/step (batch 4, "
          f"max 128 tokens, checkpoint every step), held-out loss "
          f"{result.eval_loss_before:.3f} -> {result.eval_loss_after:.3f}, whole call "
          f"{result.seconds:.1f} s (conversion included), load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    assert per_step < 60
