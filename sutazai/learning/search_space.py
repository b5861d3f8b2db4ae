"""The declared search space of an architecture search (``models/nas-space.yaml``).

A space file says three things: which numbers a trial samples (``params``), how a trial
trains (``training``: epochs, batch, sequence length, tokenizer size, seed) and how the
study searches (``search``: sampler, pruner, second objective, heartbeat). Everything that
decides a trial's result lives in the file, so a study resumed tomorrow, or run by four
workers at once, trains every trial the same way; its hash is kept in the study and a
different file is refused.

Two kinds of space:

- ``architecture`` (implemented): small causal LMs trained from scratch — layers, hidden
  width, attention heads, FFN size, learning rate.
- ``lora`` (declared and validated, sampled and passed through to the objective): LoRA
  rank, alpha, dropout and target modules over a ``base_model``. The built-in NAS
  objective trains architectures only; a LoRA space is refused by ``run_study`` with a
  message saying so (fine-tuning lives in its own module).

Each parameter is either a fixed value (``num_hidden_layers: 2``) or a distribution:
``{type: int, low, high, step?, log?}``, ``{type: float, low, high, log?}`` or
``{type: categorical, choices: [...]}``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from sutazai.errors import TrainingError

Scalar = int | float | str | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("a log-scale int needs low >= 1 and step 1")
        return self

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


class FloatParam(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale float needs low > 0")
        return self


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)


Distribution = Annotated[IntParam | FloatParam | CategoricalParam, Field(discriminator="type")]
ParamSpec = Distribution | Scalar
_DISTRIBUTION: TypeAdapter[Distribution] = TypeAdapter(Distribution)

ARCHITECTURE_PARAMS = ("num_hidden_layers", "hidden_size", "num_attention_heads",
                       "intermediate_size", "learning_rate")
LORA_PARAMS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "learning_rate")


class TrainingConfig(_Strict):
    """How every trial trains: the same for all trials of a study."""

    epochs: int = Field(default=2, ge=1, le=1000)
    batch_size: int = Field(default=16, ge=1)
    seq_len: int = Field(default=64, ge=8)
    vocab_size: int = Field(default=512, ge=300, description="BPE vocabulary (bytes + merges).")
    seed: int = Field(default=0, ge=0, description="Weights init and data order of every trial.")
    max_batches_per_epoch: int | None = Field(default=None, ge=1)
    lr_schedule: Literal["cosine", "constant"] = Field(
        default="cosine", description="cosine: best final loss; constant (after a short "
        "warmup): early losses predict final ones, so pruning decides better on long trials.")


class SearchConfig(_Strict):
    """How the study searches."""

    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    pruner: Literal["hyperband", "median", "none", "asha"] = Field(
        default="hyperband", description="asha: successive halving alone (rungs at 1, 3, 9... "
        "epochs, the best third goes on) — cheapest when early losses predict final ones "
        "(lr_schedule constant); hyperband also runs brackets that prune late or never.")
    startup_trials: int = Field(default=4, ge=0,
                                description="Random trials before TPE models the space.")
    second_objective: Literal["params", "latency_ms"] = Field(
        default="params", description="What the Pareto front trades validation loss against.")
    heartbeat_s: int = Field(default=10, ge=1, description="A trial whose process has not "
                             "beaten for 3x this is failed and retried once.")
    seed: int = Field(default=0, ge=0, description="Sampler seed (plus the worker number).")


class SearchSpace(_Strict):
    kind: Literal["architecture", "lora"] = "architecture"
    base_model: str | None = Field(default=None, description="lora: NAME[:VERSION].")
    params: dict[str, ParamSpec]
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, value: Any) -> Any:
        """One clear error per bad parameter (a plain union would list every member's)."""
        if not isinstance(value, dict):
            return value
        parsed: dict[str, Any] = {}
        for key, spec in value.items():
            if isinstance(spec, dict):
                try:
                    parsed[key] = _DISTRIBUTION.validate_python(spec)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    where = ".".join([str(key), *(_location(err["loc"]) or "").split(".")])
                    raise ValueError(f"{where.rstrip('.')}: "
                                     f"{err['msg'].removeprefix('Value error, ')}") from None
            elif isinstance(spec, int | float | str | bool):
                parsed[key] = spec
            else:
                raise ValueError(f"{key}: expected a value or a mapping with type: "
                                 "int|float|categorical")
        return parsed

    @model_validator(mode="after")
    def _complete(self) -> SearchSpace:
        known = ARCHITECTURE_PARAMS if self.kind == "architecture" else LORA_PARAMS
        unknown = sorted(set(self.params) - set(known))
        if unknown:
            hint = " (LoRA knobs need kind: lora)" if set(unknown) & set(LORA_PARAMS) else ""
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for kind {self.kind}"
                             f"{hint}; known: {', '.join(known)}")
        missing = [k for k in known if k not in self.params]
        if missing:
            raise ValueError(f"kind {self.kind} needs parameter(s) {', '.join(missing)}")
        if self.kind == "lora" and not self.base_model:
            raise ValueError("kind lora needs base_model: NAME[:VERSION] of a repository model")
        if self.kind == "architecture":
            self._check_heads()
        return self

    def _check_heads(self) -> None:
        """Every width must have at least one declared head count giving an even head
        dimension (rotary embeddings rotate pairs); odd combinations are resolved per trial
        by :func:`resolve_heads`."""
        widths = choices_of(self.params["hidden_size"], "hidden_size")
        heads = choices_of(self.params["num_attention_heads"], "num_attention_heads")
        for width in widths:
            if not any(_valid_heads(int(width), int(h)) for h in heads):
                raise ValueError(
                    f"hidden_size {width} has no valid num_attention_heads among "
                    f"{heads}: hidden_size / heads must be an even whole number")

    @property
    def digest(self) -> str:
        """sha256 of the space; a field added later is left out while at its default, so
        a study started before it existed still resumes with the same file."""
        exclude: dict[str, Any] = {}
        if self.training.lr_schedule == "cosine":
            exclude["training"] = {"lr_schedule"}
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()

    def distributions(self) -> dict[str, Distribution]:
        return {k: v for k, v in self.params.items()
                if isinstance(v, IntParam | FloatParam | CategoricalParam)}

    def fixed(self) -> dict[str, Scalar]:
        return {k: v for k, v in self.params.items()
                if not isinstance(v, IntParam | FloatParam | CategoricalParam)}


