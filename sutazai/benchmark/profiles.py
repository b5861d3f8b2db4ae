"""Load profiles: how a benchmark drives an endpoint. Every field is an MLflow param, so a
run can be reproduced from its params alone."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sutazai.errors import BenchmarkError

Mode = Literal["sequential", "concurrency", "poisson", "sweep"]


class LoadProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    mode: Mode
    num_prompts: int = Field(default=24, ge=1)
    concurrency: int = Field(default=1, ge=1, description="in-flight cap (all modes)")
    rate: float | None = Field(default=None, gt=0, description="Poisson arrivals per second")
    sweep: tuple[int, ...] = (1, 2, 4, 8)
    input_words: int = Field(default=12, ge=1, description="prompt length in words")
    output_tokens: int = Field(default=16, ge=1)
    fixed_output: bool = Field(default=True, description="ask engines to ignore EOS")
    warmup: int = Field(default=2, ge=0)
    seed: int = 0
    temperature: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> LoadProfile:
        if self.mode == "poisson" and self.rate is None:
            raise ValueError("a poisson profile needs a rate (requests per second)")
        if self.mode == "sequential" and self.concurrency != 1:
            raise ValueError("a sequential profile has concurrency 1")
        if self.mode == "sweep" and not self.sweep:
            raise ValueError("a sweep profile needs concurrency levels")
        return self

    def levels(self) -> list[int]:
        """The concurrency of each load step (one step unless sweeping)."""
        return list(self.sweep) if self.mode == "sweep" else [self.concurrency]

    def params(self) -> dict[str, str]:
        return {f"profile.{k}": str(v) for k, v in self.model_dump().items()}


PROFILES: dict[str, LoadProfile] = {
    profile.name: profile for profile in (
        LoadProfile(name="latency", mode="sequential", num_prompts=24, output_tokens=16),
        LoadProfile(name="throughput", mode="concurrency", concurrency=8, num_prompts=32,
                    output_tokens=32),
        LoadProfile(name="poisson", mode="poisson", rate=2.0, concurrency=8, num_prompts=24,
                    output_tokens=16),
        LoadProfile(name="sweep", mode="sweep", sweep=(1, 2, 4, 8), num_prompts=16,
                    output_tokens=32),
        LoadProfile(name="smoke", mode="sequential", num_prompts=4, output_tokens=8, warmup=1),
    )
}


def get_profile(name: str) -> LoadProfile:
    if name not in PROFILES:
        raise BenchmarkError(f"unknown load profile {name!r}; choose one of "
                             f"{', '.join(PROFILES)}")
    return PROFILES[name]
