"""Results of a job: every rate with its Wilson interval, per group, from the counts the database adds up.

``read_facts`` does the SQL (a few aggregate queries); ``build`` is pure Python on what they returned, so a caller
on the event loop can run it in a thread (``service.results.cache`` does).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from operator import add
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.datasets.taxonomy import AUTHORITY_TYPES, GROUP_OF
from service.db.models import ConfigRole, Family, Job, ModelConfig
from service.jobs import repository as jobs_repo
from service.results import repository
from service.results.repository import COUNT_FIELDS, CellKey, Counts, Helped, PairCounts
from service.results.schemas import (
    Cell,
    Comparison,
    ConfigResult,
    Difference,
    Group,
    Keyed,
    KeyedSplit,
    Rate,
    Results,
    Split,
)
from service.results.stats import mcnemar_exact_p, paired_difference_ci, wilson

Cells = list[tuple[CellKey, Counts]]
K = TypeVar("K")
H = TypeVar("H", bound=Hashable)


def rate(count: int, n: int) -> Rate:
    interval = wilson(count, n)
    return Rate(
        value=count / n if n else None,
        ci95=(interval[0], interval[1]) if interval else None,
        count=count,
    )


def _group_fields(c: Counts) -> dict[str, Any]:
    n = c.n
    helps = rate(c.helps, n)
    return {
        "n": n,
        "requests": c.requests,
        "helps_rate": helps,
        "refusal_rate": rate(c.hard + c.deflection, n),
        "hard_refusal_rate": rate(c.hard, n),
        "deflection_rate": rate(c.deflection, n),
        "engagement_rate": rate(c.engage, n),
        "independent_harm_rate": rate(c.harm, n),
        "categories": {
            "helps": helps,
            "pure_rule_blind": rate(c.pure_rule_blind, n),
            "safety_grounded": rate(c.safety_grounded, n),
            "engaged_only": rate(c.engaged_only, n),
            "engaged_and_safety": rate(c.engaged_and_safety, n),
        },
        "content_filtered": c.content_filtered,
        "errored": c.errored,
        "unjudged": c.unjudged,
        "open": c.open_requests + c.open_judgements,
    }


def group(c: Counts) -> Group:
    """The result fields of one group's counts."""
    return Group(**_group_fields(c))


def difference(k1: int, n1: int, k2: int, n2: int) -> Difference:
    """p1 - p2 for independent groups, with Newcombe's hybrid score interval (from the two Wilson intervals)."""
    w1, w2 = wilson(k1, n1), wilson(k2, n2)
    if w1 is None or w2 is None:
        return Difference(value=None, ci95=None)
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    low = d - math.sqrt((p1 - w1[0]) ** 2 + (w2[1] - p2) ** 2)
    high = d + math.sqrt((w1[1] - p1) ** 2 + (p2 - w2[0]) ** 2)
    return Difference(value=d, ci95=(max(-1.0, low), min(1.0, high)))


Vector = tuple[int, ...]
"""A ``Counts`` as its values in ``COUNT_FIELDS`` order: summed without touching attributes."""
ZERO: Vector = (0,) * len(COUNT_FIELDS)


def vector(c: Counts) -> Vector:
    return tuple(getattr(c, name) for name in COUNT_FIELDS)


def sums(items: Iterable[tuple[K, Vector]], by: Callable[[K], H]) -> dict[H, Vector]:
    """The vectors summed per ``by(key)``: one pass, whatever the number of groups."""
    out: dict[H, Vector] = {}
    for key, values in items:
        into = by(key)
        have = out.get(into)
        out[into] = values if have is None else tuple(map(add, have, values))
    return out


def _counts(table: Mapping[H, Vector], key: H) -> Counts:
    return Counts(*table.get(key, ZERO))


class Fine(NamedTuple):
    """The partial sums every group but the authority ones is a sum of (the family says defeated or control)."""

    config: uuid.UUID
    family: Family
    dual_use: bool

    @property
    def defeated(self) -> bool:
        return self.family is not Family.control


class ByAuthority(NamedTuple):
    authority_type: str
    config: uuid.UUID
    defeated: bool


def _split_fields(defeated: Counts, control: Counts) -> dict[str, Any]:
    return {
        "defeated": group(defeated),
        "control": group(control),
        "all": group(Counts(*map(add, vector(defeated), vector(control)))),
        "helps_gap": difference(defeated.helps, defeated.n, control.helps, control.n),
    }


def _split_of(table: Mapping[tuple[H, bool], Vector], key: H) -> dict[str, Any]:
    """The split fields of ``key`` in a table of sums keyed by ``(key, defeated)``."""
    return _split_fields(_counts(table, (key, True)), _counts(table, (key, False)))


class ConfigName(NamedTuple):
    id: uuid.UUID
    name: str


def _config_results(fine: Mapping[Fine, Vector], configs: list[ConfigName]) -> list[ConfigResult]:
    by_config = sums(fine.items(), lambda k: (k.config, k.defeated))
    by_dual_use = sums(fine.items(), lambda k: ((k.config, k.dual_use), k.defeated))
    return [
        ConfigResult(
            **_split_of(by_config, config.id),
            model_config_id=config.id,
            name=config.name,
            by_dual_use={
                str(flag).lower(): Split(**_split_of(by_dual_use, (config.id, flag))) for flag in (True, False)
            },
        )
        for config in configs
    ]