def choices_of(spec: ParamSpec, key: str) -> list[Scalar]:
    if isinstance(spec, CategoricalParam):
        return list(spec.choices)
    if isinstance(spec, IntParam):
        return list(spec.values())
    if isinstance(spec, FloatParam):
        raise ValueError(f"{key} must be an int or categorical, not a float range")
    return [spec]


def _valid_heads(width: int, heads: int) -> bool:
    return heads > 0 and width % heads == 0 and (width // heads) % 2 == 0


def resolve_heads(space: SearchSpace, width: int, heads: int) -> int:
    """The head count a trial uses: the sampled one when it divides the width into even
    head dimensions, else the nearest declared count that does (larger ones first when
    tied). Resolving instead of pruning keeps every trial useful to a random search and
    the sampler's distributions fixed (Optuna refuses per-trial choice lists)."""
    if _valid_heads(width, heads):
        return heads
    declared = [int(h) for h in choices_of(space.params["num_attention_heads"],
                                           "num_attention_heads")]
    valid = [h for h in declared if _valid_heads(width, h)]
    return min(valid, key=lambda h: (abs(h - heads), -h))


def _location(loc: tuple[int | str, ...]) -> str:
    # pydantic puts the union member's tag in the location (params.x.int.low): drop it
    parts = [str(p) for p in loc if p not in ("int", "float", "categorical", "str", "bool",
                                              "function-after[_range()]")]
    return ".".join(p for p in parts if not p.startswith(("function-", "tagged-union")))


def load_space(path: Path | str) -> SearchSpace:
    """Read and validate a space file; any problem is a TrainingError naming the key."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"search space file {path} does not exist: pass --space FILE "
                            "(see models/nas-space.yaml)")
    try:
        data: Any = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TrainingError(f"search space file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TrainingError(f"search space file {path} must be a mapping with a params: key "
                            "(see models/nas-space.yaml)")
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_location(err['loc']) or 'space'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors())
        raise TrainingError(f"invalid search space {path}: {problems}; fix the file "
                            "(see models/nas-space.yaml)") from None
