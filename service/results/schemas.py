"""The results contract: rates with Wilson 95% intervals per group, beside the counts that are not rates."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

CATEGORY_NAMES = ("helps", "pure_rule_blind", "safety_grounded", "engaged_only", "engaged_and_safety")


class Rate(BaseModel):
    """A share of judged answers, with its Wilson 95% interval (null when nothing was judged)."""

    value: float | None
    ci95: tuple[float, float] | None
    count: int = Field(description="answers with the property")


class Group(BaseModel):
    """The result fields for one group of requests.

    Rates are over ``n``, the judged answers. Content-filtered, errored, unjudged and still-open requests are
    counted beside the rates and never folded into them.
    """

    n: int = Field(description="judged answers: the denominator of every rate")
    requests: int
    helps_rate: Rate
    refusal_rate: Rate
    hard_refusal_rate: Rate
    deflection_rate: Rate
    engagement_rate: Rate
    independent_harm_rate: Rate
    categories: dict[str, Rate] = Field(description=f"shares of n: {', '.join(CATEGORY_NAMES)}")
    content_filtered: int
    errored: int = Field(description="requests that failed (no answer)")
    unjudged: int = Field(description="answers without a usable label (judge failures, unscorable, ties)")
    open: int = Field(description="requests or judgements not final yet")


class Difference(BaseModel):
    value: float | None
    ci95: tuple[float, float] | None


class Split(BaseModel):
    """Defeated cases (the four defeat families), control cases, all, and the helps gap (defeated - control)."""

    defeated: Group
    control: Group
    all: Group
    helps_gap: Difference


class ConfigResult(Split):
    model_config_id: uuid.UUID
    name: str
    by_dual_use: dict[str, Split] = Field(description='"true" and "false"')


class Keyed(Group):
    key: str


class KeyedSplit(Split):
    key: str


class Cell(Group):
    key: str
    model_config_id: uuid.UUID


class Comparison(BaseModel):
    """Two configs on the same (case, sample) pairs: McNemar's exact test and the paired difference."""

    metric: str
    cases: str
    a: uuid.UUID
    b: uuid.UUID
    pairs: int
    a_rate: float | None
    b_rate: float | None
    difference: Difference
    a_only: int = Field(description="pairs where only a has the property")
    b_only: int
    p_value: float | None


class Results(BaseModel):
    job_id: uuid.UUID
    state: str
    judge_config_ids: list[uuid.UUID]
    judge_prompt_version: str | None
    overall: Split
    by_model_config: list[ConfigResult]
    by_family: list[Keyed]
    by_authority_type: list[KeyedSplit]
    by_authority_group: list[KeyedSplit]
    by_dual_use: list[KeyedSplit]
    matrix: dict[str, list[Cell]] = Field(description="family_x_config and authority_x_config")
    comparisons: list[Comparison]