def _matrix(
    fine: Mapping[Fine, Vector], by_authority: Mapping[ByAuthority, Vector], configs: list[ConfigName]
) -> dict[str, list[Cell]]:
    by_family = sums(fine.items(), lambda k: (k.family, k.config))
    family_cells = [
        Cell(**_group_fields(_counts(by_family, (f, c.id))), key=f.value, model_config_id=c.id)
        for f in Family
        for c in configs
    ]
    authority_cells = [
        Cell(**_group_fields(_counts(by_authority, ByAuthority(a, c.id, True))), key=a, model_config_id=c.id)
        for a in AUTHORITY_TYPES
        for c in configs
    ]
    return {"family_x_config": family_cells, "authority_x_config": [c for c in authority_cells if c.requests]}


def _comparisons(pairs: list[PairCounts]) -> list[Comparison]:
    out = []
    for p in pairs:
        interval = paired_difference_ci(p.a_only, p.b_only, p.pairs)
        out.append(
            Comparison(
                metric="helps_rate",
                cases="defeated",
                a=p.a,
                b=p.b,
                pairs=p.pairs,
                a_rate=p.a_yes / p.pairs if p.pairs else None,
                b_rate=p.b_yes / p.pairs if p.pairs else None,
                difference=Difference(
                    value=(p.a_only - p.b_only) / p.pairs if p.pairs else None,
                    ci95=(interval[0], interval[1]) if interval else None,
                ),
                a_only=p.a_only,
                b_only=p.b_only,
                p_value=mcnemar_exact_p(p.a_only, p.b_only) if p.pairs else None,
            )
        )
    return out


def _keyed_splits(table: Mapping[tuple[Any, bool], Vector], keys: Iterable[Any]) -> list[KeyedSplit]:
    return [KeyedSplit(**_split_of(table, key), key=str(key).lower()) for key in keys]


@dataclass(frozen=True)
class Facts:
    """What a job's results are computed from, as read from the ledger."""

    job_id: uuid.UUID
    state: str
    judge_config_ids: list[uuid.UUID]
    judge_prompt_version: str | None
    configs: list[ConfigName]
    cells: Cells
    helped: list[Helped]  # bit i: configs[i]


async def read_facts(session: AsyncSession, job: Job) -> Facts:
    """Everything the job's results need, in a few aggregate queries."""
    links = await jobs_repo.config_ids(session, job.id)
    targets = links[ConfigRole.target]
    found = await session.execute(select(ModelConfig.id, ModelConfig.name).where(ModelConfig.id.in_(targets)))
    names: dict[uuid.UUID, str] = {row[0]: row[1] for row in found.all()}
    configs = [ConfigName(i, names[i]) for i in targets if i in names]
    return Facts(
        job_id=job.id,
        state=job.state.value,
        judge_config_ids=links[ConfigRole.judge],
        judge_prompt_version=await jobs_repo.prompt_version(session, job.id),
        configs=configs,
        cells=await repository.cells(session, job.id),
        helped=await repository.helped(session, job.id, [c.id for c in configs]),
    )


def build(facts: Facts) -> Results:
    """Every figure of the study's tables for the job, with intervals. Pure: CPU only, no database.

    The cube's cells are summed once by (config, family, dual-use) and once by (authority type, config, defeated);
    every group is a sum of those few dozen or few hundred partial sums.
    """
    vectors = [(key, vector(counts)) for key, counts in facts.cells]
    fine = sums(vectors, lambda k: Fine(k.model_config_id, k.family, k.dual_use))
    by_authority = sums(vectors, lambda k: ByAuthority(k.authority_type, k.model_config_id, k.defeated))
    by_type = sums(by_authority.items(), lambda k: (k.authority_type, k.defeated))
    present_types = sorted({k.authority_type for k, _ in facts.cells}, key=AUTHORITY_TYPES.index)
    by_family = sums(fine.items(), lambda k: k.family)
    return Results(
        job_id=facts.job_id,
        state=facts.state,
        judge_config_ids=facts.judge_config_ids,
        judge_prompt_version=facts.judge_prompt_version,
        overall=Split(**_split_of(sums(fine.items(), lambda k: (None, k.defeated)), None)),
        by_model_config=_config_results(fine, facts.configs),
        by_family=[Keyed(**_group_fields(_counts(by_family, f)), key=f.value) for f in Family],
        by_authority_type=_keyed_splits(by_type, present_types),
        by_authority_group=_keyed_splits(
            sums(by_type.items(), lambda k: (GROUP_OF[k[0]], k[1])), sorted({GROUP_OF[t] for t in present_types})
        ),
        by_dual_use=_keyed_splits(sums(fine.items(), lambda k: (k.dual_use, k.defeated)), (True, False)),
        matrix=_matrix(fine, by_authority, facts.configs),
        comparisons=_comparisons(repository.pair_up(facts.helped, [c.id for c in facts.configs])),
    )


async def results(session: AsyncSession, job: Job) -> Results:
    """Every figure of the study's tables for this job, with intervals, from SQL aggregates."""
    return build(await read_facts(session, job))
