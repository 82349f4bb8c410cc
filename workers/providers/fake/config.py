"""FakeConfig: how the fake provider answers (mode, seed), and the load it simulates (latency, limits, faults)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatencyConfig(_Strict):
    """The sleep before each answer: ``fixed`` (mean_s), ``uniform`` (mean_s ± spread share), ``lognormal``."""

    distribution: Literal["fixed", "uniform", "lognormal"] = "fixed"
    mean_s: float = Field(0.0, ge=0)
    spread: float = Field(0.5, ge=0)


class LimitConfig(_Strict):
    """Requests and tokens per minute for one model (None: no limit)."""

    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)


class FaultConfig(_Strict):
    """The share of calls given each fault, checked in this order (the shares add up, capped at 1)."""

    rate_hang: float = Field(0.0, ge=0, le=1)
    rate_drop: float = Field(0.0, ge=0, le=1)
    rate_429: float = Field(0.0, ge=0, le=1)
    rate_500: float = Field(0.0, ge=0, le=1)
    rate_529: float = Field(0.0, ge=0, le=1)
    rate_malformed: float = Field(0.0, ge=0, le=1)
    rate_content_filter: float = Field(0.0, ge=0, le=1)
    # OpenAI chat: HTTP 200 with an `error` body (OpenRouter after routing); other formats: a 502
    rate_error_body: float = Field(0.0, ge=0, le=1)


class ModelProfile(_Strict):
    """How a simulated model behaves; a field left None keeps the default derived from the model's name."""

    helps: float | None = Field(None, ge=0)
    hard_refusal: float | None = Field(None, ge=0)
    deflection: float | None = Field(None, ge=0)
    engagement: float | None = Field(None, ge=0, le=1)
    harm: float | None = Field(None, ge=0, le=1)
    reasoning: bool | None = None

    @model_validator(mode="after")
    def _some_share(self) -> ModelProfile:
        shares = (self.helps, self.hard_refusal, self.deflection)
        if all(share is not None for share in shares) and sum(s or 0.0 for s in shares) <= 0:
            raise ValueError("at least one of helps, hard_refusal and deflection must have a share above 0")
        return self


class FakeConfig(_Strict):
    """Everything the fake provider can be told, at start or at run time (``PUT /_fake/config``)."""

    mode: Literal["simulated", "replay"] = "simulated"
    seed: int = 0
    replay_dir: str | None = None
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    limits: dict[str, LimitConfig] = Field(default_factory=dict)
    faults: FaultConfig = Field(default_factory=FaultConfig)
    hang_s: float = Field(30.0, ge=0)
    models: dict[str, ModelProfile] = Field(default_factory=dict)
    judge_prefixes: list[str] = Field(default_factory=lambda: ["judge", "fake-judge", "replay-judge"])
    judge_invalid_rate: float = Field(0.0, ge=0, le=1)
    honour_idempotency_key: bool = True

    @model_validator(mode="after")
    def _replay_needs_a_folder(self) -> FakeConfig:
        if self.mode == "replay" and not self.replay_dir:
            raise ValueError("replay mode needs `replay_dir` (a folder shaped like the study's data)")
        return self


# sections merged key by key by a partial update; every other key is replaced whole
_MERGED = ("latency", "faults")


def merge_config(config: FakeConfig, patch: dict[str, Any]) -> FakeConfig:
    """A new config: ``patch`` over ``config``. ``latency`` and ``faults`` merge field by field; others replace."""
    data = config.model_dump()
    for key, value in patch.items():
        if isinstance(value, BaseModel):
            value = value.model_dump(exclude_unset=True)
        if key in _MERGED and isinstance(value, dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return FakeConfig.model_validate(data)
